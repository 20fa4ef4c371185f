"""Google RPC error bodies -> ProxyError (:func:`classify_gemini_error`).

``RetryInfo.retryDelay`` and per-day ``QuotaFailure`` (reset at midnight Pacific
time) become ``retry_after``.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError, from_status

from ..base import error_message_from_body
from ..toolkit import parse_retry_after


def parse_duration(value: Any) -> float | None:
    """A protobuf Duration in JSON (``"17s"``, ``"21.94s"``) -> seconds."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    try:
        seconds = float(value[:-1])
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def seconds_until_pacific_midnight(now: float) -> float:
    """Seconds from ``now`` (unix time) to the next midnight in America/Los_Angeles.

    Gemini's per-day quotas reset at midnight Pacific time.
    """
    try:
        from zoneinfo import ZoneInfo
        tz: Any = ZoneInfo("America/Los_Angeles")
    except Exception:  # no tz database: PST is close enough for a cooldown
        from datetime import timezone
        tz = timezone(timedelta(hours=-8))
    local = datetime.fromtimestamp(now, tz)
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(0.0, midnight.timestamp() - now)


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        obj = jsonutil.loads(body)
    except (ValueError, jsonutil.JSONDecodeError):
        return {}
    # The non-SSE stream endpoint wraps everything in a JSON array.
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            return err
    return {}


# google.rpc.Code names (error.status) -> our kinds; any other falls back to the HTTP status.
STATUS_KINDS = {
    "UNAUTHENTICATED": ErrorKind.UPSTREAM_AUTH,
    "PERMISSION_DENIED": ErrorKind.UPSTREAM_FORBIDDEN,
    "FAILED_PRECONDITION": ErrorKind.UPSTREAM_FORBIDDEN,
    "RESOURCE_EXHAUSTED": ErrorKind.UPSTREAM_RATE_LIMITED,
    "UNAVAILABLE": ErrorKind.UPSTREAM_OVERLOADED,
    "INVALID_ARGUMENT": ErrorKind.UPSTREAM_BAD_REQUEST,
    "NOT_FOUND": ErrorKind.UPSTREAM_NOT_FOUND,
    "INTERNAL": ErrorKind.UPSTREAM_ERROR,
}


def classify_gemini_error(status: int, headers: dict[str, str], body: bytes,
                          now: float | None = None) -> ProxyError:
    """A Gemini error (Google RPC status JSON) -> ProxyError.

    ``RESOURCE_EXHAUSTED`` takes ``retry_after`` from ``RetryInfo.retryDelay``;
    when a ``QuotaFailure`` violation is a per-day quota (``quotaId`` containing
    ``PerDay``) and ``now`` is given, the account is done until the quota resets
    at midnight Pacific, so ``retry_after`` runs until then.  A 400 whose
    ``ErrorInfo.reason`` is ``API_KEY_INVALID`` is the key's fault, not the
    request's.  ``FAILED_PRECONDITION`` (billing or region not enabled for the
    key's project) is the account's problem too.
    """
    err = _error_object(body)
    gstatus = str(err.get("status") or "")
    message = err.get("message") if isinstance(err.get("message"), str) else error_message_from_body(body)
    reasons: set[str] = set()
    retry_after = parse_retry_after(headers)
    per_day = False
    for detail in err.get("details") or []:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type") or "")
        if kind.endswith("google.rpc.ErrorInfo"):
            reasons.add(str(detail.get("reason") or ""))
        elif kind.endswith("google.rpc.RetryInfo"):
            delay = parse_duration(detail.get("retryDelay"))
            if delay is not None:
                retry_after = delay
        elif kind.endswith("google.rpc.QuotaFailure"):
            for v in detail.get("violations") or []:
                if isinstance(v, dict) and "PerDay" in str(v.get("quotaId") or ""):
                    per_day = True
    if per_day and now is not None:
        retry_after = max(retry_after or 0.0, seconds_until_pacific_midnight(now))
    text = f"upstream returned {status}{' ' + gstatus if gstatus else ''}: {message}"
    kind_: ErrorKind | None
    if reasons & {"API_KEY_INVALID", "API_KEY_EXPIRED"}:
        kind_ = ErrorKind.UPSTREAM_AUTH
    elif reasons & {"API_KEY_SERVICE_BLOCKED", "CONSUMER_SUSPENDED"} and gstatus != "UNAUTHENTICATED":
        kind_ = ErrorKind.UPSTREAM_FORBIDDEN
    else:
        kind_ = STATUS_KINDS.get(gstatus)
    if kind_ is None:
        return from_status(status, text, retry_after=retry_after, headers=headers)
    return ProxyError(kind_, text, retry_after=retry_after, upstream_status=status, headers=headers)
