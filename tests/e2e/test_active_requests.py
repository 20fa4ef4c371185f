"""tornado_proxy_active_requests: in flight per route, up during a slow stream and back
to 0 however the request ends (success, upstream error, client gone mid-stream or
mid-upload)."""
from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Callable

import openai
import pytest

from tests.e2e.harness import LoopThread, Reply, fixture_bytes, openai_provider, simple_config

MSGS = [{"role": "user", "content": "Say hello"}]
CHAT = 'tornado_proxy_active_requests{route="chat_completions"}'
MESSAGES = 'tornado_proxy_active_requests{route="messages"}'


def gauge(gw: Any, series: str) -> float | None:
    for line in gw.metrics_text().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def wait_for(fn: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def slow_stream() -> Reply:
    # the fixture's events a tenth of a second apart: long enough to look at the gauge
    return Reply.sse(fixture_bytes("openai/text.sse"), delay=0.1)


def setup(harness: LoopThread) -> tuple[Any, Any]:
    up = harness.upstream()
    prov = openai_provider(up, timeouts={"connect": 2, "first_byte": 5, "idle": 5},
                           scheduler={"max_tries": 1})
    gw = harness.gateway(simple_config([prov], [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}]))
    return up, gw


def raw_request(gw: Any, body: bytes, content_length: int | None = None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body) if content_length is None else content_length).encode()
              + b"\r\n\r\n" + body)
    return s


def test_up_during_a_slow_stream_and_back_to_zero_after_it(harness: LoopThread) -> None:
    up, gw = setup(harness)
    up.default = slow_stream()
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)
    seen: list[float | None] = []
    done = threading.Event()

    def run() -> None:
        try:
            for _ in c.chat.completions.create(model="m", messages=MSGS, stream=True):
                seen.append(gauge(gw, CHAT))
        finally:
            done.set()

    t = threading.Thread(target=run)
    t.start()
    wait_for(done.is_set, "the stream", 20)
    t.join()
    # one in flight on the route while it streams (the last chunk may be read after its end)
    assert len(seen) > 2 and all(v == 1.0 for v in seen[:-1])
    wait_for(lambda: gauge(gw, CHAT) == 0.0, "the gauge to fall to 0")
    assert gauge(gw, MESSAGES) in (None, 0.0)  # another route's series is not touched


def test_back_to_zero_after_an_upstream_error(harness: LoopThread) -> None:
    up, gw = setup(harness)
    up.default = Reply.json({"error": {"message": "boom"}}, 500)
    with pytest.raises(openai.APIStatusError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0).chat.completions.create(
            model="m", messages=MSGS)
    assert len(up.requests) == 1
    wait_for(lambda: gauge(gw, CHAT) == 0.0, "the gauge to fall to 0")


def test_back_to_zero_after_the_client_goes_mid_stream(harness: LoopThread) -> None:
    up, gw = setup(harness)
    up.default = slow_stream()
    s = raw_request(gw, json.dumps({"model": "m", "messages": MSGS, "stream": True}).encode())
    got = b""
    while b"data:" not in got:
        got += s.recv(65536)
    assert gauge(gw, CHAT) == 1.0
    s.close()  # gone with the stream half sent
    wait_for(lambda: gauge(gw, CHAT) == 0.0, "the gauge to fall to 0")
    wait_for(lambda: up.closed_early == 1, "the upstream transfer to be aborted")


def test_back_to_zero_after_the_client_goes_mid_upload(harness: LoopThread) -> None:
    up, gw = setup(harness)
    s = raw_request(gw, b'{"model": "m", "mess', content_length=1000)
    wait_for(lambda: gauge(gw, CHAT) == 1.0, "the request to count")
    s.close()
    wait_for(lambda: gauge(gw, CHAT) == 0.0, "the gauge to fall to 0")
    assert gw.gw.active_requests == 0  # what the drain on SIGTERM waits for
    assert not up.requests
