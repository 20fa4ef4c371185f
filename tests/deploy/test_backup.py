"""The backups docs/operations.md describes, run for real: a copy of the local store taken
with `sqlite3 .backup` while the gateway writes, and one of Redis taken with
`redis-cli --rdb`, each restored under a fresh gateway that then sees the state of the
first (an account an operator disabled). The control: a plain `cp state.db` of a running
gateway misses what is still in the WAL file, which is why the docs say not to."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from .support import ROOT, Process, clean_env, free_port, need_tool

ADMIN = "test-admin-token-backup"


def gateway(tmp: Path, name: str, state: dict[str, Any]) -> tuple[Process, int]:
    port = free_port()
    conf = tmp / f"{name}.json"
    conf.write_text(json.dumps({
        "server": {"port": port, "host": "127.0.0.1", "drain_seconds": 5, "admin_token": ADMIN},
        "state": state,
        "providers": [{"name": "up", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                       "accounts": [{"id": "a1", "api_key": "test-key-backup-a1"},
                                    {"id": "a2", "api_key": "test-key-backup-a2"}]}],
        "models": [{"id": "m", "provider": "up"}]}))
    p = Process([sys.executable, "-m", "tornado_proxy", "--config", str(conf), "--workers", "1"], clean_env(),
                cwd=str(ROOT))
    p.wait_for("listening on")
    return p, port


def admin(port: int, method: str, path: str) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=b"{}" if method == "POST" else None,
                                 headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def state_of(port: int, account: str) -> str:
    return admin(port, "GET", f"/admin/accounts/{account}")["account"]["state"]


def stop(p: Process) -> None:
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait() == 0, p.stderr


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for p in started:
        p.kill()


def disable_and_wait(port: int, written: Any) -> None:
    assert admin(port, "POST", "/admin/accounts/a1/disable")["account"]["state"] == "disabled"
    deadline = time.monotonic() + 10
    while not written():
        assert time.monotonic() < deadline, "the disable never reached the store"
        time.sleep(0.05)


def test_sqlite_backup_of_a_running_gateway_restores_its_state(tmp_path: Path, procs: list[Any]) -> None:
    sqlite3 = need_tool("sqlite3")
    live, copy, raw = tmp_path / "live", tmp_path / "copy", tmp_path / "raw"
    for d in (live, copy, raw):
        d.mkdir()
    p, port = gateway(tmp_path, "live", {"store": "local", "path": str(live)})
    procs.append(p)
    db = live / "state.db"

    def written() -> bool:
        out = subprocess.run([sqlite3, str(db), "SELECT data FROM accounts"], capture_output=True, text=True,
                             timeout=10).stdout
        return '"disabled"' in out
    disable_and_wait(port, written)
    # both while the gateway runs and holds the database open
    r = subprocess.run([sqlite3, str(db), f".backup '{copy / 'state.db'}'"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    shutil.copy(db, raw / "state.db")
    assert (live / "state.db-wal").exists(), "the live store is not in WAL mode"
    stop(p)

    q, qport = gateway(tmp_path, "restored", {"store": "local", "path": str(copy)})
    procs.append(q)
    assert state_of(qport, "a1") == "disabled" and state_of(qport, "a2") == "active"
    stop(q)
    c, cport = gateway(tmp_path, "raw", {"store": "local", "path": str(raw)})
    procs.append(c)
    assert state_of(cport, "a1") == "active", "a plain copy kept the WAL's write: the docs' warning is moot"
    stop(c)


def test_redis_rdb_backup_restores_the_state_in_another_redis(tmp_path: Path, procs: list[Any]) -> None:
    from tests.state.conftest import RedisServer, need_redis

    need_redis()
    cli = need_tool("redis-cli")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = RedisServer(tmp_path / "a").start()
    procs.append(first)
    p, port = gateway(tmp_path, "live", {"store": "redis", "url": first.url})
    procs.append(p)

    def written() -> bool:
        out = subprocess.run([cli, "-p", str(first.port), "HGETALL", "{tornado-proxy}:acct"], capture_output=True,
                             text=True, timeout=10).stdout
        return '"disabled"' in out
    disable_and_wait(port, written)
    r = subprocess.run([cli, "-p", str(first.port), "--rdb", str(tmp_path / "b" / "dump.rdb")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    stop(p)
    first.kill()

    second = RedisServer(tmp_path / "b").start()  # loads dump.rdb from its --dir
    procs.append(second)
    q, qport = gateway(tmp_path, "restored", {"store": "redis", "url": second.url})
    procs.append(q)
    assert state_of(qport, "a1") == "disabled" and state_of(qport, "a2") == "active"
    stop(q)
