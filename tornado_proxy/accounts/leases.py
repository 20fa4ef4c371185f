"""Leases: one request's use of one account, and the pools of accounts they are dealt from.

A lease reports back to whoever dealt it (the scheduler) through the small ``Dealer``
interface below, so this module needs nothing of the scheduler.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Mapping, Protocol

from providers.base import Account
from providers.ratelimits import NONE as NO_RATE_LIMITS, RateLimitHeaders

from tornado_proxy.accounts.policy import Policy
from tornado_proxy.errors import ProxyError
from tornado_proxy.state.accounts_state import AccountState, Status

ACTIVE, COOLING, PROBING, DISABLED = Status.ACTIVE, Status.COOLING, Status.PROBING, Status.DISABLED

# Outcome labels, one per scheduler action (bounded: they become metric labels).
OUTCOMES = ("success", "client_error", "rate_limited", "error", "auth_failed", "rejected")


class Dealer(Protocol):
    """What a lease tells the scheduler that dealt it."""

    clock: Callable[[], float]

    async def _ensure_token(self, lease: "Lease") -> None: ...

    def _on_success(self, lease: "Lease", latency: float, headers: Mapping[str, str] | None) -> None: ...

    def _on_failure(self, lease: "Lease", err: ProxyError) -> None: ...


def proxy_for_id(account_id: str, proxies: tuple[str, ...]) -> str:
    """The proxy bound to an account: a hash of its id, so the same across restarts and processes
    (Python's ``hash()`` is salted per process, so it would not do)."""
    h = int.from_bytes(hashlib.sha256(account_id.encode("utf-8")).digest()[:8], "big")
    return proxies[h % len(proxies)]


def session_key(kind: str, value: str) -> str:
    """What a pin is kept under: a digest, as the session value (a header, a request's
    prompt_cache_key) is client data that must not sit in the shared store."""
    return hashlib.sha256(f"{kind}\0{value}".encode("utf-8", "surrogateescape")).hexdigest()[:32]


def health_out(st: AccountState, now: float, pol: Policy) -> float | None:
    """When an account that is out only by the gateway's own health judgement comes back
    (error backoff, an overload, the 401/403 counter); None for any other account.  A
    rate limit is the upstream's word and an operator's or a 402's disable is final."""
    s = st.status
    if s is COOLING or s is PROBING:
        if st.cooling_kind != "health":
            return None
        return st.cooling_until if s is COOLING else now  # (probing: its probe is out)
    if s is DISABLED and st.disabled_by == "auth":
        return max(now, st.reprobe_at)
    return None


class Lease:
    """One request's use of one account."""

    __slots__ = ("sched", "provider", "account", "proxy", "state", "probe", "rescue", "_done", "_succeeded",
                 "_failed")

    def __init__(self, sched: Dealer, provider: str, account: Account, state: AccountState | None,
                 probe: bool, proxy: str | None) -> None:
        self.sched = sched
        self.provider = provider
        self.account = account
        self.state = state      # None for the client's own credential (not tracked)
        self.probe = probe      # this request is the half-open probe of its account
        self.rescue = False     # the account is out by health judgement, and the only one left
        self.proxy = proxy
        self._done = False
        self._succeeded = False
        self._failed = False

    async def prepare(self) -> None:
        st = self.state
        if st is not None and st.oauth is not None:
            try:
                await self.sched._ensure_token(self)
            except ProxyError as e:
                self.failure(e)  # recorded here; the caller's failure(e) is then a no-op
                raise

    def success(self, latency: float, headers: Mapping[str, str] | None = None) -> None:
        if self.state is None or self._succeeded or self._failed:
            return
        self._succeeded = True
        self.sched._on_success(self, latency, headers)

    def failure(self, err: ProxyError) -> None:
        # A failure after success() (a stream cut mid-way) still counts for health.
        if self.state is None or self._failed:
            return
        self._failed = True
        self.sched._on_failure(self, err)

    def record_usage(self, usage: Mapping[str, Any] | None) -> None:
        """Token counts of the answer (pivot usage dict), for per-account metrics."""
        st = self.state
        if st is None or not usage:
            return
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(p, int):
            st.prompt_tokens += p
        if isinstance(c, int):
            st.completion_tokens += c

    def release(self) -> None:
        if self._done:
            return
        self._done = True
        st = self.state
        if st is None:
            return
        st.inflight -= 1
        if self.probe and st.status is PROBING and st.probe_inflight and not (self._succeeded or self._failed):
            # the probe ended without a verdict (client gone): let the next request probe
            st.probe_inflight = False
        elif self.probe and st.status is DISABLED and st.probe_inflight and not (self._succeeded or self._failed):
            # a re-probe without a verdict: the next request re-probes, at the same wait
            st.probe_inflight = False
            st.reprobe_level = max(0, st.reprobe_level - 1)
            st.reprobe_at = self.sched.clock()


class Pool:
    """One provider's accounts and rotation state."""

    __slots__ = ("name", "policy", "limits", "states", "by_id", "tiers", "rr", "proxy_rr", "default_proxy",
                 "shared_from")

    def __init__(self, name: str, policy: Policy, default_proxy: str | None,
                 limits: RateLimitHeaders = NO_RATE_LIMITS) -> None:
        self.name = name
        self.policy = policy
        # the rate-limit headers this provider's upstream sends (its Provider declares them)
        self.limits = limits
        # With ``accounts_from`` this is the other pool's list itself (not a copy), so an
        # account added or removed there is added or removed here.
        self.states: list[AccountState] = []
        self.shared_from: str | None = None
        self.by_id: dict[str, AccountState] = {}
        # in credential priority order; None marks the client pass-through tier
        self.tiers: list[list[AccountState] | None] = []
        self.rr = 0
        self.proxy_rr = 0
        self.default_proxy = default_proxy

    def rebuild(self) -> None:
        tiers: list[list[AccountState] | None] = []
        for kinds in self.policy.credential_order:
            if "client" in kinds:
                if self.policy.allow_client_auth:
                    tiers.append(None)
                continue
            tiers.append([st for st in self.states if st.credential in kinds])
        self.tiers = tiers
        self.by_id = {st.id: st for st in self.states}

    def pick_rr(self, tier: list[AccountState], now: float, exclude: Any) -> AccountState | None:
        n = len(tier)
        start = self.rr
        for k in range(n):
            st = tier[(start + k) % n]
            if exclude and st.id in exclude:
                continue
            if st.status is not ACTIVE and not available(st, now):
                continue
            self.rr = (start + k + 1) % n
            return st
        return None

    def proxy_for(self, st: AccountState | None) -> str | None:
        if st is not None and st.proxy is not None:
            return st.proxy
        proxies = self.policy.proxies
        if proxies:
            if self.policy.proxy_mode == "hash":
                return proxy_for_id(st.id if st is not None else "client", proxies)
            self.proxy_rr += 1
            return proxies[self.proxy_rr % len(proxies)]
        return self.default_proxy

    def soonest(self, now: float, exclude: Any) -> AccountState | None:
        """Nothing is usable: of the accounts out only by our own health judgement, the one
        that comes back first (in credential priority order).  A provider whose every
        account errored for a while is better served by trying one than by a 503: the
        upstream, not our memory of it, says whether it is back.  (Only when nothing
        else is left, so it costs nothing on the hot path.)"""
        pol = self.policy
        for tier in self.tiers:
            if tier is None:
                continue
            best: AccountState | None = None
            best_t = 0.0
            for st in tier:
                if st.id in exclude:
                    continue
                t = health_out(st, now, pol)
                if t is not None and (best is None or t < best_t):
                    best, best_t = st, t
            if best is not None:
                return best
        return None


def client_credential(raw: str, access_keys: frozenset[bytes]) -> str | None:
    """The client's own upstream credential in ``raw`` (a Bearer token or a bare key), or
    None.  Other schemes (Basic, Digest...) are not pass-through credentials: a Basic
    header carries user:password, which could be one of our own access keys.  Nothing
    that is one of our access keys is ever forwarded."""
    raw = raw.strip()
    if raw[:7].lower() == "bearer ":
        cred = raw[7:].strip()
    elif " " in raw:
        return None
    else:
        cred = raw
    if not cred:
        return None
    if cred.encode("utf-8", "surrogateescape") in access_keys:
        return None
    return cred


def available(st: AccountState, now: float) -> bool:
    """The account may take a request now (a cooldown that ran out makes it half-open)."""
    s = st.status
    if s is ACTIVE:
        return True
    if s is COOLING:
        if now < st.cooling_until:
            return False
        st.status = PROBING  # the cooldown is over: half-open
        st.probe_inflight = False
        return True
    if s is PROBING:
        return not st.probe_inflight
    # disabled by the 401/403 counter: its re-probe is due (an auth outage may be over)
    return st.disabled_by == "auth" and now >= st.reprobe_at and not st.probe_inflight


def pick_weighted(tier: list[AccountState], now: float, exclude: Any) -> AccountState | None:
    # smooth weighted round robin over score / (1 + in-flight)
    best: AccountState | None = None
    total = 0.0
    for st in tier:
        if exclude and st.id in exclude:
            continue
        if st.status is not ACTIVE and not available(st, now):
            continue
        s = st.score / (1 + st.inflight)
        st.cw += s
        total += s
        if best is None or st.cw > best.cw:
            best = st
    if best is not None:
        best.cw -= total
    return best
