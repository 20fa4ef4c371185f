"""Where the scheduler keeps what it learns about accounts.

The scheduler's knowledge (health, cooldowns, disabled flags, session pins) sits
behind this one small interface so that a store shared by several replicas (Redis,
a database) can replace the in-memory default without touching the scheduler's
logic or any provider:

* ``record(key)`` hands out the live :class:`AccountState` of an account (created on
  first use).  The scheduler reads and updates it in place on the hot path, so a
  shared store keeps a local copy and synchronises it in the background.
* ``publish(key, state)`` is called after every *transition* other replicas must see
  (cooling down, probing, disabled, enabled).  Health and in-flight counts are
  per-process and never published.
* ``session_get`` / ``session_set`` keep the stickiness pins (session -> account).

Times in a record are the scheduler's monotonic clock; a shared store converts
``cooling_until`` to wall time when it publishes (monotonic clocks are not
comparable across hosts).
"""
from __future__ import annotations

import abc
import enum
from collections import OrderedDict
from typing import Any

from providers.base import Account


class Status(enum.Enum):
    ACTIVE = "active"
    COOLING = "cooling"
    PROBING = "probing"     # cooldown over: one request (the half-open probe) decides
    DISABLED = "disabled"


# Who disabled an account.  Only "auth" (the 401/403 counter) is the gateway's own
# judgement: such an account still serves when nothing else can.  The others
# (an operator, a 402, a revoked key, a spent refresh token, the config, the terms
# guard) are never used until an operator or a fixed credential brings it back.
DISABLED_BY = ("operator", "auth", "payment", "revoked", "refresh", "config", "terms")


class AccountState:
    """Everything the scheduler knows about one account.  Mutable, one per account."""

    __slots__ = (
        "provider", "id", "account", "credential", "source", "weight", "proxy",
        # selection
        "status", "cooling_until", "probe_inflight", "inflight", "cw",
        "ok", "n", "t_last", "latency", "score",
        # failure bookkeeping
        "backoff_level", "consecutive_errors", "auth_failures",
        "disabled_reason", "disabled_at", "cooldown_reason", "disabled_by", "cooling_kind",
        "reprobe_at", "reprobe_level",
        "last_error", "last_error_at", "last_status",
        # counters (read by snapshot() for the admin API and metrics)
        "outcomes", "latency_sum", "latency_count", "prompt_tokens", "completion_tokens",
        "refresh_ok", "refresh_failed", "last_headers",
        # passive quota headers (accounts/ratelimit.py): this process's last reading
        "quota_used", "headroom", "headroom_until",
        # OAuth
        "oauth", "refresh_token", "expires_at", "needs_refresh", "refreshing", "unsaved_tokens",
        # what the accounts file said last, so only *changes* in the file act on us
        "file_disabled", "file_token", "file_pending",
    )

    def __init__(self, provider: str, account: Account, *, credential: str = "key",
                 source: str = "config") -> None:
        self.provider = provider
        self.id = account.id
        self.account = account
        self.credential = credential          # "key" | "oauth"
        self.source = source                  # "config" | "file"
        self.weight = account.weight
        self.proxy: str | None = None
        self.status = Status.ACTIVE
        self.cooling_until = 0.0
        self.probe_inflight = False
        self.inflight = 0
        self.cw = 0.0                         # smooth weighted round robin's running weight
        self.ok = 0.0                         # time-decayed successes
        self.n = 0.0                          # time-decayed outcomes
        self.t_last = 0.0
        self.latency: float | None = None     # EWMA, seconds
        self.score = account.weight           # weight x health, recomputed on each outcome
        self.backoff_level = 0
        self.consecutive_errors = 0
        self.auth_failures: list[float] = []
        self.disabled_reason: str | None = None
        self.disabled_at: float | None = None  # wall clock
        self.cooldown_reason: str | None = None
        # Why an account is out decides whether it may still serve (see DISABLED_BY):
        # "rate" (the upstream said it is rate limited) or "health" (our own judgement).
        self.cooling_kind: str | None = None
        self.disabled_by: str | None = None
        # disabled by the 401/403 counter: when the next re-probe may go (monotonic), and
        # how many failed before it (the wait doubles with each)
        self.reprobe_at = 0.0
        self.reprobe_level = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None  # wall clock
        self.last_status: int | None = None
        self.outcomes: dict[str, int] = {}
        self.latency_sum = 0.0
        self.latency_count = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.refresh_ok = 0
        self.refresh_failed = 0
        self.last_headers: dict[str, str] | None = None
        self.quota_used: dict[str, float] = {}  # window -> spent fraction
        self.headroom: float | None = None      # what the tightest window has left, 0..1
        self.headroom_until = 0.0               # monotonic: when that window refills
        self.oauth: Any = None                # oauth.OAuthConfig for OAuth accounts
        self.refresh_token: str | None = None
        self.expires_at: float | None = None  # wall clock, unix seconds
        self.needs_refresh = False
        self.refreshing: Any = None           # asyncio.Future while a refresh runs
        self.unsaved_tokens: dict[str, Any] | None = None  # a rotation the file could not take yet
        self.file_disabled: bool | None = None
        self.file_token: str | None = None
        self.file_pending = 0                 # our own writes of this account not yet on disk


class StateStore(abc.ABC):
    """What the scheduler needs of a store; ``tornado_proxy.state.store`` adds the
    shared stores (``local``: SQLite, ``redis``) and the rest of what they share."""

    @abc.abstractmethod
    def record(self, key: str, make: "Any") -> AccountState:
        """The live state for ``key``; ``make()`` builds it the first time."""

    @abc.abstractmethod
    def forget(self, key: str) -> None:
        """The account is gone (removed from config or the accounts file)."""

    @abc.abstractmethod
    def publish(self, key: str, state: AccountState, transition: str = "") -> None:
        """A transition other replicas must see (cooldown, probe, disable, enable).

        ``transition`` is "enable" or "admin" when an operator (or a passed admin
        probe) asked for it: those override what the store holds; "recovered" when
        the account answered although our own judgement had it out (a health
        cooldown, the 401/403 counter): it ends only those; anything else may not
        shorten a running cooldown or lift a disable."""

    @abc.abstractmethod
    def session_get(self, provider: str, session: str, now: float) -> str | None: ...

    @abc.abstractmethod
    def session_set(self, provider: str, session: str, account_id: str, until: float) -> None: ...


class MemoryStateStore(StateStore):
    """One process, no sharing.  Session pins are an LRU bounded by ``max_sessions``."""

    def __init__(self, max_sessions: int = 100_000) -> None:
        self._records: dict[str, AccountState] = {}
        self._sessions: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._max_sessions = max_sessions

    def record(self, key: str, make: Any) -> AccountState:
        st = self._records.get(key)
        if st is None:
            st = self._records[key] = make()
        return st

    def forget(self, key: str) -> None:
        self._records.pop(key, None)

    def publish(self, key: str, state: AccountState, transition: str = "") -> None:
        return None   # nothing to share with

    def session_get(self, provider: str, session: str, now: float) -> str | None:
        hit = self._sessions.get((provider, session))
        if hit is None:
            return None
        if hit[1] <= now:
            del self._sessions[(provider, session)]
            return None
        return hit[0]

    def session_set(self, provider: str, session: str, account_id: str, until: float) -> None:
        key = (provider, session)
        self._sessions[key] = (account_id, until)
        self._sessions.move_to_end(key)
        if len(self._sessions) > self._max_sessions:
            # the least recently pinned session loses its pin first
            self._sessions.popitem(last=False)
