"""Account scheduler: which account of a provider serves the next request.

Interface used by the core (kept stable; internals may be replaced):

    sched = Scheduler(providers_conf, clock=time.monotonic)
    lease = sched.acquire(provider_name, pin=None, strict_pin=False, session=None, exclude=())
        -> Lease, or raises ProxyError(NO_ACCOUNT, retry_after=...) when none is usable
    await lease.prepare()          # refresh OAuth tokens if needed (no-op for keys)
    lease.account                  # providers.base.Account
    lease.success(latency_s, headers)   # upstream answered 2xx (headers: lower-case dict)
    lease.failure(err)             # ProxyError from classify_error / transport
    lease.release()                # always, when the request is over (idempotent)
    sched.usable(provider_name) -> bool
    sched.snapshot() -> list[dict] # masked, for admin API and metrics
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from providers.base import Account

from .errors import ErrorKind, ProxyError


class Lease:
    __slots__ = ("sched", "provider", "account", "_done")

    def __init__(self, sched: "Scheduler", provider: str, account: Account) -> None:
        self.sched = sched
        self.provider = provider
        self.account = account
        self._done = False

    async def prepare(self) -> None:
        return None

    def success(self, latency: float, headers: dict[str, str] | None = None) -> None:
        pass

    def failure(self, err: ProxyError) -> None:
        pass

    def release(self) -> None:
        self._done = True


class Scheduler:
    def __init__(self, providers_conf: list[dict[str, Any]], clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._accounts: dict[str, list[Account]] = {}
        self._next: dict[str, int] = {}
        for p in providers_conf:
            accts = []
            for i, a in enumerate(p.get("accounts") or []):
                extra = {k: v for k, v in a.items() if k not in ("id", "api_key", "weight")}
                accts.append(Account(id=a.get("id") or f"{p['name']}-{i}", api_key=a.get("api_key"),
                                     weight=float(a.get("weight", 1.0)), extra=extra))
            self._accounts[p["name"]] = accts
            self._next[p["name"]] = 0

    def acquire(self, provider: str, *, pin: str | None = None, strict_pin: bool = False,
                session: str | None = None, exclude: Iterable[str] = ()) -> Lease:
        accts = [a for a in self._accounts.get(provider, []) if a.id not in set(exclude)]
        if pin is not None:
            pinned = [a for a in accts if a.id == pin]
            if pinned:
                return Lease(self, provider, pinned[0])
            if strict_pin:
                raise ProxyError(ErrorKind.NO_ACCOUNT, f"pinned account '{pin}' is not usable")
        if not accts:
            raise ProxyError(ErrorKind.NO_ACCOUNT, f"provider '{provider}' has no usable account")
        i = self._next[provider] % len(accts)
        self._next[provider] = i + 1
        return Lease(self, provider, accts[i])

    def usable(self, provider: str) -> bool:
        return bool(self._accounts.get(provider))

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"provider": p, "id": a.id, "state": "active"} for p, l in self._accounts.items() for a in l]
