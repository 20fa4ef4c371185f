"""Streams on a reused keep-alive connection go out as fast as they come in.

The stall this guards against: with Nagle's algorithm on a socket, a small write waits
while an earlier one is unacknowledged, and a receiver that delays its ACKs (Linux does
once a connection is past its first exchanges, i.e. on a reused keep-alive connection)
sends that ACK up to 40 ms late.  A stream's chunks then reach the client in bursts
40 ms apart, and a request body sent in pieces reaches the upstream late.  The gateway
must have TCP_NODELAY on the client's socket and on the upstream's.

The fake upstream here paces its events 5 ms apart and notes when it wrote each one
and when each request had wholly arrived; the client, a raw socket, sends seven streamed
requests on one connection (each with a 60 kB body, which goes upstream in several
writes) and notes when each event arrived.  Both run in this process, on one clock.
With Nagle on the client socket every reused stream shows one gap ~35 ms beyond the
upstream's own (its first events held until the delayed ACK), and with Nagle on the
upstream socket every reused request reaches the upstream ~40 ms late; without either,
both stay within a few ms.  A stall shows on every reused stream, a busy machine's
hiccup on one or two now and then (a CI machine running other tests beside this one):
the test fails when most of the six reused streams show one (half a delayed ACK, 20 ms,
beyond the upstream's gap; 30 ms for a request).
This is a test for a stall, not a speed test.
"""
from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from typing import Any

from tests.e2e.harness import LoopThread, simple_config

EVENTS = 30
PACE_S = 0.005          # the upstream's own gap between events
STREAMS = 7             # on one connection: the first fresh, the others on it reused
STALL_S = 0.040         # what a delayed ACK costs
BODY_TEXT = "x" * 60000  # a request body that goes upstream in several writes
EVENT_INDEX = re.compile(rb'"content": ?"<(\d+)>"')


class PacedUpstream(asyncio.Protocol):
    """An OpenAI-compatible upstream that streams EVENTS chat chunks PACE_S apart on
    keep-alive connections (asyncio sockets: TCP_NODELAY on, so its own writes are
    never held) and records, per request, its connection, when the whole request had
    arrived and when each event was written."""

    log: list[dict[str, Any]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""
        self.peer = transport.get_extra_info("peername")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(rest) < length:
            return
        self.buf = rest[length:]
        rec: dict[str, Any] = {"peer": self.peer, "arrived": time.monotonic(), "sent": []}
        self.log.append(rec)
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
        asyncio.get_running_loop().call_soon(self._event, rec, 0)

    def _event(self, rec: dict[str, Any], i: int) -> None:
        if self.transport.is_closing():
            return
        if i == EVENTS:
            self.transport.write(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
            return
        body = {"id": "chatcmpl-gap", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": {"content": f"<{i}>"}, "finish_reason": None}]}
        data = b"data: " + json.dumps(body).encode() + b"\n\n"
        rec["sent"].append(time.monotonic())
        self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        asyncio.get_running_loop().call_later(PACE_S, self._event, rec, i + 1)


def start_upstream(harness: LoopThread) -> int:
    async def start() -> Any:
        return await asyncio.get_running_loop().create_server(PacedUpstream, "127.0.0.1", 0)

    server = harness.run(start())
    harness._cleanups.append(server.close)
    return int(server.sockets[0].getsockname()[1])


def stream_once(s: socket.socket, body: bytes) -> tuple[float, list[float]]:
    """Send one streamed request on ``s``; return when it was sent and when each
    event arrived (by its index), reading to the end of the chunked answer."""
    sent = time.monotonic()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    arrived: dict[int, float] = {}
    data = b""
    s.settimeout(10)
    while not data.endswith(b"0\r\n\r\n"):
        d = s.recv(65536)
        assert d, "the gateway closed the connection mid-stream"
        now = time.monotonic()
        data += d
        # The index of every event seen so far: the first time one shows up is its arrival.
        for m in EVENT_INDEX.finditer(data):
            arrived.setdefault(int(m.group(1)), now)
    head = data.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"Connection: close" not in head
    assert b"data: [DONE]" in data
    assert sorted(arrived) == list(range(EVENTS))
    return sent, [arrived[i] for i in range(EVENTS)]


def test_streams_on_a_reused_connection_have_no_stall(harness: LoopThread) -> None:
    PacedUpstream.log = []
    port = start_upstream(harness)
    gw = harness.gateway(simple_config(
        [{"name": "up", "type": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
          "accounts": [{"id": "up-1", "api_key": "test-key-1"}]}],
        [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}]))
    body = json.dumps({"model": "m", "stream": True,
                       "messages": [{"role": "user", "content": BODY_TEXT}]}).encode()
    s = socket.create_connection(("127.0.0.1", gw.port))
    try:
        runs = [stream_once(s, body) for _ in range(STREAMS)]
    finally:
        s.close()

    recs = PacedUpstream.log
    assert len(recs) == STREAMS
    assert len({r["peer"] for r in recs}) == 1, "the upstream connection should have been reused"
    stalled, late, seen = [], [], []
    for n, ((sent, arrived), rec) in enumerate(zip(runs, recs), 1):
        # A gap between two events at the client beyond the upstream's own gap between them.
        excess = [(b - a) - (wb - wa) for a, b, wa, wb in zip(arrived, arrived[1:], rec["sent"], rec["sent"][1:])]
        reach = rec["arrived"] - sent  # the request (its body in several writes) -> the upstream
        seen.append(f"stream {n}: request reached the upstream in {reach * 1e3:.1f} ms; gaps beyond the "
                    f"upstream's own (ms) {[round(x * 1e3, 1) for x in excess]}")
        if n == 1:
            continue  # a fresh connection: both ends still ACK at once
        if max(excess) > STALL_S / 2:
            stalled.append(n)
        if reach > STALL_S * 3 / 4:
            late.append(n)
    # A stall shows on every reused stream; a busy machine may delay one or two.
    what = "\n".join(seen)
    most = (STREAMS - 1) // 2 + 1
    assert len(stalled) < most, f"streams {stalled} stalled between events (Nagle on the client socket?)\n{what}"
    assert len(late) < most, f"requests of streams {late} reached the upstream late (Nagle upstream?)\n{what}"
