"""One client connection of our HTTP/1.1 server (``http1.py``): the asyncio protocol,
llhttp's callbacks (keep-alive, pipelining, ``Expect: 100-continue``, the header and
body limits), the dispatch to the application, and Tornado's ``HTTPConnection``
interface the handlers write their answers through (chunked or ``Content-Length``
framing, write flow control).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable, Protocol

import httptools
from tornado import httputil
from tornado.iostream import StreamClosedError

from tornado_proxy.server.http1_parse import (_BODY, _END, _NAMES, _REASONS, MAX_HEADER_BYTES, _error_response,
                                              _normalize, _Refused, _Request, _safe)
from tornado_proxy.server.http1_request import TrustedProxies, _Context, _ServerRequest, forwarded_context
from tornado_proxy.server.http1_stream import UpgradedStream

log = logging.getLogger("tornado_proxy.http")

# A request's answer is held back (and reading paused) behind this many pipelined ones.
MAX_PIPELINED = 16


class _Server(Protocol):
    """What a connection uses of its server (``http1.HTTP1Server``)."""

    app: Any
    exact: dict[str, tuple[Any, dict[str, Any]]] | None
    trusts: TrustedProxies
    max_body_size: int
    connections: set[HTTP1Connection]
    draining: bool
    tick: int
    accepted: int


class _Socket(Protocol):
    """What a connection uses of the WebSocket handler that took it over after a 101
    (``handlers.responses_ws.ResponsesSocketHandler``)."""

    @property
    def busy(self) -> bool: ...  # a request in flight: never shed

    def shed(self) -> None: ...  # close with a close frame, to make room


class HTTP1Connection(asyncio.Protocol):
    """One client connection: the parser's callbacks and Tornado's ``HTTPConnection``."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.context: _Context | None = None
        self._base_context: _Context | None = None
        self.current: _Request | None = None    # being answered (or read, if nothing is held)
        self.incoming: _Request | None = None   # being read
        self.queue: list[_Request] = []         # read (fully or partly) while `current` is answered
        self.closed = False
        self.last_read = 0                      # server tick of the last byte read
        self.waiting_since = 0                  # server tick the wait for the next request began
        self.fresh = True                       # no request answered yet
        server.accepted += 1
        self.seq = server.accepted              # order of arrival (ties between equal ticks)
        self.writable = True                    # False while the socket buffer is over its high-water mark
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._on_writable: list[Callable[[], None]] = []
        self._paused_reading = False
        self._done: asyncio.Future[None] | None = None
        # After a WebSocket upgrade: the bytes past the request head, then the stream
        # Tornado's WebSocket protocol reads (see detach()).
        self.upgraded = False
        self._upgrade_rest = b""
        self.stream: UpgradedStream | None = None
        self.ws: _Socket | None = None          # the WebSocket handler, once it is open

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        family = sock.family if sock is not None else None
        if family in (socket.AF_INET, socket.AF_INET6) and peer:
            ip = peer[0]
        else:
            ip = "0.0.0.0"
        self._base_context = self.context = _Context(ip, "http", peer)
        # Forwarding headers count only from a configured proxy: decided once per connection.
        self._trusted_peer = self.server.trusts(ip)
        self.last_read = self.waiting_since = self.server.tick
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        self._done = done
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_read = self.server.tick
        if self.upgraded:
            if self.stream is not None:
                self.stream.feed(data)
            else:  # (frames sent before the handler took the socket)
                self._upgrade_rest += data
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            r = self.current
            if r is not None and r.upgrade and r.delegate is not None:
                # A WebSocket upgrade handed to its handler: the parser is done with
                # this connection; what follows the head belongs to the new protocol.
                self.upgraded = True
                at = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
                self._upgrade_rest = data[at:]
            else:
                self._reject(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # An exception in one of our callbacks comes back wrapped, as the context.
            cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else None
            if isinstance(cause, _Refused):
                self._reject(cause.status, cause.message)
            elif cause is not None:
                log.error("dispatching a request failed", exc_info=cause)
                self._reject(500, "internal error in the gateway; see its log")
            else:
                self._reject(400, "malformed HTTP request: " + _safe(str(exc)))

    def eof_received(self) -> bool | None:
        # The client closed its side.  As with Tornado, that ends the connection: a
        # request in flight is cancelled (its upstream transfer aborted at once).
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for w in self._drain_waiters:
            if not w.done():
                w.set_exception(StreamClosedError())
                w.exception()
        self._drain_waiters = []
        self._on_writable = []
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.lost()
        for r in [self.current, *self.queue]:
            if r is None or r.answered:
                continue
            if not r.complete and r.delegate is not None:
                try:
                    r.delegate.on_connection_close()
                except Exception:
                    log.exception("on_connection_close failed")
            cb = r.closed_cb
            r.closed_cb = None
            if cb is not None:
                try:
                    cb()
                except Exception:
                    log.exception("close callback failed")
        self.current = self.incoming = None
        self.queue = []

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        waiters, self._drain_waiters = self._drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)
        callbacks, self._on_writable = self._on_writable, []
        for cb in callbacks:
            try:
                cb()
            except Exception:
                log.exception("resume callback failed")

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the socket's buffer is under its high-water mark again
        (for the synchronous stream path, which cannot await ``flush()``)."""
        if self.writable or self.closed:
            callback()
        else:
            self._on_writable.append(callback)

    # -- parser callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        # A new connection's first head is due header_timeout after the accept, a later
        # one header_timeout after its first byte.
        r = _Request(self.waiting_since if self.fresh else self.server.tick)
        self.incoming = r
        if self.current is None:
            self.current = r
        else:
            r.held = []
            self.queue.append(r)
            if len(self.queue) >= MAX_PIPELINED and not self._paused_reading:
                self._paused_reading = True
                self.transport.pause_reading()

    def on_url(self, url: bytes) -> None:
        r = self.incoming
        r.url += url  # type: ignore[union-attr]
        r.head_size += len(url)  # type: ignore[union-attr]
        if r.head_size > MAX_HEADER_BYTES:  # type: ignore[union-attr]
            raise _Refused(431, "request header block is too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self.incoming
        r.head_size += len(name) + len(value) + 4  # type: ignore[union-attr]
        if r.head_size > MAX_HEADER_BYTES:  # type: ignore[union-attr]
            raise _Refused(431, "request header block is too large")
        norm = _NAMES.get(name)
        if norm is None:
            norm = _normalize(name.decode("latin-1"))
            if len(_NAMES) < 512:
                _NAMES[name] = norm
        values = r.headers._as_list.get(norm)  # type: ignore[union-attr]
        if values is None:
            r.headers._as_list[norm] = [value.decode("latin-1")]  # type: ignore[union-attr]
        else:
            values.append(value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        r = self.incoming
        assert r is not None
        p = self.parser
        r.method = p.get_method().decode("latin-1")
        r.version = "HTTP/" + p.get_http_version()
        r.keep_alive = p.should_keep_alive() and not self.server.draining
        r.head_done = True
        if p.should_upgrade():
            # The parser reads no further request on this connection: it ends with the
            # answer, unless that is a 101 and the connection goes on as a WebSocket.
            r.upgrade = True
            r.keep_alive = False
        cl = r.headers.get("Content-Length")
        if cl is not None and cl.isdigit() and int(cl) > self.server.max_body_size:
            raise _Refused(413, "request body is too large")
        if r.held is None and r.version == "HTTP/1.1" and not self.closed \
                and r.headers.get("Expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if r.held is None:
            self._start(r)

    def on_body(self, body: bytes) -> None:
        r = self.incoming
        assert r is not None
        r.body_bytes += len(body)
        if r.body_bytes > self.server.max_body_size:
            raise _Refused(413, "request body is too large")
        if r.held is not None:
            r.held.append((_BODY, body))
        elif r.delegate is not None:
            r.delegate.data_received(body)

    def on_message_complete(self) -> None:
        r = self.incoming
        assert r is not None
        self.incoming = None
        r.complete = True
        if r.held is not None:
            r.held.append((_END, b""))
        elif r.delegate is not None:
            r.delegate.finish()

    # -- dispatch -------------------------------------------------------------------
    def _start(self, r: _Request) -> None:
        """Hand a request's head to the application (its body follows as it comes)."""
        srv = self.server
        ctx = self._base_context
        if self._trusted_peer:
            h = r.headers
            if "X-Forwarded-For" in h or "X-Real-Ip" in h or "X-Scheme" in h or "X-Forwarded-Proto" in h:
                ctx = forwarded_context(ctx, h, srv.trusts)  # type: ignore[arg-type]
        self.context = ctx
        self.current = r
        start_line = httputil.RequestStartLine(r.method, r.url.decode("latin-1"), r.version)
        try:
            if srv.exact is None:  # not a Tornado Application: its own delegate does it all
                r.delegate = srv.app.start_request(srv, self)
                r.delegate.headers_received(start_line, r.headers)
                return
            # What Tornado's routing delegate does (build the request, find the handler),
            # with the request built leaner and literal paths found by a dict lookup.
            request = _ServerRequest(start_line, r.headers, self, srv)
            if r.upgrade:
                r.delegate = self._upgrade_delegate(request)
                r.delegate.headers_received(start_line, r.headers)
                return
            hit = srv.exact.get(request.path)
            if hit is not None:
                r.delegate = srv.app.get_handler_delegate(request, hit[0], hit[1])
            else:
                r.delegate = srv.app.find_handler(request)
            # For a streamed-body handler this returns a future that resolves once
            # prepare() has run; our handlers' data_received only buffers, so the body
            # is handed over without waiting for it (one IOLoop turn less per request).
            r.delegate.headers_received(start_line, r.headers)
        except httputil.HTTPInputError as exc:  # e.g. a missing or invalid Host header
            r.delegate = None
            raise _Refused(400, _safe(str(exc))) from None

    def _upgrade_delegate(self, request: httputil.HTTPServerRequest) -> Any:
        """The handler for an upgrade request: a route's WebSocket handler, found by
        Tornado's routing (upgrade routes are never in the exact-path table), or a 426.

        426 is the answer WebSocket clients read as "use plain HTTP": Codex then POSTs
        at once, where a 404/405 would cost it retries.  Other protocols (h2c) keep
        the 400 they always got: llhttp stops reading at such a head, body included."""
        import tornado.websocket

        if request.headers.get("Upgrade", "").lower() != "websocket" or request.method != "GET":
            raise _Refused(400, "protocol upgrades are not supported")
        delegate = self.server.app.find_handler(request)
        cls = getattr(delegate, "handler_class", None)
        if not (isinstance(cls, type) and issubclass(cls, tornado.websocket.WebSocketHandler)):
            raise _Refused(426, "no WebSocket on " + _safe(request.path) + "; send the request over plain HTTP")
        return delegate

    def _next(self) -> None:
        """The current answer is complete (and the connection stays): start the next
        pipelined request, replaying what was read of it meanwhile."""
        self.current = None
        if self.closed or not self.queue:
            return
        r = self.queue.pop(0)
        if self._paused_reading and len(self.queue) < MAX_PIPELINED // 2:
            self._paused_reading = False
            self.transport.resume_reading()
        self.current = r
        held, r.held = r.held, None
        if not r.head_done:
            return  # on_headers_complete starts it; its body then goes straight through
        try:
            self._start(r)
            for kind, data in held or ():
                if r.delegate is None or self.closed:
                    return
                if kind == _BODY:
                    r.delegate.data_received(data)
                else:
                    r.delegate.finish()
        except _Refused as exc:
            self._reject(exc.status, exc.message)
        except Exception:
            log.exception("dispatching a pipelined request failed")
            self._reject(500, "internal error in the gateway; see its log")

    def _reject(self, status: int, message: str) -> None:
        """A request we cannot take: answer it (if nothing has been sent) and close."""
        r = self.current
        if not self.closed:
            if r is None or not r.started:
                # The request refused is the one being read (a pipelined one, maybe).
                bad = self.incoming or r
                url = bad.url if bad is not None else b""
                self.transport.write(_error_response(status, message, url=url))
            self.transport.close()
        self.closed = True

    # -- HTTPConnection (called by RequestHandler) -----------------------------------
    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        r = self.current
        if r is not None:
            r.closed_cb = callback

    def write_headers(self, start_line: Any, headers: httputil.HTTPHeaders, chunk: bytes | None = None) -> "asyncio.Future[None]":
        r = self.current
        if r is None or self.closed:
            return self._closed_future()
        r.started = True
        code = start_line.code
        r.switched = code == 101 and self.upgraded
        r.chunked = (r.version == "HTTP/1.1" and r.method != "HEAD" and code not in (204, 304)
                     and not 100 <= code < 200 and "Content-Length" not in headers)
        if r.version == "HTTP/1.0" and not r.chunked and "Content-Length" not in headers \
                and r.method != "HEAD" and code not in (204, 304):
            r.keep_alive = False  # the body ends where the connection does
        if self.server.draining or not r.complete:
            r.keep_alive = False
        if r.method == "HEAD" or code == 304:
            r.remaining = 0
        else:
            cl = headers.get("Content-Length")
            r.remaining = int(cl) if cl is not None and cl.isdigit() else None
        lines = ["HTTP/1.1 %d %s" % (code, start_line.reason or _REASONS.get(code, "Unknown"))]
        for name, value in headers.get_all():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
                raise ValueError("Illegal characters (CR or LF) in header: %r" % name)
            lines.append("%s: %s" % (name, value))
        if r.chunked:
            lines.append("Transfer-Encoding: chunked")
        if not r.keep_alive and not r.switched:
            if r.version == "HTTP/1.1":
                lines.append("Connection: close")
        elif r.version == "HTTP/1.0":
            lines.append("Connection: Keep-Alive")
        lines.append("\r\n")
        data = "\r\n".join(lines).encode("latin-1")
        if chunk:
            data += self._frame(r, chunk)
        self.transport.write(data)
        return self._write_future()

    def write(self, chunk: bytes) -> "asyncio.Future[None]":
        r = self.current
        if r is None or self.closed:
            return self._closed_future()
        if chunk:
            self.transport.write(self._frame(r, chunk))
        return self._write_future()

    def finish(self) -> None:
        r = self.current
        if r is None or self.closed:
            return
        if r.remaining:  # fewer bytes than Content-Length promised
            self.transport.close()
            self.closed = True
            raise httputil.HTTPOutputError("Tried to write %d bytes less than Content-Length" % r.remaining)
        if r.chunked:
            self.transport.write(b"0\r\n\r\n")
        r.answered = True
        r.closed_cb = None
        if r.switched:
            return  # the connection is the WebSocket's now (detach)
        self.fresh = False
        self.waiting_since = self.server.tick  # the keep-alive wait starts now
        if not r.keep_alive:  # (always so for an answer sent before the request was read)
            self.transport.close()  # after what is buffered has gone out
            self.closed = True
            self.server.connections.discard(self)
            return
        self._next()

    def detach(self) -> "UpgradedStream":
        """After a 101: the connection as the stream Tornado's WebSocket protocol reads
        and writes (what ``tornado.http1connection`` gives it as an ``IOStream``)."""
        if not self.upgraded or self.stream is not None:
            raise RuntimeError("detach() is only for a connection answered 101 to a WebSocket upgrade")
        self.stream = UpgradedStream(self, self._upgrade_rest)
        self._upgrade_rest = b""
        if self.closed:
            self.stream.lost()
        return self.stream

    # -- a WebSocket's part in the connection cap (the handler calls these) --------------
    def websocket_opened(self, ws: _Socket) -> None:
        """The handler took the connection over: it stays one of the server's connections
        (counted against ``max_connections``) and may be shed while ``ws.busy`` is false."""
        self.ws = ws
        self.waiting_since = self.server.tick

    def websocket_idle(self) -> None:
        """The socket's answer ended: its idle time counts from now."""
        self.waiting_since = self.server.tick

    def websocket_closed(self, ws: _Socket) -> None:
        if self.ws is ws:
            self.ws = None

    def _frame(self, r: _Request, chunk: bytes) -> bytes:
        if r.remaining is not None:
            r.remaining -= len(chunk)
            if r.remaining < 0:
                self.transport.close()
                self.closed = True
                raise httputil.HTTPOutputError("Tried to write more data than Content-Length")
        if r.chunked:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    def _write_future(self) -> "asyncio.Future[None]":
        if self.writable:
            return self._done  # type: ignore[return-value]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        return fut

    @staticmethod
    def _closed_future() -> "asyncio.Future[None]":
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(StreamClosedError())
        fut.exception()  # retrieved: nobody has to await it
        return fut

    # -- housekeeping ---------------------------------------------------------------
    def idle(self) -> bool:
        """Waiting for the client (between requests or mid-request read), not answering."""
        r = self.current
        return r is None or (not r.complete and not r.started)

    def waiting(self) -> bool:
        """Between requests: nothing read of the next one, nothing being answered (a
        connection that may be closed without losing anything); for a WebSocket, no
        request in flight on it."""
        if self.ws is not None:
            return not self.closed and not self.ws.busy
        return self.current is None and self.incoming is None and not self.closed

    def idle_since(self) -> int:
        """The server tick the connection's wait began (a WebSocket's: its last frame in,
        or its last answer's end)."""
        return max(self.waiting_since, self.last_read) if self.ws is not None else self.waiting_since

    def shed(self) -> None:
        """Closed to make room: a WebSocket's close frame (1013) goes out first, then the
        connection closes (after what is buffered), without waiting for the client's."""
        ws = self.ws
        if ws is not None and not self.closed:
            try:
                ws.shed()
            except Exception:
                log.exception("closing a WebSocket to make room failed")
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
        self.server.connections.discard(self)

    def time_out(self) -> None:
        """A deadline passed while a request was being read: 408 and close."""
        self._reject(408, "the request did not arrive in time")
        self.server.connections.discard(self)

