"""Shared state end to end (issue #17): gateway processes that act as one.

Every check runs against the ``local`` store (SQLite) and a real ``redis-server``,
in two shapes: two separate gateway processes on one store (replicas behind a
load balancer; the test alternates between them) and one gateway with two workers
(each request a new connection, so the kernel deals them to both workers).  The
upstream is a fake OpenAI on loopback that answers per account key.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Recorded, Reply, fixture_bytes
from tests.e2e.processes import Gateway
from tests.state.conftest import RedisServer, need_redis
from tests.unit.test_oauth import TokenServer
from tornado_proxy.accounts.file import AccountsFile

ADMIN = "test-admin-token-state"
OK = fixture_bytes("openai/text.json")
SSE = fixture_bytes("openai/text.sse")
KEYS = {"a1": "test-key-state-a1", "a2": "test-key-state-a2", "a3": "test-key-state-a3"}
THREE = [{"id": aid, "api_key": key} for aid, key in KEYS.items()]


# -- plumbing -------------------------------------------------------------------------
def call(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 20) -> tuple[int, bytes, dict[str, str]]:
    """One request on a new connection (so a 2-worker gateway deals them to both)."""
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                         **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def chat(url: str, **headers: str) -> int:
    return call(url + "/v1/chat/completions", "POST", {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers)[0]


def admin(url: str, method: str, path: str) -> Any:
    status, body, _ = call(url + path, method, headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 200, body
    return json.loads(body)


def metric(url: str, line_start: str) -> float:
    status, body, _ = call(url + "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line {line_start}")


def success(aid: str) -> str:
    return f'tornado_proxy_account_requests_total{{account="{aid}",outcome="success",provider="up"}}'


def keys_seen(up: FakeUpstream, since: int = 0) -> list[str]:
    return [r.headers.get("authorization", "").removeprefix("Bearer ") for r in up.requests[since:]
            if r.path.endswith("/chat/completions")]


def answer(up: FakeUpstream, special: dict[str, Any] | None = None) -> None:
    """200 for every key (SSE when asked to stream) unless ``special`` says otherwise."""
    def pick(rec: Recorded) -> Reply:
        key = rec.headers.get("authorization", "").removeprefix("Bearer ")
        r = (special or {}).get(key)
        if r is not None:
            return r() if callable(r) else r
        if rec.body and json.loads(rec.body).get("stream"):
            return Reply.sse(SSE)
        return Reply(200, {"Content-Type": "application/json"}, OK)
    up.handler = pick


def config(up: FakeUpstream, state: dict[str, Any], accounts: list[dict[str, Any]] | None = None,
           **extra: Any) -> dict[str, Any]:
    prov: dict[str, Any] = {"name": "up", "type": "openai", "base_url": up.url + "/v1",
                            "accounts": THREE if accounts is None else accounts,
                            "timeouts": {"connect": 2, "first_byte": 10, "idle": 10},
                            "scheduler": {"strategy": "round_robin", **extra.pop("scheduler", {})}}
    return {"server": {"admin_token": ADMIN, "log_level": "info"}, "state": state, "providers": [prov],
            "models": [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}], **extra}


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """A fresh store per test: a directory, or a key prefix of the session's redis-server."""
    if request.param == "local":
        return {"store": "local", "path": str(tmp_path / "state")}
    need_redis()
    srv: RedisServer = request.getfixturevalue("redis_server")
    return {"store": "redis", "url": srv.url, "prefix": "{t-" + os.urandom(4).hex() + "}:"}


def start(tmp: Path, cfg: dict[str, Any], workers: int, stack: ExitStack) -> Gateway:
    g = Gateway(tmp, cfg, workers)
    stack.callback(g.kill_all)
    g.wait_ready(limit=40, workers=workers)
    return g


class Topology:
    """Two replicas (``urls`` alternate between them) or one 2-worker gateway."""

    def __init__(self, shape: str, tmp: Path, cfg: dict[str, Any], stack: ExitStack) -> None:
        self.shape, self.tmp, self.cfg, self.stack = shape, tmp, cfg, stack
        self.gateways: list[Gateway] = []
        if shape == "replicas":
            self.start(workers=1)
            self.start(workers=1)
        else:
            self.start(workers=2)

    def start(self, workers: int) -> Gateway:
        g = start(self.tmp, self.cfg, workers, self.stack)
        self.gateways.append(g)
        return g

    def logs(self) -> str:
        """Every gateway's stderr, for an assertion's message."""
        return "\n".join(f"--- {g.url}\n{g.stderr()}" for g in self.gateways)

    @property
    def urls(self) -> list[str]:
        gs = self.gateways
        return [gs[0].url, gs[-1].url]


@pytest.fixture(params=["replicas", "workers"])
def shape(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


def eventually(check: Any, limit: float = 5.0) -> Any:
    end = time.monotonic() + limit
    while True:
        got = check()
        if got or time.monotonic() > end:
            return got
        time.sleep(0.05)


# -- the checks ---------------------------------------------------------------------------
def responses_chain(urls: list[str], up: FakeUpstream, topo: "Topology", turns: int = 10) -> None:
    """Each turn goes to the other process; every turn's upstream request carries the
    whole conversation, so each process found the previous turn made by the other."""
    prev = None
    for i in range(turns):
        url = urls[i % 2]
        body: dict[str, Any] = {"model": "m", "input": f"turn {i}", "stream": i % 3 == 1}
        if prev is not None:
            body["previous_response_id"] = prev
        status, raw, _ = call(url + "/v1/responses", "POST", body)
        assert status == 200, (raw, topo.logs())
        if body["stream"]:
            done = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
            assert done[-1]["type"] == "response.completed"
            prev = done[-1]["response"]["id"]
        else:
            prev = json.loads(raw)["id"]
        sent = json.loads(up.requests[-1].body)["messages"]
        assert len(sent) == 2 * i + 1, f"turn {i}: the upstream got {len(sent)} messages"
        assert sent[-1]["content"] == f"turn {i}"
    # made on one, read on the other (every time: several connections for the workers)
    for _ in range(6):
        status, raw, _ = call(urls[1] + f"/v1/responses/{prev}")
        assert status == 200 and json.loads(raw)["id"] == prev, (raw, topo.logs())


def test_processes_act_as_one_gateway(harness: LoopThread, tmp_path: Path, store: dict[str, Any], shape: str,
                                      stack: ExitStack) -> None:
    up = harness.upstream()
    special: dict[str, Any] = {}
    answer(up, special)
    topo = Topology(shape, tmp_path, config(up, store), stack)
    urls = topo.urls

    # 1. a Responses chain alternating between processes, and GET of one made elsewhere
    responses_chain(urls, up, topo)

    # 2. a 429 learned by one process is honoured by all: a2 is asked once, then never
    special[KEYS["a2"]] = lambda: Reply.json({"error": {"message": "Rate limit reached"}}, 429, {"retry-after": "120"})
    n0 = len(up.requests)
    assert chat(urls[0], **{"x-auth-id": "a2"}) == 200  # 429 on a2, failed over
    assert keys_seen(up, n0)[0] == KEYS["a2"]
    time.sleep(1.0)
    n1 = len(up.requests)
    for i in range(12):
        assert chat(urls[i % 2]) == 200
    assert KEYS["a2"] not in keys_seen(up, n1)
    for u in urls * 2:
        assert admin(u, "GET", "/admin/accounts/a2")["account"]["state"] == "cooling"

    # 3. an admin disable on one process is honoured everywhere within a second
    assert admin(urls[0], "POST", "/admin/accounts/a1/disable")["account"]["state"] == "disabled"
    time.sleep(1.0)
    n2 = len(up.requests)
    for i in range(12):
        assert chat(urls[i % 2]) == 200
    assert set(keys_seen(up, n2)) == {KEYS["a3"]}
    for u in urls * 2:
        assert admin(u, "GET", "/admin/accounts/a1")["account"]["state"] == "disabled"

    # 4. account metrics: the same, non-decreasing numbers from every scrape anywhere
    seen = []
    for i in range(10):
        assert chat(urls[i % 2]) == 200
        seen.append(metric(urls[(i + 1) % 2], success("a3")))
    assert seen == sorted(seen), seen
    time.sleep(0.6)  # the last counts reach the store on the next sync tick
    expect = float(keys_seen(up).count(KEYS["a3"]))
    assert [metric(u, success("a3")) for u in urls * 3] == [expect] * 6


def test_one_refresh_per_rotation_under_concurrent_load(harness: LoopThread, tmp_path: Path,
                                                        store: dict[str, Any], shape: str, stack: ExitStack) -> None:
    # Tokens live 302 s and are refreshed 300 s before expiry: a rotation every 2 s.
    srv = TokenServer(ttl=302, delay=0.05).start(harness)
    up = harness.upstream()

    def by_token(rec: Recorded) -> Reply:
        tok = rec.headers.get("authorization", "").removeprefix("Bearer ")
        if tok in srv.valid_access and tok != "at-initial":
            return Reply(200, {"Content-Type": "application/json"}, OK)
        return Reply.json({"error": {"message": "invalid access token"}}, 401)
    up.handler = by_token
    files = [tmp_path / "a" / "accounts.json", tmp_path / "b" / "accounts.json"]
    for f in files:
        f.parent.mkdir()
        AccountsFile(str(f)).upsert({"id": "o1", "provider": "up", "refresh_token": "rt-0",
                                     "access_token": "at-initial", "expires_at": time.time() - 5})
    cfg = config(up, store, accounts=[], scheduler={"oauth": {"token_url": srv.url, "client_id": "c1"}})
    if store["store"] == "redis" and shape == "replicas":
        # replicas with a file each: only the store can tell one the other rotated
        cfg_a = {**cfg, "accounts_file": str(files[0])}
        cfg_b = {**cfg, "accounts_file": str(files[1])}
        gws = [start(tmp_path, c, 1, stack) for c in (cfg_a, cfg_b)]
        urls = [g.url for g in gws]
    else:
        topo = Topology(shape, tmp_path, {**cfg, "accounts_file": str(files[0])}, stack)
        gws, urls = topo.gateways, topo.urls
    statuses: list[int] = []
    lock = threading.Lock()
    end = time.monotonic() + 5.0

    def load(url: str) -> None:
        while time.monotonic() < end:
            s = chat(url)
            with lock:
                statuses.append(s)

    threads = [threading.Thread(target=load, args=(urls[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # (on failure: each gateway's log without its access lines, which would drown the rest)
    logs = "\n".join(f"--- {g.url}\n" + "\n".join(line for line in g.stderr().splitlines()
                                                if "access:" not in line)[-4000:] for g in gws)
    assert statuses and set(statuses) == {200}, ({s: statuses.count(s) for s in set(statuses)}, logs)
    used = [b["refresh_token"] for b in srv.bodies]
    assert len(used) >= 2, used           # it did rotate under the load...
    assert len(used) == len(set(used)), used  # ...and no refresh token was spent twice
    assert srv.calls == len(used) == int(srv.current.split("-")[1])


def test_store_down_mid_traffic_fails_no_request_and_catches_up(harness: LoopThread, tmp_path: Path,
                                                                 stack: ExitStack) -> None:
    need_redis()
    redis = RedisServer(tmp_path).start()
    stack.callback(redis.kill)
    up = harness.upstream()
    answer(up)
    state = {"store": "redis", "url": redis.url, "timeout": 0.5}
    topo = Topology("replicas", tmp_path, config(up, state), stack)
    urls = topo.urls
    up_line = 'tornado_proxy_state_store_up{store="redis"}'
    assert [metric(u, up_line) for u in urls] == [1.0, 1.0]
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            statuses.append(chat(urls[i % 2]))
            i += 1
            time.sleep(0.01)

    t = threading.Thread(target=traffic)
    t.start()
    try:
        time.sleep(0.5)
        redis.kill()
        assert eventually(lambda: [metric(u, up_line) for u in urls] == [0.0, 0.0], 5)
        for u in urls:  # degraded, not unready
            assert call(u + "/health/ready")[0] == 200
        # an admin action while the store is away is kept, and shared once it is back
        assert admin(urls[0], "POST", "/admin/accounts/a1/disable")["account"]["state"] == "disabled"
        time.sleep(0.5)
        redis.start()
        assert eventually(lambda: [metric(u, up_line) for u in urls] == [1.0, 1.0], 10)
        # traffic on both sides of the outage, however quickly the store went and came back
        n = len(statuses)
        assert eventually(lambda: len(statuses) >= n + 10, 10)
    finally:
        stop.set()
        t.join(30)
    assert len(statuses) > 20 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert eventually(lambda: admin(urls[1], "GET", "/admin/accounts/a1")["account"]["state"] == "disabled", 3)
    assert metric(urls[0], 'tornado_proxy_state_store_errors_total{store="redis"}') >= 1
    logs = topo.gateways[0].stderr()
    assert logs.count("state store (redis) unavailable") == 1, logs  # logged once, not per request


def test_state_survives_a_restart(harness: LoopThread, tmp_path: Path, store: dict[str, Any],
                                  stack: ExitStack) -> None:
    up = harness.upstream()
    answer(up)
    cfg = config(up, store)
    topo = Topology("workers", tmp_path, cfg, stack)
    url = topo.urls[0]
    status, raw, _ = call(url + "/v1/responses", "POST", {"model": "m", "input": "remember me"})
    assert status == 200
    rid = json.loads(raw)["id"]
    admin(url, "POST", "/admin/accounts/a1/disable")
    for _ in range(6):
        assert chat(url) == 200
    time.sleep(0.6)
    before = metric(url, success("a2"))
    assert before >= 1
    g = topo.gateways[0]
    os.killpg(g.pgid, signal.SIGTERM)
    g.proc.wait(30)
    g2 = topo.start(workers=2)
    assert admin(g2.url, "GET", "/admin/accounts/a1")["account"]["state"] == "disabled"
    status, raw, _ = call(g2.url + f"/v1/responses/{rid}")
    assert status == 200 and json.loads(raw)["id"] == rid, (raw, topo.logs())
    assert metric(g2.url, success("a2")) == before  # counters go on from where they were
    n0 = len(up.requests)
    for _ in range(6):
        assert chat(g2.url) == 200
    assert KEYS["a1"] not in keys_seen(up, n0)
