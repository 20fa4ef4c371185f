"""``GET /v1/responses`` as a WebSocket (Codex's Responses transport), frame by frame.

Driven by the ``websockets`` client library, with the frames Codex 0.171.0 sent
(``tests/fixtures/clients/codex/0.171.0/ws_tool.json``: a prewarm, a turn that
calls a tool, then only the tool's output) against a scripted upstream of each
kind, and raw sockets for what a client that gets no WebSocket sees.
"""
from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.clients.harness import FIXTURES, UPSTREAM_MODEL, gateway_config, upstream_model
from tests.clients.scripted import TOOL_OUTPUT, ScriptedModel
from tests.e2e.harness import GatewayHandle, LoopThread, Reply, fast_only, fixture_bytes

KEY = "gw-key-0001"
RECORDED = json.loads((FIXTURES / "codex/0.171.0/ws_tool.json").read_text())


def codex_frames(keep_hosted: bool) -> list[dict[str, Any]]:
    """Codex's three frames.  For a translated upstream, without the fields the
    gateway does not translate yet (issue #16 item 5: client_metadata, verbosity, the
    hosted and custom tools): the same frames Codex sends once those are handled."""
    frames = [dict(f) for f in RECORDED["frames"]]
    if not keep_hosted:
        for f in frames:
            f.pop("client_metadata", None)
            f.pop("text", None)
            f["tools"] = [t for t in f["tools"] if t["type"] == "function"]
    return frames


def start(harness: LoopThread, kind: str, **server: Any) -> tuple[GatewayHandle, ScriptedModel]:
    up = harness.upstream()
    up.handler = model = ScriptedModel()
    cfg = gateway_config(kind, up.url)
    cfg["server"] = {"access_keys": [KEY], **server}
    return harness.gateway(cfg), model


def ws(gw: GatewayHandle, **kw: Any) -> ClientConnection:
    return connect(gw.url.replace("http://", "ws://") + "/v1/responses", open_timeout=5,
                   additional_headers={"Authorization": f"Bearer {KEY}",
                                       "OpenAI-Beta": "responses_websockets=2026-02-06"}, **kw)


def answer(c: ClientConnection) -> list[dict[str, Any]]:
    """The events of one response: up to the one that ends it, or an error frame."""
    out = []
    while True:
        ev = json.loads(c.recv(timeout=10))
        out.append(ev)
        if ev["type"] in ("response.completed", "response.incomplete", "response.failed", "error"):
            return out


@pytest.mark.parametrize("kind", ["openai-responses", "openai", "anthropic", "gemini", "bedrock"])
def test_codex_frames_prewarm_tool_call_and_only_the_new_items(harness: LoopThread, kind: str) -> None:
    gw, model = start(harness, kind)
    prewarm, turn, tool_output = codex_frames(keep_hosted=kind == "openai-responses")
    with ws(gw) as c:
        assert "permessage-deflate" in c.response.headers.get("Sec-WebSocket-Extensions", "")
        c.send(json.dumps(prewarm))
        created, done = answer(c)
        # the prewarm is answered here: created + completed, no output, nothing upstream
        assert created["type"] == "response.created" and done["type"] == "response.completed"
        assert done["response"]["output"] == [] and not model.seen
        turn["previous_response_id"] = done["response"]["id"]
        c.send(json.dumps(turn))
        events = answer(c)
        assert events[-1]["type"] == "response.completed", events[-1]
        # every event carrying a response names the model Codex asked for
        assert {e["response"]["model"] for e in events if "response" in e} == {"gpt-5.5"}
        [call] = [e["item"] for e in events if e["type"] == "response.output_item.done"
                  and e["item"]["type"] == "function_call"]
        assert call["name"] == "exec_command"
        first = model.seen[0]
        assert upstream_model(kind, first) == UPSTREAM_MODEL[kind]
        # the prewarm's developer message went with the turn: the whole conversation
        assert "You are Codex" in first.body.decode() and "RUN-TOOL" in first.body.decode()
        if kind == "openai-responses":
            assert "previous_response_id" not in first.json()
        tool_output["previous_response_id"] = events[-1]["response"]["id"]
        tool_output["input"][0]["call_id"] = call["call_id"]
        c.send(json.dumps(tool_output))
        final = answer(c)
        text = "".join(e["delta"] for e in final if e["type"] == "response.output_text.delta")
        assert text == f"TOOL-SAW: {TOOL_OUTPUT}"
        follow = model.seen[1].body.decode()
        # Codex sent only the function_call_output: the upstream got the call before it
        assert "You are Codex" in follow and "RUN-TOOL" in follow and "exec_command" in follow
        assert len(model.seen) == 2
    # one access-log line and one request metric per response.create that went upstream
    metrics = gw.metrics_text()
    served = [ln for ln in metrics.splitlines()
              if ln.startswith("tornado_proxy_requests_total{") and 'route="responses"' in ln]
    assert sum(float(ln.rsplit(" ", 1)[1]) for ln in served) == 2


def test_an_error_before_the_first_event_is_an_error_frame_and_the_socket_stays(harness: LoopThread) -> None:
    up = harness.upstream()
    up.push(Reply.json({"error": {"message": "Rate limit reached", "type": "rate_limit_error",
                                  "code": "rate_limit_exceeded"}}, status=429, headers={"Retry-After": "7"}))
    cfg = gateway_config("openai-responses", up.url)
    cfg["server"] = {"access_keys": [KEY]}
    gw = harness.gateway(cfg)
    with ws(gw) as c:
        c.send(json.dumps({"type": "response.create", "model": "m", "input": "hi"}))
        [err] = answer(c)
        assert err["type"] == "error" and err["status"] == 429
        assert err["error"]["type"] == "rate_limit_error" or err["error"]["code"]
        assert err["headers"].get("retry-after") == "7"
        # the socket is still there for the next request
        c.send(json.dumps({"type": "response.create", "model": "m", "input": "hi", "generate": False}))
        events = answer(c)
        assert events[-1]["type"] == "response.completed" and events[-1]["response"]["model"] == "m"


def test_bad_frames_get_error_frames(harness: LoopThread) -> None:
    gw, model = start(harness, "openai")
    with ws(gw) as c:
        c.send(b"\x00binary")
        assert json.loads(c.recv(timeout=5))["status"] == 400
        c.send("not json")
        assert json.loads(c.recv(timeout=5))["status"] == 400
        c.send(json.dumps({"type": "session.update"}))
        err = json.loads(c.recv(timeout=5))
        assert err["status"] == 400 and "response.create" in err["error"]["message"]
        c.send(json.dumps({"type": "response.create", "model": "m", "input": "hi",
                           "previous_response_id": "resp_from_another_connection"}))
        err = json.loads(c.recv(timeout=5))
        # what OpenAI answers for a lost id: Codex then resends the whole conversation
        assert err["status"] == 400 and err["error"]["code"] == "previous_response_not_found"
        c.send(json.dumps({"type": "response.create", "model": "m", "input": "say PING-OK"}))
        events = answer(c)
        assert "PONG-OK" in "".join(e.get("delta", "") for e in events)
    assert len(model.seen) == 1


def test_the_upgrade_needs_the_access_key(harness: LoopThread) -> None:
    gw, _ = start(harness, "openai")
    with pytest.raises(InvalidStatus) as e:
        connect(gw.url.replace("http://", "ws://") + "/v1/responses", open_timeout=5)
    assert e.value.response.status_code == 401


def test_websocket_off_is_426_at_once_and_http_still_works(harness: LoopThread) -> None:
    gw, model = start(harness, "openai", responses_websocket=False)
    t0 = time.monotonic()
    with pytest.raises(InvalidStatus) as e:
        ws(gw)
    assert e.value.response.status_code == 426 and time.monotonic() - t0 < 2
    assert b"responses_websocket" in e.value.response.body
    import openai

    r = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0).responses.create(
        model="m", input="say PING-HTTP")
    assert r.output_text == "PONG-HTTP"


def raw_upgrade(gw: GatewayHandle, path: str, upgrade: str = "websocket", extra: bytes = b"") -> bytes:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n"
              f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ksZZrJpRua3wI2m/st05Yw==\r\n"
              f"Authorization: Bearer {KEY}\r\n\r\n".encode() + extra)
    got = b""
    while b"\r\n\r\n" not in got:
        d = s.recv(65536)
        if not d:
            break
        got += d
    s.close()
    return got


@fast_only  # (stock Tornado answers an upgrade on such a route as a plain GET: 404/405)
def test_a_route_without_a_websocket_answers_426(harness: LoopThread) -> None:
    gw, _ = start(harness, "openai")
    assert raw_upgrade(gw, "/v1/chat/completions").startswith(b"HTTP/1.1 426 ")
    assert raw_upgrade(gw, "/nowhere").startswith(b"HTTP/1.1 426 ")
    # another protocol than WebSocket: refused as before
    assert raw_upgrade(gw, "/v1/responses", upgrade="h2c").startswith(b"HTTP/1.1 400 ")


def test_a_frame_sent_with_the_upgrade_is_not_lost(harness: LoopThread) -> None:
    # A client may write its first frame right behind the upgrade request, in one
    # packet: those bytes arrive with the head and belong to the WebSocket.
    gw, _ = start(harness, "openai")
    payload = json.dumps({"type": "response.create", "model": "m", "generate": False, "input": []}).encode()
    mask = b"\x01\x02\x03\x04"
    frame = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + \
        bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    s.sendall(f"GET /v1/responses HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ksZZrJpRua3wI2m/st05Yw==\r\n"
              f"Authorization: Bearer {KEY}\r\n\r\n".encode() + frame)
    got = b""
    deadline = time.monotonic() + 5
    while got.count(b"response.") < 2 and time.monotonic() < deadline:
        d = s.recv(65536)
        if not d:
            break
        got += d
    s.close()
    assert got.startswith(b"HTTP/1.1 101 ") and b"Connection: close" not in got.split(b"\r\n\r\n")[0]
    assert b"response.created" in got and b"response.completed" in got


def test_client_gone_mid_stream_aborts_the_upstream(harness: LoopThread) -> None:
    up = harness.upstream()
    sse = fixture_bytes("responses/text.sse")
    up.push(Reply.sse(sse, delay=0.3))
    cfg = gateway_config("openai-responses", up.url)
    cfg["server"] = {"access_keys": [KEY]}
    gw = harness.gateway(cfg)
    with ws(gw) as c:
        c.send(json.dumps({"type": "response.create", "model": "m", "input": "hi"}))
        assert json.loads(c.recv(timeout=5))["type"] == "response.created"
    deadline = time.monotonic() + 5
    while up.closed_early == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert up.closed_early == 1 and up.finished == 0
    assert gw.gw.active_requests == 0


def test_a_custom_tool_call_streams_its_input_as_frames(harness: LoopThread) -> None:
    # The socket sends the HTTP route's events as they are: a custom tool's input deltas too.
    from tests.e2e.test_field_policy_e2e import APPLY_PATCH, PATCH, chat_stream

    up = harness.upstream()
    wrapped = json.dumps({"input": PATCH})
    up.push(chat_stream({"role": "assistant", "tool_calls": [
        {"index": 0, "id": "call_7", "type": "function", "function": {"name": "apply_patch", "arguments": ""}}]},
        *[{"tool_calls": [{"index": 0, "function": {"arguments": wrapped[i:i + 8]}}]}
          for i in range(0, len(wrapped), 8)], finish="tool_calls"))
    cfg = gateway_config("openai", up.url)
    cfg["server"] = {"access_keys": [KEY]}
    gw = harness.gateway(cfg)
    with ws(gw) as c:
        c.send(json.dumps({"type": "response.create", "model": "m", "input": "patch", "tools": APPLY_PATCH}))
        events = answer(c)
    deltas = [e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    [done] = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
    assert len(deltas) > 3 and "".join(deltas) == done["input"] == PATCH
    assert events[-1]["response"]["output"][0]["input"] == PATCH
