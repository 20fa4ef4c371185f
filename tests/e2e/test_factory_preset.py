"""The Factory-AI-style preset, ``conf/factory.example.json`` as shipped, end to end.

The preset is read from the repository and started with its environment variables
pointing at two fakes on loopback: the vendor (its Messages, Responses and chat
endpoints, answering with the recorded bytes of tests/fixtures/) and WorkOS (its
``POST /user_management/authenticate`` refresh grant, as workos-python's
``authenticate_with_refresh_token`` sends it: a JSON body with ``client_id``,
``grant_type: "refresh_token"`` and ``refresh_token``; the answer carries the rotated
refresh token and a JWT access token whose ``exp`` says when it expires, no
``expires_in``).  The official SDKs drive the gateway; the assertions are on what
the vendor and WorkOS receive and on the accounts file.

The second half tests the header templates themselves (``providers/headers.py``) on a
small config of their own: a fresh ``{uuid}`` per attempt, ``{request_id}`` equal to
the gateway's ``X-Request-Id`` answer header, ``{session_id}`` from the configured
header, and client session ids that are refused.
"""
from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import tornado.web
from tornado.httpserver import HTTPServer

from tests.e2e.harness import (FakeUpstream, GatewayHandle, LoopThread, Recorded, Reply, fixture_bytes,
                               openai_provider, simple_config)

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "conf" / "factory.example.json"
# Built from parts: no key-looking literal in the source.
PROXY_KEY = "-".join(["pk", "factory", "preset", "test"])
FIXED_KEY = "-".join(["fk", "fixed", "factory", "key", "0123456789"])
CLIENT_KEY = "-".join(["fk", "clients", "own", "key", "9876543210"])
CLIENT_ID = "client_01FACTORYPRESETTEST"
DROID = "You are Droid, an AI software engineering agent built by Factory."
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
MESSAGES = "/api/llm/a/v1/messages"
RESPONSES = "/api/llm/o/v1/responses"
CHAT = "/api/llm/o/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]
# What the fixtures say
ANTHROPIC_STREAM_TEXT = "Hello there! Ünïcödé → ok"
ANTHROPIC_TEXT = "Let me check the weather in Paris."
CHAT_TEXT = "Hello! How can I help you today?"
MODEL_FIELD = re.compile(rb'"model": ?"[^"]*"')
TOKEN_LIFETIME = 8 * 3600   # the fake WorkOS's access tokens
MAX_TOKEN_AGE = 6 * 3600    # the preset's scheduler.oauth.max_token_age


# -- the fakes ----------------------------------------------------------------------
def vendor(harness: LoopThread) -> FakeUpstream:
    """The vendor: one endpoint per format, answering streams and whole answers with
    the recorded bytes, in the name of the model it was asked for (as it would)."""
    answers = {MESSAGES: ("anthropic/text.sse", "anthropic/message.json"),
               RESPONSES: ("responses/text.sse", "responses/text.json"),
               CHAT: ("openai/text.sse", "openai/text.json")}
    up = harness.upstream()

    def answer(rec: Recorded) -> Reply:
        if rec.path not in answers:
            return Reply.json({"error": {"message": f"no route {rec.path}"}}, status=404)
        sse, whole = answers[rec.path]
        body = rec.json()
        named = json.dumps({"model": body["model"]}).encode()[1:-1]
        if body.get("stream"):
            return Reply.sse(MODEL_FIELD.sub(named, fixture_bytes(sse)))
        return Reply(200, {"Content-Type": "application/json"}, MODEL_FIELD.sub(named, fixture_bytes(whole)))

    up.handler = answer
    return up


def b64url(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


class FakeWorkOS:
    """``POST /user_management/authenticate`` with the refresh grant, rotating: every
    refresh token works once.  Records each request's content type and JSON body."""

    def __init__(self, harness: LoopThread, live: list[str]) -> None:
        self.live = set(live)
        self.requests: list[tuple[str, str, dict[str, Any]]] = []  # (path, content-type, body)
        self.issued: list[str] = []
        self._n = 0
        self._lock = threading.Lock()
        fake = self

        class Authenticate(tornado.web.RequestHandler):
            def post(self) -> None:
                body = json.loads(self.request.body)
                with fake._lock:
                    fake.requests.append((self.request.path, self.request.headers.get("Content-Type", ""), body))
                    token = body.get("refresh_token")
                    if body.get("grant_type") != "refresh_token" or body.get("client_id") != CLIENT_ID \
                            or token not in fake.live:
                        self.set_status(400)
                        self.finish({"error": "invalid_grant", "error_description": "Session has already ended."})
                        return
                    fake.live.discard(token)
                    fake._n += 1
                    rotated = f"{token.rsplit('-', 1)[0]}-{fake._n}"
                    fake.live.add(rotated)
                    access = ".".join([b64url({"alg": "RS256", "kid": "sso_oidc_key_pair_test"}),
                                       b64url({"sub": "user_01TEST", "sid": f"session_01TEST{fake._n}",
                                               "org_id": "org_01TEST", "exp": int(time.time()) + TOKEN_LIFETIME}),
                                       "c2lnbmF0dXJl"])
                    fake.issued.append(access)
                self.finish({"user": {"object": "user", "id": "user_01TEST", "email": "dev@example.com"},
                             "organization_id": "org_01TEST", "access_token": access, "refresh_token": rotated})

        async def start() -> int:
            server = HTTPServer(tornado.web.Application([(r"/user_management/authenticate", Authenticate)]))
            server.listen(0, "127.0.0.1")
            harness._cleanups.append(server.stop)
            return int(next(iter(server._sockets.values())).getsockname()[1])

        self.url = f"http://127.0.0.1:{harness.run(start())}"


def write_accounts(path: Path, accounts: list[dict[str, Any]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"version": 1, "generation": 1, "accounts": accounts}, f)


def droid_login(n: str, provider: str, **extra: Any) -> dict[str, Any]:
    """An accounts-file entry as a WorkOS login leaves it: a refresh token."""
    return {"id": f"droid-{n}", "provider": provider, "refresh_token": f"wos-rt-{n}-0", **extra}


# One WorkOS login serves the three endpoints: the other two blocks take their accounts
# from factory-anthropic (``accounts_from``).
LOGINS = [droid_login("a", "factory-anthropic")]


def preset(harness: LoopThread, tmp_path: Path, up: FakeUpstream, workos: FakeWorkOS,
           accounts: list[dict[str, Any]], **env: str) -> tuple[GatewayHandle, Path]:
    """The shipped preset, with its variables set as its $comment says."""
    path = tmp_path / "factory.accounts.json"
    write_accounts(path, accounts)
    env = {"PROXY_KEY": PROXY_KEY, "FACTORY_WORKOS_CLIENT_ID": CLIENT_ID, "FACTORY_BASE_URL": up.url,
           "FACTORY_WORKOS_URL": workos.url, "FACTORY_ACCOUNTS_FILE": str(path), **env}
    return harness.gateway(json.loads(PRESET.read_text(encoding="utf-8")), env), path


def oai(gw: GatewayHandle, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=PROXY_KEY, default_headers=headers, max_retries=0,
                         timeout=20)


def ant(gw: GatewayHandle, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=PROXY_KEY, default_headers=headers, max_retries=0,
                               timeout=20)


def bearer(rec: Recorded) -> str:
    return rec.headers.get("authorization", "").removeprefix("Bearer ")


def message_ids(up: FakeUpstream) -> list[str]:
    ids = [r.headers["x-assistant-message-id"] for r in up.requests]
    assert all(UUID4.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids), "a fresh id for each upstream request"
    return ids


# -- the preset --------------------------------------------------------------------------
def test_each_model_family_reaches_its_endpoint_with_the_vendors_headers_and_prompt(
        harness: LoopThread, tmp_path: Path) -> None:
    up = vendor(harness)
    workos = FakeWorkOS(harness, [a["refresh_token"] for a in LOGINS])
    gw, path = preset(harness, tmp_path, up, workos, LOGINS, FACTORY_API_KEY=FIXED_KEY)

    msg = ant(gw, **{"x-session-id": "sess-claude-1"}).messages.create(
        model="claude-sonnet-4-5", max_tokens=100, system="Be brief.", messages=HI)  # type: ignore[arg-type]
    assert msg.model == "claude-sonnet-4-5"
    assert [b.text for b in msg.content if b.type == "text"] == [ANTHROPIC_TEXT]
    resp = oai(gw, **{"x-session-id": "sess-gpt-1"}).responses.create(model="gpt-5", instructions="Be brief.",
                                                                       input="hi")
    assert resp.model == "gpt-5" and resp.output_text.startswith("I can't provide real-time updates")
    chat = oai(gw, **{"x-session-id": "sess-glm-1"}).chat.completions.create(
        model="glm-4.6", messages=[{"role": "system", "content": "Be brief."}, *HI])  # type: ignore[list-item]
    assert chat.model == "glm-4.6" and chat.choices[0].message.content == CHAT_TEXT

    m, r, c = up.requests
    assert [m.path, r.path, c.path] == [MESSAGES, RESPONSES, CHAT]
    for rec, api_provider, session in ((m, "anthropic", "sess-claude-1"), (r, "azure_openai", "sess-gpt-1"),
                                       (c, "fireworks", "sess-glm-1")):
        h = rec.headers
        assert bearer(rec) == FIXED_KEY, "the fixed key comes first"
        assert h["user-agent"] == "factory-cli/0.19.3" and h["x-client-version"] == "0.19.3"
        assert h["x-factory-client"] == "cli" and h["x-api-provider"] == api_provider
        assert h["x-session-id"] == session
        assert PROXY_KEY not in json.dumps(h), "the gateway's own access key never goes upstream"
    message_ids(up)
    # The per-model system prompt, where each format keeps it, before the client's own.
    assert m.json()["model"] == "claude-sonnet-4-5-20250929" and m.json()["max_tokens"] == 100
    assert m.json()["system"] == [{"type": "text", "text": DROID}, {"type": "text", "text": "Be brief."}]
    assert "anthropic-beta" not in m.headers, "no Claude-subscription OAuth beta for a vendor's key"
    assert r.json()["model"] == "gpt-5-2025-08-07" and r.json()["instructions"] == DROID + "\n\nBe brief."
    assert c.json()["model"] == "glm-4.6"
    assert c.json()["messages"][:2] == [{"role": "system", "content": DROID + " Answer concisely."},
                                        {"role": "system", "content": "Be brief."}]
    assert workos.requests == [], "with a fixed key no refresh token is spent"
    assert json.loads(path.read_text())["accounts"] == LOGINS


def test_routing_follows_the_model_not_the_client_api(harness: LoopThread, tmp_path: Path) -> None:
    """A Chat Completions client asking for Claude reaches the Messages endpoint (the
    prompt in ``system``); a Messages client asking for GPT-5 reaches Responses."""
    up = vendor(harness)
    gw, _ = preset(harness, tmp_path, up, FakeWorkOS(harness, []), [], FACTORY_API_KEY=FIXED_KEY)
    chat = oai(gw).chat.completions.create(model="claude-opus-4-1", max_tokens=50, messages=HI)  # type: ignore[arg-type]
    assert chat.model == "claude-opus-4-1" and chat.choices[0].message.content == ANTHROPIC_TEXT
    msg = ant(gw).messages.create(model="gpt-5-codex", max_tokens=50, messages=HI)  # type: ignore[arg-type]
    assert msg.model == "gpt-5-codex" and msg.content[0].type == "text"
    m, r = up.requests
    assert (m.path, m.headers["x-api-provider"], r.path, r.headers["x-api-provider"]) == (
        MESSAGES, "anthropic", RESPONSES, "azure_openai")
    assert m.json()["model"] == "claude-opus-4-1-20250805" and m.json()["system"][0] == {"type": "text", "text": DROID}
    assert r.json()["model"] == "gpt-5-codex" and r.json()["instructions"].startswith(DROID)
    message_ids(up)


def test_streams_on_every_family(harness: LoopThread, tmp_path: Path) -> None:
    up = vendor(harness)
    gw, _ = preset(harness, tmp_path, up, FakeWorkOS(harness, []), [], FACTORY_API_KEY=FIXED_KEY)
    a, o = ant(gw, **{"x-session-id": "sess-stream"}), oai(gw, **{"x-session-id": "sess-stream"})

    with a.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=HI) as s:  # type: ignore[arg-type]
        assert "".join(s.text_stream) == ANTHROPIC_STREAM_TEXT
    glm = o.chat.completions.create(model="glm-4.6", messages=HI, stream=True)  # type: ignore[arg-type]
    assert "".join(ch.choices[0].delta.content or "" for ch in glm if ch.choices) == CHAT_TEXT
    claude = o.chat.completions.create(model="claude-sonnet-4-5", messages=HI, stream=True)  # type: ignore[arg-type]
    assert "".join(ch.choices[0].delta.content or "" for ch in claude if ch.choices) == ANTHROPIC_STREAM_TEXT
    events = list(o.responses.create(model="gpt-5", input="hi", stream=True))
    done = [e for e in events if e.type == "response.completed"]
    assert len(done) == 1 and done[0].response.output_text.startswith("I can't provide real-time updates")

    assert [rec.path for rec in up.requests] == [MESSAGES, CHAT, MESSAGES, RESPONSES]
    assert all(rec.json()["stream"] is True for rec in up.requests)
    assert all(rec.headers["x-session-id"] == "sess-stream" for rec in up.requests)
    assert up.requests[0].json()["system"] == [{"type": "text", "text": DROID}]
    assert up.requests[1].json()["messages"][0] == {"role": "system", "content": DROID + " Answer concisely."}
    assert up.requests[2].json()["system"] == [{"type": "text", "text": DROID}]
    assert up.requests[3].json()["instructions"] == DROID
    message_ids(up)


def test_without_a_fixed_key_one_workos_login_is_exchanged_rotated_and_serves_every_endpoint(
        harness: LoopThread, tmp_path: Path) -> None:
    up = vendor(harness)
    workos = FakeWorkOS(harness, [a["refresh_token"] for a in LOGINS])
    gw, path = preset(harness, tmp_path, up, workos, LOGINS)
    inode = path.stat().st_ino

    a = ant(gw)
    assert a.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=HI).content  # type: ignore[arg-type]
    # WorkOS's refresh grant, exactly: a JSON body of these three fields.
    assert workos.requests == [("/user_management/authenticate", "application/json",
                                {"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                 "refresh_token": "wos-rt-a-0"})]
    access = workos.issued[0]
    assert bearer(up.requests[0]) == access
    assert "anthropic-beta" not in up.requests[0].headers, "a WorkOS token is no Claude-subscription token"
    # The rotated refresh token is in the file, written whole by a rename (a new inode),
    # never in place; the file stays private.
    saved = {e["id"]: e for e in json.loads(path.read_text())["accounts"]}
    assert (saved["droid-a"]["refresh_token"], saved["droid-a"]["access_token"]) == ("wos-rt-a-1", access)
    # WorkOS's JWT lasts 8 h; the preset refreshes every 6 h (max_token_age).
    assert abs(saved["droid-a"]["expires_at"] - (time.time() + MAX_TOKEN_AGE)) < 60
    assert list(saved) == ["droid-a"]
    assert path.stat().st_ino != inode and path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    # The access token is reused until it is due, by every endpoint: the login's rotating
    # refresh token is spent once, not once per provider block.
    assert a.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=HI).content  # type: ignore[arg-type]
    assert oai(gw).chat.completions.create(model="glm-4.6", messages=HI).choices  # type: ignore[arg-type]
    assert oai(gw).responses.create(model="gpt-5", input="hi").output_text
    assert [body["refresh_token"] for _, _, body in workos.requests] == ["wos-rt-a-0"]
    assert [(rec.path, bearer(rec)) for rec in up.requests] == [
        (MESSAGES, access), (MESSAGES, access), (CHAT, access), (RESPONSES, access)]
    assert [e["refresh_token"] for e in json.loads(path.read_text())["accounts"]] == ["wos-rt-a-1"]
    # One account, counted once (under the provider that owns it), that served all four.
    served = re.findall(r'^tornado_proxy_account_requests_total\{(.*)\} (\S+)$', gw.metrics_text(), re.M)
    assert [(labels, float(n)) for labels, n in served if 'outcome="success"' in labels] == [
        ('account="droid-a",outcome="success",provider="factory-anthropic"', 4.0)]


def test_a_token_is_refreshed_when_it_is_due_and_not_before(harness: LoopThread, tmp_path: Path) -> None:
    """refresh_ahead (600 s): a token due within ten minutes is refreshed before use; one
    good for hours is used as it is."""
    up = vendor(harness)
    now = time.time()
    logins = [droid_login("a", "factory-anthropic", access_token="wos-at-due", expires_at=now + 300),
              droid_login("o", "factory-anthropic", access_token="wos-at-fresh", expires_at=now + 3 * 3600)]
    workos = FakeWorkOS(harness, [a["refresh_token"] for a in logins])
    gw, path = preset(harness, tmp_path, up, workos, logins)
    # round robin: droid-a, then droid-o
    assert ant(gw).messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=HI).content  # type: ignore[arg-type]
    assert ant(gw).messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=HI).content  # type: ignore[arg-type]
    assert [body["refresh_token"] for _, _, body in workos.requests] == ["wos-rt-a-0"]
    assert [bearer(rec) for rec in up.requests] == [workos.issued[0], "wos-at-fresh"]


def test_with_neither_the_clients_own_key_is_used(harness: LoopThread, tmp_path: Path) -> None:
    up = vendor(harness)
    gw, _ = preset(harness, tmp_path, up, FakeWorkOS(harness, []), [])
    chat = oai(gw, **{"x-factory-api-key": CLIENT_KEY}).chat.completions.create(model="glm-4.6", messages=HI)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == CHAT_TEXT
    assert bearer(up.requests[0]) == CLIENT_KEY
    assert "x-factory-api-key" not in up.requests[0].headers
    # No credential at all: the client's to fix, so a 401 in its own shape saying where the
    # key goes (not a 503 that reads like an outage); nothing sent upstream.
    with pytest.raises(anthropic.AuthenticationError) as info:
        ant(gw).messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=HI)  # type: ignore[arg-type]
    assert info.value.status_code == 401
    assert info.value.body == {"type": "error", "error": {  # type: ignore[comparison-overlap]
        "type": "authentication_error", "message": "provider 'factory-anthropic' has no account that can serve: "
        "send your own API key in the x-factory-api-key header"}}
    with pytest.raises(openai.AuthenticationError) as oinfo:
        oai(gw).chat.completions.create(model="glm-4.6", messages=HI)  # type: ignore[arg-type]
    assert oinfo.value.status_code == 401 and "x-factory-api-key" in oinfo.value.message
    assert len(up.requests) == 1


def test_the_refresh_token_comes_before_the_clients_key_and_a_dead_one_falls_through(
        harness: LoopThread, tmp_path: Path) -> None:
    up = vendor(harness)
    # A live login comes before the client's own key.
    workos = FakeWorkOS(harness, ["wos-rt-a-0"])
    gw, _ = preset(harness, tmp_path, up, workos, LOGINS)
    assert oai(gw, **{"x-factory-api-key": CLIENT_KEY}).chat.completions.create(
        model="glm-4.6", messages=HI).choices  # type: ignore[arg-type]
    assert bearer(up.requests[0]) == workos.issued[0]
    # A login whose refresh token was spent elsewhere (WorkOS refuses it): the request
    # falls through to the client's key, and the login is disabled.
    (tmp_path / "dead").mkdir()
    dead_workos = FakeWorkOS(harness, [])
    gw, path = preset(harness, tmp_path / "dead", up, dead_workos, [droid_login("c", "factory-anthropic")])
    o = oai(gw, **{"x-factory-api-key": CLIENT_KEY})
    assert o.chat.completions.create(model="glm-4.6", messages=HI).choices  # type: ignore[arg-type]
    assert bearer(up.requests[1]) == CLIENT_KEY
    assert [body["refresh_token"] for _, _, body in dead_workos.requests] == ["wos-rt-c-0"]
    # the dead login is disabled, in the file too (written off the event loop)
    deadline = time.monotonic() + 5
    while True:
        dead = {e["id"]: e for e in json.loads(path.read_text())["accounts"]}["droid-c"]
        if dead.get("disabled") or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert dead["disabled"] is True and "invalid_grant" in dead["disabled_reason"]



# -- --check-config ----------------------------------------------------------------------
REQUIRED = {"PROXY_KEY": PROXY_KEY, "FACTORY_WORKOS_CLIENT_ID": CLIENT_ID}


def check_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed CLI, as an operator runs it, with only ``env`` of the preset's variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "PROXY_KEY"))}
    script = Path(sys.executable).parent / "tornado-proxy"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "tornado_proxy"]
    return subprocess.run([*cli, "--check-config", "conf/factory.example.json"], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def test_check_config_accepts_the_preset_with_its_variables_set() -> None:
    run = check_config(REQUIRED)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "conf/factory.example.json: ok (3 provider(s), 5 model route(s))"
    # the packaging check (tests/packaging/check_wheel.py) sets exactly these for the preset
    from tests.packaging.check_wheel import NEEDED_VAR

    assert set(NEEDED_VAR.findall(PRESET.read_text(encoding="utf-8"))) == set(REQUIRED)


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_check_config_names_a_missing_variable(missing: str) -> None:
    run = check_config({k: v for k, v in REQUIRED.items() if k != missing})
    assert run.returncode == 1
    assert f"environment variable {missing} is not set" in run.stderr
    assert "Traceback" not in run.stderr

# -- the header templates themselves ----------------------------------------------------
TEMPLATES = {"X-Attempt": "{uuid}", "X-Req": "req-{request_id}", "X-Sess": "{session_id}"}
CHAT_OK = Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json"))
# (a 429 fails over as a 5xx does, without the fake's access log calling it an error)
LIMITED = Reply.json({"error": {"message": "Rate limit reached", "type": "requests"}}, status=429,
                     headers={"Retry-After": "30"})


def templated(harness: LoopThread, up: FakeUpstream, **provider: Any) -> GatewayHandle:
    """A vendor with two accounts (so a failed attempt is retried on the other) whose
    every request carries the three templates."""
    prov = openai_provider(up, accounts=[{"id": "t1", "api_key": "test-key-1"}, {"id": "t2", "api_key": "test-key-2"}],
                           headers=TEMPLATES, timeouts={"connect": 2, "first_byte": 5, "idle": 5}, **provider)
    return harness.gateway(simple_config([prov], [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}]))


def test_uuid_is_fresh_per_attempt_and_request_id_is_the_answers_x_request_id(harness: LoopThread) -> None:
    up = harness.upstream().push(LIMITED, CHAT_OK, CHAT_OK)
    gw = templated(harness, up)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(model="m", messages=HI)  # type: ignore[arg-type]
    rid = raw.headers["x-request-id"]
    assert raw.parse().choices[0].message.content == CHAT_TEXT
    first, retry = up.requests
    assert bearer(first) != bearer(retry), "the failed attempt was retried on the other account"
    assert UUID4.fullmatch(first.headers["x-attempt"]) and UUID4.fullmatch(retry.headers["x-attempt"])
    assert first.headers["x-attempt"] != retry.headers["x-attempt"], "a fresh {uuid} for each attempt"
    assert first.headers["x-req"] == retry.headers["x-req"] == "req-" + rid
    # No session id from the client: a fresh one for the request, the same for its attempts.
    assert UUID4.fullmatch(first.headers["x-sess"]) and first.headers["x-sess"] == retry.headers["x-sess"]

    raw2 = client.chat.completions.with_raw_response.create(model="m", messages=HI)  # type: ignore[arg-type]
    third = up.requests[2]
    assert third.headers["x-req"] == "req-" + raw2.headers["x-request-id"] != first.headers["x-req"]
    assert third.headers["x-sess"] != first.headers["x-sess"]
    assert third.headers["x-attempt"] not in (first.headers["x-attempt"], retry.headers["x-attempt"])


def test_an_error_answer_carries_the_request_id_the_upstream_saw(harness: LoopThread) -> None:
    up = harness.upstream().push(LIMITED, LIMITED)
    gw = templated(harness, up)
    with pytest.raises(anthropic.APIStatusError) as info:
        ant(gw).messages.create(model="m", max_tokens=10, messages=HI)  # type: ignore[arg-type]
    assert info.value.body["type"] == "error"  # type: ignore[index]
    rid = info.value.response.headers["x-request-id"]
    assert [r.headers["x-req"] for r in up.requests] == ["req-" + rid] * 2


def test_session_id_comes_from_the_configured_header(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = CHAT_OK
    gw = templated(harness, up, session_id_header="X-Conversation-Id")
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)
    c.chat.completions.create(model="m", messages=HI, extra_headers={"x-conversation-id": "conv_01J9Z:part.2"})  # type: ignore[arg-type]
    c.chat.completions.create(model="m", messages=HI, extra_headers={"x-session-id": "not-this-one"})  # type: ignore[arg-type]
    assert up.requests[0].headers["x-sess"] == "conv_01J9Z:part.2"
    assert UUID4.fullmatch(up.requests[1].headers["x-sess"]), "another header is not the session id"
    assert "x-conversation-id" not in up.requests[0].headers and "x-session-id" not in up.requests[1].headers


def raw_post(gw: GatewayHandle, path: str, header_lines: bytes, body: dict[str, Any]) -> tuple[int, bytes]:
    """A request written byte for byte (what no SDK would send)."""
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n").encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(head + header_lines + b"\r\n" + data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    status = int(got.split(b" ", 2)[1])
    return status, got.split(b"\r\n\r\n", 1)[1]


BAD_SESSIONS = [
    ("a space", b"X-Session-Id: two words\r\n"),
    ("header syntax inside", b"X-Session-Id: a;b=c\r\n"),
    ("too long", b"X-Session-Id: " + b"s" * 129 + b"\r\n"),
    ("not ASCII", "X-Session-Id: séance\r\n".encode()),
    ("sent twice", b"X-Session-Id: abc\r\nX-Session-Id: def\r\n"),
    # obsolete line folding: refused by the HTTP parser already (both server sides)
    ("a folded line", b"X-Session-Id: abc\r\n def\r\n"),
]


@pytest.mark.parametrize("name,lines", BAD_SESSIONS, ids=[b[0] for b in BAD_SESSIONS])
def test_a_bad_client_session_id_is_refused_and_nothing_goes_upstream(harness: LoopThread, name: str,
                                                                       lines: bytes) -> None:
    up = harness.upstream()
    up.default = CHAT_OK
    gw = templated(harness, up)
    status, body = raw_post(gw, "/v1/chat/completions", lines, {"model": "m", "messages": HI})
    assert status == 400
    if name != "a folded line":
        err = json.loads(body)["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == "x-session-id"
        assert "'x-session-id' header is not a valid session id" in err["message"]
    assert up.requests == []


def test_a_bad_session_id_is_refused_in_the_anthropic_shape(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = CHAT_OK
    gw = templated(harness, up)
    with pytest.raises(anthropic.BadRequestError) as info:
        ant(gw, **{"x-session-id": "a b"}).messages.create(model="m", max_tokens=10, messages=HI)  # type: ignore[arg-type]
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "'x-session-id' header is not a valid session id" in info.value.body["error"]["message"]  # type: ignore[index]
    assert up.requests == []


def test_a_line_break_in_a_session_id_cannot_add_a_header_upstream(harness: LoopThread) -> None:
    """CR LF ends the client's header: what follows is a header of the client's request,
    which the gateway does not forward; the session id is what came before."""
    up = harness.upstream()
    up.default = CHAT_OK
    gw = templated(harness, up)
    status, _ = raw_post(gw, "/v1/chat/completions", b"X-Session-Id: sess-1\r\nX-Injected: evil\r\n",
                         {"model": "m", "messages": HI})
    assert status == 200
    (rec,) = up.requests
    assert rec.headers["x-sess"] == "sess-1" and "x-injected" not in rec.headers
