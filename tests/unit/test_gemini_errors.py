"""Gemini error bodies -> ProxyError kinds, statuses and Retry-After."""
from __future__ import annotations

import json
import pathlib
from datetime import datetime, timedelta, timezone

import pytest

from providers.base import StreamContext
from providers.gemini import GeminiProvider, classify_gemini_error, parse_duration, seconds_until_pacific_midnight
from tornado_proxy.apis.gemini_native import GeminiNativeFormat
from tornado_proxy.errors import ErrorKind, ProxyError, retry_after_header

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "gemini"
PST = timezone(timedelta(hours=-8))
PDT = timezone(timedelta(hours=-7))
# 2024-01-15 12:00 PST: twelve hours before the daily quota resets
NOON_PST = datetime(2024, 1, 15, 12, 0, tzinfo=PST).timestamp()


# (fixture, HTTP status, headers, kind, client status, retry_after)
CASES = [
    ("error_429_retry_info.json", 429, {}, ErrorKind.UPSTREAM_RATE_LIMITED, 429, 17.0),
    ("error_429_per_day.json", 429, {}, ErrorKind.UPSTREAM_RATE_LIMITED, 429, 12 * 3600.0),
    ("error_429_plain.json", 429, {"retry-after": "9"}, ErrorKind.UPSTREAM_RATE_LIMITED, 429, 9.0),
    ("error_429_plain.json", 429, {}, ErrorKind.UPSTREAM_RATE_LIMITED, 429, None),
    ("error_400_api_key_invalid.json", 400, {}, ErrorKind.UPSTREAM_AUTH, 502, None),
    ("error_400_invalid_argument.json", 400, {}, ErrorKind.UPSTREAM_BAD_REQUEST, 400, None),
    ("error_400_failed_precondition.json", 400, {}, ErrorKind.UPSTREAM_FORBIDDEN, 502, None),
    ("error_403_permission_denied.json", 403, {}, ErrorKind.UPSTREAM_FORBIDDEN, 502, None),
    ("error_404_not_found.json", 404, {}, ErrorKind.UPSTREAM_NOT_FOUND, 404, None),
    ("error_500_internal.json", 500, {}, ErrorKind.UPSTREAM_ERROR, 502, None),
    ("error_503_unavailable.json", 503, {}, ErrorKind.UPSTREAM_OVERLOADED, 503, None),
]


@pytest.mark.parametrize("fixture,status,headers,kind,client_status,retry_after", CASES)
def test_classify(fixture: str, status: int, headers: dict[str, str], kind: ErrorKind, client_status: int,
                  retry_after: float | None) -> None:
    body = (FIXTURES / fixture).read_bytes()
    err = classify_gemini_error(status, headers, body, now=NOON_PST)
    assert (err.kind, err.status, err.retry_after, err.upstream_status) == (kind, client_status, retry_after, status)
    assert err.message.startswith(f"upstream returned {status}")


def test_retry_after_header_for_17s() -> None:
    err = classify_gemini_error(429, {}, (FIXTURES / "error_429_retry_info.json").read_bytes())
    assert retry_after_header(err) == "17"


def test_per_day_without_a_clock_keeps_retry_delay() -> None:
    err = classify_gemini_error(429, {}, (FIXTURES / "error_429_per_day.json").read_bytes())
    assert err.retry_after == 43.5


def test_provider_classify_uses_the_clock_for_per_day_quota() -> None:
    p = GeminiProvider({"name": "gem", "type": "gemini"})
    err = p.classify_error(429, {}, (FIXTURES / "error_429_per_day.json").read_bytes())
    assert err.retry_after is not None and 43.5 <= err.retry_after <= 25 * 3600


@pytest.mark.parametrize("name,status,body,kind", [
    ("not JSON", 502, b"<html>Bad Gateway</html>", ErrorKind.UPSTREAM_ERROR),
    ("array-wrapped (non-SSE stream endpoint)", 429,
     b'[{"error": {"code": 429, "message": "x", "status": "RESOURCE_EXHAUSTED"}}]', ErrorKind.UPSTREAM_RATE_LIMITED),
    ("unauthenticated", 401, b'{"error": {"code": 401, "message": "x", "status": "UNAUTHENTICATED"}}',
     ErrorKind.UPSTREAM_AUTH),
    ("504 deadline", 504, b'{"error": {"code": 504, "message": "x", "status": "DEADLINE_EXCEEDED"}}',
     ErrorKind.FIRST_BYTE_TIMEOUT),
    ("empty body", 500, b"", ErrorKind.UPSTREAM_ERROR),
])
def test_classify_odd_bodies(name: str, status: int, body: bytes, kind: ErrorKind) -> None:
    assert classify_gemini_error(status, {}, body).kind is kind


@pytest.mark.parametrize("name,value,seconds", [
    ("whole", "17s", 17.0),
    ("fraction", "21.943984799s", 21.943984799),
    ("zero", "0s", 0.0),
    ("no unit", "17", None),
    ("garbage", "invalid-delay", None),
    ("negative", "-3s", None),
    ("not a string", 17, None),
])
def test_parse_duration(name: str, value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("name,now,seconds", [
    ("noon in winter", NOON_PST, 12 * 3600.0),
    ("30 s before midnight in summer", datetime(2024, 7, 1, 23, 59, 30, tzinfo=PDT).timestamp(), 30.0),
    ("day clocks spring forward (23 h day)", datetime(2024, 3, 10, 0, 30, tzinfo=PST).timestamp(), 22.5 * 3600),
    ("day clocks fall back (25 h day)", datetime(2024, 11, 3, 0, 0, tzinfo=PDT).timestamp(), 25 * 3600.0),
])
def test_seconds_until_pacific_midnight(name: str, now: float, seconds: float) -> None:
    assert seconds_until_pacific_midnight(now) == pytest.approx(seconds)


@pytest.mark.parametrize("name,kind,retry_after,expected", [
    ("rate limit keeps its delay", ErrorKind.UPSTREAM_RATE_LIMITED, 16.2,
     {"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED",
      "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]}),
    ("bad access key", ErrorKind.AUTH_INVALID, None, {"code": 401, "message": "m", "status": "UNAUTHENTICATED"}),
    ("unknown model", ErrorKind.MODEL_NOT_FOUND, None, {"code": 404, "message": "m", "status": "NOT_FOUND"}),
    ("upstream timeout", ErrorKind.FIRST_BYTE_TIMEOUT, None, {"code": 504, "message": "m", "status": "DEADLINE_EXCEEDED"}),
    ("stream cut", ErrorKind.UPSTREAM_STREAM_CUT, None, {"code": 502, "message": "m", "status": "UNAVAILABLE"}),
])
def test_native_clients_get_google_rpc_status(name: str, kind: ErrorKind, retry_after: float | None,
                                              expected: dict[str, object]) -> None:
    err = ProxyError(kind, "m", retry_after=retry_after)
    assert GeminiNativeFormat().error_body(err) == {"error": expected}
    frame = GeminiNativeFormat().new_encoder(StreamContext(id="x", created=0, model="m")).fail(err)
    assert frame.startswith(b"data: ") and frame.endswith(b"\r\n\r\n")
    assert json.loads(frame[6:]) == {"error": expected}
