"""Anthropic's errors -> our error kinds: the ``error.type`` of an error body or of a
stream's ``error`` event (``ERROR_KINDS``), the HTTP status when the type is unknown,
and 529, Anthropic's "overloaded", whatever the body says."""
from __future__ import annotations

from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError, from_status

from ..base import error_message_from_body
from ..toolkit import parse_retry_after

JSON = dict[str, Any]

# Anthropic error.type -> our kind (the HTTP status decides when the type is unknown).
ERROR_KINDS = {
    "invalid_request_error": ErrorKind.UPSTREAM_BAD_REQUEST,
    "authentication_error": ErrorKind.UPSTREAM_AUTH,
    "billing_error": ErrorKind.UPSTREAM_PAYMENT,
    "permission_error": ErrorKind.UPSTREAM_FORBIDDEN,
    "not_found_error": ErrorKind.UPSTREAM_NOT_FOUND,
    "request_too_large": ErrorKind.BODY_TOO_LARGE,
    "rate_limit_error": ErrorKind.UPSTREAM_RATE_LIMITED,
    "overloaded_error": ErrorKind.UPSTREAM_OVERLOADED,
    "api_error": ErrorKind.UPSTREAM_ERROR,
    "timeout_error": ErrorKind.UPSTREAM_ERROR,
}


def upstream_error_event(obj: JSON, status: int | None = None, headers: dict[str, str] | None = None,
                         retry_after: float | None = None) -> ProxyError:
    raw = obj.get("error")
    err: JSON = raw if isinstance(raw, dict) else {}
    etype = err.get("type")
    message = err.get("message") or etype or "upstream error"
    prefix = f"upstream returned {status}" if status else "upstream error"
    kind = ERROR_KINDS.get(etype) if isinstance(etype, str) else None
    if kind is None:
        if status is not None:
            return from_status(status, f"{prefix}: {message}", retry_after=retry_after, headers=headers)
        kind = ErrorKind.UPSTREAM_ERROR
    return ProxyError(kind, f"{prefix} ({etype}): {message}" if etype else f"{prefix}: {message}",
                      retry_after=retry_after, upstream_status=status, headers=headers)


def classify(status: int, headers: dict[str, str], body: bytes) -> ProxyError:
    """An error answer (status, headers, body) -> the ProxyError it means."""
    retry_after = parse_retry_after(headers)
    try:
        obj = jsonutil.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
        err = upstream_error_event(obj, status, headers, retry_after)
    else:
        err = from_status(status, f"upstream returned {status}: {error_message_from_body(body)}",
                          retry_after=retry_after, headers=headers)
    if status == 529:
        # 529 is Anthropic's "overloaded", whatever the body says.
        err.kind = ErrorKind.UPSTREAM_OVERLOADED
    return err
