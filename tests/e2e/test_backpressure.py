"""A client that reads slower than the upstream sends: the gateway stops reading the
upstream (the stream waits in kernel buffers, not in the gateway), the idle timeout does
not fire meanwhile, and the client still gets every event."""
from __future__ import annotations

import json
import socket
import time

from tests.e2e.harness import LoopThread, Reply, client_buffered, openai_provider, simple_config

N_EVENTS = 3000  # ~1 KiB each: about 3 MiB, written by the fake upstream as fast as it can


def chunk(i: int) -> bytes:
    body = {"id": "chatcmpl-bp", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": f"{i:05d}" + "x" * 1000}, "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def dechunk(body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += body[:size]
        body = body[size + 2:]


def read_until(s: socket.socket, marker: bytes, limit: float = 30) -> bytes:
    data = bytearray()
    end = time.time() + limit
    while marker not in data[-64:] and time.time() < end:
        d = s.recv(65536)
        if not d:
            break
        data += d
    return bytes(data)


def test_slow_client_pauses_the_upstream_and_still_gets_everything(harness: LoopThread) -> None:
    events = [chunk(i) for i in range(N_EVENTS)] + [b"data: [DONE]\n\n"]
    up = harness.upstream().push(Reply(200, {"Content-Type": "text/event-stream"}, chunks=events))
    gw = harness.gateway(simple_config(
        [openai_provider(up, timeouts={"connect": 2, "first_byte": 5, "idle": 1})],
        [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}]))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that holds little
    s.connect(("127.0.0.1", gw.port))
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    first = s.recv(4096)
    assert first.startswith(b"HTTP/1.1 200")

    def state() -> tuple[bool, int]:
        paused = any(t.paused for t in gw.gw.upstream.active)
        buffered = max((client_buffered(c) for c in gw.server.http.connections), default=0)
        return paused, buffered

    time.sleep(1.6)  # longer than the upstream idle timeout: a paused transfer is not idle
    paused, buffered = harness.call(state)
    assert paused, "the upstream transfer should be paused while the client is behind"
    assert buffered < 1 << 20, f"{buffered} bytes held for a slow client"

    rest = read_until(s, b"0\r\n\r\n")
    data = dechunk((first + rest).partition(b"\r\n\r\n")[2])
    seen = [json.loads(line[6:])["choices"][0]["delta"]["content"] for line in data.split(b"\n")
            if line.startswith(b"data: {")]
    seen = [int(c[:5]) for c in seen]
    assert seen == list(range(N_EVENTS))
    assert b"data: [DONE]" in data
    assert not harness.call(lambda: gw.gw.upstream.active)
