"""A store that was closed is not a store outage: what still reaches it while the
process stops (a scrape, a token load, a response write racing the stop) fails
quietly, with no warning logged and no error counted."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Callable, TypeVar

import pytest

from tornado_proxy.state.local import LocalBackend
from tornado_proxy.state.store import SharedStateStore

T = TypeVar("T")


class ClosingBackend(LocalBackend):
    """As a backend is once closed (its thread pool shut down, its Redis connection gone)."""

    closed = False

    async def _run(self, fn: Callable[[], T]) -> T:
        if self.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return await super()._run(fn)

    async def close(self) -> None:
        await super().close()
        self.closed = True


def test_calls_after_close_log_no_outage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> SharedStateStore:
        st = SharedStateStore(ClosingBackend(str(tmp_path / "state.db")), sync_interval=0.05)
        await st.start()
        assert st.up
        st.errors = 0
        await st.close()
        await st.refresh_counters()      # a scrape racing the stop
        assert await st.load_tokens("acct") is None
        return st

    with caplog.at_level(logging.WARNING, logger="tornado_proxy"):
        st = asyncio.run(run())
    assert [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()] == []
    assert st.errors == 0
