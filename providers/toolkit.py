"""Helpers every upstream adapter shares, written once.

* ``REASONING_BUDGETS`` / ``reasoning_budget``: the thinking-token budget a reasoning level
  stands for (Anthropic, Bedrock's Claude, Gemini 2.5), with the model entry's
  ``reasoning_budgets`` over the defaults.
* ``parse_data_uri``: a base64 ``data:`` URI as (media type, base64 data), for every
  upstream that takes inline bytes.
* ``parse_retry_after``: when an upstream says to try again (``retry-after-ms``, then
  ``Retry-After`` as delta seconds or an HTTP date), for the error classifiers and the
  scheduler's rate-limit reading alike.

Pure functions, no tornado: like ``providers.base``, tested without a network.
"""
from __future__ import annotations

import datetime
import email.utils
import math
import time
from typing import Any, Mapping

from .base import bad_request

# Thinking tokens per reasoning level.  ``minimal`` is Anthropic's floor (1024, also
# Bedrock's); Anthropic's own effort table never resolves to it.
REASONING_BUDGETS: dict[str, int] = {"minimal": 1024, "low": 4096, "medium": 12288, "high": 24576}


def reasoning_budget(level: str, model: Mapping[str, Any]) -> int:
    """The token budget for ``level``: the model entry's ``reasoning_budgets`` first."""
    own = model.get("reasoning_budgets") or {}
    return int(own[level] if level in own else REASONING_BUDGETS[level])


def parse_data_uri(uri: str, param: str) -> tuple[str, str]:
    """``data:<type>[;<param>=<value>...];base64,<data>`` -> (type, base64 data).

    The type is lower-cased (``text/plain`` when absent).  Every upstream here takes inline
    bytes as base64, and so does OpenAI's API for the same fields: a URI without ``;base64``
    (percent-encoded bytes) or anything else is the client's error, naming ``param``."""
    head, sep, data = uri.partition(",")
    meta = head[5:].split(";")
    if not sep or head[:5].lower() != "data:" or len(meta) < 2 or meta[-1].strip().lower() != "base64":
        raise bad_request(f"'{param}' is not a base64 data URI: expected 'data:<type>;base64,<data>'", param)
    return meta[0].strip().lower() or "text/plain", data.strip()


def _seconds(value: str, scale: float) -> float | None:
    try:
        s = float(value) * scale
    except ValueError:
        return None
    return max(0.0, s) if math.isfinite(s) else None


def parse_retry_after(headers: Mapping[str, str], wall_now: float | None = None) -> float | None:
    """Seconds until a retry: ``retry-after-ms`` (OpenAI), else ``Retry-After`` in delta
    seconds or an HTTP date (against ``wall_now``, the wall clock by default).  None when
    absent or unreadable (``nan``, ``inf`` included); never negative."""
    ms = headers.get("retry-after-ms")
    if ms:
        s = _seconds(ms, 0.001)
        if s is not None:
            return s
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    s = _seconds(value, 1.0)
    if s is not None:
        return s
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if wall_now is None else wall_now))
