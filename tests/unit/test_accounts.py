"""The accounts file: atomic writes, recovery after a kill, cross-process locking,
re-reading on change, and the scheduler's view of it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.test_oauth import TokenServer, prepared
from tornado_proxy.accounts.file import AccountsFile, AccountsFileError, check_doc, mask
from tornado_proxy.errors import from_status
from tornado_proxy.accounts.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[2]


def doc_of(path: Path) -> dict:
    return check_doc(json.loads(path.read_text()))


# -- the file itself -----------------------------------------------------------------------------
def test_modify_is_atomic_private_and_counts_generations(tmp_path):
    f = AccountsFile(str(tmp_path / "accounts.json"))
    assert f.read() == {"version": 1, "generation": 0, "accounts": []}
    f.upsert({"id": "a", "provider": "p", "api_key": "test-key-a-0123456789"})
    f.upsert({"id": "a", "provider": "p", "weight": 2})
    d = doc_of(tmp_path / "accounts.json")
    assert d["generation"] == 2 and d["accounts"] == [
        {"id": "a", "provider": "p", "api_key": "test-key-a-0123456789", "weight": 2}]
    assert os.stat(tmp_path / "accounts.json").st_mode & 0o777 == 0o600
    assert not (tmp_path / ".accounts.json.tmp").exists()


@pytest.mark.parametrize("name,doc,error", [
    ("not an object", [], "'accounts' list"),
    ("no id", {"accounts": [{"provider": "p"}]}, "accounts[0].id"),
    ("duplicate id", {"accounts": [{"id": "a", "provider": "p"}, {"id": "a", "provider": "p"}]}, "twice"),
    ("no provider", {"accounts": [{"id": "a"}]}, "provider"),
    ("bad weight", {"accounts": [{"id": "a", "provider": "p", "weight": 0}]}, "weight"),
])
def test_check_doc(name, doc, error):
    with pytest.raises(AccountsFileError) as e:
        check_doc(doc)
    assert error in str(e.value)


def test_masking():
    assert mask("sk-test-0123456789abcdef") == "****cdef"
    assert mask("short") == "****"


@pytest.mark.parametrize("name,tmp_content,adopted", [
    ("complete, one generation ahead: a killed writer's work is finished", "next", True),
    ("truncated: discarded", "truncated", False),
    ("stale generation: discarded", "stale", False),
])
def test_recovery_of_a_left_over_temp_file(tmp_path, name, tmp_content, adopted):
    path = tmp_path / "accounts.json"
    f = AccountsFile(str(path))
    f.upsert({"id": "o1", "provider": "p", "refresh_token": "rt-0"})
    cur = doc_of(path)
    nxt = {**cur, "generation": cur["generation"] + 1,
           "accounts": [{"id": "o1", "provider": "p", "refresh_token": "rt-1"}]}
    raw = {"next": json.dumps(nxt), "truncated": json.dumps(nxt)[:40],
           "stale": json.dumps({**nxt, "generation": cur["generation"]})}[tmp_content]
    (tmp_path / ".accounts.json.tmp").write_text(raw)
    assert f.read()["accounts"][0]["refresh_token"] == "rt-0"  # plain readers never touch it
    doc = f.load()
    assert doc["accounts"][0]["refresh_token"] == ("rt-1" if adopted else "rt-0")
    assert not (tmp_path / ".accounts.json.tmp").exists()


# -- the scheduler reads it ------------------------------------------------------------------------
PROVIDERS = [{"name": "p", "accounts": [{"id": "cfg", "api_key": "test-key-cfg-0123456789"}]}]


def sched_for(path: Path, clock=None) -> Scheduler:
    kw = {"clock": clock} if clock else {}
    return Scheduler(PROVIDERS, accounts_file=str(path), **kw)


def ids(sched: Scheduler) -> dict[str, str]:
    return {a["id"]: a["state"] for a in sched.snapshot()}


def test_changes_are_picked_up_without_dropping_requests(tmp_path):
    path = tmp_path / "accounts.json"
    f = AccountsFile(str(path))
    f.upsert({"id": "k1", "provider": "p", "api_key": "test-key-k1-0123456789"})
    now = [0.0]
    sched = sched_for(path, clock=lambda: now[0])
    assert ids(sched) == {"cfg": "active", "k1": "active"}
    held = sched.acquire("p", headers={"x-auth-id": "k1"})  # a request in flight on k1
    f.modify(lambda d: d.update(accounts=[{"id": "k2", "provider": "p", "api_key": "test-key-k2-0123456789"}]))
    assert ids(sched) == {"cfg": "active", "k1": "active"}  # not polled yet
    now[0] += 1.0
    assert ids(sched) == {"cfg": "active", "k2": "active"}
    held.success(0.1, {})
    held.release()  # the removed account's request ends normally
    assert held.account.api_key == "test-key-k1-0123456789"
    lease = sched.acquire("p", headers={"x-auth-id": "k2"})
    assert lease.account.api_key == "test-key-k2-0123456789"
    lease.release()


def test_a_new_key_replaces_the_old_one_in_place(tmp_path):
    path = tmp_path / "accounts.json"
    f = AccountsFile(str(path))
    f.upsert({"id": "k1", "provider": "p", "api_key": "test-key-old-0123456789"})
    sched = sched_for(path)
    f.upsert({"id": "k1", "provider": "p", "api_key": "test-key-new-0123456789", "weight": 3})
    sched.reload()  # what SIGHUP does
    lease = sched.acquire("p", headers={"x-auth-id": "k1"})
    assert (lease.account.api_key, lease.account.weight) == ("test-key-new-0123456789", 3.0)
    lease.release()


def test_sighup_rereads_the_file(tmp_path):
    code = f"""
import asyncio, json, os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from tornado_proxy.accounts.file import AccountsFile
from tornado_proxy.accounts.scheduler import Scheduler
path = {str(tmp_path / 'accounts.json')!r}
AccountsFile(path).upsert({{"id": "k1", "provider": "p", "api_key": "test-key-k1-0123456789"}})
async def main():
    s = Scheduler([{{"name": "p"}}], accounts_file=path, poll_interval=3600)
    s.install_sighup()
    AccountsFile(path).upsert({{"id": "k2", "provider": "p", "api_key": "test-key-k2-0123456789"}})
    os.kill(os.getpid(), signal.SIGHUP)
    await asyncio.sleep(0.2)
    print(json.dumps(sorted(s._pools["p"].by_id)))
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert json.loads(out.stdout) == ["k1", "k2"], out.stderr


def test_disable_is_saved_and_a_script_enable_applies(tmp_path):
    path = tmp_path / "accounts.json"
    f = AccountsFile(str(path))
    f.upsert({"id": "k1", "provider": "p", "api_key": "test-key-k1-0123456789"})
    now = [0.0]
    sched = sched_for(path, clock=lambda: now[0])
    lease = sched.acquire("p", headers={"x-auth-id": "k1"})
    lease.failure(from_status(402, "insufficient credit"))
    lease.release()
    lease = sched.acquire("p", headers={"x-auth-id": "cfg"})
    lease.failure(from_status(401, "key revoked"))  # a config account: saved as an overlay
    lease.release()
    entries = {a["id"]: a for a in doc_of(path)["accounts"]}
    assert entries["k1"]["disabled"] is True and "insufficient credit" in entries["k1"]["disabled_reason"]
    assert entries["cfg"] == {**entries["cfg"], "provider": "p", "disabled": True}
    assert "api_key" not in entries["cfg"]
    # a restart keeps both disabled
    assert ids(sched_for(path)) == {"cfg": "disabled", "k1": "disabled"}
    # the enable script edits the file; the running scheduler follows
    f.set_disabled("k1", "p", False)
    now[0] += 1.0
    assert ids(sched) == {"cfg": "disabled", "k1": "active"}


def test_oauth_account_needs_a_token_endpoint(tmp_path):
    path = tmp_path / "accounts.json"
    AccountsFile(str(path)).upsert({"id": "o1", "provider": "p", "refresh_token": "rt-0"})
    snap = sched_for(path).snapshot()
    o1 = next(a for a in snap if a["id"] == "o1")
    assert o1["state"] == "disabled" and "no token endpoint" in o1["disabled_reason"]
    # per-account token_url/client_id are enough
    AccountsFile(str(path)).upsert({"id": "o1", "provider": "p", "refresh_token": "rt-0",
                                    "token_url": "http://127.0.0.1:1/t", "client_id": "c"})
    o1 = next(a for a in sched_for(path).snapshot() if a["id"] == "o1")
    assert o1["state"] == "active"


def test_oauth_accounts_are_refused_in_the_config():
    with pytest.raises(ValueError, match="accounts file"):
        Scheduler([{"name": "p", "accounts": [{"id": "o", "refresh_token": "rt"}]}])


# -- several processes -----------------------------------------------------------------------------
CHILD = r"""
import asyncio, json, os, sys, time
sys.path.insert(0, os.environ["TP_ROOT"])

stage = os.environ.get("TP_TEST_KILL_AT")
if stage:
    # Test hook, in this child only: stall inside the Nth fsync so the parent can SIGKILL
    # us there. 1 = the temp file's fsync (before the rename), 2 = the directory's (after).
    real_fsync, seen = os.fsync, [0]
    def slow_fsync(fd):
        real_fsync(fd)
        seen[0] += 1
        if seen[0] == int(stage):
            open(os.environ["TP_MARK"], "w").write("stalled")
            time.sleep(60)
    os.fsync = slow_fsync

from tornado_proxy.accounts.scheduler import Scheduler

async def main():
    conf = [{"name": "p", "scheduler": {"oauth": {"token_url": os.environ["TP_TOKEN_URL"], "client_id": "c"}}}]
    sched = Scheduler(conf, accounts_file=os.environ["TP_ACCOUNTS"])
    go = os.environ.get("TP_GO")
    if go:  # line up with the other process
        open(go + "." + str(os.getpid()), "w").close()
        while not os.path.exists(go):
            await asyncio.sleep(0.01)
    lease = sched.acquire("p")
    await lease.prepare()
    print(json.dumps({"access": lease.account.api_key}), flush=True)
    lease.release()

asyncio.run(main())
"""


def child_env(tmp_path: Path, srv: TokenServer, **extra: str) -> dict[str, str]:
    return {**os.environ, "TP_ROOT": str(ROOT), "TP_TOKEN_URL": srv.url,
            "TP_ACCOUNTS": str(tmp_path / "accounts.json"), **extra}


def seed(tmp_path: Path, expires_in: float) -> AccountsFile:
    f = AccountsFile(str(tmp_path / "accounts.json"))
    f.upsert({"id": "o1", "provider": "p", "refresh_token": "rt-0", "access_token": "at-initial",
              "expires_at": time.time() + expires_in})
    return f


@pytest.mark.parametrize("name,stage,file_after_kill", [
    ("killed in the temp file's fsync, before the rename", "1", "old"),
    ("killed in the directory's fsync, after the rename", "2", "new"),
])
def test_killed_mid_write_the_file_is_intact_and_holds_a_usable_token(harness, tmp_path, name, stage,
                                                                       file_after_kill):
    srv = TokenServer().start(harness)
    f = seed(tmp_path, expires_in=60)  # inside refresh-ahead: the child refreshes, at-initial still valid
    mark = tmp_path / "mark"
    proc = subprocess.Popen([sys.executable, "-c", CHILD], env=child_env(tmp_path, srv, TP_TEST_KILL_AT=stage,
                                                                        TP_MARK=str(mark)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 20
        while not mark.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert mark.exists(), proc.stderr.read().decode() if proc.poll() is not None else "child never stalled"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert srv.calls == 1 and srv.current == "rt-1"  # rt-0 is spent for good
    # intact: valid JSON, a well-formed document, never half of one
    doc = doc_of(tmp_path / "accounts.json")
    entry = doc["accounts"][0]
    assert entry["access_token"] == {"old": "at-initial", "new": "at-1"}[file_after_kill]
    assert entry["access_token"] in srv.valid_access  # usable as it stands
    # The next process to load the file recovers the killed write: it holds the rotated
    # refresh token, the only one the endpoint still accepts.
    entry = f.load()["accounts"][0]
    assert (entry["access_token"], entry["refresh_token"]) == ("at-1", "rt-1")
    conf = [{"name": "p", "scheduler": {"oauth": {"token_url": srv.url, "client_id": "c"}}}]
    sched = harness.call(lambda: Scheduler(conf, accounts_file=str(tmp_path / "accounts.json")))
    assert prepared(harness, sched) == "at-1"  # fresh: no refresh needed
    f.save_tokens("o1", "at-1", "rt-1", time.time() + 10)  # due again: the rotated token refreshes fine
    sched = harness.call(lambda: Scheduler(conf, accounts_file=str(tmp_path / "accounts.json")))
    assert prepared(harness, sched) == "at-2"
    assert srv.calls == 2


def test_two_processes_refreshing_one_account_spend_one_refresh_token(harness, tmp_path):
    srv = TokenServer(delay=0.3).start(harness)
    seed(tmp_path, expires_in=-1)
    go = tmp_path / "go"
    env = child_env(tmp_path, srv, TP_GO=str(go))
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.time() + 20
    while len(list(tmp_path.glob("go.*"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=30) for p in procs]
    got = [json.loads(o)["access"] for o, _ in outs]
    assert got == ["at-1", "at-1"], [e for _, e in outs]
    assert srv.calls == 1
    entry = doc_of(tmp_path / "accounts.json")["accounts"][0]
    assert (entry["access_token"], entry["refresh_token"]) == ("at-1", "rt-1")
