"""Coze's error codes -> our error kinds.

Coze answers most errors with HTTP 200 and a body ``{"code": <non-zero>, "msg": ...}``
(coze-py ``request.py``: ``code > 0`` is an error whatever the status); in a stream
the same pair arrives as an ``error`` event or as ``last_error`` of a
``conversation.chat.failed`` event.  The codes below are Coze's published ones
(developer guide, "Error codes"); any other 4xxx is taken as a bad request and any
other code as an upstream error.  ``x-tt-logid`` (Coze's request id) goes into the
message so that an operator can quote it to Coze.
"""
from __future__ import annotations

from typing import Any, Mapping

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError, from_status

from ..base import error_message_from_body
from ..toolkit import parse_retry_after

CODE_KINDS: dict[int, ErrorKind] = {
    4000: ErrorKind.UPSTREAM_BAD_REQUEST,    # request parameters are invalid
    4100: ErrorKind.UPSTREAM_AUTH,           # the token is invalid or expired
    4101: ErrorKind.UPSTREAM_FORBIDDEN,      # the token lacks the permission (scope, workspace)
    4013: ErrorKind.UPSTREAM_RATE_LIMITED,   # request rate over the limit
    4015: ErrorKind.UPSTREAM_NOT_FOUND,      # the bot is not published to the API channel
    4200: ErrorKind.UPSTREAM_NOT_FOUND,      # the bot (resource) does not exist
    4016: ErrorKind.UPSTREAM_BAD_REQUEST,    # the conversation already has a chat in progress
    4019: ErrorKind.UPSTREAM_PAYMENT,        # the account's balance is used up
    4028: ErrorKind.UPSTREAM_PAYMENT,        # the free quota is used up
    5000: ErrorKind.UPSTREAM_ERROR,          # Coze's internal error
}


def kind_of(code: int) -> ErrorKind:
    kind = CODE_KINDS.get(code)
    if kind is not None:
        return kind
    return ErrorKind.UPSTREAM_BAD_REQUEST if 4000 <= code < 5000 else ErrorKind.UPSTREAM_ERROR


def coded_error(code: Any, msg: Any, logid: str | None = None, *, where: str = "") -> ProxyError:
    """The ProxyError for a Coze ``code``/``msg`` pair."""
    try:
        n = int(code)
    except (TypeError, ValueError):
        n = 0
    text = f"Coze error {n}{where}: {msg if isinstance(msg, str) and msg else 'no message'}"
    if logid:
        text += f" (logid {logid[:64]})"
    return ProxyError(kind_of(n), text)


def code_of(obj: Any) -> tuple[int, str] | None:
    """``(code, msg)`` of a Coze envelope that reports an error, else None."""
    if not isinstance(obj, dict) or "code" not in obj:
        return None
    try:
        code = int(obj["code"])
    except (TypeError, ValueError):
        return None
    if code == 0:
        return None
    msg = obj.get("msg")
    return code, msg if isinstance(msg, str) else ""


def classify(status: int, headers: Mapping[str, str], body: bytes) -> ProxyError:
    """A non-2xx answer: Coze's code decides when the body has one, else the status."""
    try:
        hit = code_of(jsonutil.loads(body))
    except ValueError:
        hit = None
    if hit is not None:
        err = coded_error(hit[0], hit[1], headers.get("x-tt-logid"))
        err.upstream_status = status
        err.retry_after = parse_retry_after(dict(headers))
        err.headers = dict(headers)
        return err
    return from_status(status, f"upstream returned {status}: {error_message_from_body(body)}",
                       retry_after=parse_retry_after(dict(headers)), headers=dict(headers))
