"""Resource limits at the boundary (docs/operations-limits.md), on the real gateway:
aborted uploads are let go of, upstream bodies and stream events are capped, slow and
idle client connections are closed, and a worker at its connection limit still serves."""
from __future__ import annotations

import gc
import json
import socket
import time
from typing import Any, Callable

import openai
import pytest

from tests.e2e.harness import PATHS, LoopThread, Reply, fast_only, openai_provider, sent_before_close, simple_config

MSGS = [{"role": "user", "content": "hi"}]


def config(up: Any = None, **server: Any) -> dict[str, Any]:
    if up is None:
        return simple_config([{"name": "echo", "type": "echo"}], [{"id": "m", "provider": "echo"}], **server)
    return simple_config([openai_provider(up, timeouts={"connect": 2, "first_byte": 5, "idle": 5})],
                         [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}], **server)


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)


def wait_for(cond: Callable[[], bool], limit: float = 5.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


closed = sent_before_close


# -- 6: aborted uploads -------------------------------------------------------------

def test_aborted_uploads_leave_nothing_in_flight_and_free_their_bodies(harness: LoopThread) -> None:
    from tornado_proxy.pipeline.handler import LLMHandler

    gw = harness.gateway(config())
    half = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * (256 << 10)
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"X-Test-Upload: aborted\r\nContent-Length: %d\r\n\r\n" % (2 * len(half)) + half)
        # the gateway has read the head and part of the body before the client goes
        assert wait_for(lambda: gw.gw.active_requests == 1)
        s.close()
        assert wait_for(lambda: gw.gw.active_requests == 0), "the aborted upload stays counted in flight"

    def handlers_alive() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, LLMHandler)
                   and o.request.headers.get("X-Test-Upload") == "aborted")

    # Nothing keeps the handlers (and the 256 KiB each one buffered) alive.
    assert harness.call(handlers_alive) == 0
    text = gw.metrics_text()
    assert 'route="chat_completions",status="499"} 20.0' in text
    # and the gateway still serves
    assert client(gw).chat.completions.create(model="m", messages=MSGS).choices


# -- 7: upstream bodies -------------------------------------------------------------

def test_an_upstream_answer_over_the_cap_is_a_502_and_the_transfer_stops(harness: LoopThread) -> None:
    up = harness.upstream()
    big = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * (300 << 10)},
                        "finish_reason": "stop"}]}
    up.push(Reply.json(big))
    gw = harness.gateway(config(up, max_upstream_body_bytes=64 << 10))
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="m", messages=MSGS)
    assert e.value.status_code == 502
    assert e.value.body["code"] == "upstream_bad_response"
    assert "larger than the gateway's limit of 65536 bytes" in e.value.message
    # under the cap it goes through
    up.push(Reply.json({**big, "choices": [{**big["choices"][0],
                                             "message": {"role": "assistant", "content": "small"}}]}))
    assert client(gw).chat.completions.create(model="m", messages=MSGS).choices[0].message.content == "small"


def test_an_upstream_error_body_over_its_cap_is_a_502(harness: LoopThread) -> None:
    up = harness.upstream()
    up.push(Reply(500, {"Content-Type": "text/html"}, chunks=[b"<p>" + b"e" * 16384] * 64, hang=True))
    gw = harness.gateway(config(up, max_upstream_error_bytes=8192))
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="m", messages=MSGS)
    assert e.value.status_code == 502 and e.value.body["code"] == "upstream_bad_response"
    assert "error body (status 500) is larger than the gateway's limit of 8192 bytes" in e.value.message
    # The upstream was cut off long before it finished (it would have hung after its chunks).
    assert wait_for(lambda: up.closed_early == 1)


def test_a_stream_event_that_never_ends_is_an_error_not_our_memory(harness: LoopThread) -> None:
    """A translated stream (Anthropic client, OpenAI upstream) decodes SSE: an event that
    never ends is capped.  (A passed-through stream holds no event: nothing to cap.)"""
    import anthropic

    up = harness.upstream()
    good = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
            b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\n')
    endless = [b'data: {"id":"c","choices":[{"delta":{"content":"'] + [b"y" * 16384] * 64
    # Before the first byte: a 502 in the client's format.
    up.push(Reply(200, {"Content-Type": "text/event-stream"}, chunks=endless, hang=True))
    gw = harness.gateway(config(up, max_upstream_body_bytes=64 << 10))
    ant = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)
    with pytest.raises(anthropic.APIStatusError) as e:
        list(ant.messages.create(model="m", max_tokens=10, messages=MSGS, stream=True))
    assert e.value.status_code == 502 and e.value.body["error"]["type"] == "api_error"
    assert "stream event larger than the gateway's limit of 65536 bytes" in e.value.message
    assert wait_for(lambda: up.closed_early == 1)
    # After it: the stream ends with an error event in Anthropic's shape.
    # (the endless event in a later read than the good one: a failure before the first
    # byte would rather fail over than send a partial answer)
    up.push(Reply(200, {"Content-Type": "text/event-stream"}, chunks=[good, b"".join(endless)], delay=0.2,
                  hang=True))
    text = ""
    with pytest.raises(anthropic.APIStatusError) as e:
        for ev in ant.messages.create(model="m", max_tokens=10, messages=MSGS, stream=True):
            if ev.type == "content_block_delta":
                text += ev.delta.text
    assert text == "Hel"
    assert "stream event larger than the gateway's limit" in str(e.value)
    assert wait_for(lambda: up.closed_early == 2)


# -- 8: slow and idle connections ----------------------------------------------------

def test_slowloris_gets_408_at_the_configured_header_deadline(harness: LoopThread) -> None:
    gw = harness.gateway(config(client_header_timeout=1, keepalive_timeout=60))
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    s.settimeout(0.1)
    start = time.monotonic()
    got = b""
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    for i in range(len(head)):  # a byte every 100 ms
        try:
            s.sendall(head[i:i + 1])
            d = s.recv(65536)
        except socket.timeout:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        got += d
        if not d or time.monotonic() - start > 6:
            break
    if PATHS["http_server"] == "fast":
        assert got.startswith(b"HTTP/1.1 408 "), got
    else:  # Tornado closes a late head without an answer (docs/architecture.md)
        assert got == b"", got
    assert time.monotonic() - start < 4  # one second, plus at most one sweep


@fast_only  # the accept loop that sheds idle connections is our own (server/http1.py)
def test_out_of_file_descriptors_a_new_request_is_still_served(tmp_path: Any) -> None:
    """A worker with a tiny fd limit, every descriptor held by idle keep-alive
    connections: accept fails with EMFILE, the longest-idle are closed, and a new
    request is served at once (asyncio's own accept would log an error and stall)."""
    import resource
    import urllib.request

    from tests.e2e.processes import echo_config, gateway

    limit = 80
    with gateway(tmp_path, echo_config(), 1,
                 preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))) as g:
        g.wait_ready()
        idle = []
        for _ in range(limit + 20):  # more than the worker has descriptors for
            c = socket.create_connection(("127.0.0.1", g.port), timeout=5)
            c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(c)
        start = time.monotonic()
        r = urllib.request.urlopen(g.url + "/health", timeout=5)
        assert r.status == 200 and time.monotonic() - start < 2
        for c in idle:
            c.close()
        err = g.stderr()
    assert "out of system resource" not in err and " ERROR " not in err
