"""The error table: every kind mapped, statuses right, bodies in each client's shape."""
from __future__ import annotations

import pytest

from providers.base import default_classify
from providers.toolkit import parse_retry_after
from tornado_proxy.errors import (ERROR_TABLE, Action, ErrorKind, ProxyError, anthropic_body, from_status,
                                  openai_body, retry_after_header)


def test_every_kind_has_a_row() -> None:
    assert set(ERROR_TABLE) == set(ErrorKind)
    for kind, info in ERROR_TABLE.items():
        assert 400 <= info.status < 600 and info.status != 599, kind


@pytest.mark.parametrize("kind,status", [
    (ErrorKind.INVALID_JSON, 400), (ErrorKind.INVALID_REQUEST, 400), (ErrorKind.MODEL_NOT_FOUND, 404),
    (ErrorKind.AUTH_MISSING, 401), (ErrorKind.AUTH_INVALID, 401), (ErrorKind.BODY_TOO_LARGE, 413),
    (ErrorKind.UPSTREAM_RATE_LIMITED, 429), (ErrorKind.UPSTREAM_UNREACHABLE, 502),
    (ErrorKind.CONNECT_TIMEOUT, 504), (ErrorKind.FIRST_BYTE_TIMEOUT, 504), (ErrorKind.IDLE_TIMEOUT, 504),
    (ErrorKind.UPSTREAM_OVERLOADED, 503), (ErrorKind.DRAINING, 503),
])
def test_statuses(kind: ErrorKind, status: int) -> None:
    assert ERROR_TABLE[kind].status == status


@pytest.mark.parametrize("status,kind,action", [
    (400, ErrorKind.UPSTREAM_BAD_REQUEST, Action.NONE), (401, ErrorKind.UPSTREAM_AUTH, Action.AUTH),
    (402, ErrorKind.UPSTREAM_PAYMENT, Action.DISABLE), (403, ErrorKind.UPSTREAM_FORBIDDEN, Action.AUTH),
    (429, ErrorKind.UPSTREAM_RATE_LIMITED, Action.COOLDOWN), (529, ErrorKind.UPSTREAM_OVERLOADED, Action.COOLDOWN),
    (500, ErrorKind.UPSTREAM_ERROR, Action.RETRY), (503, ErrorKind.UPSTREAM_OVERLOADED, Action.COOLDOWN),
])
def test_upstream_status_mapping(status: int, kind: ErrorKind, action: Action) -> None:
    err = from_status(status, "x")
    assert err.kind is kind and err.info.action is action and err.upstream_status == status


def test_bodies() -> None:
    err = ProxyError(ErrorKind.INVALID_REQUEST, "bad 'messages[0].role'", param="messages[0].role")
    assert openai_body(err) == {"error": {"message": "bad 'messages[0].role'", "type": "invalid_request_error",
                                          "param": "messages[0].role", "code": "invalid_value"}}
    assert anthropic_body(err) == {"type": "error", "error": {"type": "invalid_request_error",
                                                              "message": "bad 'messages[0].role'"}}


def test_retry_after() -> None:
    assert retry_after_header(ProxyError(ErrorKind.UPSTREAM_RATE_LIMITED, "x", retry_after=0.2)) == "1"
    assert retry_after_header(ProxyError(ErrorKind.UPSTREAM_RATE_LIMITED, "x", retry_after=7.0)) == "7"
    assert retry_after_header(ProxyError(ErrorKind.UPSTREAM_RATE_LIMITED, "x")) is None
    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None


def test_default_classify_reads_message_and_retry_after() -> None:
    err = default_classify(429, {"retry-after": "3"}, b'{"error": {"message": "Too many"}}')
    assert err.kind is ErrorKind.UPSTREAM_RATE_LIMITED and err.retry_after == 3.0 and "Too many" in err.message
