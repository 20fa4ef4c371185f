"""Upstream HTTP: one curl-backed AsyncHTTPClient, streaming and abortable.

Why not plain ``fetch(streaming_callback=...)``: Tornado's curl client hands
chunks to the streaming callback through ``add_callback``, one IOLoop turn later
and one call per chunk, and cannot stop a transfer once started.  We install our
own ``WRITEFUNCTION`` and ``HEADERFUNCTION``: the body bytes of one socket action
are gathered and handed to the transfer's ``on_data`` in one piece at the end of
that action, still in the same IOLoop callback, so decode -> translate ->
``write()`` -> ``flush()`` costs one client write per upstream read rather than one
per SSE event.  ``on_data`` returning False (the client has gone) or raising
aborts the transfer at once; a transfer that is idle (no bytes to hand us) is
aborted from outside through :meth:`GatewayCurlClient.abort`.

The status is only known for sure at the first body byte: a proxy's ``CONNECT``
answer and ``100 Continue`` come with header blocks of their own, and the last
status line before the body is the one that counts.  So the first body byte
decides whether the transfer streams to the client (2xx) or is buffered as an
error body for the provider's ``classify_error``.

Timeouts: ``connect`` is curl's own.  ``first_byte`` and ``idle`` are enforced by
one shared sweeper that ticks four times a second; a transfer records the tick at
which it last received bytes (an int copy per chunk, no clock read on the hot path).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.ioloop import IOLoop, PeriodicCallback

from providers.base import UpstreamRequest

from .errors import ErrorKind, ProxyError

log = logging.getLogger("tornado_proxy.upstream")

TICKS_PER_SECOND = 4

# curl error numbers we give a meaning to
_E_COULDNT_RESOLVE = (5, 6)        # proxy, host
_E_COULDNT_CONNECT = 7
_E_OPERATION_TIMEDOUT = 28
_E_WRITE_ERROR = 23                # our write function returned 0 (client gone / translator error)
_E_ABORTED = 42                    # CURLE_ABORTED_BY_CALLBACK: GatewayCurlClient.abort
_E_SSL = (35, 51, 53, 54, 58, 59, 60, 77, 80, 82, 83, 90, 91)
_E_CUT = (18, 52, 55, 56, 92)      # partial file, empty reply, send/recv error, HTTP/2 stream error


class GatewayCurlClient(CurlAsyncHTTPClient):
    """The curl client with a public way to stop a transfer, and handles made on demand.

    Tornado creates all ``max_clients`` easy handles up front: 10 000 of them (what
    10 000 concurrent streams need) cost about 40 MiB before the first request.
    Here they are created as the queue needs them, up to ``max_clients``, and kept.
    """

    def initialize(self, max_clients: int = 10, defaults: Any = None,  # type: ignore[override]
                   max_body_size: int = 104857600) -> None:
        super().initialize(max_clients=0, defaults=defaults, max_body_size=max_body_size)
        self._max_handles = max_clients
        # Transfers that received body bytes during the current socket action.
        self.dirty: list[Transfer] = []

    def _finish_pending_requests(self) -> None:
        # Every socket action (socket event, timer, forced timeout) ends here: hand each
        # streaming transfer what it received in that action, in one piece, before any
        # transfer that completed in it is finished.
        if self.dirty:
            self._deliver()
        super()._finish_pending_requests()

    def _deliver(self) -> None:
        """One ``on_data`` call per transfer per socket action, not one per HTTP chunk.

        libcurl calls the write function once per chunk of a chunked body, and an
        upstream that frames every SSE event as its own chunk would cost one client
        write (a syscall) per event; here the events of one read go out in one write.
        A handler that fails or whose client has gone aborts its transfer.
        """
        batch = self.dirty
        self.dirty = []
        for t in batch:
            parts = t.pending
            t.pending = []
            if t.abort_kind is not None or t.abort_err is not None or t.on_data is None:
                continue
            try:
                keep_going = t.on_data(parts[0] if len(parts) == 1 else b"".join(parts))
            except ProxyError as err:
                t.abort_err = err
                keep_going = False
            except Exception as exc:  # a bug must not leave the transfer running
                log.exception("stream handler failed")
                t.abort_err = ProxyError(ErrorKind.INTERNAL, f"internal error while streaming: {type(exc).__name__}")
                keep_going = False
            if not keep_going:
                if t.abort_err is None:
                    t.abort_kind = ErrorKind.INTERNAL  # client went away
                self.abort(t)

    def _process_queue(self) -> None:
        need = len(self._requests) - len(self._free_list)
        while need > 0 and len(self._curls) < self._max_handles:
            curl = self._curl_create()
            self._curls.append(curl)
            self._free_list.append(curl)
            need -= 1
        super()._process_queue()

    def _curl_setup_request(self, curl: pycurl.Curl, request: Any, buffer: Any, headers: Any) -> None:
        """Our own transfers get a lean setup; anything else (OAuth refreshes) Tornado's.

        Tornado's generic setup costs more per request than the rest of our pipeline
        (two dozen options, header objects, a request proxy). The handle was reset()
        after its last transfer, so only what differs from libcurl's defaults is set:
        TLS verification, IPv4/IPv6 and environment proxies keep libcurl's defaults,
        as they do under Tornado's setup.
        """
        if not isinstance(request, Transfer):
            super()._curl_setup_request(curl, request, buffer, headers)
            return
        request.curl = curl
        req = request.req
        setopt = curl.setopt
        setopt(pycurl.PROTOCOLS, _HTTP_ONLY)
        setopt(pycurl.URL, req.url)
        setopt(pycurl.HTTPHEADER, request.header_lines())
        setopt(pycurl.HEADERFUNCTION, request._header)
        setopt(pycurl.WRITEFUNCTION, request._write)
        setopt(pycurl.CONNECTTIMEOUT_MS, request.connect_ms)
        setopt(pycurl.USERAGENT, request.client.user_agent)
        setopt(pycurl.ENCODING, "gzip,deflate")
        setopt(pycurl.NOSIGNAL, 1)
        # libcurl's default 64 KiB send buffer per transfer is most of a slow stream's
        # memory; request bodies go out fine in 16 KiB pieces.
        setopt(pycurl.UPLOAD_BUFFERSIZE, 16384)
        if request.client_proxy:
            setopt(pycurl.PROXY, request.client_proxy)
        method = req.method
        if req.body is not None:
            setopt(pycurl.POSTFIELDSIZE, len(req.body))
            setopt(pycurl.POSTFIELDS, req.body)  # pycurl keeps the bytes alive for the transfer
            if method != "POST":
                setopt(pycurl.CUSTOMREQUEST, method)
        elif method == "HEAD":
            setopt(pycurl.NOBODY, 1)
        elif method != "GET":
            setopt(pycurl.CUSTOMREQUEST, method)

    def abort(self, transfer: "Transfer") -> None:
        curl = transfer.curl
        info = getattr(curl, "info", None) if curl is not None else None
        if info is not None and info["request"] is transfer:
            # Not called from inside a curl callback (those return 0 instead), so
            # finishing the handle here is safe; _finish removes it from the multi.
            self._finish(curl, _E_ABORTED, "aborted by the gateway")
            self._process_queue()
            return
        # Still queued for a free handle: take it out of the queue.
        for item in list(self._requests):
            if item[0] is transfer:
                self._requests.remove(item)
                item[1](None)
                return


_HTTP_ONLY = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS


class Transfer:
    """One upstream request in flight."""

    __slots__ = ("req", "curl", "status", "headers", "on_data", "body", "streaming",
                 "started", "first_tick", "last_tick", "abort_kind", "abort_err", "first_byte",
                 "idle", "client", "client_proxy", "_header_status", "future", "started_at", "connect_ms",
                 "url", "pending")

    def __init__(self, client: "Upstream", req: UpstreamRequest, on_data: Callable[[bytes], bool] | None,
                 first_byte: float, idle: float) -> None:
        self.client = client
        self.req = req
        self.curl: pycurl.Curl | None = None
        self.status = 0
        self._header_status = 0
        self.headers: dict[str, str] = {}
        self.on_data = on_data
        self.body: list[bytes] = []
        self.pending: list[bytes] = []  # streamed bytes not yet handed to on_data
        self.streaming = False        # decided at the first body byte
        self.started = False          # any body byte seen
        tick = client.tick
        self.first_tick = tick
        self.last_tick = tick
        self.abort_kind: ErrorKind | None = None
        self.abort_err: ProxyError | None = None
        self.first_byte = max(1, int(first_byte * TICKS_PER_SECOND)) if first_byte else 0
        self.idle = max(1, int(idle * TICKS_PER_SECOND)) if idle else 0
        self.client_proxy: str | None = None
        self.url = req.url  # read by Tornado's HTTPResponse
        self.connect_ms = 10000
        self.future: Any = None
        self.started_at = 0.0

    # -- curl callbacks (run synchronously inside curl's socket action) --------
    def _header(self, line: bytes) -> None:
        if line[:5] == b"HTTP/":
            # A new header block (100 Continue, proxy CONNECT, redirects): start over.
            parts = line.split(b" ", 2)
            try:
                self._header_status = int(parts[1])
            except (IndexError, ValueError):
                self._header_status = 0
            self.headers = {}
            return
        name, sep, value = line.partition(b":")
        if sep:
            self.headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")

    def _write(self, data: bytes) -> int | None:
        self.last_tick = self.client.tick
        if not self.started:
            self.started = True
            self.status = self._header_status
            self.streaming = self.on_data is not None and 200 <= self.status < 300
        if self.streaming:
            # Delivered at the end of this socket action (GatewayCurlClient._deliver).
            if self.abort_kind is not None or self.abort_err is not None:
                return 0
            pending = self.pending
            if not pending:
                self.client.http.dirty.append(self)
            pending.append(data)
            return None
        self.body.append(data)
        return None

    def header_lines(self) -> list[bytes]:
        # "Expect:" and "Pragma:" with no value stop libcurl from adding its own
        # (100-continue adds a round trip; no-cache means nothing to an API).
        out = [b"Expect:", b"Pragma:"]
        for k, v in self.req.headers.items():
            line = f"{k}: {v}".encode("latin-1")
            if b"\r" in line or b"\n" in line:
                raise ProxyError(ErrorKind.INTERNAL, f"illegal character in upstream header {k!r}")
            out.append(line)
        return out

    def done(self, resp: HTTPResponse | None) -> None:
        """Tornado's completion callback (None: taken out of the queue by abort)."""
        if not self.future.done():
            self.future.set_result(resp)

    # -- control ---------------------------------------------------------------
    def abort(self, kind: ErrorKind) -> None:
        """Stop the transfer from outside curl (client gone, timeout)."""
        if self.abort_kind is None:
            self.abort_kind = kind
        self.client.http.abort(self)


class Result:
    __slots__ = ("status", "headers", "body", "error", "ttfb")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, error: ProxyError | None,
                 ttfb: float | None) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.error = error
        self.ttfb = ttfb


class Upstream:
    """The process-wide upstream client and its timeout sweeper."""

    def __init__(self, max_clients: int = 10000, user_agent: str = "tornado-proxy") -> None:
        AsyncHTTPClient.configure(GatewayCurlClient, max_clients=max_clients)
        self.http: GatewayCurlClient = AsyncHTTPClient()  # type: ignore[assignment]
        self.user_agent = user_agent
        self.tick = 0
        self.active: set[Transfer] = set()
        self._sweeper = PeriodicCallback(self._sweep, 1000 / TICKS_PER_SECOND)
        self._sweeper.start()

    def close(self) -> None:
        self._sweeper.stop()

    def _sweep(self) -> None:
        self.tick += 1
        tick = self.tick
        expired: list[tuple[Transfer, ErrorKind]] = []
        for t in self.active:
            if not t.started:
                if t.first_byte and tick - t.first_tick >= t.first_byte:
                    expired.append((t, ErrorKind.FIRST_BYTE_TIMEOUT))
            elif t.idle and tick - t.last_tick >= t.idle:
                expired.append((t, ErrorKind.IDLE_TIMEOUT))
        for t, kind in expired:
            t.abort(kind)

    def start(self, req: UpstreamRequest, *, on_data: Callable[[bytes], bool] | None = None,
              connect_timeout: float = 10.0, first_byte: float = 120.0, idle: float = 120.0,
              proxy: str | None = None) -> Transfer:
        """Send ``req``; ``await upstream.wait(transfer)`` for the result.

        With ``on_data``, a 2xx body is handed to it as it arrives (return False to
        abort); anything else is buffered into ``Result.body``.
        """
        t = Transfer(self, req, on_data, first_byte, idle)
        t.connect_ms = int(connect_timeout * 1000)
        t.client_proxy = proxy
        loop = IOLoop.current()
        t.started_at = loop.time()
        t.future = loop.asyncio_loop.create_future()  # type: ignore[attr-defined]
        self.active.add(t)
        # Straight into the curl client's queue: no HTTPRequest, no request proxy.
        # No total timeout (streams are long): first-byte and idle are the sweeper's.
        self.http.fetch_impl(t, t.done)  # type: ignore[arg-type]
        return t

    async def wait(self, t: Transfer) -> Result:
        """The outcome of a transfer.  Never raises for transport problems: ``Result.error`` says."""
        errno: int | None = None
        try:
            resp: HTTPResponse | None = await t.future
        finally:
            self.active.discard(t)
            # Transfer -> future -> HTTPResponse -> Transfer is a cycle that would hold the
            # whole request (handler, connection, stream) until the slowest GC pass.
            t.future = None
        if resp is None:  # taken out of the queue before it started
            errno = _E_ABORTED
        ttfb = None
        if resp is not None and resp.time_info:
            st = resp.time_info.get("starttransfer")
            if st:
                ttfb = float(st)
        if ttfb is None:
            ttfb = IOLoop.current().time() - t.started_at
        status = t.status or t._header_status
        if resp is not None and resp.code == 599 and resp.error is not None:
            errno = getattr(resp.error, "errno", None) or _E_ABORTED
        # (a CurlError carries curl's errno; fetch_impl hands it to us instead of raising)
        return Result(status, t.headers, b"".join(t.body), self._error(t, errno), ttfb)

    async def fetch(self, req: UpstreamRequest, **kw: Any) -> Result:
        return await self.wait(self.start(req, **kw))

    def _error(self, t: Transfer, errno: int | None) -> ProxyError | None:
        if t.abort_err is not None:
            return t.abort_err
        if t.abort_kind is ErrorKind.FIRST_BYTE_TIMEOUT:
            return ProxyError(ErrorKind.FIRST_BYTE_TIMEOUT, "upstream did not answer within the first-byte timeout")
        if t.abort_kind is ErrorKind.IDLE_TIMEOUT:
            return ProxyError(ErrorKind.IDLE_TIMEOUT, "upstream stream stalled past the idle timeout")
        if t.abort_kind is not None:
            return ProxyError(t.abort_kind, "transfer aborted: the client went away")
        if errno is None:
            return None
        host = _host_of(t.req.url)
        if errno in _E_COULDNT_RESOLVE:
            return ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, f"cannot resolve upstream host {host}")
        if errno == _E_COULDNT_CONNECT:
            return ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, f"cannot connect to upstream {host}")
        if errno == _E_OPERATION_TIMEDOUT:
            if not t.started and not t._header_status:
                return ProxyError(ErrorKind.CONNECT_TIMEOUT, f"timed out connecting to upstream {host}")
            return ProxyError(ErrorKind.IDLE_TIMEOUT, f"upstream {host} timed out")
        if errno in _E_SSL:
            return ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, f"TLS error talking to upstream {host}")
        if errno in _E_CUT:
            if t.started or t._header_status:
                return ProxyError(ErrorKind.UPSTREAM_STREAM_CUT, f"upstream {host} closed the connection mid-response")
            return ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, f"upstream {host} closed the connection without answering")
        return ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, f"upstream {host} transport error (curl {errno})")


def _host_of(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return rest.split("/", 1)[0].rsplit("@", 1)[-1]

