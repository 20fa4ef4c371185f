"""The Responses WebSocket's limits (issue #16): an idle socket is closed after
``server.websocket_idle_seconds`` with a close frame, a socket answering a request is
not.  Driven by Tornado's own WebSocket client, every
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
from tests.e2e.harness import GatewayHandle, LoopThread, Reply
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


async def closed_within(c: WebSocketClientConnection, limit: float) -> tuple[int | None, str | None]:
    """Read until the server closes (no frame expected first); its close code and reason."""
    msg = await asyncio.wait_for(c.read_message(), limit)
    assert msg is None, f"a frame instead of a close: {msg!r}"
    return c.close_code, c.close_reason


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
        c.write_message(json.dumps(PREWARM))
        again = await answer(c)
        # a client sending frames more often than the limit is not idle either
        for _ in range(4):
            await asyncio.sleep(0.4)
            c.write_message(json.dumps(PREWARM))
            again += await answer(c)
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
