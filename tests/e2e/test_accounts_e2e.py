"""Accounts end to end: the real gateway, fake upstreams on loopback that answer per
account (by the key they receive), the admin API, /metrics and the accounts file."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Recorded, Reply, fixture_bytes, openai_provider, simple_config
from tests.unit.test_oauth import TokenServer
from tornado_proxy.accounts.file import AccountsFile

MSGS = [{"role": "user", "content": "Say hello"}]
ADMIN = "test-admin-token-123"
OK_BODY = fixture_bytes("openai/text.json")


def ok() -> Reply:
    return Reply(200, {"Content-Type": "application/json"}, OK_BODY)


def by_key(up: FakeUpstream, replies: dict[str, Any]) -> None:
    """Answer each request by the account key it carries (a callable gives a fresh Reply)."""
    def pick(rec: Recorded) -> Reply | None:
        r = replies.get(rec.headers.get("authorization", "").removeprefix("Bearer "))
        return r() if callable(r) else r
    up.handler = pick


def keys_seen(up: FakeUpstream) -> list[str]:
    return [r.headers["authorization"].removeprefix("Bearer ") for r in up.requests]


def gateway(harness: LoopThread, up: FakeUpstream, accounts: list[dict[str, Any]], scheduler: dict[str, Any] | None = None,
            **server: Any) -> Any:
    prov = openai_provider(up, accounts=accounts, timeouts={"connect": 2, "first_byte": 5, "idle": 5},
                           scheduler=scheduler or {})
    server.setdefault("admin_token", ADMIN)
    return harness.gateway(simple_config([prov], [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}],
                                         **server))


def client(gw: Any, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20, **kw)


def admin(gw: Any, method: str, path: str, token: str | None = ADMIN, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(gw.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def accounts(gw: Any) -> dict[str, dict[str, Any]]:
    status, body = admin(gw, "GET", "/admin/accounts")
    assert status == 200
    return {a["id"]: a for a in body["accounts"]}


def metric(gw: Any, line_start: str) -> float:
    for line in gw.metrics_text().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line {line_start}")


TWO = [{"id": "a1", "api_key": "test-key-a1"}, {"id": "a2", "api_key": "test-key-a2"}]


@pytest.mark.parametrize("name,reply_429,cooldown", [
    ("openai reset header", lambda: Reply.json({"error": {"message": "Rate limit reached for requests"}}, 429, {
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s",
        "x-ratelimit-remaining-tokens": "9000", "x-ratelimit-reset-tokens": "2s"}), 360.0),
    ("retry-after", lambda: Reply.json({"error": {"message": "slow down"}}, 429, {"retry-after": "42"}), 42.0),
])
def test_429_with_a_reset_time_fails_over_and_cools_down(harness: LoopThread, name, reply_429, cooldown) -> None:
    up = harness.upstream()
    by_key(up, {"test-key-a1": reply_429, "test-key-a2": ok})
    gw = gateway(harness, up, TWO, {"strategy": "round_robin"})
    c = client(gw)
    for _ in range(4):  # every request succeeds; a1 is tried once, then left alone
        r = c.chat.completions.create(model="m", messages=MSGS)
        assert r.choices[0].message.content == "Hello! How can I help you today?"
    assert keys_seen(up) == ["test-key-a1", "test-key-a2", "test-key-a2", "test-key-a2", "test-key-a2"]
    acc = accounts(gw)
    assert acc["a1"]["state"] == "cooling" and acc["a1"]["cooldown_s"] == pytest.approx(cooldown, abs=3)
    assert acc["a1"]["last_status"] == 429 and acc["a1"]["requests"]["rate_limited"] == 1
    assert acc["a2"]["state"] == "active" and acc["a2"]["requests"]["success"] == 4
    assert "test-key" not in json.dumps(acc)  # masked
    assert metric(gw, 'tornado_proxy_account_state{account="a1",provider="up",state="cooling"}') == 1.0
    assert metric(gw, 'tornado_proxy_account_state{account="a2",provider="up",state="active"}') == 1.0
    assert metric(gw, 'tornado_proxy_account_requests_total{account="a1",outcome="rate_limited",provider="up"}') == 1
    assert metric(gw, 'tornado_proxy_account_cooldown_seconds{account="a1",provider="up"}') > cooldown - 5
    assert metric(gw, 'tornado_proxy_failovers_total{provider="up"}') == 1
    # the operator ends the cooldown: the next request is a1's probe, and it passes
    by_key(up, {"test-key-a1": ok, "test-key-a2": ok})
    assert admin(gw, "POST", "/admin/accounts/a1/probe")[1]["account"]["state"] == "probing"
    c.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-auth-id": "a1"})
    assert accounts(gw)["a1"]["state"] == "active"


def test_all_accounts_cooling_gives_the_client_a_retry_after(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = Reply.json({"error": {"message": "Rate limit reached"}}, 429, {"retry-after": "20"})
    gw = gateway(harness, up, TWO)
    c = client(gw)
    with pytest.raises(openai.RateLimitError) as e:  # both tried: the last upstream error, mapped
        c.chat.completions.create(model="m", messages=MSGS)
    assert e.value.response.headers["retry-after"] == "20"
    assert len(up.requests) == 2
    with pytest.raises(openai.RateLimitError) as e2:  # nothing left to try: no upstream call at all
        c.chat.completions.create(model="m", messages=MSGS)
    assert e2.value.status_code == 429 and e2.value.code == "rate_limit_exceeded"
    assert 18 <= int(e2.value.response.headers["retry-after"]) <= 20
    assert len(up.requests) == 2


def test_401s_disable_an_account_which_stays_visible_until_enabled(harness: LoopThread) -> None:
    up = harness.upstream()
    by_key(up, {"test-key-a1": lambda: Reply.json({"error": {"message": "Incorrect API key provided"}}, 401),
                "test-key-a2": ok})
    gw = gateway(harness, up, TWO, {"strategy": "round_robin", "disable_after": 2})
    c = client(gw)
    for _ in range(5):
        assert c.chat.completions.create(model="m", messages=MSGS).choices
    assert keys_seen(up).count("test-key-a1") == 2  # disabled after the second, never tried again
    acc = accounts(gw)["a1"]
    assert acc["state"] == "disabled" and "2 auth failures" in acc["disabled_reason"]
    assert metric(gw, 'tornado_proxy_account_state{account="a1",provider="up",state="disabled"}') == 1.0
    # /health/ready is still fine: a2 serves
    assert urllib.request.urlopen(gw.url + "/health/ready").status == 200
    by_key(up, {"test-key-a1": ok, "test-key-a2": ok})
    status, body = admin(gw, "POST", "/admin/accounts/a1/enable")
    assert status == 200 and body["account"]["state"] == "active"
    c.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-auth-id": "a1"})
    assert keys_seen(up)[-1] == "test-key-a1"


def test_402_disables_at_once_and_strict_pinning_refuses_to_move(harness: LoopThread) -> None:
    up = harness.upstream()
    by_key(up, {"test-key-a1": lambda: Reply.json({"error": {"message": "Insufficient credit"}}, 402),
                "test-key-a2": ok})
    gw = gateway(harness, up, TWO)
    c = client(gw)
    r = c.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-auth-id": "a1"})
    assert r.choices and keys_seen(up) == ["test-key-a1", "test-key-a2"]  # the pin failed over
    assert accounts(gw)["a1"]["state"] == "disabled"
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-auth-id": "a1", "x-auth-strict": "1"})
    assert e.value.status_code == 503 and "pinned account 'a1'" in e.value.message
    with pytest.raises(openai.BadRequestError) as e2:
        c.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-auth-id": "nobody"})
    assert "no account 'nobody'" in e2.value.message
    assert len(up.requests) == 2


def test_admin_api_needs_the_admin_token_not_an_access_key(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = gateway(harness, up, TWO, access_keys=["gw-access-key-1"])
    assert admin(gw, "GET", "/admin/accounts", token=None)[0] == 401
    assert admin(gw, "GET", "/admin/accounts", token="gw-access-key-1")[0] == 401
    status, body = admin(gw, "GET", "/admin/accounts")
    assert status == 200 and sorted(a["id"] for a in body["accounts"]) == ["a1", "a2"]
    assert admin(gw, "GET", "/admin/accounts/zz")[0] == 404
    assert admin(gw, "POST", "/admin/accounts/a2/disable", body={"reason": "rotating keys"})[1]["account"][
        "disabled_reason"] == "rotating keys"
    assert admin(gw, "GET", "/admin/accounts/a2")[1]["account"]["state"] == "disabled"
    gw2 = gateway(harness, up, TWO, admin_token="")
    assert admin(gw2, "GET", "/admin/accounts")[0] == 403


def test_oauth_account_refreshes_and_saves_the_rotated_token(harness: LoopThread, tmp_path: Path) -> None:
    srv = TokenServer().start(harness)
    path = tmp_path / "accounts.json"
    AccountsFile(str(path)).upsert({"id": "o1", "provider": "up", "refresh_token": "rt-0",
                                    "access_token": "at-initial", "expires_at": time.time() - 5})
    up = harness.upstream()
    by_key(up, {"at-1": ok})
    prov = openai_provider(up, scheduler={"oauth": {"token_url": srv.url, "client_id": "client-1"}})
    prov["accounts"] = []  # the only account is the OAuth one in the file
    cfg = simple_config([prov], [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}], admin_token=ADMIN)
    cfg["accounts_file"] = str(path)
    gw = harness.gateway(cfg)
    c = client(gw)
    assert c.chat.completions.create(model="m", messages=MSGS).choices
    assert c.chat.completions.create(model="m", messages=MSGS).choices
    assert keys_seen(up) == ["at-1", "at-1"] and srv.calls == 1
    entry = json.loads(path.read_text())["accounts"][0]
    assert (entry["access_token"], entry["refresh_token"]) == ("at-1", "rt-1")
    acc = accounts(gw)["o1"]
    assert acc["credential"] == "oauth" and acc["refresh"] == {"ok": 1, "failed": 0}
    assert metric(gw, 'tornado_proxy_account_token_refreshes_total{account="o1",outcome="ok",provider="up"}') == 1
    # disable through the admin API: saved in the file for the other workers and the next start
    admin(gw, "POST", "/admin/accounts/o1/disable")
    deadline = time.time() + 3
    while not json.loads(path.read_text())["accounts"][0].get("disabled") and time.time() < deadline:
        time.sleep(0.02)
    assert json.loads(path.read_text())["accounts"][0]["disabled"] is True


def test_scripts_against_a_running_gateway(harness: LoopThread, tmp_path: Path, monkeypatch, capsys) -> None:
    import subprocess
    import sys

    from tests.unit.test_accounts_cli import ACCOUNTS, ROOT

    up = harness.upstream()
    by_key(up, {"test-key-a1": lambda: Reply.json(
        {"error": {"message": "Incorrect API key provided: test-key-a1"}}, 401), "test-key-a2": ok})
    gw = gateway(harness, up, TWO, {"strategy": "round_robin", "disable_after": 1})
    assert client(gw).chat.completions.create(model="m", messages=MSGS).choices
    monkeypatch.setenv("TORNADO_PROXY_ADMIN_TOKEN", ADMIN)
    assert ACCOUNTS.main(["list", "--url", gw.url]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "disabled" in rows["a1"] and "1 auth failures" in rows["a1"]
    assert "active" in rows["a2"] and " 1/1 " in rows["a2"]
    assert ACCOUNTS.main(["enable", "a1", "--url", gw.url]) == 0
    assert capsys.readouterr().out.strip() == "a1: active"
    assert accounts(gw)["a1"]["state"] == "active"
    assert ACCOUNTS.main(["disable", "zz", "--url", gw.url]) == 1

    # `test`: one tiny real request per account, from the config file
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(simple_config([openai_provider(up, accounts=TWO)],
                                             [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}])))
    script = str(ROOT / "bin" / "tornado-proxy-accounts")
    good = subprocess.run([sys.executable, script, "test", "a2", "-c", str(conf)], capture_output=True, text=True,
                          timeout=60)
    assert good.returncode == 0 and "a2: ok, 200" in good.stdout, good.stderr
    assert up.requests[-1].json()["messages"][0]["content"] == "Reply with the single word OK."
    bad = subprocess.run([sys.executable, script, "test", "a1", "-c", str(conf)], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "401 upstream_auth" in bad.stderr
    assert "test-key-a1" not in bad.stderr + bad.stdout and "****" in bad.stderr
