"""A stream lets go of its parsed request at the first byte it sends: a long conversation
(megabytes of objects) is not held for the stream's whole life.  Before the first byte
it is still there, since a failover rebuilds the upstream request from it."""
from __future__ import annotations

import gc
import json
import socket
import time
import uuid
from typing import Any

import pytest

from tests.e2e.harness import LoopThread, Reply, fixture_bytes, openai_provider, simple_config
from tests.e2e.test_anthropic_e2e import anthropic_provider


def holds(marker: str) -> bool:
    """Whether any live list holds a message (or content part) carrying ``marker``:
    the messages of a parsed request, as sent or translated."""
    gc.collect()
    for o in gc.get_objects():
        if type(o) is not list:
            continue
        for item in o:
            if type(item) is dict and (item.get("content") == marker or item.get("text") == marker):
                return True
    return False


def first_sse_bytes(s: socket.socket, limit: float = 10) -> bytes:
    data = b""
    end = time.time() + limit
    while b"data:" not in data and time.time() < end:
        d = s.recv(65536)
        if not d:
            break
        data += d
    return data


def open_stream(port: int, model: str, marker: str) -> socket.socket:
    body = json.dumps({"model": model, "stream": True, "max_tokens": 50,
                       "messages": [{"role": "user", "content": marker}]}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_the_parsed_request_goes_at_the_first_byte(harness: LoopThread, kind: str) -> None:
    marker = "release-" + uuid.uuid4().hex + "-" + "x" * 4096
    up = harness.upstream()
    if kind == "openai":
        first = fixture_bytes("openai/text.sse").split(b"\n\n")[0] + b"\n\n"
        provider: dict[str, Any] = openai_provider(up, timeouts={"connect": 2, "first_byte": 10, "idle": 10})
        model = {"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}
    else:  # translated: the pivot is a second copy of the messages
        events = fixture_bytes("anthropic/text.sse").split(b"\n\n")
        first = b"\n\n".join(events[:4]) + b"\n\n"  # message_start, block start, ping, first delta
        provider = anthropic_provider(up, timeouts={"connect": 2, "first_byte": 10, "idle": 10})
        model = {"id": "m", "provider": "anth", "upstream_model": "claude-sonnet-4-5"}
    # The upstream waits before its first byte, sends one piece, then holds the stream open.
    up.push(Reply(200, {"Content-Type": "text/event-stream"}, chunks=[first], first_delay=0.6, hang=True))
    gw = harness.gateway(simple_config([provider], [model]))
    s = open_stream(gw.port, "m", marker)
    try:
        deadline = time.time() + 5
        while not up.requests and time.time() < deadline:
            time.sleep(0.02)
        assert up.requests, "the gateway never reached the upstream"
        # Waiting for the upstream's first byte: the request is still needed (failover).
        assert harness.call(holds, marker)
        got = first_sse_bytes(s)
        assert got.startswith(b"HTTP/1.1 200") and b"data:" in got
        # The stream goes on (the upstream holds it open), but the request is gone.
        assert not harness.call(holds, marker)
        assert any(not t.future.done() for t in gw.gw.upstream.active if t.future is not None)
    finally:
        s.close()
