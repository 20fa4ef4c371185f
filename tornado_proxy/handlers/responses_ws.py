"""``GET /v1/responses`` upgraded to a WebSocket: the Responses transport Codex CLI uses.

The protocol (``docs/clients/codex.md``): the client sends ``response.create``
frames, each a Responses request body with ``"type": "response.create"``; every
event of the answer comes back as one JSON text frame, exactly the events the
HTTP route streams; the socket stays open for the next request.

Each frame is served by the HTTP route's own handler (``ResponsesHandler``): the
frame becomes a ``POST /v1/responses`` request on a connection object of ours
whose output is read here, event by event, and sent on as frames.  So a frame
gets everything a POST gets (access keys, routing, translation or pass-through,
accounts and failover, the response store, metrics, the access log line) with no
second copy of any of it.

What is the socket's own:

* ``previous_response_id`` naming the connection's last response: Codex then sends
  only the new items (with ``store: false`` nothing is stored anywhere), so the
  connection keeps the last request's whole input and the answer's output items and
  sends the upstream the whole conversation, as Codex's HTTP transport would.  Any
  other id goes to the route as sent (the response store, or an ``openai-responses``
  upstream that stored it).
* ``generate: false`` (Codex's prewarm): answered here with ``response.created`` and
  ``response.completed`` carrying no output; nothing goes upstream.
* An error before the first event: ``{"type": "error", "status": N, "error":
  {...}, "headers": {...}}`` (codex-rs ``WrappedWebsocketErrorEvent``, which also
  takes ``status_code``), which Codex handles as an HTTP error of that status.  After the first
  event the route's own ``error`` and ``response.failed`` events go out as frames.
* ``server.responses_websocket: false`` turns the transport off: an upgrade then gets
  426, which makes Codex use HTTP at once (any other status costs it retries).
* An idle limit: a socket with no request in flight that has had no frame from the
  client for ``server.websocket_idle_seconds`` is closed with 1001 (going away) and a
  reason.  Codex opens a new socket for its next turn.  (Tornado's ``ping_interval``
  is no idle limit: a live client answers pings for ever.)
* The connection cap: the server side is told of the socket (``websocket_opened``), so
  it counts against ``server.max_connections``; while no request is in flight it may
  be shed to make room, like an idle keep-alive connection (``shed``: 1013, try again
  later).  A socket answering a request is never shed.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

import tornado.web
import tornado.websocket
from tornado import httputil

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError, in_words_of
from tornado_proxy.handlers.base import BaseHandler
from tornado_proxy.handlers.responses import RESPONSES_FORMAT, ResponsesHandler, response_store
from tornado_proxy.pipeline.sse import SSEDecoder

log = logging.getLogger("tornado_proxy.responses_ws")

DRAINING = "the gateway is shutting down; reconnect"

# Headers of the upgrade request that are the socket's, not the requests'.
_HOP = frozenset({"Upgrade", "Connection", "Sec-Websocket-Key", "Sec-Websocket-Version",
                  "Sec-Websocket-Extensions", "Sec-Websocket-Protocol", "Content-Length", "Content-Type",
                  "Transfer-Encoding"})
# Events that end a response (the last one of each answer).
_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Frames waiting while one is answered (Codex sends one at a time).
MAX_QUEUED = 8


class ResponsesSocketHandler(tornado.websocket.WebSocketHandler, BaseHandler):
    """One WebSocket connection; its frames are answered one after the other."""

    client_format = RESPONSES_FORMAT
    route_name = "responses"

    def initialize(self, gw: Any) -> None:  # type: ignore[override]
        BaseHandler.initialize(self, gw)
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._frame_conn: FrameConnection | None = None
        self.last_id: str | None = None
        self.last_items: list[Any] = []   # the last request's whole input, then its output
        self._serving = False
        self.idle_since = 0.0             # time.monotonic() of the last frame in or answer's end
        self._idle_limit = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- the upgrade -------------------------------------------------------------------
    def prepare(self) -> None:
        if not self.gw.config.server.get("responses_websocket", True):
            # 426 is what Codex reads as "no WebSocket here": it goes to HTTP POST at
            # once (404, 405 or a 5xx cost it six retries first, a 400 fails the turn).
            self.refuse_upgrade("this gateway serves /v1/responses over HTTP only (server.responses_websocket "
                                "is off); POST the request instead")
            return
        super().prepare()  # access keys, before the 101

    def refuse_upgrade(self, message: str) -> None:
        self.set_status(426)
        self.set_header("Sec-WebSocket-Version", "13")
        self.set_header("Content-Type", "application/json")
        self.finish(jsonutil.dumpb(RESPONSES_FORMAT.error_body(ProxyError(ErrorKind.UNSUPPORTED, message))))

    def check_origin(self, origin: str) -> bool:
        cors = self.gw.cors_origins
        return "*" in cors or origin in cors

    def get_compression_options(self) -> dict[str, Any]:
        return {}  # permessage-deflate, as Codex offers it

    @property
    def max_message_size(self) -> int:
        return int(self.gw.max_body_bytes)

    def open(self, *args: Any) -> None:
        self._queue = asyncio.Queue(MAX_QUEUED)
        self._worker = asyncio.ensure_future(self._serve_frames())
        self.idle_since = time.monotonic()
        self._idle_limit = float(self.gw.config.server.get("websocket_idle_seconds") or 0)
        if self._idle_limit > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(self._idle_limit, self._idle_check)
        opened = getattr(self.request.connection, "websocket_opened", None)
        if opened is not None:
            opened(self)  # the server side counts it against max_connections, and may shed it
        self.gw.websockets.add(self)
        if self.gw.draining:  # (upgraded just as the drain began)
            self.close_as("draining", 1001, DRAINING)

    # -- idle: the limit and the connection cap --------------------------------------------
    @property
    def busy(self) -> bool:
        """A request in flight (being answered or waiting its turn): never closed for idleness."""
        return self._serving or (self._queue is not None and not self._queue.empty())

    def on_ping(self, data: bytes) -> None:
        self.idle_since = time.monotonic()

    def on_pong(self, data: bytes) -> None:
        self.idle_since = time.monotonic()

    def _idle_check(self) -> None:
        """Once per idle limit at most (not re-armed per frame): close the socket if it
        has been idle that long, else look again when it would have been."""
        self._idle_timer = None
        if self.ws_connection is None:
            return
        now = time.monotonic()
        wait = self._idle_limit
        if not self.busy:
            wait = self.idle_since + self._idle_limit - now
            if wait <= 0:
                self.close_as("idle", 1001, f"no request for {self._idle_limit:g} s; reconnect to go on")
                return
        self._idle_timer = asyncio.get_running_loop().call_later(max(wait, 0.01), self._idle_check)

    def shed(self) -> None:
        """Closed to make room at the connection limit (only ever while not busy)."""
        self.close_as("shed", 1013, "the gateway is at its connection limit; reconnect")

    def close_as(self, reason: str, code: int, text: str) -> None:
        """Close with a close frame, counted in tornado_proxy_websocket_closes_total{reason}."""
        if self.ws_connection is None:
            return
        self.gw.metrics.count_websocket_close(reason)
        log.debug("closing a Responses WebSocket (%s): %d %s", reason, code, text)
        self.close(code, text)

    # -- frames in ---------------------------------------------------------------------
    def on_message(self, message: str | bytes) -> None:
        self.idle_since = time.monotonic()
        if isinstance(message, bytes):
            self.send_error_frame(400, ProxyError(ErrorKind.INVALID_REQUEST,
                                                  "binary frames are not part of this protocol; send JSON text"))
            return
        try:
            frame = jsonutil.loads(message)
        except ValueError:
            self.send_error_frame(400, ProxyError(ErrorKind.INVALID_REQUEST, "the frame is not JSON"))
            return
        if not isinstance(frame, dict) or frame.get("type") != "response.create":
            kind = frame.get("type") if isinstance(frame, dict) else None
            self.send_error_frame(400, ProxyError(
                ErrorKind.INVALID_REQUEST, f"unknown frame type {str(kind)[:64]!r}; expected 'response.create'",
                param="type"))
            return
        assert self._queue is not None
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.send_error_frame(429, ProxyError(ErrorKind.RATE_LIMITED,
                                                  "too many response.create frames waiting on this connection"))

    def on_close(self) -> None:
        conn = self._frame_conn
        if conn is not None:
            conn.lost()
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.gw.websockets.discard(self)
        closed = getattr(self.request.connection, "websocket_closed", None)
        if closed is not None:
            closed(self)

    async def _serve_frames(self) -> None:
        assert self._queue is not None
        while True:
            frame = await self._queue.get()
            self._serving = True
            try:
                await self.serve_frame(frame)
            except Exception:
                log.exception("serving a response.create frame failed")
                self.send_error_frame(500, ProxyError(ErrorKind.INTERNAL, "internal error in the gateway; see its log"))
            finally:
                self._serving = False
                self.idle_since = time.monotonic()
            idle = getattr(self.request.connection, "websocket_idle", None)
            if idle is not None:
                idle()  # (the server side's own clock of the longest idle, for shedding)
            if self.gw.draining:
                while not self._queue.empty():  # (frames sent behind it: said, not dropped)
                    self._queue.get_nowait()
                    self.send_error_frame(503, ProxyError(ErrorKind.DRAINING, DRAINING))
                self.close_as("draining", 1001, DRAINING)
                return

    def drain(self) -> None:
        """The gateway drains: closed now when nothing is in flight, else after its answer
        (``_serve_frames``), so the client reconnects to a replica that stays."""
        if not self.busy:
            self.close_as("draining", 1001, DRAINING)

    # -- one request -------------------------------------------------------------------
    async def serve_frame(self, frame: dict[str, Any]) -> None:
        body = {k: v for k, v in frame.items() if k not in ("type", "generate")}
        prev = body.get("previous_response_id")
        new_items = _items(body.get("input"))
        if prev is not None and prev == self.last_id:
            # Only the new items came: the whole conversation goes upstream.
            body.pop("previous_response_id")
            body["input"] = [*self.last_items, *new_items]
        elif prev is not None and not self.may_know(prev, body.get("model")):
            # What OpenAI's server answers for an id it lost: Codex then sends the
            # request again with the whole conversation.
            self.send_frame(error_frame(400, {"error": {
                "type": "invalid_request_error", "code": "previous_response_not_found",
                "message": f"Previous response with id '{str(prev)[:200]}' not found.",
                "param": "previous_response_id"}}))
            return
        if frame.get("generate") is False:
            self.prewarm(body)
            return
        body["stream"] = True
        conn = FrameConnection(self, body.get("input"))
        self._frame_conn = conn
        try:
            await conn.run(jsonutil.dumpb(body))
        finally:
            self._frame_conn = None
        if conn.completed is not None:
            self.last_id, self.last_items = conn.completed

    def may_know(self, prev: Any, name: Any) -> bool:
        """Whether a ``previous_response_id`` not of this connection may still be found:
        in the gateway's response store, or by an ``openai-responses`` upstream."""
        if not isinstance(prev, str):
            return True  # (the route says what is wrong with it)
        if response_store(self.gw).get(prev) is not None:
            return True
        hit = self.gw.router.resolve(name) if isinstance(name, str) else None
        return hit is None or hit[1].native_format == RESPONSES_FORMAT.name

    def prewarm(self, body: dict[str, Any]) -> None:
        """``generate: false``: the connection learns the request; nothing is generated."""
        name = body.get("model")
        if not isinstance(name, str) or self.gw.router.resolve(name) is None:
            self.send_error_frame(404 if isinstance(name, str) else 400, ProxyError(
                ErrorKind.MODEL_NOT_FOUND if isinstance(name, str) else ErrorKind.INVALID_REQUEST,
                f"the model '{name}' does not exist" if isinstance(name, str) else "'model' is required",
                param="model"))
            return
        rid = RESPONSES_FORMAT.context_id(os.urandom(12).hex())
        response = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "in_progress",
                    "model": name, "output": [], "usage": None, "error": None, "incomplete_details": None}
        self.send_frame(jsonutil.dumpb({"type": "response.created", "sequence_number": 0, "response": response}))
        done = {**response, "status": "completed",
                "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}
        self.send_frame(jsonutil.dumpb({"type": "response.completed", "sequence_number": 1, "response": done}))
        self.last_id, self.last_items = rid, _items(body.get("input"))

    # -- frames out --------------------------------------------------------------------
    def send_frame(self, data: bytes) -> bool:
        """One JSON text frame; False once the socket is gone."""
        try:
            fut = self.write_message(data)
        except tornado.websocket.WebSocketClosedError:
            return False
        fut.add_done_callback(_retrieve)
        return True

    def send_error_frame(self, status: int, err: ProxyError, headers: dict[str, str] | None = None) -> None:
        body = RESPONSES_FORMAT.error_body(in_words_of(RESPONSES_FORMAT.name, err))
        self.send_frame(error_frame(status, body, headers))


def error_frame(status: int, body: Any, headers: dict[str, str] | None = None) -> bytes:
    """The frame Codex handles as an HTTP error with ``status``."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": "upstream error", "type": "server_error", "code": None}
    return jsonutil.dumpb({"type": "error", "status": status, "error": error, "headers": headers or {}})


def _items(inp: Any) -> list[Any]:
    if isinstance(inp, list):
        return inp
    if isinstance(inp, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": inp}]}]
    return []


def _retrieve(fut: Any) -> None:
    if not fut.cancelled():
        fut.exception()  # a write to a socket that closed meanwhile: nothing to do


class FrameConnection:
    """The ``HTTPConnection`` one ``response.create`` is served on: what the route's
    handler writes (an SSE stream, or a JSON error) goes out as frames."""

    def __init__(self, ws: ResponsesSocketHandler, sent_input: Any) -> None:
        self.ws = ws
        self.sent_input = _items(sent_input)
        conn: Any = ws.request.connection
        self.context = conn.context if hasattr(conn, "context") else None
        self.status = 200
        self.headers: httputil.HTTPHeaders | None = None
        self.sse = False
        self.decoder = SSEDecoder(ws.gw.upstream.max_body_bytes)
        self.body: list[bytes] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_cb: Callable[[], None] | None = None
        self.completed: tuple[str, list[Any]] | None = None
        self.output: list[Any] = []
        self._gone = False

    # What the stream path reads to slow the upstream down for a slow client.
    @property
    def writable(self) -> bool:
        inner = self.ws.ws_connection
        stream = getattr(inner, "stream", None)
        return bool(getattr(stream, "writable", True))

    def when_writable(self, callback: Callable[[], None]) -> None:
        stream = getattr(self.ws.ws_connection, "stream", None)
        when = getattr(stream, "when_writable", None)
        if when is None:
            callback()
        else:
            when(callback)

    async def run(self, body: bytes) -> None:
        ws = self.ws
        req = ws.request
        headers = httputil.HTTPHeaders()
        for name, value in req.headers.get_all():
            if name not in _HOP:
                headers.add(name, value)
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(len(body))
        start = httputil.RequestStartLine("POST", req.path, "HTTP/1.1")
        request = httputil.HTTPServerRequest(headers=headers, connection=self,  # type: ignore[arg-type]  # (duck-typed HTTPConnection)
                                             start_line=start)
        request.remote_ip = req.remote_ip
        delegate = ws.application.get_handler_delegate(request, ResponsesHandler, {"gw": ws.gw})
        # As our HTTP/1.1 server hands a request over: the route's data_received only buffers.
        delegate.headers_received(start, headers)
        delegate.data_received(body)
        delegate.finish()
        await self.done

    def lost(self) -> None:
        """The socket closed while this request was served: as a client gone mid-request."""
        self._gone = True
        cb, self.close_cb = self.close_cb, None
        if cb is not None:
            cb()
        if not self.done.done():
            self.done.set_result(None)

    # -- HTTPConnection ------------------------------------------------------------------
    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self.close_cb = callback

    def write_headers(self, start_line: Any, headers: httputil.HTTPHeaders,
                      chunk: bytes | None = None) -> "asyncio.Future[None]":
        self.status = start_line.code
        self.headers = headers
        self.sse = self.status == 200 and headers.get("Content-Type", "").startswith("text/event-stream")
        return self.write(chunk) if chunk else _done()

    def write(self, chunk: bytes) -> "asyncio.Future[None]":
        if self._gone or not chunk:
            return _done()
        if not self.sse:
            self.body.append(chunk)
            return _done()
        for ev in self.decoder.feed(chunk):
            self.event(ev)
        return _done()

    def finish(self) -> None:
        if self.sse:
            for ev in self.decoder.finish():
                self.event(ev)
        elif not self._gone:
            self.answer_whole(b"".join(self.body))
        self.close_cb = None
        if not self.done.done():
            self.done.set_result(None)

    # -- the answer ------------------------------------------------------------------------
    def event(self, ev: Any) -> None:
        raw = ev.raw if ev.raw is not None else ev.data.encode("utf-8")
        name = ev.event
        if name == "response.output_item.done" or name in _ENDS:
            try:
                obj = jsonutil.loads(raw)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                if name == "response.output_item.done" and isinstance(obj.get("item"), dict):
                    self.output.append(obj["item"])
                elif name in ("response.completed", "response.incomplete"):
                    resp = obj.get("response") or {}
                    rid = resp.get("id")
                    if isinstance(rid, str):
                        out = self.output or [i for i in resp.get("output") or [] if isinstance(i, dict)]
                        self.completed = (rid, [*self.sent_input, *out])
        if not self.ws.send_frame(raw):
            self.lost()

    def answer_whole(self, body: bytes) -> None:
        """A JSON answer: an error before any event (or, never with ``stream: true``, a whole response)."""
        try:
            obj = jsonutil.loads(body) if body else {}
        except ValueError:
            obj = {}
        if self.status >= 400 or not isinstance(obj, dict) or "error" in obj and obj.get("object") != "response":
            hdrs = {}
            if self.headers is not None and self.headers.get("Retry-After"):
                hdrs["retry-after"] = self.headers["Retry-After"]
            self.ws.send_frame(error_frame(self.status if self.status >= 400 else 502, obj, hdrs))
            return
        # A whole response object: sent as the one event that ends a response.
        self.ws.send_frame(jsonutil.dumpb({"type": "response.completed", "response": obj}))


def _done() -> "asyncio.Future[None]":
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut
