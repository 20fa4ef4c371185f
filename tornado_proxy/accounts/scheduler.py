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

This module is the accounts' state machine: ``acquire`` and what each outcome does to
an account.  Its other parts sit beside it: ``policy.py`` (the config block and its
arithmetic), ``ratelimit.py`` (what rate-limit headers say), ``leases.py`` (``Lease``,
the pools, the pick), and the mixins ``sync.py`` (config entries and the accounts file),
``tokens.py`` (OAuth refresh) and ``views.py`` (admin and reporting); ``check.py`` checks
a config before a start.

The hot path (``acquire`` and ``success``) reads the clock once, does not log and
allocates only the Lease; everything costly (header dates, logging, file writes)
happens on failures and transitions, which are rare.
"""
from __future__ import annotations

import concurrent.futures
import datetime
import logging
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping

from providers.base import Account
from providers.ratelimits import NONE as NO_RATE_LIMITS, RateLimitHeaders

from tornado_proxy.accounts import ratelimit, terms
from tornado_proxy.accounts.file import AccountsFile, clip
from tornado_proxy.accounts.leases import (Lease, Pool, available, client_credential, health_out, pick_weighted,
                                           session_key)
from tornado_proxy.accounts.policy import (DEFAULT_POLICY, Policy, backoff, cooldown_for, parse_policy, reprobe_wait,
                                           rescore)
from tornado_proxy.accounts.ratelimit import exhausted, reset_from_headers
from tornado_proxy.accounts.sync import AccountsSync, credential_kind
from tornado_proxy.accounts.tokens import TokenRefresh
from tornado_proxy.accounts.views import AdminViews
from tornado_proxy.errors import Action, ErrorKind, ProxyError
from tornado_proxy.observability import redact
from tornado_proxy.state.accounts_state import AccountState, MemoryStateStore, StateStore, Status

log = logging.getLogger("tornado_proxy.accounts.scheduler")

_EMPTY: Mapping[str, str] = {}
_TRUE = frozenset({"1", "true", "yes", "on"})
ACTIVE, COOLING, PROBING, DISABLED = Status.ACTIVE, Status.COOLING, Status.PROBING, Status.DISABLED

# The outcome label (leases.OUTCOMES) of each scheduler action.
_OUTCOME = {Action.NONE: "client_error", Action.COOLDOWN: "rate_limited", Action.RETRY: "error",
            Action.AUTH: "auth_failed", Action.DISABLE: "rejected"}
# Words in a 401/403 message that mean the credential is gone for good, not mistyped
# for a moment: such an account is disabled at once instead of after N failures.
_REVOKED_WORDS = ("revoked", "deactivated", "suspended", "disabled", "invalid_grant")


def _limits_of(conf: Mapping[str, Any], given: Mapping[str, RateLimitHeaders] | None) -> RateLimitHeaders:
    """The rate-limit headers a provider entry's upstream sends: as its Provider object
    declares them (``given``, by provider name, from the gateway), else as its type's
    class does (a scheduler built from config entries alone, as the tests build one)."""
    if given is not None and conf["name"] in given:
        return given[conf["name"]]
    from providers import PROVIDER_TYPES  # (lazy: the registry loads every upstream module)

    cls = dict(PROVIDER_TYPES).get(conf.get("type") or "")
    return cls.rate_limit_headers if cls is not None else NO_RATE_LIMITS


class Scheduler(AccountsSync, TokenRefresh, AdminViews):
    def __init__(self, providers_conf: list[dict[str, Any]], clock: Callable[[], float] = time.monotonic, *,
                 wall_clock: Callable[[], float] = time.time, accounts_file: str | None = None,
                 store: StateStore | None = None, poll_interval: float = 1.0,
                 access_keys: Iterable[str | bytes] = (),
                 rate_limits: Mapping[str, RateLimitHeaders] | None = None) -> None:
        self.clock = clock
        # The gateway's own access keys are never forwarded upstream as a client credential.
        self._access_keys = frozenset(k.encode("utf-8") if isinstance(k, str) else k for k in access_keys)
        redact.note("server:access_keys", (k.decode("utf-8", "replace") for k in self._access_keys))
        self.wall_clock = wall_clock
        self.store: StateStore = store or MemoryStateStore()
        self._pools: dict[str, Pool] = {}
        self._file = AccountsFile(accounts_file) if accounts_file else None
        self._file_key: tuple[int, int, int] | None = None
        self._poll_interval = poll_interval
        self._next_poll = 0.0
        self._warned: set[str] = set()
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._anthropic = {p["name"]: p for p in providers_conf if terms.aims_at_anthropic(p)}
        for p in providers_conf:
            name = p["name"]
            pool = Pool(name, parse_policy(p.get("scheduler")), p.get("proxy"), _limits_of(p, rate_limits))
            self._pools[name] = pool
            for i, a in enumerate(p.get("accounts") or []):
                entry = dict(a)
                entry.setdefault("id", f"{name}-{i}")
                if credential_kind(entry) == "oauth":
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

    # -- selection --------------------------------------------------------------------
    def policy(self, provider: str) -> Policy:
        pool = self._pools.get(provider)
        return pool.policy if pool is not None else DEFAULT_POLICY

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
            if st.id not in exclude and available(st, now):
                return self._lease(pool, st)
            if h.get(pol.strict_pin_header, "").lower() in _TRUE:
                if st.id not in exclude and health_out(st, now, pol) is not None:
                    return self._rescue_lease(pool, st)
                raise self._none_left(pool, now, exclude, only=st)
        session = h.get(pol.session_header) if pol.session_header is not None else None
        if session:
            session = session_key("h", session)
        elif cache_key and pol.sticky_prompt_cache_key:
            session = session_key("k", cache_key)
        if session:
            aid = self.store.session_get(provider, session, now)
            st2 = pool.by_id.get(aid) if aid is not None else None
            if st2 is not None and st2.id not in exclude and available(st2, now):
                self.store.session_set(provider, session, st2.id, now + pol.session_ttl)
                return self._lease(pool, st2)
        weighted = pol.strategy == "weighted"
        for tier in pool.tiers:
            if tier is None:
                lease = self._client_lease(pool, h, exclude)
                if lease is not None:
                    return lease
                continue
            st3 = pick_weighted(tier, now, exclude) if weighted else pool.pick_rr(tier, now, exclude)
            if st3 is not None:
                if session:
                    self.store.session_set(provider, session, st3.id, now + pol.session_ttl)
                return self._lease(pool, st3)
        if pool.states and all(st.disabled_reason == terms.REASON for st in pool.states):
            raise terms.refused_accounts(provider)
        st4 = pool.soonest(now, exclude)
        if st4 is not None:
            if session:
                self.store.session_set(provider, session, st4.id, now + pol.session_ttl)
            return self._rescue_lease(pool, st4)
        if self._wants_client_credential(pool, h, exclude):
            raise ProxyError(ErrorKind.AUTH_MISSING,
                             f"provider '{provider}' has no account that can serve: send your own API key in "
                             f"the {pol.client_auth_header} header", param=pol.client_auth_header)
        raise self._none_left(pool, now, exclude)

    def _wants_client_credential(self, pool: Pool, h: Mapping[str, str], exclude: Any) -> bool:
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

    def _lease(self, pool: Pool, st: AccountState) -> Lease:
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
        return Lease(self, pool.name, st.account, st, probe, pool.proxy_for(st))

    def _rescue_lease(self, pool: Pool, st: AccountState) -> Lease:
        st.inflight += 1
        lease = Lease(self, pool.name, st.account, st, False, pool.proxy_for(st))
        lease.rescue = True
        # (debug: in an outage this is every request; the account's state says it already)
        log.debug("account '%s' serves although it is %s: every account of '%s' is out by health judgement",
                  st.id, st.status.value, pool.name)
        return lease

    def _client_lease(self, pool: Pool, h: Mapping[str, str], exclude: Any) -> Lease | None:
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
        return Lease(self, pool.name, account, None, False, pool.proxy_for(None))

    def _none_left(self, pool: Pool, now: float, exclude: Any, only: AccountState | None = None) -> ProxyError:
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

    def _pool_rate_limited(self, pool: Pool, now: float) -> ProxyError | None:
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
        rescore(st, pol)

    def _on_success(self, lease: Lease, latency: float, headers: Mapping[str, str] | None) -> None:
        st = lease.state
        assert st is not None
        pool = self._pools.get(st.provider)
        pol = pool.policy if pool is not None else DEFAULT_POLICY
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
            # what the upstream that answered sends (a shared account's owner may be another)
            served = self._pools.get(lease.provider)
            limits = served.limits if served is not None else NO_RATE_LIMITS
            # The answer says a limit is spent: cool down now rather than earn a 429.
            for rem_h, _ in limits.reset_pairs:
                r = headers.get(rem_h)
                if r is not None and r[:1] == "0" and exhausted(r):
                    delay = reset_from_headers(headers, self.wall_clock(), limits, only_exhausted=True)
                    if delay is not None and delay > 0 and st.status is ACTIVE:
                        self._cool(st, pol, now, delay, "quota spent", "rate")
                    break
            q = ratelimit.read(headers, self.wall_clock, limits)  # a fixed set of look-ups
            if q is not None:
                st.quota_used = q.used
                st.headroom = q.headroom
                vf = q.valid_for
                st.headroom_until = now + vf if vf is not None else math.inf
                rescore(st, pol)
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
        pol = pool.policy if pool is not None else DEFAULT_POLICY
        now = self.clock()
        wall = self.wall_clock()
        action = err.info.action
        outcome = _OUTCOME[action]
        st.outcomes[outcome] = st.outcomes.get(outcome, 0) + 1
        st.last_error = clip(f"{err.kind.value}: {err.message}")
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
            served = self._pools.get(lease.provider)
            delay, why = cooldown_for(err, wall, pol, st.backoff_level,
                                      served.limits if served is not None else NO_RATE_LIMITS)
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
            self._set_disabled(st, clip(f"{err.kind.value}: {err.message}", 200), persist=True, at=wall,
                               by="payment")
            return
        # Action.AUTH
        msg = err.message.lower()
        if any(w in msg for w in _REVOKED_WORDS):
            self._set_disabled(st, clip(f"revoked: {err.message}", 200), persist=True, at=wall, by="revoked")
            return
        fails = st.auth_failures
        fails.append(now)
        cutoff = now - pol.disable_window
        while fails and fails[0] < cutoff:
            fails.pop(0)
        if len(fails) >= pol.disable_after:
            self._set_disabled(st, clip(f"{len(fails)} auth failures within {pol.disable_window:.0f} s, "
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
            st.reprobe_at = self.clock() + reprobe_wait(pool.policy if pool is not None else DEFAULT_POLICY, 0)
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

