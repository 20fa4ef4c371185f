"""A provider's scheduling policy (its ``scheduler`` config block) and the arithmetic the
policy decides: cooldowns, backoff, re-probe waits and an account's score.

Pure functions of the policy, the error and the clock values passed in; nothing here
reads a clock or holds state.
"""
from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from typing import Any, Mapping

from providers.ratelimits import RateLimitHeaders
from providers.toolkit import parse_retry_after

from tornado_proxy.accounts import oauth, ratelimit
from tornado_proxy.accounts.ratelimit import is_daily_quota, reset_from_headers, until_midnight
from tornado_proxy.errors import ProxyError
from tornado_proxy.state.accounts_state import AccountState

CREDENTIALS = ("key", "oauth", "client")


@dataclass(frozen=True)
class Policy:
    """A provider's ``scheduler`` config block, with defaults (README.md)."""

    strategy: str = "weighted"          # "weighted" | "round_robin"
    max_tries: int = 3                  # accounts tried per request before the first byte
    max_seconds: float = 60.0           # total time for those tries
    disable_after: int = 3              # 401/403 failures within disable_window -> disabled
    disable_window: float = 600.0
    auth_reprobe_base: float = 60.0     # such an account is re-probed after this, doubling...
    auth_reprobe_max: float = 3600.0    # ...up to this, until a probe passes
    errors_before_cooldown: int = 3     # consecutive transport/5xx errors before a cooldown
    backoff_base: float = 1.0           # cooldown when the upstream says nothing: base x 2^n
    backoff_max: float = 600.0
    cooldown_max: float = 90000.0       # a day and a bit: per-day quotas
    # Where per-day quotas reset at midnight, for every upstream; None: each upstream's
    # own (``RateLimitHeaders.daily_reset_tz``: Gemini's is Pacific time), else UTC.
    daily_reset_tz: str | None = None
    half_life: float = 120.0            # memory of the success rate, seconds
    latency_ref: float = 2.0            # seconds; the latency that halves an account's share
    pin_header: str = "x-auth-id"
    strict_pin_header: str = "x-auth-strict"
    session_header: str | None = None   # e.g. "x-session-id": stickiness for prompt caches
    session_ttl: float = 3600.0
    sticky_prompt_cache_key: bool = True  # a request's prompt_cache_key pins it as the header does
    credential_order: tuple[tuple[str, ...], ...] = (("key",), ("oauth",), ("client",))
    allow_client_auth: bool = False
    client_auth_header: str = "authorization"
    proxies: tuple[str, ...] = ()
    proxy_mode: str = "round_robin"     # "round_robin" | "hash"
    oauth: oauth.OAuthConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)


DEFAULT_POLICY = Policy()


def parse_policy(conf: Mapping[str, Any] | None) -> Policy:
    """The ``scheduler`` block of a provider entry -> Policy.  Raises ValueError."""
    c = dict(conf or {})
    kw: dict[str, Any] = {}
    for name in ("strategy", "proxy_mode", "pin_header", "strict_pin_header", "session_header",
                 "client_auth_header", "daily_reset_tz"):
        if name in c:
            v = c.pop(name)
            kw[name] = v.lower() if isinstance(v, str) and name.endswith("header") else v
    for name in ("max_tries", "disable_after", "errors_before_cooldown"):
        if name in c:
            kw[name] = int(c.pop(name))
            if kw[name] < 1:
                raise ValueError(f"scheduler.{name} must be at least 1")
    for name in ("max_seconds", "disable_window", "backoff_base", "backoff_max", "cooldown_max",
                 "half_life", "latency_ref", "session_ttl", "auth_reprobe_base", "auth_reprobe_max"):
        if name in c:
            kw[name] = float(c.pop(name))
            if kw[name] <= 0:
                raise ValueError(f"scheduler.{name} must be positive")
    for name in ("allow_client_auth", "sticky_prompt_cache_key"):
        if name in c:
            kw[name] = bool(c.pop(name))
    if "proxies" in c:
        kw["proxies"] = tuple(str(p) for p in c.pop("proxies"))
    if "credential_order" in c:
        order = []
        for i, tier in enumerate(c.pop("credential_order")):
            kinds = (tier,) if isinstance(tier, str) else tuple(tier)
            bad = [k for k in kinds if k not in CREDENTIALS]
            if bad:
                raise ValueError(f"scheduler.credential_order[{i}]: unknown credential {bad[0]!r}")
            if "client" in kinds and len(kinds) > 1:
                raise ValueError(f"scheduler.credential_order[{i}]: 'client' must be a tier of its own")
            order.append(kinds)
        kw["credential_order"] = tuple(order)
    if "oauth" in c:
        kw["oauth"] = oauth.parse_config(c.pop("oauth"))
    pol = Policy(extra=c, **kw)
    if pol.strategy not in ("weighted", "round_robin"):
        raise ValueError(f"scheduler.strategy must be 'weighted' or 'round_robin', not {pol.strategy!r}")
    if pol.proxy_mode not in ("round_robin", "hash"):
        raise ValueError(f"scheduler.proxy_mode must be 'round_robin' or 'hash', not {pol.proxy_mode!r}")
    if pol.daily_reset_tz is not None:
        zoneinfo.ZoneInfo(pol.daily_reset_tz)  # fails at start, not at the first quota error
    if c:
        raise ValueError(f"scheduler: unknown option {sorted(c)[0]!r}")
    return pol


def cooldown_for(err: ProxyError, wall_now: float, pol: Policy, backoff_level: int,
                 limits: RateLimitHeaders) -> tuple[float, str]:
    """How long to cool an account down after a 429/529, and why (for the admin API).
    ``limits``: the rate-limit headers of the upstream that answered."""
    if is_daily_quota(err):
        tz = pol.daily_reset_tz or limits.daily_reset_tz or "UTC"
        return max(until_midnight(wall_now, tz), err.retry_after or 0.0), "daily quota"
    if err.retry_after is not None:
        return err.retry_after, "retry-after"
    h = err.headers
    if h:
        ra = parse_retry_after(h, wall_now)
        if ra is not None:
            return ra, "retry-after"
        q = ratelimit.read(h, lambda: wall_now, limits)
        if q is not None and q.spent is not None:
            return q.spent, "quota reset"
        reset = reset_from_headers(h, wall_now, limits)
        if reset is not None:
            return reset, "ratelimit reset"
    return backoff(pol, backoff_level), "backoff"


def backoff(pol: Policy, level: int) -> float:
    return min(pol.backoff_max, pol.backoff_base * (2.0 ** min(level, 40)))


def reprobe_wait(pol: Policy, level: int) -> float:
    """How long an account the 401/403 counter disabled waits before re-probe ``level`` + 1."""
    return min(pol.auth_reprobe_max, pol.auth_reprobe_base * (2.0 ** min(level, 40)))


# An account with no quota left still gets this share of its weight: its headroom is
# only learnt from its own answers, and a window may have refilled meanwhile.
HEADROOM_FLOOR = 0.1


def rescore(st: AccountState, pol: Policy) -> None:
    lat = st.latency
    f = 1.0 if lat is None else pol.latency_ref / (pol.latency_ref + lat)
    room = st.headroom
    if room is not None:
        f *= HEADROOM_FLOOR + (1.0 - HEADROOM_FLOOR) * room
    st.score = st.weight * (st.ok + 1.0) / (st.n + 1.0) * f
