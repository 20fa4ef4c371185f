"""End to end with the official openai SDK: the gateway against a fake OpenAI-compatible upstream."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from tests.e2e.harness import PATHS, FakeUpstream, LoopThread, Reply, fixture_bytes, openai_provider, simple_config

ROOT = Path(__file__).resolve().parents[2]


def client(gw, key: str = "k", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20, **kw)


def up_config(up: FakeUpstream, **server) -> dict:
    return simple_config([openai_provider(up, timeouts={"connect": 2, "first_byte": 5, "idle": 5})],
                         [{"id": "my-model", "provider": "up", "upstream_model": "gpt-4o-mini",
                           "aliases": ["mini"]}], **server)


MSGS = [{"role": "user", "content": "Say hello"}]


def test_echo_model_chat_and_stream(harness: LoopThread) -> None:
    from tornado_proxy.config import load_raw

    raw, _ = load_raw(None)
    gw = harness.gateway(raw)
    c = client(gw)
    r = c.chat.completions.create(model="echo", messages=[{"role": "user", "content": "one two three four five"}])
    assert r.choices[0].message.content == "one two three four five"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens > 0
    chunks = list(c.chat.completions.create(model="echo", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "one two three four five"}]))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "one two three four five"
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) >= 2  # a few words a chunk
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert [m.id for m in c.models.list()] == ["echo"]


def test_passthrough_maps_model_and_auth(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json")))
    gw = harness.gateway(up_config(up))
    r = client(gw).chat.completions.create(model="mini", messages=MSGS, temperature=0.2, seed=7)
    assert r.choices[0].message.content == "Hello! How can I help you today?"
    assert r.usage.total_tokens == 29
    sent = up.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer test-key-1"
    body = sent.json()
    # only the model name is mapped; every other field reaches the upstream as sent
    assert body == {"model": "gpt-4o-mini", "messages": MSGS, "temperature": 0.2, "seed": 7}


@pytest.mark.parametrize("split", [None, 1, 7])
def test_passthrough_stream(harness: LoopThread, split: int | None) -> None:
    up = harness.upstream().push(Reply.sse_file("openai/text.sse", split=split))
    gw = harness.gateway(up_config(up))
    chunks = list(client(gw).chat.completions.create(model="my-model", messages=MSGS, stream=True,
                                                     stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello! How can I help you today?"
    assert chunks[-1].usage.prompt_tokens == 19
    # The client stops at [DONE]; the gateway records usage when the upstream transfer
    # ends, a moment later (on a loaded machine, after the client has read everything).
    want = 'tornado_proxy_tokens_total{direction="in",model="my-model",provider="up"} 19.0'
    deadline = time.monotonic() + 5
    while want not in gw.metrics_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert want in gw.metrics_text()


def test_tools_pass_through(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply.sse_file("openai/tools.sse"))
    gw = harness.gateway(up_config(up))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
    calls: dict[int, dict] = {}
    finish = None
    for ch in client(gw).chat.completions.create(model="my-model", messages=MSGS, tools=tools, stream=True,
                                                 tool_choice="auto"):
        if not ch.choices:
            continue
        for tc in ch.choices[0].delta.tool_calls or []:
            c = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            c["id"] = c["id"] or tc.id
            c["name"] = c["name"] or (tc.function.name if tc.function else None)
            c["args"] += (tc.function.arguments or "") if tc.function else ""
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0] == {"id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "args": '{"location":"Paris"}'}
    assert calls[1]["name"] == "get_time" and json.loads(calls[1]["args"]) == {"tz": "CET"}
    assert up.requests[0].json()["tools"] == tools


def test_bad_input_is_an_openai_error_naming_the_field(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway(up_config(up))
    c = client(gw)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="my-model", messages=[{"role": "wizard", "content": "x"}])
    assert e.value.status_code == 400
    assert "messages[0]" in (e.value.body.get("param") or "")
    with pytest.raises(openai.NotFoundError) as e2:
        c.chat.completions.create(model="no-such-model", messages=MSGS)
    assert e2.value.code == "model_not_found"
    assert up.requests == []  # nothing reached the upstream


def test_access_keys(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json"))
    gw = harness.gateway(up_config(up, access_keys=["gw-secret-1", "gw-secret-2"]))
    with pytest.raises(openai.AuthenticationError):
        client(gw, key="wrong").chat.completions.create(model="my-model", messages=MSGS)
    assert client(gw, key="gw-secret-2").chat.completions.create(model="my-model", messages=MSGS).choices
    # the configured header and x-api-key work too; health stays public
    import urllib.request

    for hdr in ("X-Proxy-Key", "x-api-key"):
        req = urllib.request.Request(gw.url + "/v1/models", headers={hdr: "gw-secret-1"})
        assert urllib.request.urlopen(req).status == 200
    assert urllib.request.urlopen(gw.url + "/health").status == 200
    # the gateway's key is never forwarded upstream
    assert up.requests[0].headers["authorization"] == "Bearer test-key-1"


def test_upstream_429_is_a_rate_limit_error_with_retry_after(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = Reply.json({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                            status=429, headers={"retry-after": "7"})
    gw = harness.gateway(up_config(up))
    with pytest.raises(openai.RateLimitError) as e:
        client(gw).chat.completions.create(model="my-model", messages=MSGS)
    assert e.value.response.headers["retry-after"] == "7"
    assert "Rate limit reached" in e.value.message


def test_failover_to_the_next_account_before_the_first_byte(harness: LoopThread) -> None:
    up = harness.upstream()
    up.push(Reply.json({"error": {"message": "slow down"}}, status=429, headers={"retry-after": "30"}),
            Reply.sse_file("openai/text.sse"))
    cfg = simple_config([openai_provider(up, accounts=[{"id": "a1", "api_key": "key-a1"},
                                                       {"id": "a2", "api_key": "key-a2"}])],
                        [{"id": "my-model", "provider": "up", "upstream_model": "gpt-4o-mini"}])
    gw = harness.gateway(cfg)
    chunks = list(client(gw).chat.completions.create(model="my-model", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello! How can I help you today?"
    assert {r.headers["authorization"] for r in up.requests} == {"Bearer key-a1", "Bearer key-a2"}
    if PATHS["upstream_client"] == "fast":
        # our driver makes curl handles as needed, not all max_clients (10 000) at start
        http = gw.gw.upstream.http
        assert http._max_handles == 10000 and 1 <= len(http._curls) < 50


def test_timeouts_and_unreachable_map_to_504_and_502(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply.sse_file("openai/text.sse", first_delay=3))
    cfg = simple_config([openai_provider(up, timeouts={"connect": 2, "first_byte": 0.5, "idle": 5})],
                        [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}])
    gw = harness.gateway(cfg)
    with pytest.raises(openai.InternalServerError) as e:
        client(gw).chat.completions.create(model="m", messages=MSGS, stream=True)
    assert e.value.status_code == 504 and e.value.code == "upstream_first_byte_timeout"

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    cfg2 = simple_config([{"name": "dead", "type": "openai", "base_url": f"http://127.0.0.1:{dead}/v1",
                           "accounts": [{"id": "x", "api_key": "k"}]}],
                         [{"id": "m", "provider": "dead", "upstream_model": "m"}])
    gw2 = harness.gateway(cfg2)
    with pytest.raises(openai.InternalServerError) as e3:
        client(gw2).chat.completions.create(model="m", messages=MSGS)
    assert e3.value.status_code == 502 and e3.value.code == "upstream_unreachable"
    # curl's internal 599 must not leak as if it were a status (the port may contain "599")
    assert "599" not in e3.value.message.replace(str(dead), "")


def test_idle_timeout_mid_stream_is_an_error_frame(harness: LoopThread) -> None:
    head = fixture_bytes("openai/text.sse").split(b"\n\n")[:2]
    up = harness.upstream().push(Reply(200, {"Content-Type": "text/event-stream"},
                                       chunks=[h + b"\n\n" for h in head], hang=True))
    cfg = simple_config([openai_provider(up, timeouts={"connect": 2, "first_byte": 5, "idle": 0.5})],
                        [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}])
    gw = harness.gateway(cfg)
    t0 = time.time()
    with pytest.raises(openai.APIError) as e:
        for _ in client(gw).chat.completions.create(model="m", messages=MSGS, stream=True):
            pass
    assert "idle timeout" in e.value.message
    assert time.time() - t0 < 3


def test_body_too_large_is_413(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway(up_config(up, max_body_bytes=2048))
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="my-model", messages=[{"role": "user", "content": "x" * 5000}])
    assert e.value.status_code == 413
    assert up.requests == []


def test_multipart_payload_with_files(harness: LoopThread) -> None:
    import urllib.request

    gw = harness.gateway({"providers": [{"name": "echo", "type": "echo"}],
                          "models": [{"id": "echo", "provider": "echo"}]})
    boundary = "XyZ"
    parts = [
        ('Content-Disposition: form-data; name="payload"\r\n\r\n',
         json.dumps({"model": "echo", "messages": [{"role": "user", "content": "summarise:"}]})),
        ('Content-Disposition: form-data; name="file"; filename="notes.txt"\r\nContent-Type: text/plain\r\n\r\n',
         "the notes"),
    ]
    body = "".join(f"--{boundary}\r\n{h}{v}\r\n" for h, v in parts) + f"--{boundary}--\r\n"
    req = urllib.request.Request(gw.url + "/v1/chat/completions", data=body.encode(),
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    out = json.loads(urllib.request.urlopen(req).read())
    text = out["choices"][0]["message"]["content"]
    assert "summarise:" in text and "the notes" in text


def test_health_ready_metrics_cors_openapi(harness: LoopThread) -> None:
    import urllib.error
    import urllib.request

    up = harness.upstream()
    gw = harness.gateway(up_config(up, cors_origins=["https://app.example"]))
    assert urllib.request.urlopen(gw.url + "/health/ready").status == 200
    req = urllib.request.Request(gw.url + "/health", method="HEAD")
    assert urllib.request.urlopen(req).status == 200
    pre = urllib.request.Request(gw.url + "/v1/chat/completions", method="OPTIONS", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    r = urllib.request.urlopen(pre)
    assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "authorization" in r.headers["Access-Control-Allow-Headers"]
    text = urllib.request.urlopen(gw.url + "/metrics").read().decode()
    # every provider x outcome series exists before any traffic
    assert 'tornado_proxy_provider_requests_total{outcome="rate_limited",provider="up"} 0.0' in text
    assert "tornado_proxy_upstream_time_to_first_byte_seconds_bucket" in text
    doc = json.loads(urllib.request.urlopen(gw.url + "/openapi.json").read())
    assert "/v1/chat/completions" in doc["paths"]
    harness.call(lambda: setattr(gw.gw, "draining", True))
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(gw.url + "/health/ready")
    assert e.value.code == 503


def start_cli(tmp_path: Path, config: dict, workers: int) -> tuple[subprocess.Popen, int]:
    """The real CLI in a subprocess on a free port, once /health answers."""
    import urllib.request

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "tornado_proxy", "--config", str(cfg), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers)], env=env, stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health")
            break
        except OSError:
            time.sleep(0.05)
    return proc, port


def test_sigterm_drains_streams_in_flight_then_exits_0(harness: LoopThread, tmp_path: Path) -> None:
    """The real CLI in a subprocess: SIGTERM mid-stream; the stream finishes, readiness is 503, exit 0."""
    import urllib.error
    import urllib.request

    up = harness.upstream().push(Reply.sse_file("openai/text.sse", delay=0.1))
    cfg = up_config(up, drain_seconds=10, log_format="json", access_keys=["sk-gateway-secret-123456"])
    proc, port = start_cli(tmp_path, cfg, workers=1)
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-gateway-secret-123456", max_retries=0)
        stream = c.chat.completions.create(model="my-model", messages=MSGS, stream=True)
        first = next(iter(stream))
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        rest = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert (first.choices[0].delta.content or "") + rest == "Hello! How can I help you today?"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        err = proc.stderr.read().decode() if proc.stderr else ""
    assert "draining" in err
    # The access log was written out before the exit: one JSON line per request, no key.
    access = [json.loads(line) for line in err.splitlines() if line.startswith('{"ts"')]
    chat = [a for a in access if a["path"] == "/v1/chat/completions"]
    assert len(chat) == 1 and chat[0]["status"] == 200 and chat[0]["model"] == "my-model"
    assert chat[0]["provider"] == "up" and chat[0]["ttfb_ms"] >= 0
    assert "sk-gateway-secret" not in err


def test_workers_share_the_port_and_metrics_add_up(tmp_path: Path) -> None:
    """--workers 2: requests spread over two processes; /metrics counts all of them; SIGTERM stops both."""
    import urllib.request

    proc, port = start_cli(tmp_path, {"providers": [{"name": "echo", "type": "echo"}],
                                      "models": [{"id": "echo", "provider": "echo"}]}, workers=2)
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        for i in range(20):
            # a new connection each time, so the kernel spreads them over both workers
            c2 = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
            assert c2.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"n{i}"}]).choices
            c2.close()
        total = 0.0
        for _ in range(50):  # the worker that answered may record a moment after the client has the answer
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            line = [l for l in text.splitlines() if l.startswith("tornado_proxy_requests_total{")
                    and 'route="chat_completions"' in l and 'status="200"' in l]
            total = sum(float(l.rsplit(" ", 1)[1]) for l in line)
            if total == 20.0:
                break
            time.sleep(0.05)
        assert total == 20.0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "2 workers" in err and err.count("drained; exiting") == 2


def test_a_key_quoted_by_the_upstream_never_reaches_the_client(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = Reply.json({"error": {"message": "Incorrect API key provided: test-key-1-very-secret-value"}},
                            status=401)
    cfg = simple_config([openai_provider(up, accounts=[{"id": "a", "api_key": "test-key-1-very-secret-value"}])],
                        [{"id": "m", "provider": "up", "upstream_model": "m"}])
    gw = harness.gateway(cfg)
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="m", messages=MSGS)
    assert e.value.status_code == 502
    assert "very-secret" not in e.value.message and "****alue" in e.value.message
