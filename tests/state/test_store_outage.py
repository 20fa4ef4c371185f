"""The local store opened by many processes at once, and a Responses write that
meets a store outage: neither may lose state.

Both were seen as flakes of the end-to-end shared-state suite: two workers
opening a fresh SQLite file at once, one got "database is locked" (switching a
new file to WAL does not wait for the other opener), counted the store as down,
and the responses it answered in that window were never shared, so a follow-up
on the other worker (or after a restart) found nothing."""
from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
from pathlib import Path

from tornado_proxy.state.local import LocalBackend
from tornado_proxy.state.responses import ResponseStore, StoredResponse
from tornado_proxy.state.store import SharedResponses, SharedStateStore


def _open(path: str, q: "multiprocessing.Queue[str]", go: "multiprocessing.synchronize.Barrier") -> None:
    try:
        b = LocalBackend(path)
        go.wait(10)
        b._conn().execute("PRAGMA data_version").fetchone()
        q.put("ok")
    except Exception as e:  # what the test reports
        q.put(f"{type(e).__name__}: {e}")


def test_processes_opening_a_new_store_at_once_all_get_it(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    got: list[str] = []
    for i in range(25):  # without the open lock about 1 opener in 5 failed
        q: multiprocessing.Queue[str] = ctx.Queue()
        go = ctx.Barrier(3)  # all three open at the same moment, as a gateway's workers do
        procs = [ctx.Process(target=_open, args=(str(tmp_path / str(i) / "state.db"), q, go)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(20)
        got += [q.get(timeout=5) for _ in procs]
    assert set(got) == {"ok"}, [g for g in got if g != "ok"][:3]


class FlakyBackend(LocalBackend):
    """A local store that can be made unreachable (every call raises)."""

    away = False

    async def _run(self, fn):  # type: ignore[no-untyped-def]
        if self.away:
            raise OSError("disk I/O error")
        return await super()._run(fn)


def entry(rid: str) -> StoredResponse:
    return StoredResponse(id=rid, messages=[{"role": "user", "content": rid}],
                          response={"id": rid, "object": "response"})


def test_a_response_made_while_the_store_is_away_is_shared_once_it_is_back(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")

    async def run() -> None:
        backend = FlakyBackend(path)
        st = SharedStateStore(backend, sync_interval=0.02, timeout=1.0)
        await st.start()
        mine = SharedResponses(ResponseStore(), st)
        other_st = SharedStateStore(LocalBackend(path), sync_interval=0.02)
        await other_st.start()
        other = SharedResponses(ResponseStore(), other_st)
        try:
            # the store goes away; the next tick notices
            backend.away = True
            for _ in range(100):
                if not st.up:
                    break
                await asyncio.sleep(0.01)
            assert not st.up
            assert mine.put(entry("resp_while_away")) is None
            assert mine.get("resp_while_away") is not None        # served here meanwhile
            assert await other.fetch("resp_while_away") is None  # not shared yet
            # a write that fails on the way is kept back too
            backend.away = False
            st.up = True
            backend.away = True
            fut = mine.put(entry("resp_failed_write"))
            assert fut is not None
            await fut
            assert not st.up
            # deleted while away: never written
            mine.put(entry("resp_deleted"))
            await mine.delete("resp_deleted")
            backend.away = False
            for _ in range(200):
                if st.up and await other.fetch("resp_failed_write") is not None:
                    break
                await asyncio.sleep(0.02)
            for rid in ("resp_while_away", "resp_failed_write"):
                got = await other.fetch(rid)
                assert got is not None and got.response["id"] == rid
            assert await other.fetch("resp_deleted") is None
        finally:
            await st.close()
            await other_st.close()

    asyncio.run(run())
