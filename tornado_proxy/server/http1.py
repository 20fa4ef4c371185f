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
  connections are closed to make room; with none to close, the new connection gets a
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
import ipaddress
import logging
import os
import socket
import time
from typing import Any, Callable

import httptools
from tornado import httputil
from tornado.iostream import StreamClosedError
from tornado.netutil import is_valid_ip

log = logging.getLogger("tornado_proxy.http")

MAX_HEADER_BYTES = 65536
SWEEP_SECONDS = 1.0
# A request's answer is held back (and reading paused) behind this many pipelined ones.
MAX_PIPELINED = 16
# Connections accepted per wake-up of a listening socket (asyncio's own loop takes 100).
ACCEPT_BATCH = 64
# accept() failing for these means "no descriptor or buffer for the new socket".
_NO_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

_REASONS = httputil.responses

# Header names seen on the wire -> Tornado's Http-Header-Case (bounded: names are few).
_NAMES: dict[bytes, str] = {}
_normalize = getattr(httputil, "_normalize_header", None) or (
    lambda name: "-".join(w.capitalize() for w in name.split("-")))


def new_headers(as_list: dict[str, list[str]] | None = None) -> httputil.HTTPHeaders:
    """An ``HTTPHeaders`` filled directly (names already in Http-Header-Case).

    ``HTTPHeaders(dict)`` and ``add()`` re-validate every name and value with regular
    expressions, on every request (the cost: ``bench/RESULTS.md``); llhttp has already
    validated what comes off the wire, and our own headers need no checking.
    """
    h = httputil.HTTPHeaders.__new__(httputil.HTTPHeaders)
    h._as_list = as_list if as_list is not None else {}
    h._combined_cache = {}
    return h


# google.rpc.Status names for the statuses this module answers itself.
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 408: "DEADLINE_EXCEEDED", 413: "INVALID_ARGUMENT",
                  431: "INVALID_ARGUMENT", 500: "INTERNAL", 503: "UNAVAILABLE"}
_ANTHROPIC_TYPE = {413: "request_too_large", 500: "api_error", 503: "overloaded_error"}


def _error_response(status: int, message: str, *, close: bool = True, type_: str = "invalid_request_error",
                    code: str = "null", url: bytes = b"") -> bytes:
    """An error we answer before any handler runs, in the shape of the client API the
    request was for (from its path): Anthropic's on ``/v1/messages``, Google's on
    ``/v1beta``, OpenAI's everywhere else.  ``message`` is our own text (no quotes)."""
    if url.startswith(b"/v1/messages"):
        body = ('{"type":"error","error":{"type":"%s","message":"%s"}}'
                % (_ANTHROPIC_TYPE.get(status, type_), message)).encode()
    elif url.startswith(b"/v1beta/"):
        body = ('{"error":{"code":%d,"message":"%s","status":"%s"}}'
                % (status, message, _GOOGLE_STATUS.get(status, "UNKNOWN"))).encode()
    else:
        body = ('{"error":{"message":"%s","type":"%s","code":%s}}' % (message, type_, code)).encode()
    head = "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
        status, _REASONS.get(status, "Error"), len(body), "Connection: close\r\n" if close else "")
    return head.encode("latin-1") + body


class _ServerRequest(httputil.HTTPServerRequest):
    """``HTTPServerRequest``, built without the per-request work that the usual request
    does not need: a request without a query string skips Tornado's query parsing and
    its deep copy, and a Host header seen before skips the Host checks (their outcome is
    kept per distinct value).  Anything else is built by Tornado's own constructor."""

    def __init__(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
                 connection: "HTTP1Connection", server_connection: Any) -> None:
        uri = start_line.path
        host = headers.get("Host")
        host_name = _HOSTS.get(host) if host is not None else None
        if host_name is None or "?" in uri:
            super().__init__(headers=headers, connection=connection,  # type: ignore[arg-type]  # a duck HTTPConnection
                             start_line=start_line, server_connection=server_connection)
            if host is not None and len(_HOSTS) < 256:
                _HOSTS[host] = self.host_name  # (Tornado accepted it: it raises otherwise)
            return
        self.method, self.uri, self.version = start_line
        self.headers = headers
        self.body = b""
        ctx = connection.context
        assert ctx is not None  # set in connection_made, before any request
        self.remote_ip = ctx.remote_ip
        self.protocol = ctx.protocol
        self.host = host  # type: ignore[assignment]  # not None: host_name was found for it
        self.host_name = host_name
        self.files = {}
        self.connection = connection  # type: ignore[assignment]  # a duck HTTPConnection
        self.server_connection = server_connection
        self._start_time = time.time()
        self._finish_time = None
        self.path = uri
        self.query = ""
        self.arguments = {}
        self.query_arguments = {}
        self.body_arguments = {}


# Host header value -> host name, for values Tornado's request constructor accepted.
_HOSTS: dict[str, str] = {}


def exact_routes(app: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Paths of ``app``'s routes without groups -> (handler class, its kwargs).

    Tornado finds a handler by trying each route's regular expression in turn, through
    two routers.  For the path a route's pattern spells (``/v1/chat/completions``), if
    that route matches it and no earlier route does, Tornado's answer is that route,
    and a dict lookup gives it.  Empty unless ``app`` is a plain
    ``tornado.web.Application`` (no host-specific rules).
    """
    import tornado.routing
    import tornado.web

    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    if not isinstance(app, tornado.web.Application) or len(app.default_router.rules) != 1:
        return out
    # Routes for WebSocket upgrades only (app.WebSocketUpgrade) take no plain request:
    # upgrades are routed by Tornado's routing (_upgrade_delegate), never through here.
    rules = [r for r in app.wildcard_router.rules if not getattr(r.matcher, "upgrade_only", False)]
    for i, rule in enumerate(rules):
        m = rule.matcher
        if not isinstance(m, tornado.routing.PathMatches) or m.regex.groups:
            continue
        # A route whose pattern, read as a path, is matched by the route itself.
        path = m.regex.pattern[:-1] if m.regex.pattern.endswith("$") else ""
        if not path.startswith("/") or m.regex.match(path) is None:
            continue
        if not (isinstance(rule.target, type) and issubclass(rule.target, tornado.web.RequestHandler)):
            continue
        if any(r.matcher.match(_Probe(path)) is not None for r in rules[:i]):  # type: ignore[arg-type]
            continue
        out.setdefault(path, (rule.target, rule.target_kwargs))
    return out


class _Probe:
    """Just enough of a request for a route matcher."""

    def __init__(self, path: str) -> None:
        self.path = path


class _Context:
    """What ``HTTPServerRequest`` reads off ``connection.context``."""

    __slots__ = ("remote_ip", "protocol", "address")

    def __init__(self, remote_ip: str, protocol: str, address: Any) -> None:
        self.remote_ip = remote_ip
        self.protocol = protocol
        self.address = address

    def __str__(self) -> str:
        return self.remote_ip


class _Request:
    """One request on a connection, from its first byte to the end of its answer."""

    __slots__ = ("url", "headers", "delegate", "keep_alive", "version", "method", "body_bytes",
                 "complete", "held", "head_size", "chunked", "remaining", "closed_cb", "started",
                 "answered", "head_done", "begun", "upgrade", "switched")

    def __init__(self, begun: int) -> None:
        self.begun = begun               # server tick its head's deadline counts from
        self.url = b""
        self.headers = new_headers()
        self.delegate: Any = None
        self.keep_alive = True
        self.version = "HTTP/1.1"
        self.method = "GET"
        self.body_bytes = 0
        self.head_done = False           # the header block has been read
        self.complete = False            # the whole request has been read
        self.held: list[tuple[int, bytes]] | None = None  # events of a pipelined request, not yet dispatched
        self.head_size = 0
        self.chunked = False             # the answer is chunked
        self.remaining: int | None = None  # answer bytes still due under Content-Length
        self.closed_cb: Callable[[], None] | None = None
        self.started = False             # the answer's headers have been written
        self.answered = False            # the answer is complete
        self.upgrade = False             # asks for another protocol (Upgrade + Connection: upgrade)
        self.switched = False            # answered 101: the connection now speaks WebSocket


_BODY, _END = 1, 2


class HTTP1Connection(asyncio.Protocol):
    """One client connection: the parser's callbacks and Tornado's ``HTTPConnection``."""

    def __init__(self, server: "HTTP1Server") -> None:
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
        connection that may be closed without losing anything)."""
        return self.current is None and self.incoming is None and not self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()
        self.server.connections.discard(self)

    def time_out(self) -> None:
        """A deadline passed while a request was being read: 408 and close."""
        self._reject(408, "the request did not arrive in time")
        self.server.connections.discard(self)


# A WebSocket peer that sends faster than its handler reads is paused past this.
STREAM_READ_HIGH = 1 << 20


class UpgradedStream:
    """What Tornado's ``WebSocketProtocol13`` uses of an ``IOStream`` (``read_bytes``,
    ``write``, ``close``, ``closed``, ``set_nodelay``, ``io_loop``), over the
    connection's transport: no second reader on the socket, the bytes that came
    with the head are not lost, and writes get the connection's flow control."""

    def __init__(self, conn: HTTP1Connection, rest: bytes) -> None:
        from tornado.ioloop import IOLoop

        self.conn = conn
        self.io_loop = IOLoop.current()
        self.error: BaseException | None = None
        self._buf = bytearray(rest)
        self._want = 0
        self._read: asyncio.Future[bytes] | None = None
        self._closed = False
        self._paused = False

    @property
    def writable(self) -> bool:
        return self.conn.writable

    def when_writable(self, callback: Callable[[], None]) -> None:
        self.conn.when_writable(callback)

    def feed(self, data: bytes) -> None:
        self._buf += data
        self._deliver()
        if len(self._buf) > STREAM_READ_HIGH and not self._paused and not self._closed:
            self._paused = True
            self.conn.transport.pause_reading()

    def _deliver(self) -> None:
        fut = self._read
        if fut is None or len(self._buf) < self._want:
            return
        self._read = None
        data = bytes(self._buf[:self._want])
        del self._buf[:self._want]
        if not fut.done():
            fut.set_result(data)
        if self._paused and len(self._buf) < STREAM_READ_HIGH // 2 and not self._closed:
            self._paused = False
            self.conn.transport.resume_reading()

    def read_bytes(self, num_bytes: int, partial: bool = False) -> "asyncio.Future[bytes]":
        if self._read is not None:
            raise RuntimeError("already reading")
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._read, self._want = fut, num_bytes
        self._deliver()
        if self._read is fut and self._closed:
            self._read = None
            fut.set_exception(StreamClosedError())
        return fut

    def write(self, data: bytes) -> "asyncio.Future[None]":
        conn = self.conn
        if self._closed or conn.closed:
            return conn._closed_future()
        conn.transport.write(data)
        return conn._write_future()

    def closed(self) -> bool:
        return self._closed

    def close(self, exc_info: Any = False) -> None:
        if not self._closed:
            self._closed = True
            self.conn.close()
            self._fail_read()

    def set_nodelay(self, value: bool) -> None:
        sock = self.conn.transport.get_extra_info("socket") if self.conn.transport is not None else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if value else 0)
            except OSError:
                pass

    def lost(self) -> None:
        """The connection is gone: a read in progress fails as a closed IOStream's would."""
        self._closed = True
        self._fail_read()

    def _fail_read(self) -> None:
        fut, self._read = self._read, None
        if fut is not None and not fut.done():
            fut.set_exception(StreamClosedError())


class _Refused(Exception):
    """Raised inside a parser callback; becomes an answer with this status and a close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _safe(s: str) -> str:
    return "".join(c for c in s if c.isprintable() and c not in '"\\')[:200]


class TrustedProxies:
    """``trusts(ip)``: is the peer ``ip`` one of ``server.trusted_proxies``?

    X-Forwarded-For / X-Real-Ip / X-Forwarded-Proto are believed only from these (IPs
    or CIDRs): from anyone else they are the client's own words."""

    def __init__(self, networks: list[str] | tuple[str, ...]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._cache: dict[str, bool] = {}

    def __call__(self, ip: str) -> bool:
        if not self.networks:
            return False
        hit = self._cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            hit = any(addr in net for net in self.networks)
            if len(self._cache) < 4096:
                self._cache[ip] = hit
        return hit


def forwarded_context(base: _Context, headers: httputil.HTTPHeaders,
                       trusts: Callable[[str], bool]) -> _Context:
    """For a request from a trusted proxy: the client address from X-Real-Ip or, in
    X-Forwarded-For, the right-most hop that is not itself a trusted proxy (hops to its
    left were written by whoever sent the request and prove nothing); the scheme from
    X-Scheme or X-Forwarded-Proto."""
    ip = base.remote_ip
    fwd = headers.get("X-Forwarded-For")
    if fwd:
        for hop in reversed(fwd.split(",")):
            hop = hop.strip()
            if not is_valid_ip(hop):
                break
            ip = hop
            if not trusts(hop):
                break
    ip = headers.get("X-Real-Ip", ip)
    if not is_valid_ip(ip):
        ip = base.remote_ip
    proto = headers.get("X-Scheme", headers.get("X-Forwarded-Proto", base.protocol))
    if proto:
        proto = proto.split(",")[-1].strip()
    if proto not in ("http", "https"):
        proto = base.protocol
    return _Context(ip, proto, base.address)


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
            c.close()
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
    return c.waiting_since, c.seq


def _open_reserve() -> int:
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return -1


_BUSY = _error_response(503, "the gateway is at its connection limit; retry shortly", type_="server_error",
                        code='"server_overloaded"')
