"""The stock upstream client (``server.upstream_client: "tornado"``): our transfers through
Tornado's public ``CurlAsyncHTTPClient.fetch``.

It stands beside the fast driver in ``upstream.py`` so that the whole suite can run on
Tornado's own code paths too: a Tornado upgrade that changes how its curl client streams,
buffers or fails shows up here.  It produces what the pipeline consumes from the fast
driver (a :class:`~tornado_proxy.pipeline.upstream.Transfer`, ``on_data`` calls with the
body of a 2xx stream, a buffered body otherwise, and the same ``Result`` and errors), and
shares the timeout sweeper, the body caps and the error mapping of :class:`Upstream`.

Built only from what ``HTTPRequest`` offers:

- ``streaming_callback`` receives every body byte (a 2xx stream goes to ``on_data``, the
  rest is buffered here under our caps, which count decoded bytes: a gzip bomb is caught);
  ``header_callback`` collects the header lines (``Transfer.parse_head`` reads them);
- ``prepare_curl_callback`` sets what ``HTTPRequest`` cannot say: the outbound proxy as a
  URL (scheme, credentials; none means libcurl's default, the environment's proxy, as on
  the fast path), and a progress callback through which a transfer is aborted;
- the client's own ``max_body_size`` is set out of the way: it counts a whole stream, and
  streams are long; our caps apply to buffered bodies only, as on the fast path.

How it differs from the fast driver (docs/architecture.md, "Server side and upstream
client"): Tornado hands each chunk over one IOLoop turn after curl read it, one call per
chunk; it has no way to stop a transfer, so an abort (client gone, timeout, body cap)
completes the transfer for the pipeline at once and libcurl drops the connection at its
next progress call (within about a second when the upstream is silent); backpressure
pauses the handle with ``Curl.pause`` (libcurl >= 7.69 schedules the resume itself).
"""
from __future__ import annotations

import logging
from typing import Any

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.upstream import _E_ABORTED, Transfer, Upstream, _complete, hand_over

log = logging.getLogger("tornado_proxy.pipeline.upstream")

# Tornado's max_body_size counts a streamed body whole; ours are capped per buffer.
_NO_TORNADO_CAP = 1 << 62
_METHODS_WITH_BODY = ("POST", "PUT", "PATCH")


class TornadoCurl:
    """Starts, aborts, pauses and resumes transfers on a private ``CurlAsyncHTTPClient``
    (what ``GatewayCurlClient`` does for the fast path)."""

    def __init__(self, max_clients: int) -> None:
        # force_instance: not the IOLoop's shared AsyncHTTPClient, which the fast
        # driver configures (and OAuth refreshes use) in the same process.
        self.client = CurlAsyncHTTPClient(force_instance=True, max_clients=max_clients,
                                          max_body_size=_NO_TORNADO_CAP)
        self._aio = self.client.io_loop.asyncio_loop  # type: ignore[attr-defined]
        self.running: set[Transfer] = set()  # started, Tornado's response not yet in
        self._closing = False
        self._closed = False

    def _close_client(self) -> None:
        # Once: a drain and the gateway's own close may both get here, and Tornado's
        # CurlAsyncHTTPClient.close() raises on a second call.
        if not self._closed:
            self._closed = True
            self.client.close()

    def close(self) -> None:
        """Close the client once libcurl has let go of every transfer (closing it with
        handles still running leaves a timer of Tornado's firing on a closed multi)."""
        self._closing = True
        for t in list(self.running):
            self.abort(t)
        if not self.running:
            self._close_client()

    def start_transfer(self, t: Transfer) -> None:
        req = t.req
        method = req.method
        body = req.body
        if body is None and method in _METHODS_WITH_BODY:
            body = b""
        try:
            request = HTTPRequest(
                req.url, method=method, headers=dict(req.headers), body=body,
                connect_timeout=t.connect_ms / 1000.0,
                # No total timeout (streams are long): first-byte and idle are the sweeper's.
                request_timeout=0, follow_redirects=False, decompress_response=True,
                user_agent=t.client.user_agent, allow_nonstandard_methods=True,
                header_callback=lambda line: t.head.append(line.encode("latin-1")),
                streaming_callback=lambda data: self._on_body(t, data),
                prepare_curl_callback=lambda curl: self._prepare(t, curl))
            fut = self.client.fetch(request, raise_error=False)
            self.running.add(t)
        except Exception as exc:  # what we built from the client's request was refused
            t.abort_err = ProxyError(ErrorKind.INVALID_REQUEST, "the request could not be sent upstream: "
                                     f"it was refused ({type(exc).__name__})")
            _complete(t, _E_ABORTED, 0.0)
            return
        fut.add_done_callback(lambda f: self._on_response(t, f))

    def _prepare(self, t: Transfer, curl: pycurl.Curl) -> None:
        if t.client_proxy:
            curl.setopt(pycurl.PROXY, t.client_proxy)
        else:
            curl.unsetopt(pycurl.PROXY)  # libcurl's default: the environment's proxy
        # libcurl's default 64 KiB send buffer per transfer; 16 KiB as on the fast path.
        curl.setopt(pycurl.UPLOAD_BUFFERSIZE, 16384)
        curl.setopt(pycurl.TCP_NODELAY, 1)  # (what our driver sets; no stall on a reused connection)
        # The one way to stop a transfer through Tornado's client: a progress callback
        # that asks libcurl to abort (CURLE_ABORTED_BY_CALLBACK) once we are done with it.
        curl.setopt(pycurl.NOPROGRESS, 0)
        curl.setopt(pycurl.XFERINFOFUNCTION, lambda *_: 1 if _ended(t) else 0)
        curl.tp_transfer = t  # type: ignore[attr-defined]  # whose handle it is now (pause/resume)
        t.curl = curl

    def _on_body(self, t: Transfer, data: bytes) -> None:
        """Tornado's streaming callback (from the IOLoop, one call per chunk)."""
        if _ended(t):
            return
        t.last_tick = t.client.tick
        if not t.started:
            t.started = True
            status = t.parse_head()
            if not status and t.curl is not None:
                # The transfer finished in the read that brought its body: Tornado hands
                # the body over at once and the header lines one turn later.
                status = t.curl.getinfo(pycurl.RESPONSE_CODE)
            t.status = status
            ok = 200 <= status < 300
            t.streaming = t.on_data is not None and ok
            t.room = t.client.max_body_bytes if ok else t.client.max_error_bytes
        if t.streaming:
            if not hand_over(t, data):
                self.abort(t)
            return
        t.room -= len(data)
        if t.room < 0:
            t.abort_err = t.too_large()
            t.body = []
            self.abort(t)
            return
        t.body.append(data)

    def _on_response(self, t: Transfer, f: Any) -> None:
        t.curl = None
        self.running.discard(t)
        if self._closing and not self.running:
            self._close_client()
        exc = f.exception()
        errno: int | None = None
        if isinstance(exc, CurlError):
            errno = exc.errno
        elif exc is not None:
            log.warning("upstream fetch failed: %s", type(exc).__name__)
            errno = _E_ABORTED
        resp: HTTPResponse | None = f.result() if exc is None else None
        st = float((resp.time_info or {}).get("starttransfer") or 0.0) if resp is not None else 0.0
        if resp is not None and not t.started:
            t.status = resp.code  # no body at all (its header lines may still be on their way)
        _complete(t, errno, st)

    def abort(self, t: Transfer) -> None:
        """End ``t`` for the pipeline now; libcurl drops it at its next progress call."""
        curl = t.curl
        if curl is not None and t.paused:
            t.paused = False
            self.resume_handle(t, curl)  # a paused transfer makes no progress calls
        _complete(t, _E_ABORTED, 0.0)

    def pause(self, t: Transfer) -> None:
        curl = t.curl
        if curl is None or t.paused or getattr(curl, "tp_transfer", None) is not t:
            return
        try:
            curl.pause(pycurl.PAUSE_RECV)
        except pycurl.error:
            return  # finished meanwhile: its completion reports it
        t.paused = True

    def resume(self, t: Transfer) -> None:
        if not t.paused:
            return
        t.paused = False
        t.last_tick = t.client.tick  # the idle timeout counts from now
        curl = t.curl
        if curl is not None:
            self.resume_handle(t, curl)

    @staticmethod
    def resume_handle(t: Transfer, curl: pycurl.Curl) -> None:
        if getattr(curl, "tp_transfer", None) is not t:
            return  # the handle went on to another transfer
        try:
            curl.pause(pycurl.PAUSE_CONT)
        except pycurl.error:
            pass  # the transfer failed while paused: its completion reports it


def _ended(t: Transfer) -> bool:
    """Completed for the pipeline (aborted, or Tornado's response came)."""
    fut = t.future
    return fut is None or fut.done()


class TornadoUpstream(Upstream):
    """:class:`Upstream` with its transfers on Tornado's own curl client."""

    def _client(self, max_clients: int) -> Any:
        # Tornado's own requests (OAuth refreshes, with their proxies) on curl too.
        AsyncHTTPClient.configure(CurlAsyncHTTPClient, max_clients=max_clients)
        return TornadoCurl(max_clients)

    def close(self) -> None:
        super().close()
        self.http.close()
