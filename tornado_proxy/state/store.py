"""Shared state: every worker of a machine (``local``) or every replica (``redis``) acts as one.

The scheduler and the handlers never wait on the store for a decision.  Each
process keeps what it needs in memory (the :class:`MemoryStateStore` it extends)
and a background sync task moves changes both ways:

* out: a transition (:meth:`publish`), a new sticky pin, the per-account counters
  (as deltas, read off the live :class:`AccountState` records) are queued and
  written by one writer task, right away for transitions, on the sync tick for
  counters;
* in: other processes' changes arrive by Redis pub/sub, or (SQLite) by a poll of
  ``PRAGMA data_version`` on the sync tick (default 250 ms, per process, never
  per request), and are applied to the local records.

A write is merged with what the store holds (:func:`merge`): a cooldown only
extends a running one, and only an operator's enable/probe lifts a disable.
When the store is down or slow the process keeps serving from memory, logs once,
reports ``tornado_proxy_state_store_up 0``, keeps its queue (bounded) and, when
the store is back, reloads the current state and writes what it queued.

The Responses store and the OAuth refresh lock are here too: see
:class:`SharedResponses` and :meth:`SharedStateStore.refresh_lock`.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from typing import Any, AsyncIterator, Callable, Mapping

from tornado_proxy import jsonutil
from tornado_proxy.state.accounts_state import AccountState, MemoryStateStore, Status
from tornado_proxy.state.responses import ResponseStore, StoredResponse

log = logging.getLogger("tornado_proxy.state")

# The counters kept in the store (summed over every worker and replica) for the
# account metrics: AccountState attribute -> store field.
COUNTERS = ("latency_sum", "latency_count", "prompt_tokens", "completion_tokens", "refresh_ok",
            "refresh_failed")
# How long a probe another process started blocks ours: that process may have died
# mid-probe, and its verdict would then never come.
REMOTE_PROBE_SECONDS = 30.0
MAX_PENDING_PINS = 10_000


class LockTimeout(Exception):
    """Another process held the refresh lock for longer than we may wait."""


def merge(cur: Mapping[str, Any] | None, new: Mapping[str, Any], wall_now: float) -> bool:
    """Whether ``new`` replaces ``cur`` in the store (the Redis Lua script says the same).

    An operator's action (``t`` = enable/admin) always does.  Otherwise a disable
    is lifted by nothing, and a running cooldown is only replaced by a longer one
    or a disable: a worker that did not hear of a 429 yet cannot end its cooldown.
    The one exception is ``t`` = recovered: the account answered a request, which
    ends what was only our own judgement of it (a health cooldown, the 401/403
    counter's disable), never a rate limit or anyone else's disable."""
    if cur is None or new.get("t") in ("enable", "admin"):
        return True
    if new.get("t") == "recovered" and ((cur.get("s") == "cooling" and cur.get("ck") == "health")
                                         or (cur.get("s") == "disabled" and cur.get("db") == "auth")):
        return True
    if cur.get("s") == "disabled":
        return new.get("s") == "disabled"
    if cur.get("s") == "cooling" and float(cur.get("cu") or 0) > wall_now and new.get("s") != "disabled":
        return new.get("s") == "cooling" and float(new.get("cu") or 0) > float(cur.get("cu") or 0)
    return True


class Backend(abc.ABC):
    """One store's I/O.  Every method may raise (the store is down): the caller copes."""

    name = ""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def load(self) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, str, float]]]:
        """Every account record and every live pin (provider, session, account, until wall)."""

    @abc.abstractmethod
    async def write(self, accounts: dict[str, dict[str, Any]], pins: list[tuple[str, str, str, float]],
                    counters: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
        """Write (merged); returns the records the store kept instead of ours."""

    @abc.abstractmethod
    async def counters(self) -> dict[str, dict[str, float]]: ...

    @abc.abstractmethod
    async def resp_put(self, rid: str, blob: bytes, ttl: float, max_entries: int, max_bytes: int) -> None: ...

    @abc.abstractmethod
    async def resp_get(self, rid: str) -> bytes | None: ...

    @abc.abstractmethod
    async def resp_delete(self, rid: str) -> bool: ...

    async def changes(self) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str, str, float]]] | None:
        """(Polling stores) what changed since the last call; None: nothing."""
        return None

    async def listen(self, on_account: Callable[[str, dict[str, Any]], None],
                     on_pin: Callable[[str, str, str, float], None]) -> None:
        """(Push stores) deliver other processes' changes to these callbacks, from now on."""

    @contextlib.asynccontextmanager
    async def refresh_lock(self, key: str, ttl: float, wait: float) -> AsyncIterator[int | None]:
        yield None

    async def load_tokens(self, key: str) -> dict[str, Any] | None:
        return None

    async def save_tokens(self, key: str, fence: int | None, tokens: dict[str, Any]) -> bool:
        return True

    async def close(self) -> None: ...


class SharedStateStore(MemoryStateStore):
    """A :class:`MemoryStateStore` kept in step with a :class:`Backend` in the background."""

    shared = True

    def __init__(self, backend: Backend, *, sync_interval: float = 0.25, timeout: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 max_sessions: int = 100_000) -> None:
        super().__init__(max_sessions)
        self.backend = backend
        self.sync_interval = sync_interval
        self.timeout = timeout
        self.clock = clock
        self.wall_clock = wall_clock
        self.me = f"{os.getpid()}-{os.urandom(4).hex()}"
        self.up = False
        self.errors = 0
        # Told (up, failed) at each connect and each failure; the app points it at its
        # metrics (Metrics.watch_state_store), kept per process and combined over workers.
        self.on_health: Callable[[bool, bool], None] | None = None
        # Called (no arguments) each time the store is reached again: writes kept
        # back while it was away go out then (SharedResponses).
        self.on_up: list[Callable[[], None]] = []
        self._seq = 0
        self._mine: dict[str, int] = {}                  # key -> our last published seq
        self._out_accounts: dict[str, dict[str, Any]] = {}
        self._out_pins: dict[tuple[str, str], tuple[str, float]] = {}
        self._pin_written: dict[tuple[str, str], float] = {}   # mono until we last wrote
        self._flushed: dict[str, dict[str, float]] = {}  # key -> counter values written
        self._totals: dict[str, dict[str, float]] = {}   # the store's counters, last read
        self._remote_probe: dict[str, float] = {}
        self._pending_counters: dict[str, dict[str, float]] = {}
        # counts on their way to the store: in neither the totals nor the pending ones
        # until the write returns, yet a scrape in between must still count them
        self._writing: dict[str, dict[str, float]] = {}
        self._flush_lock = asyncio.Lock()   # one write at a time; a scrape reads between them
        self._preload: dict[str, dict[str, Any]] = {}    # records loaded before the scheduler made them
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._logged_down = False

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        """Connect and load the current state (before the process takes traffic)."""
        self._wake = asyncio.Event()
        try:
            await asyncio.wait_for(self._connect(), max(self.timeout, 5.0))
        except Exception as e:
            self._down(e)
        self._task = asyncio.ensure_future(self._run())

    async def _connect(self) -> None:
        await self.backend.open()
        # subscribed before the load: a change made in between is heard, not lost
        await self.backend.listen(self._apply, self._apply_pin)
        accounts, pins = await self.backend.load()
        for key, rec in accounts.items():
            self._apply(key, rec, initial=True)
        for provider, session, account, until in pins:
            self._apply_pin(provider, session, account, until)
        self._totals = await self.backend.counters()
        if not self.up:
            if self._logged_down:
                log.warning("state store (%s) is back", self.backend.name)
            self._logged_down = False
        self.up = True
        if self.on_health is not None:
            self.on_health(True, False)
        for hook in self.on_up:
            hook()

    def _down(self, e: BaseException) -> None:
        if self._closed:
            return  # (a write after close met the closed backend: the process is stopping)
        self.errors += 1
        if self.up or not self._logged_down:
            self._logged_down = True
            log.warning("state store (%s) unavailable, serving from local state: %s", self.backend.name,
                        str(e)[:200] or type(e).__name__)
        self.up = False
        if self.on_health is not None:
            self.on_health(False, True)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self.up:
            with contextlib.suppress(Exception):
                self._queue_counters()
                await asyncio.wait_for(self._flush(), self.timeout)
        with contextlib.suppress(Exception):
            await self.backend.close()

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closed:
            try:
                await asyncio.wait_for(self._wake.wait(), self.sync_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await asyncio.wait_for(self._tick(), max(self.timeout, self.sync_interval))
            except asyncio.CancelledError:
                raise
            except RuntimeError as e:
                if "interpreter shutdown" in str(e):
                    return  # the process is exiting: its thread pools are gone; not a store outage
                self._down(e)
            except Exception as e:
                self._down(e)

    async def _tick(self) -> None:
        if not self.up:
            await self._connect()
        got = await self.backend.changes()
        if got is not None:
            accounts, pins = got
            for key, rec in accounts:
                self._apply(key, rec)
            for p in pins:
                self._apply_pin(*p)
        self._queue_counters()
        await self._flush()
        if self._remote_probe:
            now = self.clock()
            for key, at in list(self._remote_probe.items()):
                st = self._records.get(key)
                if st is None or st.status is not Status.PROBING or now - at > REMOTE_PROBE_SECONDS:
                    del self._remote_probe[key]
                    if st is not None and st.status is Status.PROBING:
                        st.probe_inflight = False

    async def _flush(self) -> None:
        async with self._flush_lock:
            await self._flush_now()

    async def _flush_now(self) -> None:
        accounts, self._out_accounts = self._out_accounts, {}
        pins_d, self._out_pins = self._out_pins, {}
        counters = self._pending_counters
        self._pending_counters = {}
        if not (accounts or pins_d or counters):
            return
        wall = self.wall_clock()
        now = self.clock()
        pins = [(p, s, a, wall + (u - now)) for (p, s), (a, u) in pins_d.items()]
        self._writing = counters
        try:
            kept = await self.backend.write(accounts, pins, counters)
        except BaseException:
            self._writing = {}
            # keep it for the next try; what was queued meanwhile is newer
            for k, v in accounts.items():
                self._out_accounts.setdefault(k, v)
            for k2, v2 in pins_d.items():
                self._out_pins.setdefault(k2, v2)
            while len(self._out_pins) > MAX_PENDING_PINS:
                self._out_pins.pop(next(iter(self._out_pins)))
            for key, fields in counters.items():
                mine = self._pending_counters.setdefault(key, {})
                for f, v3 in fields.items():
                    mine[f] = mine.get(f, 0.0) + v3
            raise
        self._writing = {}
        for key, fields in counters.items():
            tot = self._totals.setdefault(key, {})
            for f, v3 in fields.items():
                tot[f] = tot.get(f, 0.0) + v3
        for key, rec in kept.items():
            self._apply(key, rec, force=True)

    def _queue_counters(self) -> None:
        """Deltas of every account's counters since they were last queued."""
        for key, st in self._records.items():
            done = self._flushed.get(key)
            if done is None:
                done = self._flushed[key] = {}
            delta: dict[str, float] = {}
            for f in COUNTERS:
                v = float(getattr(st, f))
                d = v - done.get(f, 0.0)
                if d:
                    delta[f] = d
                    done[f] = v
            for outcome, n in st.outcomes.items():
                f = "o:" + outcome
                d = n - done.get(f, 0.0)
                if d:
                    delta[f] = d
                    done[f] = float(n)
            if delta:
                mine = self._pending_counters.setdefault(key, {})
                for f, v in delta.items():
                    mine[f] = mine.get(f, 0.0) + v

    def kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- accounts -----------------------------------------------------------------
    def forget(self, key: str) -> None:
        super().forget(key)
        self._flushed.pop(key, None)

    def publish(self, key: str, state: AccountState, transition: str = "") -> None:
        now = self.clock()
        wall = self.wall_clock()
        self._seq += 1
        self._mine[key] = self._seq
        self._remote_probe.pop(key, None)
        rec: dict[str, Any] = {
            "s": state.status.value,
            "cu": wall + (state.cooling_until - now) if state.status is Status.COOLING else 0.0,
            "cr": state.cooldown_reason, "dr": state.disabled_reason, "da": state.disabled_at,
            "ck": state.cooling_kind, "db": state.disabled_by,
            "rp": wall + (state.reprobe_at - now) if state.disabled_by == "auth" else 0.0, "rl": state.reprobe_level,
            "bl": state.backoff_level, "pi": bool(state.probe_inflight), "w": self.me, "n": self._seq,
            "t": transition, "at": wall,
        }
        queued = self._out_accounts.get(key)
        if queued is not None and not transition and queued["t"] in ("enable", "admin"):
            # what follows an operator's action (the probe it allowed) carries its weight:
            # both go out as one write, and the store must not undo the action
            rec["t"] = queued["t"]
        self._out_accounts[key] = rec
        self.kick()

    def _apply(self, key: str, rec: Mapping[str, Any], initial: bool = False, force: bool = False) -> None:
        """Another process's record (or, with ``force``, the store's answer to ours)."""
        if not force and (rec.get("w") == self.me or rec.get("t") == "config"):
            return  # our own write coming back; a state from config is each process's own
        if initial and key in self._out_accounts:
            return  # what this process found at its start (its config, its env) goes first
        st = self._records.get(key)
        if st is None:
            if initial:
                self._preload[key] = dict(rec)
            return
        _set_state(st, rec, self.clock(), self.wall_clock())
        if st.status is Status.PROBING and st.probe_inflight:
            self._remote_probe[key] = self.clock()

    def record(self, key: str, make: Any) -> AccountState:
        st = self._records.get(key)
        if st is None:
            st = self._records[key] = make()
            rec = self._preload.pop(key, None)
            if rec is not None:
                _set_state(st, rec, self.clock(), self.wall_clock())
        return st

    # -- pins -----------------------------------------------------------------------
    def session_set(self, provider: str, session: str, account_id: str, until: float) -> None:
        old = self._sessions.get((provider, session))
        super().session_set(provider, session, account_id, until)
        k = (provider, session)
        written = self._pin_written.get(k)
        # A pin is refreshed on every use; the store hears of it when it is new, moves,
        # or half its time-to-live has gone since it was written: not once per request.
        if old is None or old[0] != account_id or written is None or until - written > (until - self.clock()) / 2:
            self._pin_written[k] = until
            if len(self._pin_written) > self._max_sessions:
                self._pin_written.pop(next(iter(self._pin_written)))
            self._out_pins[k] = (account_id, until)

    def _apply_pin(self, provider: str, session: str, account: str, until_wall: float) -> None:
        until = self.clock() + (until_wall - self.wall_clock())
        if until <= self.clock():
            return
        MemoryStateStore.session_set(self, provider, session, account, until)
        self._pin_written[(provider, session)] = until

    # -- metrics ----------------------------------------------------------------------
    async def refresh_counters(self) -> None:
        """Before a scrape: our counts into the store, then the store's totals read back,
        so any worker's scrape reports the same, non-decreasing numbers."""
        if not self.up:
            return
        self._queue_counters()
        lock = self._flush_lock
        try:
            # After a write in flight (the store then has it), but a scrape does not wait
            # on a slow store for long: the sync's own deadline judges the store, and the
            # scrape reports what it knows (counter_totals: a write in flight included).
            await asyncio.wait_for(lock.acquire(), self.timeout)
        except asyncio.TimeoutError:
            return
        try:
            await asyncio.wait_for(self._flush_now(), self.timeout)
            self._totals = await asyncio.wait_for(self.backend.counters(), self.timeout)
        except Exception as e:
            self._down(e)
        finally:
            lock.release()

    def counter_totals(self) -> dict[str, dict[str, float]]:
        """The store's totals as last read, plus what this process counted and the store
        has not confirmed yet (being written, or not yet sent: nothing, right after
        :meth:`refresh_counters`).  A count is never missing from a scrape while it is
        on its way, or the counter would dip."""
        out = {k: dict(v) for k, v in self._totals.items()}
        for counts in (self._writing, self._pending_counters):
            for key, fields in counts.items():
                mine = out.setdefault(key, {})
                for f, v in fields.items():
                    mine[f] = mine.get(f, 0.0) + v
        for key, st in self._records.items():
            done = self._flushed.get(key) or {}
            mine = out.setdefault(key, {})
            for f in COUNTERS:
                d = float(getattr(st, f)) - done.get(f, 0.0)
                if d:
                    mine[f] = mine.get(f, 0.0) + d
            for outcome, n in st.outcomes.items():
                d = n - done.get("o:" + outcome, 0.0)
                if d:
                    mine["o:" + outcome] = mine.get("o:" + outcome, 0.0) + d
        return out

    # -- OAuth ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def refresh_lock(self, key: str, ttl: float = 30.0, wait: float = 30.0) -> AsyncIterator[int | None]:
        """One refresh of ``key`` at a time across replicas (Redis: a lock with a TTL and a
        fencing token); the local store leaves it to the accounts file's flock."""
        if not self.up:
            yield None
            return
        cm = self.backend.refresh_lock(key, ttl, wait)
        try:
            fence = await asyncio.wait_for(cm.__aenter__(), wait + self.timeout)
        except LockTimeout:
            raise
        except Exception as e:  # the store is gone: the file lock alone must do
            self._down(e)
            yield None
            return
        try:
            yield fence
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(cm.__aexit__(None, None, None), self.timeout)

    async def load_tokens(self, key: str) -> dict[str, Any] | None:
        if not self.up:
            return None
        try:
            return await asyncio.wait_for(self.backend.load_tokens(key), self.timeout)
        except Exception as e:
            self._down(e)
            return None

    async def save_tokens(self, key: str, fence: int | None, tokens: dict[str, Any]) -> bool:
        """False: a newer holder of the lock saved first (our fence is stale)."""
        if fence is None or not self.up:
            return True
        try:
            return await asyncio.wait_for(self.backend.save_tokens(key, fence, tokens), self.timeout)
        except Exception as e:
            self._down(e)
            return True


def _set_state(st: AccountState, rec: Mapping[str, Any], now: float, wall: float) -> None:
    try:
        status = Status(rec.get("s"))
    except ValueError:
        return
    if status is Status.COOLING:
        until = now + (float(rec.get("cu") or 0.0) - wall)
        if until <= now:
            status = Status.PROBING  # its cooldown ended while we were not looking
            st.probe_inflight = False
        st.cooling_until = until
    st.status = status
    if status is Status.PROBING:
        st.probe_inflight = bool(rec.get("pi"))
    elif status is not Status.COOLING:
        st.probe_inflight = False
    st.cooldown_reason = rec.get("cr")
    st.disabled_reason = rec.get("dr") if status is Status.DISABLED or rec.get("dr") else None
    st.disabled_at = rec.get("da") if st.disabled_reason is not None else None
    st.cooling_kind = rec.get("ck")
    st.disabled_by = rec.get("db") if status is Status.DISABLED else None
    if st.disabled_by == "auth":
        st.reprobe_at = now + (float(rec.get("rp") or 0.0) - wall)
        if isinstance(rec.get("rl"), int):
            st.reprobe_level = rec["rl"]
    if isinstance(rec.get("bl"), int):
        st.backoff_level = rec["bl"]


class SharedResponses:
    """The Responses store: an in-process LRU (``ResponseStore``) in front of the shared one.

    A hit in memory costs nothing; a miss (a response created by another worker or
    replica) is one store read, bounded by the store's timeout, and an unreachable
    store is a miss.  Items are written through (``persist``) before the answer's
    last event is sent, so a follow-up anywhere finds them.  One made while the
    store is away (or whose write failed) is kept back, within the local store's
    caps, and written when the store is reached again: an outage delays sharing,
    it does not lose the conversation."""

    def __init__(self, local: ResponseStore, state: SharedStateStore | None) -> None:
        self.local = local
        self.state = state
        # id -> (blob, monotonic time it was made): written at the next reconnect
        self._held: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._held_bytes = 0
        self._releasing: set[asyncio.Future[None]] = set()
        if state is not None:
            state.on_up.append(self._release)

    @property
    def enabled(self) -> bool:
        return self.local.enabled

    def __len__(self) -> int:
        return len(self.local)

    def get(self, response_id: str) -> StoredResponse | None:
        return self.local.get(response_id)

    async def fetch(self, response_id: str) -> StoredResponse | None:
        hit = self.local.get(response_id)
        st = self.state
        if hit is not None or st is None or not self.enabled or not st.up:
            return hit
        try:
            blob = await asyncio.wait_for(st.backend.resp_get(response_id), st.timeout)
        except Exception as e:
            st._down(e)
            return None
        if blob is None:
            return None
        d = jsonutil.loads(blob)
        entry = StoredResponse(id=d["id"], messages=d["messages"], response=d["response"],
                               input_items=d.get("input_items") or [])
        self.local.put(entry)
        return entry

    def put(self, entry: StoredResponse) -> "asyncio.Future[None] | None":
        """Keep it here now; the returned future is done when the shared store has it."""
        if not self.local.put(entry):
            return None
        st = self.state
        if st is None:
            return None
        blob = jsonutil.dumpb({"id": entry.id, "messages": entry.messages, "response": entry.response,
                               "input_items": entry.input_items})
        if not st.up:
            self._hold(entry.id, blob, st.clock())
            return None
        return asyncio.ensure_future(self._write(st, entry.id, blob, st.clock()))

    async def _write(self, st: SharedStateStore, rid: str, blob: bytes, made: float) -> None:
        loc = self.local
        ttl = loc.ttl - (st.clock() - made)
        if ttl <= 0:
            return
        if not st.up:  # (went away while earlier ones were written)
            self._hold(rid, blob, made)
            return
        try:
            await asyncio.wait_for(st.backend.resp_put(rid, blob, ttl, loc.max_entries, loc.max_bytes),
                                   st.timeout)
        except Exception as e:
            st._down(e)
            self._hold(rid, blob, made)

    def _hold(self, rid: str, blob: bytes, made: float) -> None:
        old = self._held.pop(rid, None)
        if old is not None:
            self._held_bytes -= len(old[0])
        self._held[rid] = (blob, made)
        self._held_bytes += len(blob)
        loc = self.local
        while self._held and (len(self._held) > loc.max_entries or self._held_bytes > loc.max_bytes):
            _, (b, _) = self._held.popitem(last=False)  # the oldest go first, as in the store
            self._held_bytes -= len(b)

    def _release(self) -> None:
        st = self.state
        if not self._held or st is None:
            return
        held, self._held, self._held_bytes = self._held, OrderedDict(), 0

        async def write_all() -> None:
            for rid, (blob, made) in held.items():
                await self._write(st, rid, blob, made)

        task = asyncio.ensure_future(write_all())
        self._releasing.add(task)  # (a task nothing refers to may be collected mid-way)
        task.add_done_callback(self._releasing.discard)

    async def delete(self, response_id: str) -> bool:
        gone = self.local.delete(response_id)
        held = self._held.pop(response_id, None)
        if held is not None:
            self._held_bytes -= len(held[0])
        st = self.state
        if st is not None and st.up:
            try:
                gone = await asyncio.wait_for(st.backend.resp_delete(response_id), st.timeout) or gone
            except Exception as e:
                st._down(e)
        return gone
