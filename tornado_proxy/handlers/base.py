"""The base handler: access keys, CORS, request bodies, errors in the client's format.

Every error a handler raises is a ``ProxyError`` rendered by ``write_error`` in the
route's client format (OpenAI JSON by default; Anthropic's shape on
``/v1/messages``).  Anything else is a bug: it is logged with its stack trace and
the client gets a plain 500 in its own format, never the trace.
"""
from __future__ import annotations

import hmac
import logging
import re
import time
from typing import TYPE_CHECKING, Any

import tornado.http1connection
import tornado.web
from tornado import httputil

from providers.base import ClientFormat

from tornado_proxy import jsonutil
from tornado_proxy.apis.anthropic_messages import AnthropicMessagesFormat
from tornado_proxy.apis.gemini_native import GeminiNativeFormat
from tornado_proxy.apis.openai_chat import OpenAIChatFormat

from tornado_proxy.observability import redact
from tornado_proxy.errors import (ErrorKind, ProxyError, bad_body_value, in_words_of, printable,
                      retry_after_header, unreadable_body)
from tornado_proxy.server.http1_parse import new_headers

if TYPE_CHECKING:
    from tornado_proxy.gateway import Gateway

log = logging.getLogger("tornado_proxy")

OPENAI_FORMAT = OpenAIChatFormat()

_date = [0, ""]


def _http_date() -> str:
    """The Date header, formatted once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[0] = now
        _date[1] = httputil.format_timestamp(now)
    return _date[1]  # type: ignore[return-value]


class BaseHandler(tornado.web.RequestHandler):
    gw: "Gateway"
    client_format: ClientFormat = OPENAI_FORMAT
    route_name = "other"
    public = False           # no access key needed (health, metrics, openapi)
    # The error, if any, for the access log and metrics.
    error_kind: ErrorKind | None = None

    def __init__(self, application: tornado.web.Application, request: Any, **kwargs: Any) -> None:
        # Tornado's __init__ minus the template namespace (``self.ui``, two objects per
        # request): nothing here renders a template; ``ui`` is built if ever asked for.
        self.application = application
        self.request = request
        self._headers_written = False
        self._finished = False
        self._auto_finish = True
        self._prepared_future = None
        self.clear()
        request.connection.set_close_callback(self.on_connection_close)
        self.initialize(**kwargs)

    @property
    def ui(self) -> Any:
        ui = self.__dict__.get("_ui")
        if ui is None:
            from tornado.util import ObjectDict

            ui = ObjectDict((n, self._ui_method(m)) for n, m in self.application.ui_methods.items())
            ui["_tt_modules"] = tornado.web._UIModuleNamespace(self, self.application.ui_modules)
            ui["modules"] = ui["_tt_modules"]
            self.__dict__["_ui"] = ui
        return ui

    @ui.setter
    def ui(self, value: Any) -> None:  # Tornado's finish() drops it (_break_cycles)
        self.__dict__["_ui"] = value

    def clear(self) -> None:
        # Tornado's clear() builds its three default headers through HTTPHeaders'
        # validating constructor and formats the Date every time, on every request.
        self._headers = new_headers({"Server": ["tornado-proxy"],
                                     "Content-Type": ["text/html; charset=UTF-8"],
                                     "Date": [_http_date()]})
        self.set_default_headers()
        self._write_buffer: list[bytes] = []
        self._status_code = 200
        self._reason = "OK"

    def own_header(self, name: str, value: str) -> None:
        """``set_header`` for a canonical name and a value the gateway made itself (ASCII,
        no control characters).  Tornado's checks each value (a type chain, a regex):
        0.4 us for a string, 0.6 us for an int, against 0.1 us here; a non-stream answer
        sets three."""
        self._headers[name] = value

    def initialize(self, gw: "Gateway") -> None:  # type: ignore[override]
        self.gw = gw
        # Tornado calls set_default_headers() before initialize(); now gw is known.
        self.set_default_headers()

    # -- CORS ----------------------------------------------------------------------
    def set_default_headers(self) -> None:
        gw = self.__dict__.get("gw")
        origins = gw.cors_origins if gw is not None else None
        if not origins:
            return
        origin = self.request.headers.get("Origin")
        if origin and ("*" in origins or origin in origins):
            self.set_header("Access-Control-Allow-Origin", "*" if "*" in origins else origin)
            self.set_header("Vary", "Origin")
            self.set_header("Access-Control-Expose-Headers", "Retry-After, X-Request-Id")

    async def options(self, *args: Any, **kwargs: Any) -> None:
        # Preflight: no access key (browsers never send credentials on it).
        if self.gw.cors_origins:
            self.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
            self.set_header("Access-Control-Allow-Headers",
                            self.request.headers.get("Access-Control-Request-Headers",
                                                     "Authorization, Content-Type, X-Api-Key"))
            self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    # -- the client going away -----------------------------------------------------
    def on_connection_close(self) -> None:
        # Tornado's own: a streamed request body that can no longer arrive fails the
        # future _execute awaits, so _execute returns.  Without it the task waits
        # forever, and Tornado keeps every pending task referenced: the handler and
        # the body read so far stay in memory, and the request in flight.
        fut = getattr(self.request, "_body_future", None)
        cut = fut is not None and not fut.done()
        super().on_connection_close()
        if cut:
            self.on_body_cut()

    def on_body_cut(self) -> None:
        """The client went away before its whole body arrived: the method never runs
        and neither does ``on_finish``; undo here what ``prepare`` did."""

    # -- access keys ---------------------------------------------------------------
    def prepare(self) -> None:
        if self.request.method == "OPTIONS" or self.public:
            return
        self.check_access()

    def presented_key(self) -> str | None:
        h = self.request.headers
        auth = h.get("Authorization")
        if auth and auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return h.get(self.gw.access_key_header) or h.get("x-api-key")

    def check_access(self) -> None:
        keys = self.gw.access_keys
        if not keys:
            if self.gw.pinning_keys is not None:
                self.check_pinning(False)
            return
        given = self.presented_key()
        if not given:
            raise ProxyError(ErrorKind.AUTH_MISSING,
                             f"missing access key: send 'Authorization: Bearer <key>', "
                             f"'{self.gw.access_key_header}' or 'x-api-key'")
        g = given.encode("utf-8", "surrogateescape")
        ok = False
        for k in keys:  # every key is compared: the time does not tell which one nearly matched
            ok |= hmac.compare_digest(g, k)
        if not ok:
            raise ProxyError(ErrorKind.AUTH_INVALID, "invalid access key")
        allowed = self.gw.pinning_keys
        if allowed is not None:
            self.check_pinning(g in allowed)

    def check_pinning(self, allowed: bool) -> None:
        """``x-auth-id`` picks an account; only the keys ``server.account_pinning`` names may."""
        if allowed:
            return
        h = self.request.headers
        for name in self.gw.pin_headers:
            if name in h:
                raise ProxyError(ErrorKind.FORBIDDEN, f"'{name}' is not allowed with this access key: "
                                 "server.account_pinning does not grant it", param=name)

    # -- bodies --------------------------------------------------------------------
    def json_body(self, raw: bytes | None = None) -> Any:
        raw = self.request.body if raw is None else raw
        api = self.client_format.name
        if not raw:
            raise unreadable_body(api, "the body is empty; expected a JSON object")
        try:
            return jsonutil.loads_request(raw)
        except jsonutil.BadRequestJSON as exc:
            raise bad_body_value(api, exc.path, exc.reason, str(exc)) from None
        except ValueError as exc:
            raise unreadable_body(api, printable(str(exc))) from None

    # -- errors --------------------------------------------------------------------
    def send_proxy_error(self, err: ProxyError) -> None:
        self.error_kind = err.kind
        err.message = redact.text(err.message)  # an upstream may have quoted a key
        self.clear()
        rid = getattr(self, "request_id", "")
        if rid:  # (clear() dropped it; an error is when the client needs it most)
            self.set_header("X-Request-Id", rid)
        self.set_status(err.status)
        ra = retry_after_header(err)
        if ra:
            self.set_header("Retry-After", ra)
        if err.kind is ErrorKind.METHOD_NOT_ALLOWED:
            self.set_header("Allow", allowed_methods(self))
        if self._closes_after_answer():
            self.set_header("Connection", "close")
        self.set_header("Content-Type", "application/json")
        fmt = self.client_format
        self.finish(jsonutil.dumpb(fmt.error_body(in_words_of(fmt.name, err))))

    def _closes_after_answer(self) -> bool:
        """Tornado's own server closes a connection whose request body it has not read
        when the answer is finished (an error from ``prepare``, before a streamed body),
        without telling the client: a client reusing the connection then fails.  Say so
        in the answer.  (Our server side adds the header itself.)"""
        fut = getattr(self.request, "_body_future", None)
        return (fut is not None and not fut.done() and self.request.version == "HTTP/1.1"
                and isinstance(self.request.connection, tornado.http1connection.HTTP1Connection))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ProxyError):
            err = exc
        elif isinstance(exc, tornado.web.HTTPError):
            kind = {404: ErrorKind.NOT_FOUND, 405: ErrorKind.METHOD_NOT_ALLOWED,
                    413: ErrorKind.BODY_TOO_LARGE}.get(exc.status_code, ErrorKind.INVALID_REQUEST)
            if exc.status_code >= 500:
                kind = ErrorKind.INTERNAL
            if kind is ErrorKind.METHOD_NOT_ALLOWED:
                message = (f"{self.request.method} is not allowed on {self.request.path}; "
                           f"use {allowed_methods(self)}")
            else:
                message = exc.log_message or httputil.responses.get(exc.status_code, "error")
            err = ProxyError(kind, printable(message))
        else:
            err = ProxyError(ErrorKind.INTERNAL, "internal error in the gateway; see its log")
        if self._headers_written:
            return
        self.send_proxy_error(err)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ProxyError):
            return  # expected; the access line says what happened
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return
        super().log_exception(typ, value, tb)


# The methods each path answers (for ``Allow`` on a 405), worked out once per route.
_ALLOWED: dict[str, str] = {}


def allowed_methods(handler: tornado.web.RequestHandler) -> str:
    """What the route table lists for the handler's path, plus OPTIONS (CORS preflight)."""
    path = handler.request.path
    # The one route table (app.ROUTES), handed over in the application's settings: the
    # handlers do not import the module that imports them.
    for route in handler.application.settings.get("routes", ()):
        if not route.upgrade and re.fullmatch(route.pattern, path):
            allow = _ALLOWED.get(route.pattern)
            if allow is None:
                listed = {m.upper() for m in route.methods} | {"OPTIONS"}
                allow = ", ".join(m for m in handler.SUPPORTED_METHODS if m in listed)
                _ALLOWED[route.pattern] = allow
            return allow
    return "OPTIONS"


# An unknown path still belongs to an API by its prefix: its 404 comes in that API's shape.
_FORMAT_BY_PREFIX: tuple[tuple[str, ClientFormat], ...] = (
    ("/v1/messages/", AnthropicMessagesFormat()),
    ("/v1beta/", GeminiNativeFormat()),
)


class NotFoundHandler(BaseHandler):
    public = True

    def prepare(self) -> None:
        path = self.request.path
        for prefix, fmt in _FORMAT_BY_PREFIX:
            if path.startswith(prefix):
                self.client_format = fmt
                break
        raise ProxyError(ErrorKind.NOT_FOUND, printable(f"no route for {self.request.method} {path}"))
