"""Passive quota headers: how much of an account's upstream quota is left, read off the
answers the upstream sends anyway.  Nothing here polls a usage endpoint.

Which headers say so is the upstream's knowledge: each provider declares its families
as a ``providers.ratelimits.RateLimitHeaders`` spec (``Provider.rate_limit_headers``),
and everything here reads the spec it is given.  Two kinds: windows whose spent share a
header gives (with a reset time and maybe a ``rejected`` status), and counted limits
(spent = 1 - remaining / limit).

An account's *headroom* is what its tightest window has left (the limits are all
enforced at once), valid until that window resets.

Also here, for the cooldown after a 429: when the limit that ran out refills
(``Retry-After``, the reset headers, a per-day quota's midnight), and the remaining and
limit numbers the admin view shows.
"""
from __future__ import annotations

import datetime
import zoneinfo
from dataclasses import dataclass, field
from typing import Callable, Mapping

from providers.ratelimits import RateLimitHeaders

from tornado_proxy.errors import ProxyError


@dataclass
class Quota:
    used: dict[str, float] = field(default_factory=dict)    # window -> spent fraction, 0..1
    resets: dict[str, float] = field(default_factory=dict)  # window -> seconds until it refills
    spent: float | None = None    # a window is exhausted: seconds until it refills

    @property
    def headroom(self) -> float | None:
        """What the tightest window has left, 0..1 (None: no window reported)."""
        return 1.0 - max(self.used.values()) if self.used else None

    @property
    def valid_for(self) -> float | None:
        """Seconds the headroom holds: until the tightest window refills (None: unknown)."""
        if not self.used:
            return None
        tight = max(self.used, key=self.used.__getitem__)
        return self.resets.get(tight)


def _num(v: str | None) -> float | None:
    if v is None:
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return x if x == x and x not in (float("inf"), float("-inf")) else None


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float | None:
    """Go-style durations as OpenAI sends them ("6m0s", "1.5s", "20ms", "1h2m"), or plain seconds."""
    s = text.strip()
    if not s:
        return None
    try:
        return float(s)
    except ValueError:
        pass
    total, i, n = 0.0, 0, len(s)
    while i < n:
        j = i
        while j < n and (s[j].isdigit() or s[j] == "."):
            j += 1
        if j == i:
            return None
        k = j
        while k < n and not (s[k].isdigit() or s[k] == "."):
            k += 1
        unit = _UNITS.get(s[j:k])
        if unit is None:
            return None
        try:
            total += float(s[i:j]) * unit
        except ValueError:
            return None
        i = k
    return total


def parse_reset(value: str, wall_now: float) -> float | None:
    """Seconds until a reset header's moment: a duration, an RFC 3339 time or an epoch."""
    v = value.strip()
    if not v:
        return None
    if "T" in v and "-" in v:
        try:
            when = datetime.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return max(0.0, when.timestamp() - wall_now)
    d = parse_duration(v)
    if d is None:
        return None
    if d > 1e12:            # epoch milliseconds (OpenRouter's reset header)
        return max(0.0, d / 1000.0 - wall_now)
    if d > 1e9:             # epoch seconds
        return max(0.0, d - wall_now)
    return max(0.0, d)


def read(headers: Mapping[str, str], wall: Callable[[], float], spec: RateLimitHeaders) -> Quota | None:
    """The quota an answer's headers report by ``spec``, or None when they report none.
    ``wall`` is called only when there is a reset time to read: most answers carry no
    such header."""
    h = headers
    q: Quota | None = None
    now: float | None = None

    def at(v: str | None) -> float | None:
        nonlocal now
        if v is None:
            return None
        if now is None:
            now = wall()
        return parse_reset(v, now)

    for fam in spec.used:
        for name in fam.present:
            if name in h:
                break
        else:
            continue  # (a loop, not any(): no generator per answer)
        q = q or Quota()
        for w in fam.windows:
            u = _num(h.get(w.used))
            rejected = w.status is not None and h.get(w.status) == fam.rejected
            if u is None and not rejected:
                continue
            used = 1.0 if rejected else min(1.0, max(0.0, (u or 0.0) / w.scale))
            q.used[w.label] = used
            r = None
            for name in w.resets:
                r = at(h.get(name))
                if r is not None:
                    break
            if r is not None:
                q.resets[w.label] = r
            if used >= 1.0 and r is not None:
                q.spent = r if q.spent is None else max(q.spent, r)
        if fam.status is not None and h.get(fam.status) == fam.rejected:
            r = at(h.get(fam.reset)) if fam.reset is not None else None
            if r is not None:
                q.spent = r if q.spent is None else max(q.spent, r)
    for label, rem_h, lim_h, reset_h in spec.sized:
        rem = h.get(rem_h)
        if rem is None:
            continue
        remaining, limit = _num(rem), _num(h.get(lim_h))
        if remaining is None or not limit or limit <= 0:
            continue
        q = q or Quota()
        used = min(1.0, max(0.0, 1.0 - remaining / limit))
        q.used[label] = max(used, q.used.get(label, 0.0))
        r = at(h.get(reset_h))
        if r is not None:
            q.resets[label] = r
    return q


def exhausted(remaining: str | None) -> bool:
    if remaining is None:
        return False
    try:
        return float(remaining) <= 0
    except ValueError:
        return False


def reset_from_headers(headers: Mapping[str, str], wall_now: float, spec: RateLimitHeaders,
                       only_exhausted: bool = False) -> float | None:
    """When the limit that ran out refills, from the counted limits' reset headers of ``spec``.

    The limit whose remaining count is 0 is the one that matters; if no remaining
    header says so, the latest reset is taken (we cannot tell which limit hit).
    """
    spent: float | None = None
    latest: float | None = None
    for rem_h, reset_h in spec.reset_pairs:
        raw = headers.get(reset_h)
        if raw is None:
            continue
        d = parse_reset(raw, wall_now)
        if d is None:
            continue
        if exhausted(headers.get(rem_h)):
            spent = d if spent is None else max(spent, d)
        latest = d if latest is None else max(latest, d)
    if only_exhausted or spent is not None:
        return spent
    return latest


def is_daily_quota(err: ProxyError) -> bool:
    """A per-day quota ran out (Gemini's ``...PerDay...`` quota ids, "per day" messages)."""
    text = err.message.lower().replace(" ", "").replace("-", "")
    return "perday" in text or "dailylimit" in text or "dailyquota" in text


def until_midnight(wall_now: float, tz: str) -> float:
    """Seconds until the next midnight in ``tz``, where daily quotas reset."""
    zone = zoneinfo.ZoneInfo(tz)
    now = datetime.datetime.fromtimestamp(wall_now, zone)
    tomorrow = (now + datetime.timedelta(days=1)).date()
    midnight = datetime.datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=zone)
    return max(0.0, midnight.timestamp() - wall_now)


def quota_numbers(headers: Mapping[str, str] | None,
                  table: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, float]:
    """The numbers the last 2xx answer's rate-limit headers gave, by label (read when reporting only)."""
    out: dict[str, float] = {}
    if headers:
        for label, names in table:
            for name in names:
                v = headers.get(name)
                if v is not None:
                    try:
                        out[label] = float(v)
                    except ValueError:
                        pass
                    break
    return out
