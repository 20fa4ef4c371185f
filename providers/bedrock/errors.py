"""Bedrock's errors -> ProxyError: the ``x-amzn-ErrorType`` of a non-2xx answer, or the
``:exception-type`` of an event-stream exception message (``stream``)."""
from __future__ import annotations

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError, from_status

from ..base import error_message_from_body
from ..toolkit import parse_retry_after

# Bedrock error type (x-amzn-ErrorType, or :exception-type with a capital first
# letter) -> our kind.  Types not here fall back to the HTTP status.
ERROR_KINDS: dict[str, ErrorKind] = {
    "ThrottlingException": ErrorKind.UPSTREAM_RATE_LIMITED,
    "ServiceQuotaExceededException": ErrorKind.UPSTREAM_RATE_LIMITED,
    "AccessDeniedException": ErrorKind.UPSTREAM_FORBIDDEN,
    "UnrecognizedClientException": ErrorKind.UPSTREAM_AUTH,
    "ExpiredTokenException": ErrorKind.UPSTREAM_AUTH,
    "InvalidSignatureException": ErrorKind.UPSTREAM_SIGNATURE,
    "IncompleteSignatureException": ErrorKind.UPSTREAM_SIGNATURE,
    "ValidationException": ErrorKind.UPSTREAM_BAD_REQUEST,
    "ConflictException": ErrorKind.UPSTREAM_BAD_REQUEST,
    "ResourceNotFoundException": ErrorKind.UPSTREAM_NOT_FOUND,
    "ModelNotReadyException": ErrorKind.UPSTREAM_OVERLOADED,
    "ServiceUnavailableException": ErrorKind.UPSTREAM_OVERLOADED,
    "ModelTimeoutException": ErrorKind.FIRST_BYTE_TIMEOUT,
    "InternalServerException": ErrorKind.UPSTREAM_ERROR,
    "ModelErrorException": ErrorKind.UPSTREAM_ERROR,
    "ModelStreamErrorException": ErrorKind.UPSTREAM_ERROR,
}


def _signature_message(msg: str) -> str:
    low = msg.lower()
    if "expired" in low or "not yet current" in low or "earlier than" in low or "later than" in low:
        return ("Bedrock rejected the request signature as expired or not yet valid; the gateway's "
                f"clock may be skewed (check NTP): {msg}")
    return ("Bedrock rejected the request signature; check the account's aws_secret_access_key, "
            f"or the gateway's clock may be skewed: {msg}")


def error_for(error_type: str, message: str, status: int | None = None,
              headers: dict[str, str] | None = None) -> ProxyError:
    """A Bedrock error (``ThrottlingException`` ...) -> ProxyError."""
    kind = ERROR_KINDS.get(error_type)
    if kind is None and "signature" in message.lower() and ("expired" in message.lower()
                                                            or "does not match" in message.lower()):
        kind = ErrorKind.UPSTREAM_SIGNATURE
    if kind is ErrorKind.UPSTREAM_SIGNATURE:
        text = _signature_message(message)
    else:
        text = f"Bedrock {error_type or 'error'}: {message}"
    retry_after = parse_retry_after(headers) if headers else None
    if kind is None:
        if status is None:
            return ProxyError(ErrorKind.UPSTREAM_ERROR, text)
        return from_status(status, text, retry_after=retry_after, headers=headers)
    return ProxyError(kind, text, retry_after=retry_after, upstream_status=status, headers=headers)


def classify(status: int, headers: dict[str, str], body: bytes) -> ProxyError:
    """A non-2xx Bedrock answer -> ProxyError.

    The error type is in ``x-amzn-ErrorType`` (``ThrottlingException:http://...``)
    and sometimes also in the body's ``__type`` (``...#ThrottlingException``).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    error_type = lower.get("x-amzn-errortype", "").split(":", 1)[0].strip()
    if not error_type:
        try:
            obj = jsonutil.loads(body)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("__type"), str):
            error_type = obj["__type"].rsplit("#", 1)[-1]
    return error_for(error_type, error_message_from_body(body), status, lower)
