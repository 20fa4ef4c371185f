"""Reading a request on our HTTP/1.1 server (``http1.py``): what a connection keeps
of each request while llhttp parses it, the limits the parser's callbacks enforce, the
header names and ``HTTPHeaders`` they fill, and the error answers the server gives
itself before any handler runs (in the shape of the client API the request was for).
"""
from __future__ import annotations

from typing import Any, Callable

from tornado import httputil

MAX_HEADER_BYTES = 65536

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


# google.rpc.Status names for the statuses the server answers itself.
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


class _Refused(Exception):
    """Raised inside a parser callback; becomes an answer with this status and a close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _safe(s: str) -> str:
    return "".join(c for c in s if c.isprintable() and c not in '"\\')[:200]
