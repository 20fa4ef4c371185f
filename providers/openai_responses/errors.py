"""Responses errors, both ways: a Responses error object (``response.failed``, an
``error`` event) -> ProxyError, and our kinds -> the ``code`` of the error object we
send a Responses client."""
from __future__ import annotations

from typing import Any

from tornado_proxy.errors import ErrorKind, ProxyError


# Responses ``error.code`` (response.failed, ``error`` events) -> our kind.
_CODE_KINDS: dict[str, ErrorKind] = {
    "rate_limit_exceeded": ErrorKind.UPSTREAM_RATE_LIMITED,
    "insufficient_quota": ErrorKind.UPSTREAM_PAYMENT,
    "server_error": ErrorKind.UPSTREAM_ERROR,
    "server_is_overloaded": ErrorKind.UPSTREAM_OVERLOADED,
    "slow_down": ErrorKind.UPSTREAM_OVERLOADED,
    "context_length_exceeded": ErrorKind.UPSTREAM_BAD_REQUEST,
    "invalid_prompt": ErrorKind.UPSTREAM_BAD_REQUEST,
    "vector_store_timeout": ErrorKind.UPSTREAM_ERROR,
}


def error_from_responses(err: Any, what: str) -> ProxyError:
    """A Responses error object (``{code, message, param?}``) -> ProxyError."""
    code = err.get("code") if isinstance(err, dict) else None
    msg = err.get("message") if isinstance(err, dict) else None
    if not isinstance(msg, str) or not msg:
        msg = "upstream reported an error"
    if isinstance(code, str) and (code.startswith("invalid_") or code.startswith("image_")
                                  or code == "empty_image_file"):
        kind = ErrorKind.UPSTREAM_BAD_REQUEST
    else:
        kind = _CODE_KINDS.get(code, ErrorKind.UPSTREAM_ERROR) if isinstance(code, str) else ErrorKind.UPSTREAM_ERROR
    suffix = f" ({code})" if isinstance(code, str) and code else ""
    return ProxyError(kind, f"{what}: {msg}{suffix}")


# Our kinds -> the ``code`` of a Responses error object.  openai-python types
# ResponseError.code as a closed list; these three are in it.
def responses_error_code(err: ProxyError) -> str:
    if err.kind in (ErrorKind.UPSTREAM_RATE_LIMITED, ErrorKind.RATE_LIMITED):
        return "rate_limit_exceeded"
    if err.status == 400:
        return "invalid_prompt"
    return "server_error"
