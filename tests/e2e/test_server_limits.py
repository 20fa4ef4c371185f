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

from tests.e2e.harness import LoopThread, Reply, openai_provider, simple_config

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


def closed(s: socket.socket, timeout: float = 3) -> bytes | None:
    """What the server sent before closing ``s`` (None: still open after ``timeout``)."""
    s.settimeout(timeout)
    got = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return got
            got += d
    except ConnectionResetError:
        return got
    except socket.timeout:
        return None


# -- 6: aborted uploads -------------------------------------------------------------

def test_aborted_uploads_leave_nothing_in_flight_and_free_their_bodies(harness: LoopThread) -> None:
    from tornado_proxy.pipeline import LLMHandler

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
