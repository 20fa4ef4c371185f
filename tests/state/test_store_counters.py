"""A scrape while the store is being written never sees a counter dip.

Seen as a flake of the Factory preset's e2e test: the background sync had taken the
pending counts and was writing them; a scrape rendered in that moment found them in
neither the pending counts nor the store's totals, and reported 0 for an account
that had served 4 requests.  To Prometheus that is a counter reset."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from providers.base import Account
from tornado_proxy.state.accounts_state import AccountState
from tornado_proxy.state.local import LocalBackend
from tornado_proxy.state.store import SharedStateStore


class SlowWrites(LocalBackend):
    """A local store whose writes wait until the test lets them through."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.writing = asyncio.Event()

    async def write(self, accounts: Any, pins: Any, counters: Any) -> Any:
        if counters:
            self.writing.set()
            await self.gate.wait()
        return await super().write(accounts, pins, counters)


def test_counts_being_written_are_still_in_every_scrape(tmp_path: Path) -> None:
    async def run() -> list[float]:
        backend = SlowWrites(str(tmp_path / "state.db"))
        st = SharedStateStore(backend, sync_interval=0.01)
        await st.start()
        assert st.up
        acct = st.record("up/a1", lambda: AccountState("up", Account(id="a1", api_key="k")))
        acct.outcomes["success"] = 4
        acct.prompt_tokens = 30
        seen = [st.counter_totals()["up/a1"]["o:success"]]
        await asyncio.wait_for(backend.writing.wait(), 5)   # the sync is writing them now
        got = st.counter_totals()["up/a1"]
        seen.append(got["o:success"])
        assert got["prompt_tokens"] == 30
        # a scrape's refresh waits for that write rather than reading the store before it
        scrape = asyncio.ensure_future(st.refresh_counters())
        await asyncio.sleep(0.05)
        assert not scrape.done()
        seen.append(st.counter_totals()["up/a1"]["o:success"])
        backend.gate.set()
        await asyncio.wait_for(scrape, 5)
        seen.append(st.counter_totals()["up/a1"]["o:success"])
        assert st.up and st.errors == 0
        await st.close()
        return seen

    assert asyncio.run(run()) == [4.0, 4.0, 4.0, 4.0]


def test_a_failed_write_keeps_its_counts_for_the_next(tmp_path: Path) -> None:
    class FailOnce(LocalBackend):
        failed = False

        async def write(self, accounts: Any, pins: Any, counters: Any) -> Any:
            if counters and not self.failed:
                self.failed = True
                raise OSError("disk I/O error")
            return await super().write(accounts, pins, counters)

    async def run() -> tuple[float, float, float]:
        st = SharedStateStore(FailOnce(str(tmp_path / "state.db")), sync_interval=3600)
        await st.start()
        acct = st.record("up/a1", lambda: AccountState("up", Account(id="a1", api_key="k")))
        acct.outcomes["success"] = 2
        await st.refresh_counters()          # the write fails: the store is counted down
        during = st.counter_totals()["up/a1"]["o:success"]
        assert not st.up
        await st._connect()                  # back
        await st.refresh_counters()
        after = st.counter_totals()["up/a1"]["o:success"]
        stored = (await st.backend.counters())["up/a1"]["o:success"]
        await st.close()
        return during, after, stored

    assert asyncio.run(run()) == (2.0, 2.0, 2.0)


def test_a_scrape_does_not_wait_long_on_a_write_that_hangs(tmp_path: Path) -> None:
    """A store that takes its time over a write: the scrape's refresh gives up after the
    store's timeout and reports the counts all the same (the sync's deadline, not the
    scrape, decides whether the store is down)."""
    async def run() -> tuple[float, float]:
        backend = SlowWrites(str(tmp_path / "state.db"))
        # (the sync gives a write max(timeout, sync_interval): 5 s here)
        st = SharedStateStore(backend, sync_interval=5.0, timeout=0.2)
        await st.start()
        acct = st.record("up/a1", lambda: AccountState("up", Account(id="a1", api_key="k")))
        acct.outcomes["success"] = 3
        st.kick()
        await asyncio.wait_for(backend.writing.wait(), 5)
        t0 = asyncio.get_running_loop().time()
        await st.refresh_counters()
        waited = asyncio.get_running_loop().time() - t0
        seen = st.counter_totals()["up/a1"]["o:success"]
        backend.gate.set()
        await st.close()
        return waited, seen

    waited, seen = asyncio.run(run())
    assert waited < 1.0 and seen == 3.0
