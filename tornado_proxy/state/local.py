"""The ``local`` store: one SQLite file in WAL mode, shared by every worker of a machine.

Embedded (the stdlib ``sqlite3``), nothing to run, and it survives restarts.  All
of a process's SQLite work runs on one thread of its own (a connection belongs to
one thread, and a write may wait for another process's lock): the event loop only
awaits it, on transitions and on the sync tick, never per request.

How others' changes are noticed: ``PRAGMA data_version`` changes when another
connection commits; only then are the rows with a newer ``rev`` read.  ``rev`` is
one counter for the whole file, bumped in the writing transaction.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import sqlite3
import time
from typing import Any, Callable, TypeVar

from tornado_proxy import jsonutil
from tornado_proxy.state.store import Backend, merge

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (k, v) VALUES ('rev', 0);
CREATE TABLE IF NOT EXISTS accounts (key TEXT PRIMARY KEY, data TEXT NOT NULL, rev INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS accounts_rev ON accounts (rev);
CREATE TABLE IF NOT EXISTS pins (provider TEXT NOT NULL, session TEXT NOT NULL, account TEXT NOT NULL,
    until REAL NOT NULL, rev INTEGER NOT NULL, PRIMARY KEY (provider, session));
CREATE INDEX IF NOT EXISTS pins_rev ON pins (rev);
CREATE TABLE IF NOT EXISTS counters (key TEXT NOT NULL, field TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (key, field));
CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, data BLOB NOT NULL, size INTEGER NOT NULL,
    expires REAL NOT NULL, written REAL NOT NULL);
CREATE INDEX IF NOT EXISTS responses_written ON responses (written);
"""


class LocalBackend(Backend):
    name = "local"

    def __init__(self, path: str, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._version = -1
        self._cursor = 0
        self._writes = 0

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="state-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
            # One opener at a time: switching a new file to WAL answers "database is
            # locked" at once (no busy wait) when another process opens it meanwhile,
            # which is exactly what the workers of one gateway do at startup.
            lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                     check_same_thread=False)
                try:
                    with contextlib.suppress(OSError):
                        os.chmod(self.path, 0o600)  # it holds account state and conversations
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    db.executescript(SCHEMA)
                except BaseException:
                    db.close()
                    raise
            finally:
                os.close(lock)  # (closing releases the lock)
            self._db = db
        return self._db

    async def open(self) -> None:
        await self._run(self._conn)

    async def load(self) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, str, float]]]:
        def fn() -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, str, float]]]:
            db = self._conn()
            self._version = db.execute("PRAGMA data_version").fetchone()[0]
            self._cursor = db.execute("SELECT v FROM meta WHERE k = 'rev'").fetchone()[0]
            accounts = {k: jsonutil.loads(d) for k, d in db.execute("SELECT key, data FROM accounts")}
            pins = [tuple(r) for r in db.execute("SELECT provider, session, account, until FROM pins "
                                                 "WHERE until > ?", (time.time(),))]
            return accounts, pins  # type: ignore[return-value]

        return await self._run(fn)

    async def changes(self) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str, str, float]]] | None:
        def fn() -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, str, str, float]]] | None:
            db = self._conn()
            v = db.execute("PRAGMA data_version").fetchone()[0]
            if v == self._version:
                return None
            self._version = v
            since = self._cursor
            db.execute("BEGIN")  # one snapshot for both reads: no commit falls between them
            try:
                rows = db.execute("SELECT key, data, rev FROM accounts WHERE rev > ?", (since,)).fetchall()
                pins = db.execute("SELECT provider, session, account, until, rev FROM pins WHERE rev > ?",
                                  (since,)).fetchall()
            finally:
                db.execute("COMMIT")
            top = max([since, *(r[2] for r in rows), *(p[4] for p in pins)])
            self._cursor = top
            return [(k, jsonutil.loads(d)) for k, d, _ in rows], [(p[0], p[1], p[2], p[3]) for p in pins]

        return await self._run(fn)

    async def write(self, accounts: dict[str, dict[str, Any]], pins: list[tuple[str, str, str, float]],
                    counters: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
        def fn() -> dict[str, dict[str, Any]]:
            db = self._conn()
            kept: dict[str, dict[str, Any]] = {}
            wall = time.time()
            db.execute("BEGIN IMMEDIATE")
            try:
                rev = db.execute("SELECT v FROM meta WHERE k = 'rev'").fetchone()[0] + 1
                for key, rec in accounts.items():
                    row = db.execute("SELECT data FROM accounts WHERE key = ?", (key,)).fetchone()
                    cur = jsonutil.loads(row[0]) if row else None
                    if not merge(cur, rec, wall):
                        assert cur is not None
                        kept[key] = cur
                        continue
                    db.execute("INSERT INTO accounts (key, data, rev) VALUES (?, ?, ?) ON CONFLICT (key) "
                               "DO UPDATE SET data = excluded.data, rev = excluded.rev",
                               (key, jsonutil.dumps(rec), rev))
                for p, s, a, u in pins:
                    db.execute("INSERT INTO pins (provider, session, account, until, rev) VALUES (?, ?, ?, ?, ?) "
                               "ON CONFLICT (provider, session) DO UPDATE SET account = excluded.account, "
                               "until = excluded.until, rev = excluded.rev", (p, s, a, u, rev))
                for key, fields in counters.items():
                    for f, v in fields.items():
                        db.execute("INSERT INTO counters (key, field, value) VALUES (?, ?, ?) ON CONFLICT "
                                   "(key, field) DO UPDATE SET value = value + excluded.value", (key, f, v))
                db.execute("UPDATE meta SET v = ? WHERE k = 'rev'", (rev,))
                self._writes += 1
                if pins and self._writes % 64 == 0:
                    db.execute("DELETE FROM pins WHERE until < ?", (wall,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return kept

        return await self._run(fn)

    async def counters(self) -> dict[str, dict[str, float]]:
        def fn() -> dict[str, dict[str, float]]:
            out: dict[str, dict[str, float]] = {}
            for key, f, v in self._conn().execute("SELECT key, field, value FROM counters"):
                out.setdefault(key, {})[f] = v
            return out

        return await self._run(fn)

    async def resp_put(self, rid: str, blob: bytes, ttl: float, max_entries: int, max_bytes: int) -> None:
        def fn() -> None:
            db = self._conn()
            now = time.time()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT OR REPLACE INTO responses (id, data, size, expires, written) VALUES (?, ?, ?, ?, ?)",
                           (rid, blob, len(blob), now + ttl, now))
                db.execute("DELETE FROM responses WHERE expires <= ?", (now,))
                n, total = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM responses").fetchone()
                # the oldest writes go first, until both caps hold
                while n > max_entries or total > max_bytes:
                    row = db.execute("SELECT id, size FROM responses ORDER BY written LIMIT 1").fetchone()
                    if row is None:
                        break
                    db.execute("DELETE FROM responses WHERE id = ?", (row[0],))
                    n, total = n - 1, total - row[1]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._run(fn)

    async def resp_get(self, rid: str) -> bytes | None:
        def fn() -> bytes | None:
            row = self._conn().execute("SELECT data FROM responses WHERE id = ? AND expires > ?",
                                       (rid, time.time())).fetchone()
            return bytes(row[0]) if row else None

        return await self._run(fn)

    async def resp_delete(self, rid: str) -> bool:
        def fn() -> bool:
            return self._conn().execute("DELETE FROM responses WHERE id = ?", (rid,)).rowcount > 0

        return await self._run(fn)

    async def close(self) -> None:
        def fn() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        if self._pool is not None:
            await self._run(fn)
            self._pool.shutdown(wait=False)
            self._pool = None
