"""Issue #17's scheduler policies end to end: the real gateway, a fake upstream on
loopback that answers per account key, driven by the official SDKs.  Where a policy
must hold across replicas, two gateways share one ``local`` store (one SQLite file),
as two processes of a machine do."""
from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import anthropic
import openai
import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Recorded, Reply, fixture_bytes
from tests.e2e.test_accounts_e2e import ADMIN, MSGS, accounts, admin, keys_seen
from tests.state.conftest import RedisServer, need_redis
from tests.unit.test_accounts_cli import ACCOUNTS
from tests.unit.test_oauth import TokenServer
from tornado_proxy.accounts.file import AccountsFile

OK_BODY = fixture_bytes("openai/text.json")


def ok() -> Reply:
    return Reply(200, {"Content-Type": "application/json"}, OK_BODY)


def by_key(up: FakeUpstream, replies: dict[str, Any]) -> None:
    """Each request is answered by the key it carries (a callable: a fresh Reply each time)."""
    def pick(rec: Recorded) -> Reply | None:
        key = rec.headers.get("authorization", "").removeprefix("Bearer ") or rec.headers.get("x-api-key", "")
        r = replies.get(key)
        return r() if callable(r) else r
    up.handler = pick


def openai_gateway(harness: LoopThread, up: FakeUpstream, keys: dict[str, str], scheduler: dict[str, Any] | None = None,
                   state: dict[str, Any] | None = None) -> Any:
    prov = {"name": "up", "type": "openai", "base_url": up.url + "/v1",
            "accounts": [{"id": aid, "api_key": key} for aid, key in keys.items()],
            "timeouts": {"connect": 2, "first_byte": 5, "idle": 5}, "scheduler": scheduler or {}}
    cfg: dict[str, Any] = {"server": {"admin_token": ADMIN}, "providers": [prov],
                           "models": [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}]}
    if state is not None:
        cfg["state"] = state
    return harness.gateway(cfg)


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)


def eventually(check: Callable[[], Any], limit: float = 3.0) -> Any:
    end = time.monotonic() + limit
    while True:
        got = check()
        if got or time.monotonic() > end:
            return got
        time.sleep(0.05)


@pytest.fixture(params=["local", "redis"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A ``state`` block two gateways share: one SQLite file, or a real redis-server."""
    if request.param == "local":
        yield {"store": "local", "path": str(tmp_path / "state")}
        return
    need_redis()
    srv = RedisServer(tmp_path).start()
    try:
        yield {"store": "redis", "url": srv.url, "prefix": "{t-" + os.urandom(4).hex() + "}:"}
    finally:
        srv.kill()


# -- 1. one account never bricks itself ---------------------------------------------------------
def test_a_lone_account_in_error_backoff_still_serves(harness: LoopThread, shared: dict[str, Any]) -> None:
    up = harness.upstream()
    by_key(up, {"test-key-solo": lambda: Reply.json({"error": {"message": "upstream fell over"}}, 500)})
    state = shared
    sched = {"errors_before_cooldown": 1, "backoff_base": 60}
    gw = openai_gateway(harness, up, {"solo": "test-key-solo"}, sched, state)
    other = openai_gateway(harness, up, {"solo": "test-key-solo"}, sched, state)  # a replica
    c = client(gw)
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="m", messages=MSGS)
    acc = accounts(gw)["solo"]
    assert (acc["state"], acc["cooldown_kind"]) == ("cooling", "health") and acc["cooldown_s"] > 50
    assert eventually(lambda: accounts(other)["solo"]["state"] == "cooling")
    # The upstream is back: the next request reaches it (it was a 503 no_usable_account
    # for the next minute), and its success ends the backoff here and on the replica.
    by_key(up, {"test-key-solo": ok})
    r = c.chat.completions.create(model="m", messages=MSGS)
    assert r.choices[0].message.content == "Hello! How can I help you today?"
    assert len(up.requests) == 2
    assert accounts(gw)["solo"]["state"] == "active"
    assert eventually(lambda: accounts(other)["solo"]["state"] == "active")


def test_an_operator_disable_is_never_overridden(harness: LoopThread) -> None:
    up = harness.upstream()
    by_key(up, {"test-key-solo": ok})
    gw = openai_gateway(harness, up, {"solo": "test-key-solo"})
    admin(gw, "POST", "/admin/accounts/solo/disable", body={"reason": "rotating keys"})
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="m", messages=MSGS)
    assert e.value.status_code == 503 and e.value.code == "no_usable_account"
    assert up.requests == []


# -- 2. a rate-limited pool answers 429 -------------------------------------------------------------
def test_a_rate_limited_pool_is_a_429_on_the_openai_route(harness: LoopThread) -> None:
    up = harness.upstream()
    by_key(up, {"test-key-a1": lambda: Reply.json({"error": {"message": "Rate limit reached"}}, 429,
                                                  {"retry-after": "40"}),
                "test-key-a2": lambda: Reply.json({"error": {"message": "Rate limit reached"}}, 429, {
                    "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "12.4s"})})
    gw = openai_gateway(harness, up, {"a1": "test-key-a1", "a2": "test-key-a2"})
    c = client(gw)
    with pytest.raises(openai.RateLimitError):  # both tried: the last upstream answer
        c.chat.completions.create(model="m", messages=MSGS)
    assert len(up.requests) == 2
    with pytest.raises(openai.RateLimitError) as e:  # the pool is known to be limited: no upstream call
        c.chat.completions.create(model="m", messages=MSGS)
    assert len(up.requests) == 2
    assert e.value.response.headers["retry-after"] == "13"  # 12.4 s, rounded up
    body = e.value.response.json()["error"]
    assert (body["type"], body["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "all 2 of its accounts are cooling down after rate limits; the pool is back in 13 s" in body["message"]


def test_a_rate_limited_pool_is_a_429_on_the_anthropic_route(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = Reply.json({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request "
                             "tokens has exceeded your per-minute rate limit"}}, 429, {"retry-after": "20"})
    prov = {"name": "anth", "type": "anthropic", "base_url": up.url,
            "accounts": [{"id": "acct-1", "api_key": "test-key-anthropic"}],
            "timeouts": {"connect": 2, "first_byte": 5, "idle": 5}}
    gw = harness.gateway({"server": {"admin_token": ADMIN}, "providers": [prov], "models": [
        {"id": "claude", "provider": "anth", "upstream_model": "claude-sonnet-4-20250514", "max_tokens": 64}]})
    c = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)
    with pytest.raises(anthropic.RateLimitError):
        c.messages.create(model="claude", max_tokens=64, messages=MSGS)
    with pytest.raises(anthropic.RateLimitError) as e:
        c.messages.create(model="claude", max_tokens=64, messages=MSGS)
    assert len(up.requests) == 1
    assert e.value.response.headers["retry-after"] == "20"
    body = e.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "its account is cooling down after rate limits; the pool is back in 20 s" in body["error"]["message"]


# -- 3. accounts the 401/403 counter disabled are re-probed ------------------------------------------
def test_an_auth_outage_heals_without_an_operator_on_every_replica(harness: LoopThread,
                                                                   shared: dict[str, Any]) -> None:
    up = harness.upstream()
    replies: dict[str, Any] = {"test-key-a1": lambda: Reply.json({"error": {"message": "Incorrect API key"}}, 401),
                               "test-key-a2": ok}
    by_key(up, replies)
    keys = {"a1": "test-key-a1", "a2": "test-key-a2"}
    sched = {"strategy": "round_robin", "disable_after": 1, "auth_reprobe_base": 1.0, "auth_reprobe_max": 60}
    gw = openai_gateway(harness, up, keys, sched, shared)
    other = openai_gateway(harness, up, keys, sched, shared)
    c, c2 = client(gw), client(other)
    c.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-auth-id": "a1"})  # 401, failed over
    acc = accounts(gw)["a1"]
    assert (acc["state"], acc["disabled_by"]) == ("disabled", "auth") and 0 < acc["reprobe_in_s"] <= 1
    assert eventually(lambda: accounts(other)["a1"]["disabled_by"] == "auth")
    # the outage goes on: the first re-probe (on the replica) fails, and the next waits twice as long
    time.sleep(1.1)
    n0 = len(up.requests)
    for _ in range(3):
        c2.chat.completions.create(model="m", messages=MSGS)
    assert keys_seen(up)[n0:].count("test-key-a1") == 1
    assert 1 < accounts(other)["a1"]["reprobe_in_s"] <= 2
    assert eventually(lambda: 1 < (accounts(gw)["a1"]["reprobe_in_s"] or 0) <= 2)  # shared: no double probe
    # the key works again: the next re-probe passes and the account is back everywhere
    replies["test-key-a1"] = ok
    time.sleep(2.1)
    n1 = len(up.requests)
    for _ in range(4):
        c.chat.completions.create(model="m", messages=MSGS)
    assert "test-key-a1" in keys_seen(up)[n1:]
    assert accounts(gw)["a1"]["state"] == "active"
    assert eventually(lambda: accounts(other)["a1"]["state"] == "active")


def test_an_operator_disable_is_never_re_probed(harness: LoopThread) -> None:
    up = harness.upstream()
    by_key(up, {"test-key-a1": ok, "test-key-a2": ok})
    gw = openai_gateway(harness, up, {"a1": "test-key-a1", "a2": "test-key-a2"},
                        {"strategy": "round_robin", "auth_reprobe_base": 0.2})
    admin(gw, "POST", "/admin/accounts/a1/disable")
    time.sleep(0.5)
    for _ in range(6):
        client(gw).chat.completions.create(model="m", messages=MSGS)
    assert set(keys_seen(up)) == {"test-key-a2"}
    assert accounts(gw)["a1"]["reprobe_in_s"] is None


# -- 4. passive quota headers -----------------------------------------------------------------------
def unified(utilization_5h: float) -> dict[str, str]:
    """Anthropic's unified-limit headers, as a subscription account gets them on every answer."""
    reset = str(int(time.time()) + 3600)
    return {"anthropic-ratelimit-unified-status": "allowed",
            "anthropic-ratelimit-unified-representative-claim": "five_hour",
            "anthropic-ratelimit-unified-reset": reset,
            "anthropic-ratelimit-unified-5h-status": "allowed", "anthropic-ratelimit-unified-5h-reset": reset,
            "anthropic-ratelimit-unified-5h-utilization": str(utilization_5h),
            "anthropic-ratelimit-unified-7d-status": "allowed",
            "anthropic-ratelimit-unified-7d-reset": str(int(time.time()) + 86400 * 3),
            "anthropic-ratelimit-unified-7d-utilization": "0.2"}


def test_accounts_with_quota_headroom_get_more_of_the_traffic(harness: LoopThread) -> None:
    up = harness.upstream()
    message = fixture_bytes("anthropic/message.json")
    by_key(up, {
        "test-key-busy": lambda: Reply(200, {"Content-Type": "application/json", **unified(0.9)}, message),
        "test-key-idle": lambda: Reply(200, {"Content-Type": "application/json", **unified(0.1)}, message)})
    prov = {"name": "anth", "type": "anthropic", "base_url": up.url,
            "accounts": [{"id": "busy", "api_key": "test-key-busy"}, {"id": "idle", "api_key": "test-key-idle"}],
            "timeouts": {"connect": 2, "first_byte": 5, "idle": 5}}
    gw = harness.gateway({"server": {"admin_token": ADMIN}, "providers": [prov], "models": [
        {"id": "claude", "provider": "anth", "upstream_model": "claude-sonnet-4-20250514", "max_tokens": 64}]})
    c = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)
    for _ in range(40):
        assert c.messages.create(model="claude", max_tokens=64, messages=MSGS).content
    seen = [r.headers.get("x-api-key") for r in up.requests]
    busy = seen[2:].count("test-key-busy")  # after each account's first answer
    assert 2 <= busy <= 10, seen  # about 0.19 / (0.19 + 0.91) of 38: less, not none
    acc = accounts(gw)
    assert acc["busy"]["headroom"] == pytest.approx(0.1) and acc["idle"]["headroom"] == pytest.approx(0.8)
    assert acc["busy"]["quota_used"] == {"unified_5h": 0.9, "unified_7d": 0.2}
    text = gw.metrics_text()
    assert 'tornado_proxy_account_quota_headroom_ratio{account="busy",provider="anth"} 0.1' in text
    assert 'tornado_proxy_account_quota_used_ratio{account="idle",provider="anth",window="unified_5h"} 0.1' in text
    assert "test-key" not in text


# -- 5. a spent refresh token ----------------------------------------------------------------------
def oauth_gateway(harness: LoopThread, tmp_path: Path, token_url: str, up: FakeUpstream,
                  refresh_token: str = "rt-0") -> tuple[Any, Path]:
    path = tmp_path / "accounts.json"
    AccountsFile(str(path)).upsert({"id": "o1", "provider": "up", "refresh_token": refresh_token,
                                    "access_token": "at-initial", "expires_at": time.time() - 5})
    prov = {"name": "up", "type": "openai", "base_url": up.url + "/v1", "accounts": [],
            "timeouts": {"connect": 2, "first_byte": 5, "idle": 5},
            "scheduler": {"oauth": {"token_url": token_url, "client_id": "client-1"}, "auth_reprobe_base": 0.1}}
    cfg = {"server": {"admin_token": ADMIN}, "providers": [prov], "accounts_file": str(path),
           "models": [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}]}
    return harness.gateway(cfg), path


def file_entry(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())["accounts"][0]  # type: ignore[no-any-return]


def test_a_spent_refresh_token_says_re_authorise_everywhere(harness: LoopThread, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    srv = TokenServer(first_refresh="rt-7").start(harness)  # it rotated past the file's rt-0: the answer was lost
    up = harness.upstream()
    by_key(up, {"at-8": ok})
    gw, path = oauth_gateway(harness, tmp_path, srv.url, up)
    c = client(gw)
    with pytest.raises(openai.APIStatusError):
        c.chat.completions.create(model="m", messages=MSGS)
    acc = accounts(gw)["o1"]
    assert acc["state"] == "disabled" and acc["disabled_by"] == "refresh"
    assert acc["disabled_reason"].startswith("refresh token was spent; re-authorise: token endpoint answered "
                                             "400 invalid_grant")
    # the status page and the CLI say so too
    status_page = urllib.request.urlopen(urllib.request.Request(
        gw.url + "/admin/", headers={"Authorization": f"Bearer {ADMIN}"})).read().decode()
    assert "refresh token was spent; re-authorise" in status_page
    monkeypatch.setenv("TORNADO_PROXY_ADMIN_TOKEN", ADMIN)
    capsys.readouterr()
    assert ACCOUNTS.main(["list", "--url", gw.url]) == 0
    assert "refresh token was spent; re-authorise" in capsys.readouterr().out
    assert eventually(lambda: file_entry(path).get("disabled_by") == "refresh")
    # never re-probed nor rescued: a new login is the only way back
    time.sleep(0.3)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="m", messages=MSGS)
    assert e.value.status_code == 503 and srv.calls == 1 and up.requests == []


def test_the_rotated_refresh_token_is_on_disk_before_the_access_token_is_used(harness: LoopThread,
                                                                             tmp_path: Path) -> None:
    srv = TokenServer().start(harness)
    up = harness.upstream()
    on_disk: list[str] = []
    path_box: list[Path] = []

    def answer(rec: Recorded) -> Reply:
        on_disk.append(file_entry(path_box[0])["refresh_token"])  # what a kill -9 now would leave
        return ok()
    up.handler = answer
    gw, path = oauth_gateway(harness, tmp_path, srv.url, up)
    path_box.append(path)
    assert client(gw).chat.completions.create(model="m", messages=MSGS).choices
    assert srv.calls == 1 and on_disk == ["rt-1"]


@pytest.mark.allow_error_log  # the failed save is an error the operator must see
def test_a_rotation_the_file_could_not_take_is_saved_on_the_next_request(harness: LoopThread,
                                                                         tmp_path: Path) -> None:
    tok = harness.upstream()
    issued: list[str] = []
    tmp_file = tmp_path / ".accounts.json.tmp"

    def rotate(rec: Recorded) -> Reply:
        # the disk fails just as the endpoint rotates: the temp file cannot be written
        tmp_file.mkdir()
        issued.append("rt-1")
        return Reply.json({"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600})
    tok.handler = rotate
    up = harness.upstream()
    by_key(up, {"at-1": ok})
    gw, path = oauth_gateway(harness, tmp_path, tok.url + "/oauth/token", up)
    c = client(gw)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="m", messages=MSGS)
    assert e.value.status_code == 502 and "could not save the rotated tokens" in e.value.message
    assert up.requests == []  # the access token was not used before it was saved
    tmp_file.rmdir()  # the disk is back
    assert c.chat.completions.create(model="m", messages=MSGS).choices
    assert len(tok.requests) == 1  # not refreshed again with the spent rt-0
    assert keys_seen(up) == ["at-1"] and file_entry(path)["refresh_token"] == "rt-1"
    assert accounts(gw)["o1"]["state"] == "active"



# -- 6. prompt_cache_key pins -----------------------------------------------------------------------
def stored_bytes(state: dict[str, Any]) -> bytes:
    """Everything the shared store holds, raw: the SQLite files, or every value under the prefix."""
    if state["store"] == "local":
        return b"".join(p.read_bytes() for p in Path(state["path"]).glob("state.db*"))
    import redis

    r = redis.Redis.from_url(state["url"])
    out = []
    for k in r.scan_iter(match=state["prefix"] + "*"):
        t = r.type(k)
        out.append(k)
        if t == b"string":
            out.append(r.get(k) or b"")
        elif t == b"hash":
            out.extend(b"%s=%s" % kv for kv in r.hgetall(k).items())
    r.close()
    return b"\n".join(out)


def test_prompt_cache_key_pins_a_conversation_on_every_replica(harness: LoopThread, shared: dict[str, Any]) -> None:
    up = harness.upstream()
    by_key(up, {f"test-key-a{i}": ok for i in (1, 2, 3)})
    keys = {f"a{i}": f"test-key-a{i}" for i in (1, 2, 3)}
    gw = openai_gateway(harness, up, keys, state=shared)
    other = openai_gateway(harness, up, keys, state=shared)
    c, c2 = client(gw), client(other)
    secret = "conv-7f3a-tenant-secret"
    for _ in range(2):  # move gw's rotation along, so that its pick differs from the replica's first
        c.chat.completions.create(model="m", messages=MSGS)
    c.chat.completions.create(model="m", messages=MSGS, extra_body={"prompt_cache_key": secret})
    pinned = keys_seen(up)[-1]
    assert pinned == "test-key-a3"
    time.sleep(1.0)  # published within a second
    n0 = len(up.requests)
    for i in range(6):  # chat and Responses, on both replicas
        cl = (c, c2)[i % 2]
        if i % 3 == 2:
            cl.responses.create(model="m", input="and now?", store=False, extra_body={"prompt_cache_key": secret})
        else:
            cl.chat.completions.create(model="m", messages=MSGS, extra_body={"prompt_cache_key": secret})
    assert keys_seen(up)[n0:] == [pinned] * 6
    # its account goes away: the conversation moves, and the new pin holds everywhere
    admin(gw, "POST", "/admin/accounts/a3/disable")
    time.sleep(1.0)
    c2.chat.completions.create(model="m", messages=MSGS, extra_body={"prompt_cache_key": secret})
    moved = keys_seen(up)[-1]
    assert moved != pinned
    time.sleep(1.0)
    n1 = len(up.requests)
    for i in range(4):
        (c, c2)[i % 2].chat.completions.create(model="m", messages=MSGS, extra_body={"prompt_cache_key": secret})
    assert set(keys_seen(up)[n1:]) == {moved}
    # the key is client data: only its digest reaches the store
    assert secret.encode() not in stored_bytes(shared)
