"""The Responses WebSocket's limits (issue #16): an idle socket is closed after
``server.websocket_idle_seconds`` with a close frame, a socket answering a request is
not; and at ``server.max_connections`` an idle socket is shed like an idle keep-alive
connection (1013), a busy one never.  Driven by Tornado's own WebSocket client, every
wait bounded."""
from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Awaitable, Callable

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.clients.harness import gateway_config
from tests.e2e.harness import GatewayHandle, LoopThread, Reply, fast_only
from tests.e2e.test_field_policy_e2e import chat_stream

KEY = "gw-key-0001"
PREWARM = {"type": "response.create", "model": "m", "input": [], "generate": False}
CREATE = {"type": "response.create", "model": "m", "input": "count slowly"}


def start(harness: LoopThread, *replies: Reply, **server: Any) -> GatewayHandle:
    up = harness.upstream()
    up.push(*replies)
    cfg = gateway_config("openai", up.url)
    cfg["server"] = {"access_keys": [KEY], **server}
    return harness.gateway(cfg)


def slow_stream(n: int, delay: float) -> Reply:
    reply = chat_stream({"role": "assistant", "content": ""}, *[{"content": f"{i} "} for i in range(n)])
    reply.delay = delay
    return reply


def run(main: Callable[[], Awaitable[Any]], limit: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(main(), limit))


async def connect(gw: GatewayHandle) -> WebSocketClientConnection:
    url = f"ws://127.0.0.1:{gw.port}/v1/responses"
    return await websocket_connect(HTTPRequest(url, headers={"Authorization": f"Bearer {KEY}"},
                                               connect_timeout=5, request_timeout=5))


async def answer(c: WebSocketClientConnection, limit: float = 10) -> list[dict[str, Any]]:
    out = []
    while True:
        msg = await asyncio.wait_for(c.read_message(), limit)
        assert msg is not None, f"closed mid-answer: {c.close_code} {c.close_reason}"
        ev = json.loads(msg)
        out.append(ev)
        if ev["type"] in ("response.completed", "response.incomplete", "response.failed", "error"):
            return out


async def ask(c: WebSocketClientConnection, frame: dict[str, Any]) -> list[dict[str, Any]]:
    """One request on the socket, answered: its events."""
    c.write_message(json.dumps(frame))
    return await answer(c)


async def closed_within(c: WebSocketClientConnection, limit: float) -> tuple[int | None, str | None]:
    """Read until the server closes (no frame expected first); its close code and reason."""
    msg = await asyncio.wait_for(c.read_message(), limit)
    assert msg is None, f"a frame instead of a close: {msg!r}"
    return c.close_code, c.close_reason


async def health(gw: GatewayHandle) -> int:
    """GET /health on a connection of its own, closed after the answer: its status (0: reset)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 5)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    except ConnectionError:
        return 0
    return int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else 0


def closes(gw: GatewayHandle, reason: str) -> float:
    m = re.search(rf'^tornado_proxy_websocket_closes_total{{reason="{reason}"}} (\S+)$', gw.metrics_text(), re.M)
    return float(m.group(1)) if m else -1.0


def test_an_idle_websocket_is_closed_with_a_close_frame(harness: LoopThread) -> None:
    gw = start(harness, websocket_idle_seconds=1)
    assert closes(gw, "idle") == 0  # (the series exists from start)

    async def main() -> tuple[Any, float]:
        c = await connect(gw)
        t0 = time.monotonic()
        got = await closed_within(c, 6)
        return got, time.monotonic() - t0

    (code, reason), took = run(main)
    assert code == 1001 and reason and "no request for 1 s" in reason
    assert 0.8 <= took < 4
    assert closes(gw, "idle") == 1


def test_a_websocket_answering_past_the_idle_limit_stays_open(harness: LoopThread) -> None:
    # the answer takes ~2.4 s, the idle limit is 1 s
    gw = start(harness, slow_stream(6, 0.3), websocket_idle_seconds=1)

    async def main() -> tuple[list[dict[str, Any]], float, Any, Any, float]:
        c = await connect(gw)
        c.write_message(json.dumps(CREATE))
        t0 = time.monotonic()
        events = await answer(c)
        took = time.monotonic() - t0
        # still open: the next request is answered
        again = await ask(c, PREWARM)
        # a client sending frames more often than the limit is not idle either
        for _ in range(4):
            await asyncio.sleep(0.4)
            again += await ask(c, PREWARM)
        t1 = time.monotonic()
        # then, idle: closed about a limit after the last frame
        got = await closed_within(c, 6)
        return events, took, again, got, time.monotonic() - t1

    events, took, again, (code, _), idle_took = run(main)
    assert events[-1]["type"] == "response.completed" and took > 1.5
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "0 1 2 3 4 5 "
    assert [e["type"] for e in again].count("response.completed") == 5
    assert code == 1001 and 0.5 <= idle_took < 4
    assert closes(gw, "idle") == 1


def test_at_the_connection_limit_an_idle_websocket_is_shed_a_busy_one_never(harness: LoopThread) -> None:
    gw = start(harness, slow_stream(10, 0.3), slow_stream(10, 0.3), max_connections=2)

    async def main() -> dict[str, Any]:
        a = await connect(gw)
        await ask(a, PREWARM)                # a: open, nothing in flight
        b = await connect(gw)
        b.write_message(json.dumps(CREATE))
        b_events = [json.loads(await asyncio.wait_for(b.read_message(), 5))]  # b: answering
        # at the cap (a, b): a new connection makes room by shedding a
        first = await health(gw)
        a_closed = await closed_within(a, 5)
        await asyncio.sleep(0.3)             # (the health check's connection is gone)
        c = await connect(gw)
        c.write_message(json.dumps(CREATE))
        c_events = [json.loads(await asyncio.wait_for(c.read_message(), 5))]
        # at the cap with both answering: nothing to shed, the new connection is turned away
        busy = await health(gw)
        b_events += await answer(b)
        c_events += await answer(c)
        return {"health": first, "a": a_closed, "busy": busy, "b": b_events, "c": c_events,
                "b_code": b.close_code, "c_code": c.close_code}

    got = run(main)
    assert got["health"] == 200
    code, reason = got["a"]
    assert code == 1013 and reason and "connection limit" in reason
    assert got["busy"] in (503, 0)  # 0: reset before the 503 was read
    for k in ("b", "c"):
        assert got[k][-1]["type"] == "response.completed"
        assert got[f"{k}_code"] is None
    assert closes(gw, "shed") == 1


@fast_only  # (the keep-alive side of the ordering: Tornado's server sheds no keep-alive connection)
def test_idle_websockets_and_keep_alive_connections_are_shed_longest_idle_first(harness: LoopThread) -> None:
    gw = start(harness, slow_stream(8, 0.3), max_connections=3)

    async def main() -> dict[str, Any]:
        a = await connect(gw)                 # the oldest connection...
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 5)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await asyncio.sleep(1.2)              # (more than one sweep tick)
        await ask(a, PREWARM)                 # ...but active after the keep-alive one was
        b = await connect(gw)
        b.write_message(json.dumps(CREATE))
        await asyncio.wait_for(b.read_message(), 5)
        # at the cap (a idle, keep-alive idle longer, b answering): the keep-alive one goes
        first = await health(gw)
        await asyncio.wait_for(reader.read(65536), 5)  # (the rest of its answer, if any)
        gone = await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        still = await ask(a, PREWARM)         # a is still there
        done = await answer(b)
        return {"head": head, "first": first, "gone": gone, "still": still, "done": done}

    got = run(main)
    assert got["head"].startswith(b"HTTP/1.1 200 ") and got["first"] == 200 and got["gone"]
    assert got["still"][-1]["type"] == "response.completed" and got["done"][-1]["type"] == "response.completed"
    assert closes(gw, "shed") == 0


def test_a_drain_closes_idle_websockets_at_once_and_busy_ones_after_their_answer(harness: LoopThread) -> None:
    # an HTTP stream in flight keeps the drain going ~3 s; the WebSocket answer takes ~1.5 s
    gw = start(harness, slow_stream(10, 0.3), slow_stream(5, 0.3), drain_seconds=10)

    async def main() -> dict[str, Any]:
        idle = await connect(gw)
        await ask(idle, PREWARM)
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), 5)
        body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # the HTTP stream has begun
        busy = await connect(gw)
        busy.write_message(json.dumps(CREATE))
        first = json.loads(await asyncio.wait_for(busy.read_message(), 5))
        drain = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(gw.server.drain(), harness.loop))
        t0 = time.monotonic()
        idle_closed = await closed_within(idle, 2)
        idle_took = time.monotonic() - t0
        events = [first] + await answer(busy)
        busy_closed = await closed_within(busy, 2)
        rest = await asyncio.wait_for(reader.read(), 10)  # the HTTP stream ends whole
        writer.close()
        await asyncio.wait_for(drain, 10)
        return {"idle": idle_closed, "idle_took": idle_took, "events": events, "busy": busy_closed, "rest": rest}

    got = run(main)
    code, reason = got["idle"]
    assert code == 1001 and reason and "shutting down" in reason
    assert got["idle_took"] < 1  # not at the drain's end, ~3 s later
    assert got["events"][-1]["type"] == "response.completed"
    assert "".join(e["delta"] for e in got["events"] if e["type"] == "response.output_text.delta") == "0 1 2 3 4 "
    assert got["busy"][0] == 1001
    assert b"[DONE]" in got["rest"]
    assert closes(gw, "draining") == 2
