"""Gemini-native clients (google-genai) on ``/v1beta/models/{model}:{method}``.

Their requests are passed through to gemini upstreams
(:meth:`providers.gemini.GeminiProvider.build_native_request`); what this client API
owns is its errors in Google's shape: a ``google.rpc.Status`` body, and the same as
the data frame that ends a failed SSE stream.
"""
from __future__ import annotations

from typing import Any

from providers.base import ClientFormat, StreamContext, StreamEncoder

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  405: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                  502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def google_error_body(err: ProxyError) -> dict[str, Any]:
    """A ProxyError as a ``google.rpc.Status`` (what google-genai's APIError parses)."""
    status = err.status
    out: dict[str, Any] = {"code": status, "message": err.message,
                           "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
    if err.retry_after is not None:
        out["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                           "retryDelay": f"{max(0, int(err.retry_after + 0.999))}s"}]
    return {"error": out}


class GeminiNativeEncoder(StreamEncoder):
    """Only for the error frame of a passed-through Gemini SSE stream."""

    def feed(self, chunk: dict[str, Any]) -> bytes:
        raise ProxyError(ErrorKind.INTERNAL, "pivot chunks are not rendered as Gemini events")

    def finish(self) -> bytes:
        return b""

    def fail(self, err: ProxyError) -> bytes:
        # Gemini itself reports a failed stream as a data frame holding the Status.
        return b"data: " + jsonutil.dumpb(google_error_body(err)) + b"\r\n\r\n"


class GeminiNativeFormat(ClientFormat):
    """Gemini-native clients (google-genai) on ``/v1beta``: served by gemini upstreams only,
    bytes passed through; this format gives their errors Google's shape."""

    name = "gemini"

    def parse_request(self, body: dict[str, Any]) -> dict[str, Any]:
        raise ProxyError(ErrorKind.UNSUPPORTED, "Gemini-native requests are served by gemini providers only")

    def render_response(self, pivot: dict[str, Any], ctx: StreamContext) -> dict[str, Any]:
        raise ProxyError(ErrorKind.INTERNAL, "pivot answers are not rendered as Gemini responses")

    def new_encoder(self, ctx: StreamContext) -> StreamEncoder:
        return GeminiNativeEncoder()

    def error_body(self, err: ProxyError) -> dict[str, Any]:
        return google_error_body(err)

    def context_id(self, rand_hex: str) -> str:
        return rand_hex
