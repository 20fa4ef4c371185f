"""The rate-limit headers each upstream sends, declared as data: which headers say how
much of an account's quota is left and when it refills.  A provider names its families
in ``Provider.rate_limit_headers``; the scheduler's reader
(``tornado_proxy/accounts/ratelimit.py``) knows no header name of its own and reads
whatever spec it is given.

Two kinds of limits (the labels are fixed: they become the ``window`` label of
``tornado_proxy_account_quota_used_ratio`` and the keys of the admin view):

* **Used windows** (:class:`UsedWindow`, grouped in a :class:`UsedFamily`): a header
  gives the spent share of a window (a fraction, or a percent with ``scale=100``),
  others its reset time and maybe a status whose ``rejected`` means spent.
* **Counted limits** (:class:`CountedLimit`): remaining and limit counts, spent =
  1 - remaining / limit, and a reset header.  One without a limit header only tells
  when a spent limit refills.

The families:

* :data:`ANTHROPIC`: Anthropic's unified limits, sent to subscription (OAuth)
  accounts such as Claude Code's: ``anthropic-ratelimit-unified-<w>-utilization``
  (0..1), ``-<w>-reset`` (epoch seconds) and ``-<w>-status`` (``allowed``,
  ``allowed_warning``, ``rejected``) per window ``5h``, ``7d``, ``7d_opus``,
  ``7d_sonnet``; ``anthropic-ratelimit-unified-status`` / ``-reset`` for the window
  that binds (its ``-representative-claim``).  And the API-key limits,
  ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{remaining,
  limit,reset}``.
* :data:`CODEX`: ChatGPT-plan Codex accounts (openai/codex
  ``codex-rs/codex-api/src/rate_limits.rs``): ``x-codex-<w>-used-percent`` (0..100),
  ``-<w>-reset-at`` (epoch seconds; older servers send ``-<w>-reset-after-seconds``)
  for ``primary`` (the 5-hour window) and ``secondary`` (the weekly one).
* :data:`OPENAI`: ``x-ratelimit-{remaining,limit,reset}-{requests,tokens}``, and the
  OpenRouter-style ``x-ratelimit-remaining`` / ``x-ratelimit-reset`` pair many
  OpenAI-compatible servers send.

Specs add up (``OPENAI + CODEX``); every table the reader walks is built once, when
the spec is made, so reading an answer's headers allocates nothing for the spec.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UsedWindow:
    """A window whose spent share a header gives."""

    label: str
    used: str                       # header: the spent share
    scale: float = 1.0              # the header's value when all is spent (100 for a percent)
    resets: tuple[str, ...] = ()    # headers with its reset time, the first that parses wins
    status: str | None = None       # header whose value ``rejected`` says the window is spent


@dataclass(frozen=True)
class UsedFamily:
    """Windows sent together; the family reports when any ``present`` header is there."""

    windows: tuple[UsedWindow, ...]
    present: tuple[str, ...]
    status: str | None = None       # the binding window's status header...
    reset: str | None = None        # ...and its reset: ``rejected`` there is spent until then
    rejected: str = "rejected"


@dataclass(frozen=True)
class CountedLimit:
    """A limit given as counts: remaining of limit, refilled at reset."""

    label: str
    remaining: str
    limit: str | None               # None: a reset hint only (not a headroom, not shown)
    reset: str


@dataclass(frozen=True)
class RateLimitHeaders:
    """An upstream's rate-limit headers (empty: it sends none the gateway reads), and
    where its per-day quotas reset (``daily_reset_tz``; None: the vendor does not say,
    and the gateway takes UTC midnight unless ``scheduler.daily_reset_tz`` is set)."""

    used: tuple[UsedFamily, ...] = ()
    counted: tuple[CountedLimit, ...] = ()
    daily_reset_tz: str | None = None
    # Derived once (the reader's tables):
    reset_pairs: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)
    # (label, remaining header, limit header, reset header) of the limits with a size
    sized: tuple[tuple[str, str, str, str], ...] = field(init=False, repr=False, compare=False)
    # label -> header names, first present wins (admin view, status page, metrics)
    quota_remaining: tuple[tuple[str, tuple[str, ...]], ...] = field(init=False, repr=False, compare=False)
    quota_limit: tuple[tuple[str, tuple[str, ...]], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sized = tuple((c.label, c.remaining, c.limit, c.reset) for c in self.counted if c.limit is not None)
        remaining: dict[str, tuple[str, ...]] = {}
        limit: dict[str, tuple[str, ...]] = {}
        for label, rem_h, lim_h, _ in sized:
            remaining[label] = remaining.get(label, ()) + (rem_h,)
            limit[label] = limit.get(label, ()) + (lim_h,)
        object.__setattr__(self, "reset_pairs", tuple((c.remaining, c.reset) for c in self.counted))
        object.__setattr__(self, "sized", sized)
        object.__setattr__(self, "quota_remaining", tuple(remaining.items()))
        object.__setattr__(self, "quota_limit", tuple(limit.items()))

    def __add__(self, other: "RateLimitHeaders") -> "RateLimitHeaders":
        return RateLimitHeaders(self.used + other.used, self.counted + other.counted,
                                self.daily_reset_tz or other.daily_reset_tz)


NONE = RateLimitHeaders()

# Google's per-day quotas (the Gemini API's ``...PerDay...`` quota ids) reset at midnight
# Pacific time; it sends no rate-limit headers.
GEMINI = RateLimitHeaders(daily_reset_tz="America/Los_Angeles")

_U = "anthropic-ratelimit-unified-"
_UNIFIED = UsedFamily(
    windows=tuple(UsedWindow(label, f"{_U}{w}-utilization", resets=(f"{_U}{w}-reset",), status=f"{_U}{w}-status")
                  for label, w in (("unified_5h", "5h"), ("unified_7d", "7d"), ("unified_7d_opus", "7d_opus"),
                                   ("unified_7d_sonnet", "7d_sonnet"))),
    present=(_U + "status", _U + "5h-utilization", _U + "7d-utilization"),
    status=_U + "status", reset=_U + "reset")


def _anthropic(label: str, what: str) -> CountedLimit:
    a = f"anthropic-ratelimit-{what}-"
    return CountedLimit(label, a + "remaining", a + "limit", a + "reset")


def _openai(label: str, what: str) -> CountedLimit:
    return CountedLimit(label, f"x-ratelimit-remaining-{what}", f"x-ratelimit-limit-{what}",
                        f"x-ratelimit-reset-{what}")


ANTHROPIC = RateLimitHeaders(used=(_UNIFIED,), counted=(
    _anthropic("requests", "requests"), _anthropic("tokens", "tokens"),
    _anthropic("input_tokens", "input-tokens"), _anthropic("output_tokens", "output-tokens")))

CODEX = RateLimitHeaders(used=(UsedFamily(
    windows=tuple(UsedWindow(label, f"x-codex-{w}-used-percent", scale=100.0,
                             resets=(f"x-codex-{w}-reset-at", f"x-codex-{w}-reset-after-seconds"))
                  for label, w in (("codex_primary", "primary"), ("codex_secondary", "secondary"))),
    present=("x-codex-primary-used-percent", "x-codex-secondary-used-percent")),))

OPENAI = RateLimitHeaders(counted=(
    _openai("requests", "requests"), _openai("tokens", "tokens"),
    CountedLimit("requests", "x-ratelimit-remaining", None, "x-ratelimit-reset")))  # (OpenRouter-style)
