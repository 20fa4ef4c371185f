"""What the admin API, the status page and the metrics see of the accounts: a masked
snapshot per account, and the operator's enable / disable / probe."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from providers.ratelimits import NONE as NO_RATE_LIMITS

from tornado_proxy.accounts.file import AccountsFile, mask
from tornado_proxy.accounts.leases import OUTCOMES, Pool
from tornado_proxy.accounts.ratelimit import quota_numbers
from tornado_proxy.state.accounts_state import AccountState, StateStore, Status

COOLING, PROBING, DISABLED = Status.COOLING, Status.PROBING, Status.DISABLED


class AdminViews:
    """The scheduler's admin and reporting part (a mixin of ``Scheduler``)."""

    clock: Callable[[], float]
    wall_clock: Callable[[], float]
    store: StateStore
    _pools: dict[str, Pool]
    _file: AccountsFile | None
    _next_poll: float

    if TYPE_CHECKING:
        def _poll(self, now: float) -> None: ...

        def _owned(self) -> Iterable[Pool]: ...

        def _set_enabled(self, st: AccountState, *, persist: bool, transition: str = "enable") -> None: ...

        def _set_disabled(self, st: AccountState, reason: str, *, persist: bool, at: Any = None,
                          transition: str = "", by: str | None = "operator") -> None: ...

    # -- admin -----------------------------------------------------------------------------
    def _find(self, account_id: str) -> AccountState:
        for pool in self._pools.values():
            st = pool.by_id.get(account_id)
            if st is not None:
                return st
        raise KeyError(account_id)

    def enable(self, account_id: str) -> dict[str, Any]:
        st = self._find(account_id)
        self._set_enabled(st, persist=True)
        return self._snap(st, self.clock(), self.wall_clock())

    def disable(self, account_id: str, reason: str = "disabled by an operator") -> dict[str, Any]:
        st = self._find(account_id)
        self._set_disabled(st, reason, persist=True, transition="admin")
        return self._snap(st, self.clock(), self.wall_clock())

    def probe(self, account_id: str) -> dict[str, Any]:
        """End a cooldown (or a disable) now: the next request to the account is its probe."""
        st = self._find(account_id)
        if st.status in (COOLING, DISABLED):
            st.status = PROBING
            st.probe_inflight = False
            st.cooling_until = self.clock()
            self.store.publish(f"{st.provider}/{st.id}", st, "admin")
        return self._snap(st, self.clock(), self.wall_clock())

    # -- reporting ----------------------------------------------------------------------
    def usable(self, provider: str) -> bool:
        """Some account is not disabled (a cooling account comes back by itself, and one
        the 401/403 counter disabled is re-probed)."""
        pool = self._pools.get(provider)
        if pool is None:
            return False
        return pool.policy.allow_client_auth or any(st.status is not DISABLED or st.disabled_by == "auth"
                                                    for st in pool.states)

    def snapshot(self) -> list[dict[str, Any]]:
        now = self.clock()
        if self._file is not None and now >= self._next_poll:
            self._poll(now)
        wall = self.wall_clock()
        return [self._snap(st, now, wall) for pool in self._owned() for st in pool.states]

    def _snap(self, st: AccountState, now: float, wall: float) -> dict[str, Any]:
        status = st.status
        if status is COOLING and now >= st.cooling_until:
            status = PROBING
        h = st.last_headers
        owner = self._pools.get(st.provider)
        limits = owner.limits if owner is not None else NO_RATE_LIMITS
        fresh = now < st.headroom_until
        secret = st.account.api_key
        return {
            "provider": st.provider,
            "id": st.id,
            "credential": st.credential,
            "source": st.source,
            "key_hint": mask(secret) if secret else None,
            "weight": st.weight,
            "state": status.value,
            "cooldown_s": round(max(0.0, st.cooling_until - now), 3) if status is COOLING else 0.0,
            "cooldown_reason": st.cooldown_reason if status in (COOLING, PROBING) else None,
            "disabled_reason": st.disabled_reason,
            "disabled_by": st.disabled_by if status is DISABLED else None,
            "reprobe_in_s": (round(max(0.0, st.reprobe_at - now), 1)
                             if status is DISABLED and st.disabled_by == "auth" else None),
            "cooldown_kind": st.cooling_kind if status in (COOLING, PROBING) else None,
            "disabled_at": st.disabled_at,
            "last_error": st.last_error,
            "last_error_at": st.last_error_at,
            "last_status": st.last_status,
            "inflight": st.inflight,
            "success_rate": round((st.ok + 1.0) / (st.n + 1.0), 4),
            "latency_s": None if st.latency is None else round(st.latency, 4),
            "score": round(st.score, 4),
            "requests": {o: st.outcomes.get(o, 0) for o in OUTCOMES},
            "latency_sum_s": st.latency_sum,
            "latency_count": st.latency_count,
            "tokens": {"prompt": st.prompt_tokens, "completion": st.completion_tokens},
            "refresh": {"ok": st.refresh_ok, "failed": st.refresh_failed},
            "token_expires_in_s": (round(st.expires_at - wall, 1) if st.expires_at is not None else None),
            "quota_remaining": quota_numbers(h, limits.quota_remaining),
            "quota_used": {w: round(u, 4) for w, u in st.quota_used.items()} if fresh else {},
            "headroom": round(st.headroom, 4) if fresh and st.headroom is not None else None,
            "quota_limit": quota_numbers(h, limits.quota_limit),
            "proxy": _mask_proxy(st.proxy),
        }


def _mask_proxy(proxy: str | None) -> str | None:
    """Proxy URLs may carry a password: show the host only."""
    if not proxy or "@" not in proxy:
        return proxy
    scheme, _, rest = proxy.rpartition("://")
    return (scheme + "://" if scheme else "") + "****@" + rest.split("@", 1)[1]
