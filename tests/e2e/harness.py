"""End-to-end harness: the real gateway and a scripted fake upstream on loopback.

Both run on one asyncio loop in a background thread, so a test drives them with
the official *synchronous* SDKs exactly as a user would.  The fake upstream
speaks HTTP for real: each request it receives is recorded, and answered by the
next queued :class:`Reply` (status, headers, and a body given whole or as chunks
written with pauses, optionally cut off or left hanging) — the recorded bytes
come from ``tests/fixtures/<provider>/``.

    up = harness.upstream()                     # a fake upstream on 127.0.0.1
    up.push(Reply.sse_file("openai/text.sse"))  # answer the next request
    gw = harness.gateway({...config...})        # the gateway, port chosen by the OS
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k")
"""
from __future__ import annotations

import asyncio
import inspect
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: list[bytes] | None = None     # written one by one with flush
    delay: float = 0.0                    # pause before each chunk
    first_delay: float = 0.0              # pause before the status line
    hang: bool = False                    # after the chunks, never finish
    cut: bool = False                     # after the chunks, drop the connection mid-body

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> "Reply":
        import json

        return cls(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode())

    @classmethod
    def sse(cls, data: bytes, *, split: int | None = None, delay: float = 0.0, **kw: Any) -> "Reply":
        """An SSE body; ``split`` cuts it into pieces of that many bytes (None: one event per write)."""
        if split:
            chunks = [data[i:i + split] for i in range(0, len(data), split)]
        else:
            chunks = [p + b"\n\n" for p in data.split(b"\n\n") if p]
        return cls(200, {"Content-Type": "text/event-stream"}, chunks=chunks, delay=delay, **kw)

    @classmethod
    def sse_file(cls, name: str, **kw: Any) -> "Reply":
        return cls.sse(fixture_bytes(name), **kw)


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class FakeUpstream:
    def __init__(self, loop_thread: "LoopThread") -> None:
        self.lt = loop_thread
        self.replies: list[Reply] = []
        self.default: Reply | None = None
        self.requests: list[Recorded] = []
        self.closed_early = 0          # connections the other side dropped mid-reply
        self.finished = 0              # replies written to the end
        self.port = 0
        self.handler: Callable[[Recorded], Reply | None] | None = None  # optional: pick a reply per request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def push(self, *replies: Reply) -> "FakeUpstream":
        self.replies.extend(replies)
        return self

    def next_reply(self, rec: Recorded) -> Reply:
        if self.handler is not None:
            r = self.handler(rec)
            if r is not None:
                return r
        if self.replies:
            return self.replies.pop(0)
        if self.default is not None:
            return self.default
        return Reply.json({"error": {"message": "fake upstream: no reply queued"}}, status=500)

    def app(self) -> tornado.web.Application:
        up = self

        class H(tornado.web.RequestHandler):
            def check_xsrf_cookie(self) -> None:
                pass

            async def _any(self, *a: Any) -> None:
                rec = Recorded(self.request.method or "", self.request.path, self.request.query,
                               {k.lower(): v for k, v in self.request.headers.items()}, self.request.body)
                up.requests.append(rec)
                r = up.next_reply(rec)
                self._gone = False
                if r.first_delay:
                    await asyncio.sleep(r.first_delay)
                self.set_status(r.status)
                for k, v in r.headers.items():
                    self.set_header(k, v)
                try:
                    if r.chunks is None:
                        self.write(r.body)
                    else:
                        for c in r.chunks:
                            if r.delay:
                                await asyncio.sleep(r.delay)
                            if self._gone:
                                return
                            self.write(c)
                            await self.flush()
                    if r.hang:
                        for _ in range(600):
                            if self._gone:
                                return
                            await asyncio.sleep(0.05)
                        return
                    if r.cut:
                        await self.flush()
                        self.request.connection.stream.close()  # type: ignore[attr-defined]
                        return
                    self.finish()
                    up.finished += 1
                except StreamClosedError:
                    up.closed_early += 1

            def on_connection_close(self) -> None:
                self._gone = True
                if not self._finished:
                    up.closed_early += 1

            get = post = put = delete = _any

        return tornado.web.Application([(r"/.*", H)])


class GatewayHandle:
    def __init__(self, lt: "LoopThread", server: Any) -> None:
        self.lt = lt
        self.server = server
        self.gw = server.gw
        self.port = server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics_text(self) -> str:
        body, _ = self.lt.call(self.gw.metrics.render)
        return body.decode()


class LoopThread:
    """An asyncio loop in a daemon thread hosting gateways and fake upstreams."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="e2e-loop")
        self.thread.start()
        self._ready.wait(10)
        self._cleanups: list[Callable[[], Any]] = []

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        async def wrap() -> Any:
            r = fn(*args)
            return await r if inspect.isawaitable(r) else r

        return self.run(wrap())

    def upstream(self) -> FakeUpstream:
        up = FakeUpstream(self)

        async def start() -> None:
            server = HTTPServer(up.app())
            server.listen(0, "127.0.0.1")
            up.port = next(iter(server._sockets.values())).getsockname()[1]
            self._cleanups.append(server.stop)

        self.run(start())
        return up

    def gateway(self, raw_config: dict[str, Any], env: dict[str, str] | None = None) -> GatewayHandle:
        from tornado_proxy.config import build
        from tornado_proxy.server.workers import Server

        if "state" not in raw_config:
            # the default (local) store, but one per gateway: two gateways of one test are
            # two machines unless the test gives them one store
            import tempfile

            raw_config = {**raw_config, "state": {"store": "local", "path": tempfile.mkdtemp(
                prefix="gw-", dir=os.environ.get("XDG_STATE_HOME"))}}
        cfg = build(with_paths(raw_config), "test", env or {})

        async def start() -> Any:
            server = Server(cfg, "127.0.0.1", 0)
            await server.listen()
            return server

        server = self.run(start())
        self._cleanups.append(server.http.stop)
        self._cleanups.append(server.gw.close)
        self._cleanups.append(server.gw.close_state)  # (first: cleanups run in reverse, as Server stops)
        return GatewayHandle(self, server)

    def cleanup(self) -> None:
        cbs, self._cleanups = self._cleanups, []
        for cb in reversed(cbs):
            try:
                self.call(cb)
            except Exception:
                pass


# The server side and upstream client every gateway of the run uses (fast: ours; tornado:
# Tornado's stock ones), unless a test's config names them: CI runs tests/e2e on both.
PATHS = {"http_server": os.environ.get("TP_HTTP_SERVER", "fast"),
         "upstream_client": os.environ.get("TP_UPSTREAM_CLIENT", "fast")}
ON_TORNADO = "tornado" in PATHS.values()
fast_only = pytest.mark.skipif(PATHS["http_server"] != "fast", reason="about our own server side (server/http1.py)")
fast_client_only = pytest.mark.skipif(PATHS["upstream_client"] != "fast",
                                      reason="about our own curl driver (pipeline/upstream.py)")


def client_buffered(conn: Any) -> int:
    """Bytes a gateway connection holds for its client, on either server side (Tornado's
    IOStream has no public count: its write buffer's length)."""
    transport = getattr(conn, "transport", None)
    if transport is not None:
        return transport.get_write_buffer_size()
    return len(conn.stream._write_buffer)


def with_paths(raw_config: dict[str, Any]) -> dict[str, Any]:
    server = raw_config.get("server") or {}
    return {**raw_config, "server": {**PATHS, **server}}


def openai_provider(up: FakeUpstream, name: str = "up", accounts: list[dict[str, Any]] | None = None,
                    **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "openai", "base_url": up.url + "/v1",
            "accounts": accounts or [{"id": f"{name}-acct-1", "api_key": "test-key-1"}], **extra}


def simple_config(providers: list[dict[str, Any]], models: list[dict[str, Any]],
                  **server: Any) -> dict[str, Any]:
    return {"server": server, "providers": providers, "models": models}


def sent_before_close(s: socket.socket, timeout: float = 3) -> bytes | None:
    """What the server sent before it closed ``s`` (None: still open after ``timeout`` s)."""
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
