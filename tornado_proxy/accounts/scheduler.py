"""Account scheduler: which account of a provider serves the next request.

Interface used by the core (kept stable; internals may be replaced):

    sched = Scheduler(providers_conf, clock=time.monotonic)
    lease = sched.acquire(provider_name, headers=client_headers, exclude=tried_ids)
        -> Lease, or raises ProxyError(NO_ACCOUNT, retry_after=...) when none is usable.
        ``headers`` are the client's request headers (lower-case names): the scheduler
        reads pinning (x-auth-id), stickiness and pass-through credentials from them;
        ``cache_key=`` (optional) is the request's ``prompt_cache_key``, a stickiness key too.
    sched.policy(provider_name)    # .max_tries, .max_seconds: the failover budget
    lease.proxy                    # outbound proxy URL for this request, or None
    await lease.prepare()          # refresh OAuth tokens if needed (no-op for keys)
    lease.account                  # providers.base.Account
    lease.success(latency_s, headers)   # upstream answered 2xx (headers: lower-case dict)
    lease.failure(err)             # ProxyError from classify_error / transport
    lease.release()                # always, when the request is over (idempotent)
    sched.usable(provider_name) -> bool
    sched.snapshot() -> list[dict] # masked, for admin API and metrics

Additions (optional for the core): ``Scheduler(..., wall_clock=, accounts_file=,
store=)``, ``lease.record_usage(usage)``, ``sched.reload()``,
``sched.install_sighup()``, ``sched.enable/disable/probe(account_id)`` (admin API).

How an account is chosen (README.md explains it for users):

    score = weight x success_rate x latency_ref / (latency_ref + latency)
    share of an account ~ score / (1 + in-flight requests)

``success_rate`` is (ok + 1) / (n + 1) over outcomes decayed with a half-life, so a
failing account keeps a trickle of traffic and recovers as it succeeds.  Shares are
dealt by smooth weighted round robin (nginx's algorithm): deterministic, no random
draw, exact proportions over any window.  Accounts cooling down or disabled are
skipped; an account whose cooldown is over gets exactly one request (the half-open
probe) whose outcome decides between full traffic and a longer cooldown.

The hot path (``acquire`` and ``success``) reads the clock once, does not log and
allocates only the Lease; everything costly (header dates, logging, file writes)
happens on failures and transitions, which are rare.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import email.utils
import hashlib
import logging
import math
import os
import signal
import time
import zoneinfo
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from providers.base import Account

from tornado_proxy.accounts import oauth, ratelimit, terms
from tornado_proxy.accounts.ratelimit import parse_duration, parse_reset

from tornado_proxy.observability import redact
from tornado_proxy.accounts.file import AccountsFile, AccountsFileError, find, has_credential, mask
from tornado_proxy.errors import Action, ErrorKind, ProxyError
from tornado_proxy.state.accounts_state import DISABLED_BY, AccountState, MemoryStateStore, StateStore, Status
from tornado_proxy.state.store import LockTimeout

log = logging.getLogger("tornado_proxy.accounts.scheduler")

_EMPTY: Mapping[str, str] = {}
_TRUE = frozenset({"1", "true", "yes", "on"})
ACTIVE, COOLING, PROBING, DISABLED = Status.ACTIVE, Status.COOLING, Status.PROBING, Status.DISABLED

# Outcome labels, one per scheduler action (bounded: they become metric labels).
OUTCOMES = ("success", "client_error", "rate_limited", "error", "auth_failed", "rejected")
_OUTCOME = {Action.NONE: "client_error", Action.COOLDOWN: "rate_limited", Action.RETRY: "error",
            Action.AUTH: "auth_failed", Action.DISABLE: "rejected"}
# Words in a 401/403 message that mean the credential is gone for good, not mistyped
# for a moment: such an account is disabled at once instead of after N failures.
_REVOKED_WORDS = ("revoked", "deactivated", "suspended", "disabled", "invalid_grant")
# What an account whose refresh token the token endpoint refuses as invalid_grant says.
SPENT = "refresh token was spent; re-authorise"
CREDENTIALS = ("key", "oauth", "client")

# (remaining header, reset header) pairs, OpenAI-style then Anthropic-style.  The
# remaining header tells which limit ran out; its reset header says when it refills.
RESET_PAIRS = (
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
    ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset"),
    ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset"),
    ("x-ratelimit-remaining", "x-ratelimit-reset"),
)
# Remaining-quota headers shown per account (admin API, metrics): label -> header names.
QUOTA_HEADERS = (
    ("requests", ("x-ratelimit-remaining-requests", "anthropic-ratelimit-requests-remaining")),
    ("tokens", ("x-ratelimit-remaining-tokens", "anthropic-ratelimit-tokens-remaining")),
    ("input_tokens", ("anthropic-ratelimit-input-tokens-remaining",)),
    ("output_tokens", ("anthropic-ratelimit-output-tokens-remaining",)),
)
# The same limits' sizes, so the status page can show headroom as a share of the limit.
QUOTA_LIMIT_HEADERS = (
    ("requests", ("x-ratelimit-limit-requests", "anthropic-ratelimit-requests-limit")),
    ("tokens", ("x-ratelimit-limit-tokens", "anthropic-ratelimit-tokens-limit")),
    ("input_tokens", ("anthropic-ratelimit-input-tokens-limit",)),
    ("output_tokens", ("anthropic-ratelimit-output-tokens-limit",)),
)


# -- configuration ---------------------------------------------------------------
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
    daily_reset_tz: str = "America/Los_Angeles"  # where per-day quotas reset at midnight (Google's)
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


_DEFAULT_POLICY = Policy()


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
    zoneinfo.ZoneInfo(pol.daily_reset_tz)  # fails at start, not at the first quota error
    if c:
        raise ValueError(f"scheduler: unknown option {sorted(c)[0]!r}")
    return pol


# -- cooldown arithmetic (pure; wall_now passed in) --------------------------------
def parse_retry_after(headers: Mapping[str, str], wall_now: float) -> float | None:
    """``retry-after-ms`` (OpenAI) or ``retry-after`` (delta seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - wall_now)


def _exhausted(remaining: str | None) -> bool:
    if remaining is None:
        return False
    try:
        return float(remaining) <= 0
    except ValueError:
        return False


def reset_from_headers(headers: Mapping[str, str], wall_now: float,
                       only_exhausted: bool = False) -> float | None:
    """When the limit that ran out refills, from x-ratelimit-* / anthropic-ratelimit-* headers.

    The limit whose remaining count is 0 is the one that matters; if no remaining
    header says so, the latest reset is taken (we cannot tell which limit hit).
    """
    spent: float | None = None
    latest: float | None = None
    for rem_h, reset_h in RESET_PAIRS:
        raw = headers.get(reset_h)
        if raw is None:
            continue
        d = parse_reset(raw, wall_now)
        if d is None:
            continue
        if _exhausted(headers.get(rem_h)):
            spent = d if spent is None else max(spent, d)
        latest = d if latest is None else max(latest, d)
    if only_exhausted or spent is not None:
        return spent
    return latest


def is_daily_quota(err: ProxyError) -> bool:
    """A per-day quota ran out (Gemini's ``...PerDay...`` quota ids, "per day" messages)."""
    text = err.message.lower().replace(" ", "").replace("-", "")
    return "perday" in text or "dailylimit" in text or "dailyquota" in text


def until_midnight(wall_now: float, tz: str) -> float:
    """Seconds until the next midnight in ``tz``, where daily quotas reset."""
    zone = zoneinfo.ZoneInfo(tz)
    now = datetime.datetime.fromtimestamp(wall_now, zone)
    tomorrow = (now + datetime.timedelta(days=1)).date()
    midnight = datetime.datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=zone)
    return max(0.0, midnight.timestamp() - wall_now)


def cooldown_for(err: ProxyError, wall_now: float, pol: Policy, backoff_level: int) -> tuple[float, str]:
    """How long to cool an account down after a 429/529, and why (for the admin API)."""
    if is_daily_quota(err):
        return max(until_midnight(wall_now, pol.daily_reset_tz), err.retry_after or 0.0), "daily quota"
    if err.retry_after is not None:
        return err.retry_after, "retry-after"
    h = err.headers
    if h:
        ra = parse_retry_after(h, wall_now)
        if ra is not None:
            return ra, "retry-after"
        q = ratelimit.read(h, lambda: wall_now)
        if q is not None and q.spent is not None:
            return q.spent, "quota reset"
        reset = reset_from_headers(h, wall_now)
        if reset is not None:
            return reset, "ratelimit reset"
    return backoff(pol, backoff_level), "backoff"


def backoff(pol: Policy, level: int) -> float:
    return min(pol.backoff_max, pol.backoff_base * (2.0 ** min(level, 40)))


def reprobe_wait(pol: Policy, level: int) -> float:
    """How long an account the 401/403 counter disabled waits before re-probe ``level`` + 1."""
    return min(pol.auth_reprobe_max, pol.auth_reprobe_base * (2.0 ** min(level, 40)))


def proxy_for_id(account_id: str, proxies: tuple[str, ...]) -> str:
    """The proxy bound to an account: a hash of its id, so the same across restarts and processes
    (Python's ``hash()`` is salted per process, so it would not do)."""
    h = int.from_bytes(hashlib.sha256(account_id.encode("utf-8")).digest()[:8], "big")
    return proxies[h % len(proxies)]


def _session_id(kind: str, value: str) -> str:
    """What a pin is kept under: a digest, as the session value (a header, a request's
    prompt_cache_key) is client data that must not sit in the shared store."""
    return hashlib.sha256(f"{kind}\0{value}".encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _health_out(st: AccountState, now: float, pol: Policy) -> float | None:
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


# An account with no quota left still gets this share of its weight: its headroom is
# only learnt from its own answers, and a window may have refilled meanwhile.
HEADROOM_FLOOR = 0.1


def _rescore(st: AccountState, pol: Policy) -> None:
    lat = st.latency
    f = 1.0 if lat is None else pol.latency_ref / (pol.latency_ref + lat)
    room = st.headroom
    if room is not None:
        f *= HEADROOM_FLOOR + (1.0 - HEADROOM_FLOOR) * room
    st.score = st.weight * (st.ok + 1.0) / (st.n + 1.0) * f


def _clip(text: str, n: int = 300) -> str:
    # scrubbed before the cut: half a secret would no longer match it
    text = redact.text(text)
    return text if len(text) <= n else text[: n - 1] + "…"


# -- leases ------------------------------------------------------------------------
class Lease:
    """One request's use of one account."""

    __slots__ = ("sched", "provider", "account", "proxy", "state", "probe", "rescue", "_done", "_succeeded",
                 "_failed")

    def __init__(self, sched: "Scheduler", provider: str, account: Account, state: AccountState | None,
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


# -- the scheduler -------------------------------------------------------------------
class _Pool:
    """One provider's accounts and rotation state."""

    __slots__ = ("name", "policy", "states", "by_id", "tiers", "rr", "proxy_rr", "default_proxy", "shared_from")

    def __init__(self, name: str, policy: Policy, default_proxy: str | None) -> None:
        self.name = name
        self.policy = policy
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


# Entry fields the scheduler keeps to itself (secrets, OAuth, state); the rest reaches
# the provider as ``Account.extra`` (region, headers, aws keys...).
_NOT_EXTRA = frozenset({"id", "weight", "api_key", "api_key_env", "refresh_token", "access_token", "expires_at",
                        "disabled", "disabled_reason", "disabled_at", "disabled_by", "provider", "enabled", "token_url",
                        "client_id", "client_secret", "token_format", "scope", "added_at"})
_OAUTH_FIELDS = (("token_url", "token_url"), ("client_id", "client_id"), ("token_format", "format"),
                 ("scope", "scope"), ("client_secret", "client_secret"))


def _oauth_for(base: oauth.OAuthConfig | None, entry: Mapping[str, Any]) -> oauth.OAuthConfig | None:
    """The provider's token endpoint settings, with the account's own fields on top."""
    over = {field_: entry[k] for k, field_ in _OAUTH_FIELDS if entry.get(k)}
    if base is not None:
        return dataclasses.replace(base, **over) if over else base
    if "token_url" in over and "client_id" in over:
        return oauth.OAuthConfig(**over)
    return None


def _note_secrets(st: AccountState) -> None:
    """Tell the scrubber this account's secrets (again after a refresh rotated them)."""
    a = st.account
    o = st.oauth
    redact.note(f"account:{st.provider}/{st.id}",
                (a.api_key, st.refresh_token, st.file_token, o.client_secret if o is not None else None,
                 *(a.extra.get(f) for f in ("aws_secret_access_key", "aws_session_token", "password"))))


def _credential_kind(entry: Mapping[str, Any]) -> str:
    return "oauth" if entry.get("refresh_token") else "key"


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


class Scheduler:
    def __init__(self, providers_conf: list[dict[str, Any]], clock: Callable[[], float] = time.monotonic, *,
                 wall_clock: Callable[[], float] = time.time, accounts_file: str | None = None,
                 store: StateStore | None = None, poll_interval: float = 1.0,
                 access_keys: Iterable[str | bytes] = ()) -> None:
        self.clock = clock
        # The gateway's own access keys are never forwarded upstream as a client credential.
        self._access_keys = frozenset(k.encode("utf-8") if isinstance(k, str) else k for k in access_keys)
        redact.note("server:access_keys", (k.decode("utf-8", "replace") for k in self._access_keys))
        self.wall_clock = wall_clock
        self.store: StateStore = store or MemoryStateStore()
        self._pools: dict[str, _Pool] = {}
        self._file = AccountsFile(accounts_file) if accounts_file else None
        self._file_key: tuple[int, int, int] | None = None
        self._poll_interval = poll_interval
        self._next_poll = 0.0
        self._warned: set[str] = set()
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._anthropic = {p["name"]: p for p in providers_conf if terms.aims_at_anthropic(p)}
        for p in providers_conf:
            name = p["name"]
            pool = _Pool(name, parse_policy(p.get("scheduler")), p.get("proxy"))
            self._pools[name] = pool
            for i, a in enumerate(p.get("accounts") or []):
                entry = dict(a)
                entry.setdefault("id", f"{name}-{i}")
                if _credential_kind(entry) == "oauth":
                    raise ValueError(f"providers[{name}].accounts[{i}]: OAuth accounts live in the accounts "
                                     "file (their rotated refresh tokens must be saved)")
                self._add(pool, entry, "config")
            pool.rebuild()
        for p in providers_conf:
            if p.get("accounts_from"):
                self._share(self._pools[p["name"]], p)
        if self._file is not None:
            self._file_key = self._file.stat_key()
            self._apply_file(self._file.load())

    @classmethod
    def from_config(cls, config: Any, **kw: Any) -> "Scheduler":
        """From a loaded ``config.Config``: a relative ``accounts_file`` is relative to the config file."""
        path = getattr(config, "accounts_file", None)
        source = getattr(config, "source", "")
        if path and not os.path.isabs(path) and source and os.path.isfile(source):
            path = os.path.join(os.path.dirname(os.path.abspath(source)), path)
        keys = (getattr(config, "server", None) or {}).get("access_keys") or ()
        redact.note("server:admin_token", [(getattr(config, "server", None) or {}).get("admin_token")])
        return cls(config.providers, accounts_file=path, access_keys=keys, **kw)

    def _share(self, pool: _Pool, p: Mapping[str, Any]) -> None:
        """``accounts_from``: the pool serves with another provider's accounts.  They are the
        same account states, so one login is refreshed once, its rotated refresh token saved
        once, and a cooldown or a disable counts for every endpoint the login serves (a
        vendor limits the account, whichever of its endpoints is called)."""
        src = self._pools.get(str(p["accounts_from"]))
        where = f"providers[{pool.name}].accounts_from"
        if src is None:
            raise ValueError(f"{where}: no provider named {p['accounts_from']!r}")
        if src is pool or src.shared_from is not None:
            raise ValueError(f"{where}: '{src.name}' must be a provider with accounts of its own")
        if pool.states:
            raise ValueError(f"{where}: a provider that takes its accounts from '{src.name}' has none of its own")
        mine, theirs = self._anthropic.get(pool.name), self._anthropic.get(src.name)
        if mine is not None and (theirs is None or (terms.guarded(mine) and not terms.guarded(theirs))):
            # the terms guard screens an account where it is defined: it must hold here too
            raise ValueError(f"{where}: '{pool.name}' is aimed at Anthropic's API; it takes accounts only "
                             "from a provider aimed there too, with the same terms guard (docs/security.md)")
        pool.shared_from = src.name
        pool.states = src.states
        pool.rebuild()

    def _owned(self) -> Iterable[_Pool]:
        """The pools that own their accounts (each account listed once)."""
        return (pool for pool in self._pools.values() if pool.shared_from is None)

    # -- building states ----------------------------------------------------------
    def _add(self, pool: _Pool, entry: dict[str, Any], source: str) -> AccountState | None:
        aid = str(entry["id"])
        for other in self._owned():
            if any(st.id == aid for st in other.states):
                self._warn(f"dup:{aid}", "account id '%s' is defined twice; the second one is ignored", aid)
                return None
        kind = _credential_kind(entry)
        account = Account(id=aid, weight=float(entry.get("weight", 1.0)))
        st = self.store.record(f"{pool.name}/{aid}",
                               lambda: AccountState(pool.name, account, credential=kind, source=source))
        self._update(pool, st, entry)
        if kind == "oauth" and st.oauth is None:
            self._set_disabled(st, f"no token endpoint: provider '{pool.name}' has no scheduler.oauth "
                               "and the account no token_url/client_id", persist=False, transition="config",
                               by="config")
        if entry.get("enabled") is False:
            self._set_disabled(st, "enabled: false in the config", persist=False, transition="config", by="config")
        pool.states.append(st)
        return st

    def _update(self, pool: _Pool, st: AccountState, entry: Mapping[str, Any]) -> None:
        """Copy an entry's fields into the live account (in place: leases hold it)."""
        a = st.account
        a.weight = st.weight = float(entry.get("weight", 1.0))
        _rescore(st, pool.policy)
        a.extra = {k: v for k, v in entry.items() if k not in _NOT_EXTRA}
        a.extra["credential"] = st.credential
        if st.credential == "key":
            key = entry.get("api_key")
            env = entry.get("api_key_env")
            if not key and env:
                key = os.environ.get(env)
                if not key and entry.get("aws_access_key_id") is None:
                    self._set_disabled(st, f"environment variable {env} is not set", persist=False,
                                       transition="config", by="config")
            a.api_key = key
        else:
            st.oauth = _oauth_for(pool.policy.oauth, entry)
            self._adopt_tokens(st, entry)
        verdict = terms.screen(self._anthropic.get(pool.name), entry)
        if verdict is not None:
            self._warn(f"terms:{st.id}", "%s", verdict[1])
            if verdict[0] and st.disabled_reason != terms.REASON:
                self._set_disabled(st, terms.REASON, persist=False, by="terms")
        own = entry.get("proxy")
        pol = pool.policy
        st.proxy = own if own else (proxy_for_id(st.id, pol.proxies) if pol.proxies and pol.proxy_mode == "hash"
                                    else None)
        _note_secrets(st)

    def _adopt_tokens(self, st: AccountState, entry: Mapping[str, Any]) -> bool:
        """Take the file's tokens when they differ from what we last saw there."""
        access = entry.get("access_token")
        if access == st.file_token and entry.get("refresh_token") == st.refresh_token:
            return False
        st.file_token = access
        st.account.api_key = access or None
        st.refresh_token = entry.get("refresh_token")
        exp = entry.get("expires_at")
        st.expires_at = float(exp) if isinstance(exp, (int, float)) else None
        st.needs_refresh = False
        _note_secrets(st)
        return True

    def _warn(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # -- the accounts file ----------------------------------------------------------
    def reload(self) -> None:
        """Re-read the accounts file now (SIGHUP)."""
        if self._file is None:
            return
        self._file_key = self._file.stat_key()
        try:
            self._apply_file(self._file.read())
        except AccountsFileError as e:
            log.error("accounts file not reloaded: %s", e)

    def install_sighup(self) -> None:
        """SIGHUP re-reads the accounts file (in-flight requests are not affected)."""
        from tornado.ioloop import IOLoop

        loop = IOLoop.current()
        signal.signal(signal.SIGHUP, lambda signum, frame: loop.add_callback_from_signal(self.reload))

    def _poll(self, now: float) -> None:
        self._next_poll = now + self._poll_interval
        assert self._file is not None
        key = self._file.stat_key()
        if key != self._file_key:
            self.reload()

    def _apply_file(self, doc: dict[str, Any]) -> None:
        seen: set[str] = set()
        changed: set[str] = set()
        for e in doc["accounts"]:
            pool = self._pools.get(e["provider"])
            aid = e["id"]
            if pool is None:
                self._warn(f"noprov:{aid}", "accounts file: account '%s' names unknown provider '%s'",
                           aid, e["provider"])
                continue
            if pool.shared_from is not None:
                self._warn(f"shared:{aid}", "accounts file: account '%s' names provider '%s', which takes "
                           "its accounts from '%s'; the account is ignored", aid, pool.name, pool.shared_from)
                continue
            seen.add(aid)
            st = pool.by_id.get(aid)
            if has_credential(e):
                if st is None:
                    st = self._add(pool, dict(e), "file")
                    if st is None:
                        continue
                    changed.add(pool.name)
                elif st.source == "config":
                    self._warn(f"shadow:{aid}", "accounts file: '%s' is defined in the config file; "
                               "its credentials in the accounts file are ignored", aid)
                else:
                    self._update(pool, st, e)
            elif st is None:
                self._warn(f"orphan:{aid}", "accounts file: '%s' has no credential and no account "
                           "in the config file", aid)
                continue
            self._apply_file_state(st, e)
        for pool in self._owned():
            gone = [st for st in pool.states if st.source == "file" and st.id not in seen]
            for st in gone:
                pool.states.remove(st)
                self.store.forget(f"{pool.name}/{st.id}")
                changed.add(pool.name)
        for pool in self._pools.values():
            if pool.name in changed or pool.shared_from in changed:
                pool.rebuild()

    def _apply_file_state(self, st: AccountState, e: Mapping[str, Any]) -> None:
        """A disable/enable written into the file (by a script or another process) applies here.

        Only a *change* relative to what we last saw in the file acts, so our own
        pending writes and an unchanged file never undo a newer state in memory.
        """
        if st.file_pending:
            return  # our own write is on its way; this is an older file
        disabled = bool(e.get("disabled"))
        prev = st.file_disabled
        st.file_disabled = disabled
        if prev == disabled:
            return
        if disabled and st.status is not DISABLED:
            by = e.get("disabled_by")
            self._set_disabled(st, str(e.get("disabled_reason") or "disabled in the accounts file"),
                               persist=False, at=e.get("disabled_at"), by=by if by in DISABLED_BY else "operator")
        elif not disabled and prev and st.status is DISABLED:
            self._set_enabled(st, persist=False)

    def _persist_disabled(self, st: AccountState) -> None:
        """Write a disable/enable to the file, off the event loop (one writer thread keeps order)."""
        f = self._file
        if f is None:
            return
        disabled = st.status is DISABLED
        args = (st.id, st.provider, disabled, st.disabled_reason, st.disabled_at, st.disabled_by)

        def write() -> None:
            try:
                f.set_disabled(*args)
            except Exception:
                log.exception("could not save the state of account '%s'", st.id)

        # what we write is what we hold: a later re-read must not look like an outside change
        st.file_disabled = disabled
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            write()
            return
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="accounts-file")
        st.file_pending += 1

        def landed(_: Any) -> None:
            st.file_pending -= 1
        loop.run_in_executor(self._writer, write).add_done_callback(landed)

    # -- selection --------------------------------------------------------------------
    def policy(self, provider: str) -> Policy:
        pool = self._pools.get(provider)
        return pool.policy if pool is not None else _DEFAULT_POLICY

    def acquire(self, provider: str, *, headers: Mapping[str, str] | None = None,
                exclude: Iterable[str] = (), cache_key: str | None = None) -> Lease:
        pool = self._pools.get(provider)
        if pool is None:
            raise ProxyError(ErrorKind.NO_ACCOUNT, f"provider '{provider}' has no accounts")
        now = self.clock()
        if self._file is not None and now >= self._next_poll:
            self._poll(now)
        if not isinstance(exclude, (tuple, list, set, frozenset)):
            exclude = frozenset(exclude)
        pol = pool.policy
        h = headers if headers is not None else _EMPTY
        pin = h.get(pol.pin_header)
        if pin:
            st = pool.by_id.get(pin)
            if st is None:
                raise ProxyError(ErrorKind.INVALID_REQUEST,
                                 f"{pol.pin_header}: provider '{provider}' has no account '{pin}'",
                                 param=pol.pin_header)
            if st.id not in exclude and self._available(st, now):
                return self._lease(pool, st)
            if h.get(pol.strict_pin_header, "").lower() in _TRUE:
                if st.id not in exclude and _health_out(st, now, pol) is not None:
                    return self._rescue_lease(pool, st)
                raise self._none_left(pool, now, exclude, only=st)
        session = h.get(pol.session_header) if pol.session_header is not None else None
        if session:
            session = _session_id("h", session)
        elif cache_key and pol.sticky_prompt_cache_key:
            session = _session_id("k", cache_key)
        if session:
            aid = self.store.session_get(provider, session, now)
            st2 = pool.by_id.get(aid) if aid is not None else None
            if st2 is not None and st2.id not in exclude and self._available(st2, now):
                self.store.session_set(provider, session, st2.id, now + pol.session_ttl)
                return self._lease(pool, st2)
        weighted = pol.strategy == "weighted"
        for tier in pool.tiers:
            if tier is None:
                lease = self._client_lease(pool, h, exclude)
                if lease is not None:
                    return lease
                continue
            st3 = self._pick_weighted(tier, now, exclude) if weighted else self._pick_rr(pool, tier, now, exclude)
            if st3 is not None:
                if session:
                    self.store.session_set(provider, session, st3.id, now + pol.session_ttl)
                return self._lease(pool, st3)
        if pool.states and all(st.disabled_reason == terms.REASON for st in pool.states):
            raise terms.refused_accounts(provider)
        st4 = self._soonest(pool, now, exclude)
        if st4 is not None:
            if session:
                self.store.session_set(provider, session, st4.id, now + pol.session_ttl)
            return self._rescue_lease(pool, st4)
        if self._wants_client_credential(pool, h, exclude):
            raise ProxyError(ErrorKind.AUTH_MISSING,
                             f"provider '{provider}' has no account that can serve: send your own API key in "
                             f"the {pol.client_auth_header} header", param=pol.client_auth_header)
        raise self._none_left(pool, now, exclude)

    def _wants_client_credential(self, pool: _Pool, h: Mapping[str, str], exclude: Any) -> bool:
        """The client's own key is all that could serve, and it sent none (or only one of
        our access keys): its fault and its fix, so a 401 saying where the key goes, not a
        503 that reads like our outage.  Accounts that come back by themselves (cooling,
        probing, re-probed after 401s) still answer 503/429 with Retry-After."""
        if None not in pool.tiers or "client" in exclude:
            return False
        if any(st.status is not DISABLED or st.disabled_by == "auth" for st in pool.states):
            return False
        raw = h.get(pool.policy.client_auth_header)
        return not raw or client_credential(raw, self._access_keys) is None

    def _available(self, st: AccountState, now: float) -> bool:
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

    def _pick_weighted(self, tier: list[AccountState], now: float, exclude: Any) -> AccountState | None:
        # smooth weighted round robin over score / (1 + in-flight)
        best: AccountState | None = None
        total = 0.0
        for st in tier:
            if exclude and st.id in exclude:
                continue
            if st.status is not ACTIVE and not self._available(st, now):
                continue
            s = st.score / (1 + st.inflight)
            st.cw += s
            total += s
            if best is None or st.cw > best.cw:
                best = st
        if best is not None:
            best.cw -= total
        return best

    def _pick_rr(self, pool: _Pool, tier: list[AccountState], now: float, exclude: Any) -> AccountState | None:
        n = len(tier)
        start = pool.rr
        for k in range(n):
            st = tier[(start + k) % n]
            if exclude and st.id in exclude:
                continue
            if st.status is not ACTIVE and not self._available(st, now):
                continue
            pool.rr = (start + k + 1) % n
            return st
        return None

    def _proxy(self, pool: _Pool, st: AccountState | None) -> str | None:
        if st is not None and st.proxy is not None:
            return st.proxy
        proxies = pool.policy.proxies
        if proxies:
            if pool.policy.proxy_mode == "hash":
                return proxy_for_id(st.id if st is not None else "client", proxies)
            pool.proxy_rr += 1
            return proxies[pool.proxy_rr % len(proxies)]
        return pool.default_proxy

    def _lease(self, pool: _Pool, st: AccountState) -> Lease:
        st.inflight += 1
        probe = st.status is PROBING or st.status is DISABLED  # (disabled: a due re-probe)
        if probe:
            st.probe_inflight = True
            if st.status is DISABLED:
                # claimed: should this one fail, the next waits twice as long, and every
                # replica hears of the new time instead of probing too
                now = self.clock()
                st.reprobe_at = now + reprobe_wait(pool.policy, st.reprobe_level + 1)
                st.reprobe_level += 1
                log.info("account '%s' (disabled by auth failures) is re-probed", st.id)
            self.store.publish(f"{pool.name}/{st.id}", st)
        return Lease(self, pool.name, st.account, st, probe, self._proxy(pool, st))

    def _soonest(self, pool: _Pool, now: float, exclude: Any) -> AccountState | None:
        """Nothing is usable: of the accounts out only by our own health judgement, the one
        that comes back first (in credential priority order).  A provider whose every
        account errored for a while is better served by trying one than by a 503: the
        upstream, not our memory of it, says whether it is back.  (Only when nothing
        else is left, so it costs nothing on the hot path.)"""
        pol = pool.policy
        for tier in pool.tiers:
            if tier is None:
                continue
            best: AccountState | None = None
            best_t = 0.0
            for st in tier:
                if st.id in exclude:
                    continue
                t = _health_out(st, now, pol)
                if t is not None and (best is None or t < best_t):
                    best, best_t = st, t
            if best is not None:
                return best
        return None

    def _rescue_lease(self, pool: _Pool, st: AccountState) -> Lease:
        st.inflight += 1
        lease = Lease(self, pool.name, st.account, st, False, self._proxy(pool, st))
        lease.rescue = True
        # (debug: in an outage this is every request; the account's state says it already)
        log.debug("account '%s' serves although it is %s: every account of '%s' is out by health judgement",
                  st.id, st.status.value, pool.name)
        return lease

    def _client_lease(self, pool: _Pool, h: Mapping[str, str], exclude: Any) -> Lease | None:
        if "client" in exclude:
            return None
        raw = h.get(pool.policy.client_auth_header)
        if not raw:
            return None
        cred = client_credential(raw, self._access_keys)
        if cred is None:
            return None
        if pool.name in self._anthropic and terms.guarded(self._anthropic[pool.name]) and terms.is_consumer_token(cred):
            raise terms.refused_client()
        account = Account(id="client", api_key=cred, extra={"credential": "client"})
        return Lease(self, pool.name, account, None, False, self._proxy(pool, None))

    def _none_left(self, pool: _Pool, now: float, exclude: Any, only: AccountState | None = None) -> ProxyError:
        if only is None:
            limited = self._pool_rate_limited(pool, now)
            if limited is not None:
                return limited
        states = [only] if only is not None else pool.states
        cooling = [st.cooling_until - now for st in states if st.status is COOLING and st.id not in exclude]
        probing = sum(1 for st in states if st.status is PROBING and st.id not in exclude)
        disabled = sum(1 for st in states if st.status is DISABLED)
        tried = sum(1 for st in states if st.id in exclude)
        parts = []
        if cooling:
            parts.append(f"{len(cooling)} cooling down, next ready in {max(0.0, min(cooling)):.0f} s")
        if probing:
            parts.append(f"{probing} being probed")
        if disabled:
            parts.append(f"{disabled} disabled")
        if tried:
            parts.append(f"{tried} already tried")
        what = f"account '{only.id}'" if only is not None else f"provider '{pool.name}' has no usable account"
        msg = (f"pinned {what} is not usable" if only is not None else what) + (f" ({'; '.join(parts)})" if parts else "")
        retry_after = max(1.0, min(cooling)) if cooling else (1.0 if probing else None)
        return ProxyError(ErrorKind.NO_ACCOUNT, msg, retry_after=retry_after)

    def _pool_rate_limited(self, pool: _Pool, now: float) -> ProxyError | None:
        """Every account that may come back is cooling after the upstream's own rate limit:
        the client is rate limited too (429 in its own format, not a 503 that reads like
        an outage), with Retry-After at the earliest reset across the pool."""
        left = [st.cooling_until - now for st in pool.states if st.status is not DISABLED]
        if not left or any(st.status is not COOLING or st.cooling_kind != "rate"
                           for st in pool.states if st.status is not DISABLED):
            return None
        wait = max(1, math.ceil(min(left)))
        back = datetime.datetime.fromtimestamp(self.wall_clock() + wait, datetime.timezone.utc)
        n = len(left)
        return ProxyError(ErrorKind.RATE_LIMITED,
                          f"provider '{pool.name}' is rate limited upstream: "
                          f"{'its account is' if n == 1 else f'all {n} of its accounts are'} cooling down after "
                          f"rate limits; the pool is back in {wait} s (at {back:%Y-%m-%dT%H:%M:%SZ})",
                          retry_after=float(wait))

    # -- outcomes --------------------------------------------------------------------
    def _health(self, st: AccountState, pol: Policy, now: float, good: float) -> None:
        dt = now - st.t_last
        st.t_last = now
        if st.headroom is not None and now >= st.headroom_until:
            st.headroom = None  # the tightest window has refilled since
            st.quota_used = {}
        d = 0.5 ** (dt / pol.half_life) if dt > 0 else 1.0
        st.ok = st.ok * d + good
        st.n = st.n * d + 1.0
        _rescore(st, pol)

    def _on_success(self, lease: Lease, latency: float, headers: Mapping[str, str] | None) -> None:
        st = lease.state
        assert st is not None
        pool = self._pools.get(st.provider)
        pol = pool.policy if pool is not None else _DEFAULT_POLICY
        now = self.clock()
        lat = st.latency
        st.latency = latency if lat is None else lat + 0.2 * (latency - lat)
        st.latency_sum += latency
        st.latency_count += 1
        self._health(st, pol, now, 1.0)
        st.outcomes["success"] = st.outcomes.get("success", 0) + 1
        st.consecutive_errors = 0
        if lease.probe and st.status is PROBING:
            self._probe_passed(st)
        elif (lease.rescue or lease.probe) and st.status is not ACTIVE:
            self._recovered(st)  # a rescue, or the re-probe of an account the auth counter disabled
        elif st.status is ACTIVE:
            st.backoff_level = 0
        if headers:
            st.last_headers = dict(headers) if not isinstance(headers, dict) else headers
            # The answer says a limit is spent: cool down now rather than earn a 429.
            for rem_h, _ in RESET_PAIRS:
                r = headers.get(rem_h)
                if r is not None and r[:1] == "0" and _exhausted(r):
                    delay = reset_from_headers(headers, self.wall_clock(), only_exhausted=True)
                    if delay is not None and delay > 0 and st.status is ACTIVE:
                        self._cool(st, pol, now, delay, "quota spent", "rate")
                    break
            q = ratelimit.read(headers, self.wall_clock)  # a fixed set of look-ups
            if q is not None:
                st.quota_used = q.used
                st.headroom = q.headroom
                vf = q.valid_for
                st.headroom_until = now + vf if vf is not None else math.inf
                _rescore(st, pol)
                if q.spent is not None and q.spent > 0 and st.status is ACTIVE:
                    self._cool(st, pol, now, q.spent, "quota spent", "rate")

    def _recovered(self, st: AccountState) -> None:
        """An account out by our own judgement answered: it is back, on every replica."""
        if st.status is DISABLED:
            if st.disabled_by == "auth":
                self._set_enabled(st, persist=True, transition="recovered")
            return
        if st.cooling_kind == "rate":
            return  # a 429 came in meanwhile (another request): the upstream's word stands
        st.status = ACTIVE
        st.probe_inflight = False
        st.backoff_level = 0
        st.consecutive_errors = 0
        st.cooldown_reason = None
        st.cooling_kind = None
        self.store.publish(f"{st.provider}/{st.id}", st, "recovered")
        log.info("account '%s' answered although it was out: active", st.id)

    def _probe_passed(self, st: AccountState) -> None:
        was_disabled = st.disabled_reason is not None
        st.status = ACTIVE
        st.probe_inflight = False
        st.backoff_level = 0
        st.cooldown_reason = None
        if was_disabled:  # an admin probe of a disabled account worked: enabled for good
            self._set_enabled(st, persist=True)
        self.store.publish(f"{st.provider}/{st.id}", st)
        log.info("account '%s' passed its probe: active", st.id)

    def _on_failure(self, lease: Lease, err: ProxyError) -> None:
        st = lease.state
        assert st is not None
        pool = self._pools.get(st.provider)
        pol = pool.policy if pool is not None else _DEFAULT_POLICY
        now = self.clock()
        wall = self.wall_clock()
        action = err.info.action
        outcome = _OUTCOME[action]
        st.outcomes[outcome] = st.outcomes.get(outcome, 0) + 1
        st.last_error = _clip(f"{err.kind.value}: {err.message}")
        st.last_error_at = wall
        st.last_status = err.upstream_status
        probe = lease.probe and st.status is PROBING
        reprobe = lease.probe and st.status is DISABLED
        if reprobe:
            st.probe_inflight = False
        if action is Action.NONE:
            # the request's fault, not the account's: the account answered, so it works
            self._health(st, pol, now, 1.0)
            if probe:
                self._probe_passed(st)
            elif (lease.rescue or reprobe) and st.status is not ACTIVE:
                self._recovered(st)
            return
        if reprobe:
            if action is not Action.COOLDOWN:
                log.info("account '%s' failed its re-probe (%s); the next in %.0f s", st.id, err.kind.value,
                         max(0.0, st.reprobe_at - now))
                return
            self._recovered(st)  # rate limited, so past authentication: the key works again
        if probe and st.disabled_reason is not None:
            # an operator's probe of a disabled account failed: it stays disabled
            self._set_disabled(st, st.disabled_reason, persist=False, at=st.disabled_at, by=st.disabled_by)
            return
        if action is Action.COOLDOWN:
            delay, why = cooldown_for(err, wall, pol, st.backoff_level)
            # a 429 is the upstream's word; an overload (529, 503) is a health judgement
            kind = "rate" if err.kind is ErrorKind.UPSTREAM_RATE_LIMITED else "health"
            self._cool(st, pol, now, delay, f"{why}: {err.kind.value}", kind)
            return
        self._health(st, pol, now, 0.0)
        if action is Action.RETRY:
            st.consecutive_errors += 1
            if probe or st.consecutive_errors >= pol.errors_before_cooldown:
                self._cool(st, pol, now, backoff(pol, st.backoff_level), f"backoff: {err.kind.value}")
            return
        if st.status is DISABLED:
            return  # already out (a dead refresh token, an operator)
        if action is Action.DISABLE:
            self._set_disabled(st, _clip(f"{err.kind.value}: {err.message}", 200), persist=True, at=wall,
                               by="payment")
            return
        # Action.AUTH
        msg = err.message.lower()
        if any(w in msg for w in _REVOKED_WORDS):
            self._set_disabled(st, _clip(f"revoked: {err.message}", 200), persist=True, at=wall, by="revoked")
            return
        fails = st.auth_failures
        fails.append(now)
        cutoff = now - pol.disable_window
        while fails and fails[0] < cutoff:
            fails.pop(0)
        if len(fails) >= pol.disable_after:
            self._set_disabled(st, _clip(f"{len(fails)} auth failures within {pol.disable_window:.0f} s, "
                                         f"last: {err.message}", 200), persist=True, at=wall, by="auth")
            return
        if st.credential == "oauth" and err.upstream_status == 401:
            st.needs_refresh = True  # the next request refreshes first
        if probe:
            self._cool(st, pol, now, backoff(pol, st.backoff_level), f"backoff: {err.kind.value}")

    def _cool(self, st: AccountState, pol: Policy, now: float, delay: float, reason: str,
              kind: str = "health") -> None:
        if st.status is DISABLED:
            return
        until = now + min(max(delay, 0.0), pol.cooldown_max)
        if st.status is COOLING and st.cooling_until > until:
            return  # a longer cooldown is already running
        st.status = COOLING
        st.cooling_until = until
        st.probe_inflight = False
        st.cooldown_reason = reason
        st.cooling_kind = kind
        st.backoff_level += 1
        self.store.publish(f"{st.provider}/{st.id}", st)
        log.info("account '%s' cools down for %.1f s (%s)", st.id, until - now, reason)

    def _set_disabled(self, st: AccountState, reason: str, *, persist: bool, at: Any = None,
                      transition: str = "", by: str | None = "operator") -> None:
        if by == "auth" and not (st.status is DISABLED and st.disabled_by == "auth"):
            pool = self._pools.get(st.provider)
            st.reprobe_level = 0
            st.reprobe_at = self.clock() + reprobe_wait(pool.policy if pool is not None else _DEFAULT_POLICY, 0)
        st.status = DISABLED
        st.probe_inflight = False
        st.disabled_by = by
        st.disabled_reason = redact.text(reason)  # shown by the admin API, saved in the file
        st.disabled_at = float(at) if isinstance(at, (int, float)) else self.wall_clock()
        self.store.publish(f"{st.provider}/{st.id}", st, transition)
        log.warning("account '%s' disabled: %s", st.id, reason)
        if persist:
            self._persist_disabled(st)

    def _set_enabled(self, st: AccountState, *, persist: bool, transition: str = "enable") -> None:
        st.status = ACTIVE
        st.disabled_reason = None
        st.disabled_at = None
        st.disabled_by = None
        st.cooldown_reason = None
        st.cooling_kind = None
        st.auth_failures.clear()
        st.consecutive_errors = 0
        st.backoff_level = 0
        st.reprobe_level = 0
        st.probe_inflight = False
        self.store.publish(f"{st.provider}/{st.id}", st, transition)
        log.info("account '%s' enabled", st.id)
        if persist:
            self._persist_disabled(st)

    # -- OAuth --------------------------------------------------------------------------
    async def _ensure_token(self, lease: Lease) -> None:
        st = lease.state
        assert st is not None and st.oauth is not None
        if not st.needs_refresh and st.account.api_key and st.expires_at is not None \
                and st.expires_at - st.oauth.refresh_ahead > self.wall_clock():
            return
        pending = st.refreshing
        if pending is not None:  # one refresh at a time per account: wait for it
            await asyncio.shield(pending)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        st.refreshing = fut
        try:
            await self._refresh(st, lease)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        else:
            fut.set_result(None)
        finally:
            st.refreshing = None

    async def _refresh(self, st: AccountState, lease: Lease) -> None:
        assert st.oauth is not None
        f = self._file
        if f is None:
            raise ProxyError(ErrorKind.INTERNAL, f"account '{st.id}': OAuth accounts need an accounts_file")
        key = f"{st.provider}/{st.id}"
        shared_lock = getattr(self.store, "refresh_lock", None)
        try:
            # Across replicas (Redis: a lock with a TTL and a fencing token), then across
            # this machine's processes (the accounts file's flock).
            async with (shared_lock(key) if shared_lock is not None else contextlib.nullcontext()) as fence, \
                    f.refresh_lock(st.id):
                doc = f.load()  # recovers a write that a killed process left half-done
                entry = find(doc, st.id)
                if entry is None or not entry.get("refresh_token"):
                    raise ProxyError(ErrorKind.UPSTREAM_AUTH,
                                     f"account '{st.id}' is no longer in the accounts file")
                if fence is not None:
                    # another replica may have rotated the tokens: then its refresh token is
                    # the only valid one, and it is in the store, not in our file
                    theirs = await self.store.load_tokens(key)  # type: ignore[attr-defined]
                    if theirs and theirs.get("refresh_token") and \
                            theirs.get("refresh_token") != entry.get("refresh_token"):
                        f.save_tokens(st.id, theirs.get("access_token"), theirs["refresh_token"],
                                      theirs.get("expires_at"))
                        entry = {**entry, **theirs}
                held = st.unsaved_tokens
                if held is not None:
                    # an earlier rotation could not be saved: its refresh token is the only
                    # valid one, so it is saved before anything is refreshed with the old one
                    f.save_tokens(st.id, held["access_token"], held["refresh_token"], held["expires_at"])
                    st.unsaved_tokens = None
                    entry = {**entry, **held}
                    log.warning("account '%s': the rotated refresh token is saved now", st.id)
                wall = self.wall_clock()
                # Another process may have refreshed while we waited for the lock: its
                # token is in the file, and its refresh token is the only valid one now.
                if self._adopt_tokens(st, entry) and st.expires_at is not None \
                        and st.expires_at - st.oauth.refresh_ahead > wall:
                    return
                try:
                    tokens = await oauth.refresh(st.oauth, str(entry["refresh_token"]), wall, lease.proxy)
                except oauth.RefreshError as e:
                    st.refresh_failed += 1
                    if e.dead:
                        # invalid_grant for the refresh token we hold: it was used already (a
                        # rotation whose answer was lost) or revoked; only a new login helps
                        why = (f"{SPENT}: {e.message}" if e.code == "invalid_grant"
                               else f"refresh token rejected: {e.message}")
                        self._set_disabled(st, _clip(why, 200), persist=True, by="refresh")
                    # keep serving on the current token while it is still valid
                    if not e.dead and not st.needs_refresh and st.account.api_key \
                            and st.expires_at is not None and st.expires_at > self.wall_clock() + 5:
                        log.warning("account '%s': refresh failed, current token still valid: %s",
                                    st.id, e.message)
                        return
                    kind = ErrorKind.UPSTREAM_AUTH if e.dead else ErrorKind.UPSTREAM_UNREACHABLE
                    raise ProxyError(kind, f"account '{st.id}': token refresh failed: {e.message}") from None
                saved = {"access_token": tokens.access_token, "refresh_token": tokens.refresh_token,
                         "expires_at": tokens.expires_at}
                if fence is not None and not await self.store.save_tokens(key, fence, saved):  # type: ignore[attr-defined]
                    # we stalled past the lock's TTL and a newer holder saved: its tokens win
                    theirs = await self.store.load_tokens(key)  # type: ignore[attr-defined]
                    if theirs:
                        self._adopt_tokens(st, theirs)
                    return
                # Saved at once, under the lock, and fsynced before the access token is used:
                # a rotated refresh token exists nowhere else.
                try:
                    f.save_tokens(st.id, tokens.access_token, tokens.refresh_token, tokens.expires_at)
                except (AccountsFileError, OSError) as e:
                    st.unsaved_tokens = saved  # not lost with this request: saved on the next
                    redact.note(f"account:{key}:unsaved", (tokens.access_token, tokens.refresh_token))
                    log.error("account '%s': could not save the rotated refresh token (%s); it is kept in "
                              "memory and saved before the next refresh", st.id, redact.text(str(e)))
                    raise ProxyError(ErrorKind.UPSTREAM_ERROR,
                                     f"account '{st.id}': could not save the rotated tokens") from None
                self._adopt_tokens(st, {"access_token": tokens.access_token,
                                        "refresh_token": tokens.refresh_token,
                                        "expires_at": tokens.expires_at})
                st.refresh_ok += 1
                log.info("account '%s': token refreshed", st.id)
        except (AccountsFileError, LockTimeout, OSError) as e:
            # not the request's fault: another account may serve it
            raise ProxyError(ErrorKind.UPSTREAM_ERROR, f"account '{st.id}': {redact.text(str(e))}") from None

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
            "quota_remaining": _quota(h, QUOTA_HEADERS),
            "quota_used": {w: round(u, 4) for w, u in st.quota_used.items()} if fresh else {},
            "headroom": round(st.headroom, 4) if fresh and st.headroom is not None else None,
            "quota_limit": _quota(h, QUOTA_LIMIT_HEADERS),
            "proxy": _mask_proxy(st.proxy),
        }


def _quota(headers: Mapping[str, str] | None, table: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, float]:
    """The numbers the last 2xx answer's rate-limit headers gave, by label (read when reporting only)."""
    out: dict[str, float] = {}
    if headers:
        for label, names in table:
            for name in names:
                v = headers.get(name)
                if v is not None:
                    try:
                        out[label] = float(v)
                    except ValueError:
                        pass
                    break
    return out


def _mask_proxy(proxy: str | None) -> str | None:
    """Proxy URLs may carry a password: show the host only."""
    if not proxy or "@" not in proxy:
        return proxy
    scheme, _, rest = proxy.rpartition("://")
    return (scheme + "://" if scheme else "") + "****@" + rest.split("@", 1)[1]


def check_config(providers_conf: list[dict[str, Any]], accounts_doc: dict[str, Any] | None = None) -> list[str]:
    """Problems a start would hit, for ``bin/tornado-proxy-check`` and startup validation."""
    problems: list[str] = []
    ids: dict[str, str] = {}
    names = {p.get("name") for p in providers_conf}
    for p in providers_conf:
        name = p.get("name")
        try:
            parse_policy(p.get("scheduler"))
        except (ValueError, KeyError, zoneinfo.ZoneInfoNotFoundError) as e:
            problems.append(f"providers[{name}].scheduler: {e}")
        src = p.get("accounts_from")
        if src:
            owner = next((q for q in providers_conf if q.get("name") == src), None)
            if owner is None or src == name or owner.get("accounts_from"):
                problems.append(f"providers[{name}].accounts_from: {src!r} is not a provider with accounts of its own")
            if p.get("accounts"):
                problems.append(f"providers[{name}].accounts: a provider that takes its accounts from "
                                f"'{src}' has none of its own")
        for i, a in enumerate(p.get("accounts") or []):
            aid = str(a.get("id") or f"{name}-{i}")
            if aid in ids:
                problems.append(f"providers[{name}].accounts[{i}]: id '{aid}' is also used by provider '{ids[aid]}'")
            ids[aid] = str(name)
            if a.get("refresh_token"):
                problems.append(f"providers[{name}].accounts[{i}]: OAuth accounts belong in the accounts file")
            if a.get("api_key_env") and not os.environ.get(a["api_key_env"]):
                problems.append(f"providers[{name}].accounts[{i}]: environment variable "
                                f"{a['api_key_env']} is not set")
    for i, ent in enumerate((accounts_doc or {}).get("accounts") or []):
        aid, prov = ent.get("id"), ent.get("provider")
        if prov not in names:
            problems.append(f"accounts file: accounts[{i}] ('{aid}') names unknown provider '{prov}'")
            continue
        sharing = next(p for p in providers_conf if p.get("name") == prov).get("accounts_from")
        if sharing:
            problems.append(f"accounts file: accounts[{i}] ('{aid}') names provider '{prov}', which takes its "
                            f"accounts from '{sharing}': name '{sharing}'")
            continue
        if has_credential(ent):
            if aid in ids and ids[aid] != prov:
                problems.append(f"accounts file: accounts[{i}] id '{aid}' is also used by provider '{ids[aid]}'")
            if ent.get("refresh_token"):
                pconf = next(p for p in providers_conf if p.get("name") == prov)
                if not (pconf.get("scheduler") or {}).get("oauth"):
                    problems.append(f"accounts file: accounts[{i}] ('{aid}') holds a refresh token but provider "
                                    f"'{prov}' has no scheduler.oauth")
        elif aid not in ids:
            problems.append(f"accounts file: accounts[{i}] ('{aid}') has no credential and no config account")
    return problems
