"""The stock server side (``server.http_server: "tornado"``): ``tornado.httpserver.HTTPServer``
with the limits we enforce on our own server (``http1.py``), as far as Tornado can.

It stands beside the fast server so that the whole suite can run on Tornado's own HTTP/1
code: a Tornado upgrade or a behaviour difference shows up in the tests.  The interface
is ``HTTP1Server``'s (``add_sockets``, ``port``, ``stop``, ``start_drain``,
``close_all_connections``, ``flushed``), so ``workers.Server`` drives either.

What each limit becomes here (docs/architecture.md lists the differences):

- body size: ``max_body_size`` (a larger Content-Length, or a body that grows past it,
  closes the connection; the handlers' own 413 in the client's format comes first for
  anything over ``max_body_bytes``); header block: ``max_header_size``;
- deadlines: Tornado has one for a connection waiting for a request head, new or kept
  alive (``idle_connection_timeout``: the shorter of ``client_header_timeout`` and
  ``keepalive_timeout``), and one for a whole request body (``body_timeout``, counted
  from the end of the head rather than from the last byte); a late request is closed
  without a 408;
- ``max_connections``: at the cap a new connection gets our 503 and is closed (there is
  no shedding of idle keep-alive connections to make room).  An upgraded WebSocket,
  which Tornado lets go of (``detach``), is counted here (``websocket_opened``); at the
  cap the longest-idle WebSockets with no request in flight are shed (a 1013 close
  frame) to make room, as on our own server;
- ``X-Forwarded-*`` only from ``trusted_proxies`` (Tornado's ``xheaders`` would believe
  anyone): applied per request by :class:`_Forwarded`, with the same rules;
- flow control: the handlers' stream path asks ``connection.writable`` and
  ``connection.when_writable`` (as on our server), answered from the IOStream's public
  ``writing()`` and the future of an empty ``write``;
- drain: stop accepting, close connections between requests, answer the rest with
  ``Connection: close``.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import socket
from typing import Any, Callable

from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError

from tornado_proxy.server.http1 import _BUSY
from tornado_proxy.server.http1_parse import MAX_HEADER_BYTES
from tornado_proxy.server.http1_request import TrustedProxies, _Context, forwarded_context

log = logging.getLogger("tornado_proxy.http")


class _Connection(HTTP1Connection):
    """Tornado's HTTP/1 connection with the hooks our handlers use on our own server:
    ``writable``/``when_writable`` (backpressure), and ``Connection: close`` while
    draining.  A request's connection gets this class in ``start_request``."""

    tp_server: "_Server"
    tp_done: Callable[[], None] | None

    @property
    def writable(self) -> bool:
        return not self.stream.writing()

    def when_writable(self, callback: Callable[[], None]) -> None:
        stream = self.stream
        if stream.closed() or not stream.writing():
            callback()
            return
        # An empty write's future resolves once everything written before it has gone out.
        def done(f: Any) -> None:
            if not f.cancelled():
                f.exception()  # (retrieved: a closed stream is not an error here)
            callback()

        stream.write(b"").add_done_callback(done)

    def write_headers(self, start_line: Any, headers: httputil.HTTPHeaders, chunk: bytes | None = None) -> Any:
        if self.tp_server.draining:
            headers["Connection"] = "close"
        # Tornado turns Nagle back on after each answer (HTTP1Connection._finish_request):
        # on a reused connection the next stream's small writes would then wait for the
        # client's delayed ACK, ~40 ms between chunks.  Off for every answer.
        if not self.stream.closed():
            self.stream.set_nodelay(True)
        return super().write_headers(start_line, headers, chunk)

    def finish(self) -> None:
        super().finish()
        done, self.tp_done = self.tp_done, None
        if done is not None:
            done()

    # A WebSocket handler on this (detached) connection: counted by the server until it closes.
    def websocket_opened(self, ws: Any) -> None:
        self.tp_server.sockets.add(ws)

    def websocket_closed(self, ws: Any) -> None:
        self.tp_server.sockets.discard(ws)


class _Forwarded(httputil.HTTPMessageDelegate):
    """Wraps the application's delegate for one request: marks its connection busy until
    the answer is finished, and applies a trusted proxy's forwarding headers."""

    def __init__(self, server: "_Server", server_conn: Any, conn: _Connection, inner: Any) -> None:
        self.server = server
        self.server_conn = server_conn
        self.conn = conn
        self.inner = inner

    def headers_received(self, start_line: Any, headers: httputil.HTTPHeaders) -> Any:
        srv = self.server
        srv.busy.add(self.server_conn)
        self.conn.tp_done = lambda: srv.busy.discard(self.server_conn)
        ctx = self.conn.context
        base = getattr(ctx, "tp_base", None)
        if base is None:
            base = ctx.tp_base = _Context(ctx.remote_ip, ctx.protocol, ctx.address)  # type: ignore[attr-defined]
        fwd = base
        if srv.trusts(base.remote_ip) and ("X-Forwarded-For" in headers or "X-Real-Ip" in headers
                                           or "X-Scheme" in headers or "X-Forwarded-Proto" in headers):
            fwd = forwarded_context(base, headers, srv.trusts)
        ctx.remote_ip, ctx.protocol = fwd.remote_ip, fwd.protocol  # type: ignore[attr-defined]
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.server.busy.discard(self.server_conn)
        self.inner.on_connection_close()


class _Server(HTTPServer):
    """``HTTPServer`` with a connection cap, trusted forwarding and a drain."""

    def initialize(self, *args: Any, max_connections: int = 10000,  # type: ignore[override]
                   trusts: TrustedProxies | None = None, **kw: Any) -> None:
        super().initialize(*args, **kw)
        self.max_connections = max_connections
        self.trusts = trusts or TrustedProxies(())
        self.open: set[Any] = set()   # HTTP1ServerConnections
        self.busy: set[Any] = set()   # ... with a request read and not yet answered
        self.sockets: set[Any] = set()  # open WebSocket handlers (their connections left `open`)
        self.draining = False
        self.turned_away = 0
        self.shed = 0

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        at_cap = len(self.open) + len(self.sockets) >= self.max_connections
        if at_cap and not self.draining and self._shed_sockets(max(1, self.max_connections // 64)):
            at_cap = False
        if at_cap or self.draining:
            self.turned_away += 1
            try:
                stream.write(_BUSY)
            except StreamClosedError:
                pass
            stream.close()
            return
        super().handle_stream(stream, address)

    def _shed_sockets(self, n: int) -> int:
        """Close up to ``n`` WebSockets with no request in flight, longest-idle first
        (each leaves the count at once; its close handshake may take a few seconds)."""
        idle = heapq.nsmallest(n, (ws for ws in self.sockets if not ws.busy), key=lambda ws: ws.idle_since)
        for ws in idle:
            self.sockets.discard(ws)
            ws.shed()
        self.shed += len(idle)
        if idle:
            log.debug("connection limit: closed %d idle WebSocket(s)", len(idle))
        return len(idle)

    def on_close(self, server_conn: Any) -> None:
        super().on_close(server_conn)
        self.open.discard(server_conn)
        self.busy.discard(server_conn)

    def start_request(self, server_conn: Any, request_conn: Any) -> httputil.HTTPMessageDelegate:
        # (called as a connection starts serving, before it waits for the first head)
        self.open.add(server_conn)
        if request_conn.__class__ is HTTP1Connection:
            request_conn.__class__ = _Connection
            request_conn.tp_server = self  # type: ignore[attr-defined]  # (now a _Connection)
            request_conn.tp_done = None  # type: ignore[attr-defined]
        return _Forwarded(self, server_conn, request_conn, super().start_request(server_conn, request_conn))


class TornadoHTTPServer:
    """Our server's interface (see ``http1.HTTP1Server``) over Tornado's ``HTTPServer``."""

    def __init__(self, app: Any, *, trusted_proxies: list[str] | tuple[str, ...] = (),
                 max_body_size: int = 100 << 20, idle_timeout: float = 75.0, header_timeout: float = 10.0,
                 body_timeout: float = 30.0, max_connections: int = 10000) -> None:
        self.server = _Server(app, max_connections=max_connections, trusts=TrustedProxies(trusted_proxies),
                              max_header_size=MAX_HEADER_BYTES, max_body_size=max_body_size,
                              idle_connection_timeout=min(idle_timeout, header_timeout),
                              body_timeout=body_timeout)
        self._sockets: list[socket.socket] = []

    @property
    def draining(self) -> bool:
        return self.server.draining

    @property
    def connections(self) -> set[Any]:
        return self.server.open

    async def add_sockets(self, sockets: list[socket.socket]) -> None:
        self.server.add_sockets(sockets)
        self._sockets.extend(sockets)

    @property
    def port(self) -> int:
        return int(self._sockets[0].getsockname()[1])

    def stop(self) -> None:
        self.server.stop()

    def start_drain(self) -> None:
        srv = self.server
        srv.draining = True
        # Requests whose head is read from now on are answered with Connection: close.
        srv.conn_params.no_keep_alive = True
        srv.stop()
        for c in list(srv.open - srv.busy):
            asyncio.ensure_future(c.close())

    async def flushed(self, limit: float) -> None:
        """(Nothing left: close_all_connections let what was buffered go out first.)"""

    async def close_all_connections(self, flush_limit: float = 1.0) -> None:
        # Tornado's close drops what is still buffered: give the answers just written
        # (drain's error frames) up to ``flush_limit`` seconds to go out first.
        loop = asyncio.get_running_loop()
        end = loop.time() + flush_limit
        while loop.time() < end and any(c.stream.writing() for c in self.server.open if not c.stream.closed()):
            await asyncio.sleep(0.01)
        await self.server.close_all_connections()
