"""OAuth rotation over Redis: the fenced refresh lock, and which tokens win when the
file and the store disagree.

Found as a flake of ``test_one_refresh_per_rotation_under_concurrent_load[redis-workers]``
under CPU load: the fence was drawn when the lock was asked for, so a waiter that asked
first but was granted the lock after a newer holder carried the lower fence; its save
then lost to tokens its own refresh had just spent, and the account was disabled."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.state.conftest import RedisServer, need_redis
from tests.unit.test_oauth import TokenServer, file_entry, prepared
from tornado_proxy.accounts.file import AccountsFile
from tornado_proxy.accounts.scheduler import Scheduler
from tornado_proxy.state.redis_store import RedisBackend
from tornado_proxy.state.store import SharedStateStore


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    need_redis()
    return redis_server.url


def prefix() -> str:
    return "{r-" + os.urandom(4).hex() + "}:"


def test_fences_rise_in_the_order_the_lock_is_granted(redis_url: str) -> None:
    async def run() -> list[tuple[str, int]]:
        b = RedisBackend(redis_url, prefix())
        await b.open()
        granted: list[tuple[str, int]] = []
        first = b.refresh_lock("up/o1", 30, 10)
        granted.append(("first", await first.__aenter__()))

        async def waiter() -> None:  # asks while the lock is held: polls every 50 ms
            async with b.refresh_lock("up/o1", 30, 10) as fence:
                granted.append(("waiter", fence))

        w = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.12)
        await first.__aexit__(None, None, None)
        async with b.refresh_lock("up/o1", 30, 10) as fence:  # asks later, is granted at once
            granted.append(("late", fence))
            assert await b.save_tokens("up/o1", fence, {"refresh_token": "rt-late"})
        await asyncio.wait_for(w, 5)
        await b.close()
        return granted

    granted = asyncio.run(run())
    assert [who for who, _ in granted] == ["first", "late", "waiter"]
    fences = [f for _, f in granted]
    assert fences == sorted(fences) and len(set(fences)) == 3, granted


def test_a_waiter_granted_the_lock_after_a_newer_holder_can_still_save(redis_url: str) -> None:
    async def run() -> tuple[bool, Any]:
        b = RedisBackend(redis_url, prefix())
        await b.open()
        first = b.refresh_lock("k", 30, 10)
        await first.__aenter__()
        saved: list[bool] = []

        async def waiter() -> None:
            async with b.refresh_lock("k", 30, 10) as fence:
                saved.append(await b.save_tokens("k", fence, {"refresh_token": "rt-2"}))

        w = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.12)
        await first.__aexit__(None, None, None)
        async with b.refresh_lock("k", 30, 10) as fence:
            await b.save_tokens("k", fence, {"refresh_token": "rt-1"})
        await asyncio.wait_for(w, 5)
        tokens = await b.load_tokens("k")
        await b.close()
        return saved[0], tokens

    ok, tokens = asyncio.run(run())
    assert ok and tokens == {"refresh_token": "rt-2"}


def _scheduler(lt: Any, tmp_path: Path, url: str, pfx: str, srv: TokenServer,
               entry: dict[str, Any]) -> tuple[Scheduler, Path]:
    path = tmp_path / "accounts.json"
    AccountsFile(str(path)).upsert({"id": "o1", "provider": "p", **entry})
    conf = [{"name": "p", "accounts": [], "scheduler": {"oauth": {"token_url": srv.url, "client_id": "c1"}}}]

    async def make() -> Scheduler:
        store = SharedStateStore(RedisBackend(url, pfx), sync_interval=0.05)
        await store.start()
        assert store.up
        lt._cleanups.append(store.close)
        return Scheduler(conf, accounts_file=str(path), store=store)
    return lt.run(make()), path


async def _store_tokens(url: str, pfx: str, save: dict[str, Any] | None = None) -> Any:
    """The store's tokens for p/o1 (saved first, with fence 1, when ``save`` is given)."""
    b = RedisBackend(url, pfx)
    await b.open()
    try:
        if save is not None:
            await b.save_tokens("p/o1", 1, save)
        return await b.load_tokens("p/o1")
    finally:
        await b.close()


def test_file_tokens_newer_than_the_stores_are_kept_and_published(harness: Any, tmp_path: Path,
                                                                    redis_url: str) -> None:
    # One worker rotated rt-1 -> rt-2 while it could not reach Redis: the file has rt-2,
    # the store still rt-1 (spent).  The next refresh must use rt-2, not the store's.
    pfx = prefix()
    srv = TokenServer(first_refresh="rt-2").start(harness)
    now = time.time()
    harness.run(_store_tokens(redis_url, pfx, {"access_token": "at-1", "refresh_token": "rt-1",
                                                "expires_at": now - 60}))
    sched, path = _scheduler(harness, tmp_path, redis_url, pfx, srv,
                             {"access_token": "at-2", "refresh_token": "rt-2", "expires_at": now + 100})

    assert prepared(harness, sched) == "at-3"
    assert [b["refresh_token"] for b in srv.bodies] == ["rt-2"]
    assert file_entry(path)["refresh_token"] == "rt-3"
    assert harness.run(_store_tokens(redis_url, pfx))["refresh_token"] == "rt-3"
    assert harness.call(sched.snapshot)[0]["state"] == "active"


def test_store_tokens_newer_than_the_files_are_taken(harness: Any, tmp_path: Path, redis_url: str) -> None:
    # Another replica (its own file) rotated rt-1 -> rt-2 and told the store.
    pfx = prefix()
    srv = TokenServer(first_refresh="rt-2").start(harness)
    now = time.time()
    harness.run(_store_tokens(redis_url, pfx, {"access_token": "at-2", "refresh_token": "rt-2",
                                                "expires_at": now + 3600}))
    sched, path = _scheduler(harness, tmp_path, redis_url, pfx, srv,
                             {"access_token": "at-1", "refresh_token": "rt-1", "expires_at": now + 100})

    assert prepared(harness, sched) == "at-2"
    assert srv.calls == 0
    assert file_entry(path)["refresh_token"] == "rt-2"
