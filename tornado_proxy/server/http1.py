"""The gateway's HTTP/1.1 server: an asyncio protocol and the llhttp parser driving
the ``tornado.web.Application``.

Why not ``tornado.httpserver.HTTPServer``: profiled under load, Tornado's HTTP/1
connection (IOStream read futures, ``gen.with_timeout`` per request, header parsing in
Python, error listeners re-registering the socket with epoll) cost more CPU per request
than the rest of the gateway; a trivial handler serves far more requests per core
behind this module (``bench/RESULTS.md``).  The application, routing and
``RequestHandler``s are Tornado's, unchanged: this module implements the two
interfaces Tornado's server side is built on, ``HTTPServerConnectionDelegate.
start_request`` (we call it) and ``HTTPConnection`` (``write_headers``, ``write``,
``finish``, ``set_close_callback``: the handlers call it).

What it does, per connection:
- parses requests with ``httptools`` (llhttp, Node's parser: strict about framing, so
  conflicting ``Content-Length``/``Transfer-Encoding`` and bare CR/LF are rejected);
- dispatches body bytes to the handler as they arrive (streamed bodies);
- keep-alive (HTTP/1.1 by default, HTTP/1.0 on request), pipelined requests answered
  in order (a request that arrives while the previous answer is being written is held,
  and reading pauses), ``Expect: 100-continue``;
- chunked responses when the handler flushes before finishing (SSE), ``Content-Length``
  otherwise (set by ``RequestHandler.finish``);
- limits: header block size (431), whole body size (413); deadlines for a request
  head (``header_timeout`` from its first byte, from the accept on a new connection),
  for body progress (``body_timeout`` without a byte) and for idle keep-alive
  connections (``idle_timeout``), all enforced by one sweep per worker that compares
  ticks (no timer per connection or request); a request cut by its deadline gets a 408
  and a close, a connection that was only waiting is closed;
- a connection cap (``max_connections``) and accepting under fd pressure: at the cap,
  or when ``accept`` fails for want of file descriptors, the longest-idle keep-alive
  connections are closed to make room (WebSockets with no request in flight too, with
  a 1013 close frame); with none to close, the new connection gets a
  503 and is closed rather than left in the backlog (see ``HTTP1Server._accept``);
- ``X-Forwarded-For``/``X-Real-Ip``/``X-Forwarded-Proto`` from a load balancer, as
  Tornado's ``xheaders=True``;
- write flow control: the futures ``write()``/``flush()`` return resolve when the
  socket's buffer is under its high-water mark again, and ``writable`` tells the
  synchronous stream path whether the client keeps up;
- drain: stop accepting, close idle connections, answer the requests in flight with
  ``Connection: close``.

Malformed requests get a 400 with a JSON error body and the connection is closed.
"""
from __future__ import annotations

import asyncio
import errno
import heapq
import logging
import os
import socket
from typing import Any

from tornado_proxy.server.http1_conn import MAX_PIPELINED, HTTP1Connection
from tornado_proxy.server.http1_parse import MAX_HEADER_BYTES, _error_response, new_headers
from tornado_proxy.server.http1_request import TrustedProxies, exact_routes, forwarded_context
from tornado_proxy.server.http1_stream import STREAM_READ_HIGH, UpgradedStream

# The server's parts, by concern: http1_parse (reading a request: limits, headers, the
# errors answered before a handler), http1_request (Tornado's request, routes, forwarding
# headers), http1_conn (a connection: parser callbacks, dispatch, writing the answer),
# http1_stream (a connection after a WebSocket upgrade).  Their public names are this
# module's too.
__all__ = ["ACCEPT_BATCH", "HTTP1Connection", "HTTP1Server", "MAX_HEADER_BYTES", "MAX_PIPELINED",
           "STREAM_READ_HIGH", "SWEEP_SECONDS", "TrustedProxies", "UpgradedStream", "exact_routes",
           "forwarded_context", "new_headers"]

log = logging.getLogger("tornado_proxy.http")

SWEEP_SECONDS = 1.0
# Connections accepted per wake-up of a listening socket (asyncio's own loop takes 100).
ACCEPT_BATCH = 64
# accept() failing for these means "no descriptor or buffer for the new socket".
_NO_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class HTTP1Server:
    """Listening sockets, the open connections and their deadline sweeper."""

    def __init__(self, app: Any, *, trusted_proxies: list[str] | tuple[str, ...] = (),
                 max_body_size: int = 100 << 20,
                 idle_timeout: float = 75.0, header_timeout: float = 10.0, body_timeout: float = 30.0,
                 max_connections: int = 10000, sweep_seconds: float = SWEEP_SECONDS) -> None:
        self.app = app
        import tornado.web

        # Literal paths -> handler; None: app is not a Tornado Application (see _start).
        self.exact = exact_routes(app) if isinstance(app, tornado.web.Application) else None
        self.trusts = TrustedProxies(trusted_proxies)
        self.max_body_size = max_body_size
        self.sweep_seconds = sweep_seconds
        self.idle_ticks = max(1, round(idle_timeout / sweep_seconds))
        self.header_ticks = max(1, round(header_timeout / sweep_seconds))
        self.body_ticks = max(1, round(body_timeout / sweep_seconds))
        self.max_connections = max_connections
        self.connections: set[HTTP1Connection] = set()
        self.draining = False
        self.tick = 0
        # What the limits did (for logs and tests): connections closed at a deadline,
        # shed to make room, turned away with a 503.
        self.accepted = 0
        self.timed_out = 0
        self.shed = 0
        self.turned_away = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._sockets: dict[int, socket.socket] = {}
        self._listening: list[socket.socket] = []  # watched by _accept
        self._sweeper: asyncio.TimerHandle | None = None
        self._reserve = -1       # a descriptor kept spare, to turn a connection away when none is left
        self._paused: asyncio.TimerHandle | None = None
        self._closing: list[Any] = []  # transports closed by close_all_connections, still flushing

    async def add_sockets(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        # Our own accept loop needs the selector loop's transport factory (what its
        # own accept uses); any other loop gets asyncio's accept, without the shedding.
        own = hasattr(loop, "_make_socket_transport") and hasattr(loop, "add_reader")
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            if own:
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._accept, sock)
                self._listening.append(sock)
            else:
                srv = await loop.create_server(lambda: HTTP1Connection(self), sock=sock)
                self._servers.append(srv)
        if own and self._reserve < 0:
            self._reserve = _open_reserve()
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.sweep_seconds, self._sweep)

    @property
    def port(self) -> int:
        port: int = next(iter(self._sockets.values())).getsockname()[1]
        return port

    # -- accepting -------------------------------------------------------------------
    def _accept(self, sock: socket.socket) -> None:
        """Accept what is waiting, within the connection cap and the fd limit.

        asyncio's own accept logs an error and stops accepting for a second when
        ``accept()`` fails with EMFILE/ENFILE, and has no cap: connections then wait in
        the backlog while idle keep-alive connections hold the descriptors.  Here, at
        the cap or out of descriptors, the longest-idle keep-alive connections are
        closed first (nginx reuses its idle connections the same way); their
        descriptors are free by the next loop turn, when the listening socket, still
        readable, brings us back.  With none to close the new connection gets a 503
        and is closed (out of descriptors: through the spare one), so it never hangs
        in the backlog; and when even that fails, accepting pauses for a second, so a
        listening socket that stays readable never spins the loop.
        """
        loop = asyncio.get_running_loop()
        added = 0
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _NO_FDS:
                    if self._make_room(max(1, len(self.connections) // 64)):
                        return  # their descriptors are free on the next turn
                    if not self._turn_away_spare(sock):
                        self._pause_accepting(sock, exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # that connection is gone; the next may be fine
                log.warning("accept() failed: %s; pausing for a second", exc)
                self._pause_accepting(sock, exc)
                return
            if len(self.connections) + added >= self.max_connections \
                    and not self._make_room(max(1, self.max_connections // 64)):
                self._turn_away(conn)
                continue
            try:
                conn.setblocking(False)
                loop._make_socket_transport(conn, HTTP1Connection(self), extra={"peername": addr})  # type: ignore[attr-defined]
            except Exception:
                log.exception("setting up an accepted connection failed")
                conn.close()
                continue
            added += 1

    def _make_room(self, n: int) -> int:
        """Close up to ``n`` keep-alive connections waiting for a request, longest-idle
        first; returns how many.  One pass over the connections, run only at the cap
        (and then for a batch, so that a flood of new connections does not pay it each)."""
        idle = heapq.nsmallest(n, (c for c in self.connections if c.waiting()), key=_waiting_since)
        for c in idle:
            c.shed()
        self.shed += len(idle)
        if idle:
            log.debug("connection limit: closed %d idle connection(s)", len(idle))
        return len(idle)

    def _turn_away(self, conn: socket.socket) -> None:
        self.turned_away += 1
        try:
            conn.setblocking(False)
            conn.send(_BUSY)
        except OSError:
            pass
        conn.close()

    def _turn_away_spare(self, sock: socket.socket) -> bool:
        """Out of descriptors: free the spare one, accept with it, answer 503, close."""
        if self._reserve < 0:
            return False
        os.close(self._reserve)
        self._reserve = -1
        try:
            conn, _ = sock.accept()
        except OSError:
            conn = None
        if conn is not None:
            self._turn_away(conn)
        self._reserve = _open_reserve()
        return conn is not None

    def _pause_accepting(self, sock: socket.socket, exc: OSError) -> None:
        loop = asyncio.get_running_loop()
        if self._paused is not None or sock not in self._listening:
            return
        log.warning("cannot accept connections (%s): pausing for a second", exc.strerror or exc)
        loop.remove_reader(sock.fileno())

        def resume() -> None:
            self._paused = None
            if sock in self._listening:
                loop.add_reader(sock.fileno(), self._accept, sock)

        self._paused = loop.call_later(1.0, resume)

    # -- deadlines -------------------------------------------------------------------
    def _sweep(self) -> None:
        """Once per ``sweep_seconds``: close the connections past a deadline.  Requests
        only copy the tick (an int) at the moments that start a wait."""
        self.tick = tick = self.tick + 1
        late: list[HTTP1Connection] = []
        cut: list[HTTP1Connection] = []
        for c in self.connections:
            r = c.incoming
            if r is None:
                if c.current is not None:
                    continue  # answering
                limit = self.header_ticks if c.fresh else self.idle_ticks
                if tick - c.waiting_since >= limit:
                    late.append(c)
            elif c.current is not r:
                continue  # pipelined behind an answer in progress: its turn comes
            elif not r.head_done:
                if tick - r.begun >= self.header_ticks:
                    cut.append(c)
            elif not r.complete and not r.started and tick - c.last_read >= self.body_ticks:
                cut.append(c)
        for c in late:
            c.close()
        for c in cut:
            c.time_out()
        self.timed_out += len(late) + len(cut)
        self._sweeper = asyncio.get_running_loop().call_later(self.sweep_seconds, self._sweep)

    def stop(self) -> None:
        """Stop accepting (the listening sockets are closed: new connections are
        refused at once); open connections keep going."""
        loop = asyncio.get_running_loop()
        for sock in self._listening:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._listening = []
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        for srv in self._servers:
            srv.close()
        self._servers = []
        if self._reserve >= 0:
            os.close(self._reserve)
            self._reserve = -1
        if self._sweeper is not None and not self.connections:
            self._sweeper.cancel()
            self._sweeper = None

    def start_drain(self) -> None:
        """Stop accepting, close idle connections, and answer the rest with Connection: close."""
        self.draining = True
        self.stop()
        for c in list(self.connections):
            if c.current is None and c.incoming is None:
                c.close()

    async def flushed(self, limit: float) -> None:
        """Wait, up to ``limit`` seconds, until what closed connections still had
        buffered has gone out (a transport closes once its buffer is empty)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit
        while self._closing and loop.time() < end:
            self._closing = [t for t in self._closing if t.get_write_buffer_size()]
            if self._closing:
                await asyncio.sleep(0.01)

    async def close_all_connections(self) -> None:
        for c in list(self.connections):
            c.close()
            if c.transport is not None and c.transport.get_write_buffer_size():
                self._closing.append(c.transport)
        self.connections.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def _waiting_since(c: HTTP1Connection) -> tuple[int, int]:
    return c.idle_since(), c.seq


def _open_reserve() -> int:
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return -1


_BUSY = _error_response(503, "the gateway is at its connection limit; retry shortly", type_="server_error",
                        code='"server_overloaded"')
