"""OpenTelemetry traces through the real gateway: spans, GenAI attributes, failover, no secrets.

The gateway builds its own SDK tracer provider from the config; each test adds the
SDK's InMemorySpanExporter to it and drives the gateway with the official SDKs.  One
test lets the real OTLP/HTTP exporter post to a collector on loopback.
"""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Iterator

import anthropic
import openai
import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Reply, fixture_bytes, openai_provider, simple_config

pytest.importorskip("opentelemetry.sdk", reason="the [otel] extra is not installed")
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

ACCESS_KEY = "tp-access-key-tracing-0001"
KEY_1 = "sk-upstream-key-tracing-1111"
KEY_2 = "sk-upstream-key-tracing-2222"
PROMPT = "the secret prompt: zebra-pancake-42"
ANSWER = "Hello! How can I help you today?"  # in tests/fixtures/openai/text.*
FORBIDDEN = (PROMPT, "zebra-pancake", KEY_1, KEY_2, ACCESS_KEY, ANSWER)
TIMEOUTS = {"connect": 2, "first_byte": 5, "idle": 5}


def traced(harness: LoopThread, providers: list[dict[str, Any]], models: list[dict[str, Any]],
           **otel: Any) -> tuple[Any, InMemorySpanExporter]:
    raw = simple_config(providers, models, access_keys=[ACCESS_KEY])
    raw["observability"] = {"otel": {"enabled": True, "exporter": "none", **otel}}
    gw = harness.gateway(raw)
    mem = InMemorySpanExporter()
    gw.gw.tracer.provider.add_span_processor(SimpleSpanProcessor(mem))
    return gw, mem


def openai_gateway(harness: LoopThread, up: FakeUpstream, **otel: Any) -> tuple[Any, InMemorySpanExporter]:
    prov = openai_provider(up, accounts=[{"id": "acct-1", "api_key": KEY_1}, {"id": "acct-2", "api_key": KEY_2}],
                           timeouts=TIMEOUTS, scheduler={"strategy": "round_robin"})
    return traced(harness, [prov], [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}], **otel)


def spans(mem: InMemorySpanExporter, n: int) -> list[ReadableSpan]:
    """The request's spans once its server span has ended (it ends just after the last byte)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = list(mem.get_finished_spans())
        if len(got) >= n and any(s.kind is SpanKind.SERVER for s in got):
            return got
        time.sleep(0.01)
    raise AssertionError(f"expected {n} spans, got {[s.name for s in mem.get_finished_spans()]}")


def split(got: list[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    (server,) = [s for s in got if s.kind is SpanKind.SERVER]
    attempts = sorted((s for s in got if s.kind is SpanKind.CLIENT),
                      key=lambda s: s.attributes["tornado_proxy.attempt"])
    for a in attempts:
        assert a.parent is not None and a.parent.span_id == server.context.span_id
        assert a.context.trace_id == server.context.trace_id
    return server, attempts


def assert_no_secrets(got: list[ReadableSpan], forbidden: tuple[str, ...] = FORBIDDEN) -> None:
    for s in got:
        texts = [s.name, *(str(v) for v in s.attributes.values())]
        for ev in s.events:
            texts += [ev.name, *(str(v) for v in ev.attributes.values())]
        if s.status.description:
            texts.append(s.status.description)
        for text in texts:
            for secret in forbidden:
                assert secret not in text, f"{secret!r} in span {s.name!r}: {text!r}"
            assert "Bearer" not in text


def oai(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=ACCESS_KEY, max_retries=0, timeout=20)


MESSAGES = [{"role": "user", "content": PROMPT}]


def test_non_stream_request_is_a_server_span_with_one_attempt(harness: LoopThread) -> None:
    up = harness.upstream()
    gw, mem = openai_gateway(harness, up)
    up.push(Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json")))
    parent_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    oai(gw).chat.completions.create(model="m", messages=MESSAGES, extra_headers={
        "traceparent": f"00-{parent_trace}-00f067aa0ba902b7-01"})
    server, (attempt,) = split(spans(mem, 2))

    assert server.name == "POST /v1/chat/completions"
    assert format(server.context.trace_id, "032x") == parent_trace  # the client's trace goes on
    sa = server.attributes
    assert sa["gen_ai.operation.name"] == "chat"
    assert sa["gen_ai.request.model"] == "m" and sa["gen_ai.response.model"] == "m"
    assert sa["http.request.method"] == "POST" and sa["http.route"] == "/v1/chat/completions"
    assert sa["http.response.status_code"] == 200
    assert sa["gen_ai.usage.input_tokens"] == 19 and sa["gen_ai.usage.output_tokens"] == 10
    assert sa["tornado_proxy.attempts"] == 1 and sa["tornado_proxy.stream"] is False
    assert server.status.status_code is StatusCode.UNSET

    assert attempt.name == "chat gpt-4o-mini"
    aa = attempt.attributes
    assert aa["gen_ai.provider.name"] == "openai" and aa["gen_ai.operation.name"] == "chat"
    assert aa["gen_ai.request.model"] == "gpt-4o-mini"
    assert aa["tornado_proxy.provider"] == "up" and aa["tornado_proxy.account.id"] == "acct-1"
    assert aa["server.address"] == "127.0.0.1" and aa["server.port"] == up.port
    assert aa["http.response.status_code"] == 200
    assert aa["gen_ai.usage.input_tokens"] == 19 and aa["gen_ai.usage.cache_read.input_tokens"] == 0
    assert "error.type" not in aa
    assert_no_secrets([server, attempt])


def test_stream_request_spans_carry_the_usage(harness: LoopThread) -> None:
    up = harness.upstream()
    gw, mem = openai_gateway(harness, up)
    up.push(Reply.sse_file("openai/text.sse"))
    stream = oai(gw).chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                             stream_options={"include_usage": True})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == ANSWER
    server, (attempt,) = split(spans(mem, 2))
    assert server.attributes["tornado_proxy.stream"] is True
    assert server.attributes["http.response.status_code"] == 200
    for s in (server, attempt):
        assert s.attributes["gen_ai.usage.input_tokens"] == 19
        assert s.attributes["gen_ai.usage.output_tokens"] == 10
    assert attempt.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert_no_secrets([server, attempt])


def test_stream_cut_after_the_first_byte_is_an_error(harness: LoopThread) -> None:
    up = harness.upstream()
    gw, mem = openai_gateway(harness, up)
    up.push(Reply.sse_file("openai/cut.sse", cut=True))
    with pytest.raises(openai.APIError):
        for _ in oai(gw).chat.completions.create(model="m", messages=MESSAGES, stream=True):
            pass
    server, (attempt,) = split(spans(mem, 2))
    # the client got a 200 and then an error event: the span says it failed
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["error.type"] == "upstream_stream_cut"
    assert server.status.status_code is StatusCode.ERROR
    assert attempt.attributes["error.type"] == "upstream_stream_cut"
    assert attempt.status.status_code is StatusCode.ERROR


def test_client_gone_mid_stream_ends_both_spans(harness: LoopThread) -> None:
    up = harness.upstream()
    gw, mem = openai_gateway(harness, up)
    head = fixture_bytes("openai/text.sse").split(b"\n\n")[0] + b"\n\n"
    up.push(Reply(200, {"Content-Type": "text/event-stream"}, chunks=[head], hang=True))
    body = json.dumps({"model": "m", "messages": MESSAGES, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (ACCESS_KEY.encode(), len(body), body))
    assert b"200 OK" in s.recv(65536)
    s.close()
    server, (attempt,) = split(spans(mem, 2))
    assert server.attributes["http.response.status_code"] == 499
    assert server.attributes["error.type"] == "client_closed"
    assert attempt.attributes["error.type"] == "client_closed"


def test_failover_is_two_attempt_spans_and_an_event(harness: LoopThread) -> None:
    up = harness.upstream()
    gw, mem = openai_gateway(harness, up)
    up.push(Reply.json({"error": {"message": f"Rate limit reached for key {KEY_1}: {PROMPT}",
                                  "type": "requests", "code": "rate_limit_exceeded"}},
                       status=429, headers={"retry-after": "30"}),
            Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json")))
    oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    server, (first, second) = split(spans(mem, 3))

    assert first.attributes["tornado_proxy.account.id"] == "acct-1"
    assert first.attributes["http.response.status_code"] == 429
    assert first.attributes["error.type"] == "upstream_rate_limited"
    assert first.status.status_code is StatusCode.ERROR
    assert "gen_ai.usage.input_tokens" not in first.attributes
    assert second.attributes["tornado_proxy.account.id"] == "acct-2"
    assert second.attributes["tornado_proxy.attempt"] == 2
    assert second.status.status_code is StatusCode.UNSET and "error.type" not in second.attributes
    assert second.attributes["gen_ai.usage.output_tokens"] == 10

    assert server.attributes["tornado_proxy.attempts"] == 2
    assert server.attributes["tornado_proxy.account.id"] == "acct-2"
    assert server.attributes["http.response.status_code"] == 200 and "error.type" not in server.attributes
    (event,) = server.events
    assert event.name == "failover"
    assert event.attributes["tornado_proxy.attempt"] == 2
    assert event.attributes["tornado_proxy.failed_account.id"] == "acct-1"
    assert event.attributes["error.type"] == "upstream_rate_limited"
    # the upstream's message quoted the key and the prompt: neither is in the trace
    assert_no_secrets([server, first, second])


def test_refused_request_is_a_server_span_without_attempts(harness: LoopThread) -> None:
    up = harness.upstream()
    gw, mem = openai_gateway(harness, up)
    with pytest.raises(openai.NotFoundError):
        oai(gw).chat.completions.create(model="no-such-model", messages=MESSAGES)
    (server,) = spans(mem, 1)
    assert server.attributes["http.response.status_code"] == 404
    assert server.attributes["error.type"] == "model_not_found"
    assert server.attributes["tornado_proxy.attempts"] == 0
    assert server.status.status_code is StatusCode.UNSET  # a 4xx is the client's, not a server error
    assert up.requests == []


# (client, stream, fixture, (input without cache, cache creation, cache read, output))
CACHE_CASES = [
    ("anthropic", False, "anthropic/message.json", (472, 100, 1500, 89)),
    ("anthropic", True, "anthropic/tools.sse", (377, 120, 2048, 89)),
    ("openai", False, "anthropic/message.json", (472, 100, 1500, 89)),
]


@pytest.mark.parametrize("client,stream,fixture,usage", CACHE_CASES, ids=["passthrough", "passthrough-stream", "translated"])
def test_anthropic_cache_tokens(harness: LoopThread, client: str, stream: bool, fixture: str,
                                usage: tuple[int, int, int, int]) -> None:
    """Anthropic's cache counts, passed through (Messages client) and translated (OpenAI client)."""
    up = harness.upstream()
    prov = {"name": "anth", "type": "anthropic", "base_url": up.url, "timeouts": TIMEOUTS,
            "accounts": [{"id": "claude-1", "api_key": KEY_1}]}
    gw, mem = traced(harness, [prov], [{"id": "claude", "provider": "anth", "upstream_model": "claude-sonnet-4-20250514",
                                        "max_tokens": 1024}])
    up.push(Reply.sse_file(fixture) if stream else
            Reply(200, {"Content-Type": "application/json"}, fixture_bytes(fixture)))
    if client == "anthropic":
        ant = anthropic.Anthropic(base_url=gw.url, api_key=ACCESS_KEY, max_retries=0, timeout=20)
        if stream:
            with ant.messages.stream(model="claude", max_tokens=100, messages=MESSAGES) as events:
                events.get_final_message()
        else:
            ant.messages.create(model="claude", max_tokens=100, messages=MESSAGES)
        route = "/v1/messages"
    else:
        oai(gw).chat.completions.create(model="claude", messages=MESSAGES)
        route = "/v1/chat/completions"
    server, (attempt,) = split(spans(mem, 2))
    assert server.attributes["http.route"] == route
    assert attempt.attributes["gen_ai.provider.name"] == "anthropic"
    assert attempt.name == "chat claude-sonnet-4-20250514"
    fresh, written, read, out = usage
    for s in (server, attempt):
        a = s.attributes
        assert a["gen_ai.usage.input_tokens"] == fresh + written + read  # cached tokens included
        assert a["gen_ai.usage.output_tokens"] == out
        assert a["gen_ai.usage.cache_read.input_tokens"] == read
        assert a["gen_ai.usage.cache_creation.input_tokens"] == written
    assert_no_secrets([server, attempt], (PROMPT, KEY_1, ACCESS_KEY))


def test_capture_content_is_opt_in(harness: LoopThread) -> None:
    up = harness.upstream()
    gw, mem = openai_gateway(harness, up, capture_content=True)
    up.push(Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json")))
    oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    server, (attempt,) = split(spans(mem, 2))
    assert PROMPT in server.attributes["tornado_proxy.request.body"]
    # even then: no key, and nothing on the attempt span
    assert_no_secrets([server, attempt], (KEY_1, KEY_2, ACCESS_KEY))
    assert_no_secrets([attempt], (PROMPT,))


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """An OTLP/HTTP collector on loopback, in its own thread (the exporter posts synchronously)."""
    received: list[tuple[str, dict[str, str], bytes]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_spans_are_exported_over_otlp_http(harness: LoopThread, collector: Any) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    url, received = collector
    up = harness.upstream()
    prov = openai_provider(up, accounts=[{"id": "acct-1", "api_key": KEY_1}], timeouts=TIMEOUTS)
    raw = simple_config([prov], [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}],
                        access_keys=[ACCESS_KEY])
    raw["observability"] = {"otel": {"enabled": True, "endpoint": url + "/v1/traces", "service_name": "tp-e2e",
                                     "headers": {"x-collector-key": "collector-secret"}}}
    gw = harness.gateway(raw)
    up.push(Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json")))
    oai(gw).chat.completions.create(model="m", messages=MESSAGES)
    # the batch processor sends on its own schedule; a flush sends now
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(_span_names(received)) < 2:
        gw.gw.tracer.provider.force_flush(5000)
        time.sleep(0.05)
    path, headers, _ = received[0]
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-collector-key"] == "collector-secret"
    names = _span_names(received)
    assert sorted(names) == ["POST /v1/chat/completions", "chat gpt-4o-mini"]
    req = ExportTraceServiceRequest()
    req.ParseFromString(received[0][2])
    resource = {a.key: a.value.string_value for a in req.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "tp-e2e"
    blob = b"".join(body for _, _, body in received)
    for secret in (PROMPT, KEY_1, ACCESS_KEY, ANSWER):
        assert secret.encode() not in blob


def _span_names(received: list[tuple[str, dict[str, str], bytes]]) -> list[str]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    names = []
    for _, _, body in received:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        names += [s.name for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    return names


# -- off -----------------------------------------------------------------------------------
def _run(code: str) -> subprocess.CompletedProcess[str]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": root})


GATEWAY = """
    import sys
    from tornado_proxy.app import make_app
    from tornado_proxy.gateway import Gateway
    from tornado_proxy.config import build
    raw = {"providers": [{"name": "up", "type": "openai", "base_url": "http://127.0.0.1:9/v1",
                          "accounts": [{"id": "a", "api_key": "k"}]}],
           "models": [{"id": "m", "provider": "up"}]}
"""


def test_tracing_off_imports_no_opentelemetry() -> None:
    res = _run(GATEWAY + """
    make_app(Gateway(build(raw, "test", {})))
    raw["observability"] = {"otel": {"enabled": False}}
    gw = Gateway(build(raw, "test", {}))
    assert gw.tracer is None
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_otel_sdk_disabled_turns_it_off(harness: LoopThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    raw = simple_config([openai_provider(harness.upstream())], [{"id": "m", "provider": "up"}])
    raw["observability"] = {"otel": {"enabled": True}}
    assert harness.gateway(raw).gw.tracer is None


def test_enabled_without_the_extra_says_what_to_install() -> None:
    res = _run(GATEWAY + """
    sys.modules["opentelemetry"] = None  # as if the [otel] extra were not installed
    from tornado_proxy.config import ConfigError
    raw["observability"] = {"otel": {"enabled": True}}
    try:
        Gateway(build(raw, "test", {}))
    except ConfigError as e:
        print(e.problems)
    """)
    assert res.returncode == 0, res.stderr
    assert "pip install 'tornado-proxy[otel]'" in res.stdout
