"""One scrubber for every text the gateway emits: logs, admin output, error bodies,
the accounts file's reasons, passed-through stream bytes.

It knows every secret of every configured account (API keys, access and refresh
tokens, AWS secret keys and session tokens, OAuth client secrets) and the gateway's
own access keys and admin token.  The scheduler tells it, per account, whenever an
account is loaded or its tokens rotate (:meth:`Scrubber.note`).  A secret is shown
as its mask (``****`` and at most its last 4 characters, as ``accounts.mask``).

Two ways of looking:

* :func:`text` for messages: the known secrets, and generic credential shapes
  (``sk-…``, ``sk-ant-…``, ``Bearer …``, ``AKIA…``, ``AIza…``, JWTs) that an upstream
  may quote even when they are not ours.
* :func:`data` for stream bytes on the hot path: the known secrets only (a model may
  legitimately write ``sk-…`` in code it answers with), as one precompiled regex
  searched once per event, rebuilt only when the secrets change.  The regex is a
  trie of the secrets (``ab(?:c|d)`` rather than ``abc|abd``): ``re`` tries the
  branches of an alternation one after the other at every position, so a flat
  alternation costs in proportion to the number of secrets; a trie costs in
  proportion to the bytes that share a prefix with one.

Logging: :func:`install_logging` wraps the log record factory, so every record, at
every level and from every logger, is scrubbed when it is made, before any handler
(ours, pytest's, a library's) sees it.  A ``logging.Filter`` on our handlers would
miss handlers added later and records from loggers with their own handlers.  Tornado's
curl client logs each request body it sends at DEBUG (a refresh grant carries the
refresh token, form-encoded, so not even byte-equal to it): such a line keeps only
the body's size.
"""
from __future__ import annotations

import collections
import logging
import re
import threading
from typing import Any, Callable, Iterable, Pattern

# Shorter values are not scrubbed: masking every "k" or "test" in every log line would
# destroy the logs, and such a value is no secret worth the name.
MIN_SECRET = 8
# Old values (rotated tokens, replaced keys) stay masked: an upstream may still quote
# the token it just refused, and a log line may be made after the rotation.
RETIRED_MAX = 256

_GENERIC = re.compile(
    r"(?<![A-Za-z0-9])(?P<p>sk-)[A-Za-z0-9_\-]{12,}"
    r"|(?P<b>[Bb]earer\s+)[A-Za-z0-9._~+/=\-]{8,}"
    r"|(?<![A-Za-z0-9])(?P<a>AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])"
    r"|(?<![A-Za-z0-9])(?P<g>AIza)[0-9A-Za-z_\-]{35}"
    r"|(?<![A-Za-z0-9])(?P<j>eyJ)[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+")


def mask(secret: str) -> str:
    """``****`` and the last 4 characters (only ``****`` for a short secret)."""
    return "****" + secret[-4:] if len(secret) >= 16 else "****"


def _generic_sub(m: "re.Match[str]") -> str:
    prefix = next(g for g in (m.group("p"), m.group("b"), m.group("a"), m.group("g"), m.group("j")) if g)
    return prefix + mask(m.group(0)[len(prefix):])


def _trie_pattern(words: Iterable[Any], unit: Callable[[Any], Any], syntax: tuple[Any, Any, Any, Any]) -> Any:
    """A regex source (str or bytes, as ``words``) matching any of ``words``, longest first."""
    open_, close, bar, opt = syntax
    root: dict[Any, Any] = {}
    for w in words:
        node = root
        for u in w:
            node = node.setdefault(u, {})
        node[None] = None

    def emit(node: dict[Any, Any]) -> Any:
        alts = []
        for k in sorted(k for k in node if k is not None):
            # a run without branches is one literal (tokens run to kilobytes: no recursion per unit)
            lit = [unit(k)]
            child = node[k]
            while len(child) == 1 and None not in child:
                (k2, child), = child.items()
                lit.append(unit(k2))
            alts.append(open_[:0].join(lit) + emit(child))
        if not alts:
            return open_[:0]
        body = alts[0] if len(alts) == 1 else open_ + bar.join(alts) + close
        # a secret ends here while longer ones go on: the longer one is tried first
        return open_ + body + close + opt if None in node else body

    return emit(root)


def _unit_str(u: str) -> str:
    return re.escape(u)


def _unit_bytes(u: int) -> bytes:
    return re.escape(bytes((u,)))


_STR_SYNTAX = ("(?:", ")", "|", "?")
_BYTES_SYNTAX = (b"(?:", b")", b"|", b"?")


class Scrubber:
    """The known secrets, by owner, and the two regexes built from them."""

    def __init__(self) -> None:
        self._owners: dict[str, frozenset[str]] = {}
        self._retired: collections.deque[str] = collections.deque(maxlen=RETIRED_MAX)
        # Re-entrant, and nothing is compiled while it is held: any allocation may run the
        # garbage collector, whose finalizers may log (asyncio's "Task was destroyed"),
        # and logging comes back here through the record factory on the same thread.
        self._lock = threading.RLock()
        self._version = 0
        self._dirty = False
        self._text_re: Pattern[str] | None = None
        self._data_re: Pattern[bytes] | None = None
        self._masks: dict[str, str] = {}
        self._bmasks: dict[bytes, bytes] = {}

    def note(self, owner: str, secrets: Iterable[Any]) -> None:
        """``owner``'s secrets are now these (an account's key and tokens, the access keys)."""
        new = frozenset(s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET)
        with self._lock:
            old = self._owners.get(owner, frozenset())
            if new == old:
                return
            self._retired.extend(old - new)
            if new:
                self._owners[owner] = new
            else:
                self._owners.pop(owner, None)
            self._version += 1
            self._dirty = True

    def secrets(self) -> set[str]:
        with self._lock:
            out: set[str] = set(self._retired)
            for s in self._owners.values():
                out |= s
            return out

    def _rebuild(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            version = self._version
            out: set[str] = set(self._retired)
            for s in self._owners.values():
                out |= s
        masks = {s: mask(s) for s in out}
        bmasks = {s.encode("utf-8"): m.encode("ascii") for s, m in masks.items()}
        text_re = re.compile(_trie_pattern(out, _unit_str, _STR_SYNTAX)) if out else None
        data_re = re.compile(_trie_pattern(bmasks, _unit_bytes, _BYTES_SYNTAX)) if out else None
        with self._lock:
            if self._version != version:
                return  # changed meanwhile: the next look rebuilds
            self._masks, self._bmasks = masks, bmasks
            self._text_re, self._data_re = text_re, data_re
            self._dirty = False

    def text(self, s: str) -> str:
        """Known secrets and generic credential shapes masked."""
        if self._dirty:
            self._rebuild()
        r = self._text_re
        if r is not None and r.search(s) is not None:
            masks = self._masks
            s = r.sub(lambda m: masks.get(m.group(0)) or mask(m.group(0)), s)
        return _GENERIC.sub(_generic_sub, s)

    def data(self, b: bytes) -> bytes:
        """Known secrets masked in stream bytes (one regex search when there is none)."""
        if self._dirty:
            self._rebuild()
        r = self._data_re
        if r is None or r.search(b) is None:
            return b
        masks = self._bmasks
        return r.sub(lambda m: masks.get(m.group(0)) or b"****", b)

    @property
    def active(self) -> bool:
        """Some secret is known (else :meth:`data` has nothing to look for)."""
        if self._dirty:
            self._rebuild()
        return self._data_re is not None


SCRUBBER = Scrubber()


def note(owner: str, secrets: Iterable[Any]) -> None:
    SCRUBBER.note(owner, secrets)
    install_logging()  # a process that knows a secret scrubs its logs


def text(s: str) -> str:
    return SCRUBBER.text(s)


def data(b: bytes) -> bytes:
    return SCRUBBER.data(b)


def scrub_with(s: str, secrets: Iterable[Any]) -> str:
    """:func:`text`, also masking ``secrets`` (a lease's client key, a file's tokens)."""
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= MIN_SECRET and secret in s:
            s = s.replace(secret, mask(secret))
    return text(s)


# -- logging -----------------------------------------------------------------------------
_installed = False


def _scrub_record(rec: logging.LogRecord) -> None:
    args = rec.args
    if rec.name == "tornado.curl_httpclient" and rec.msg == "%s %r" and isinstance(args, tuple) \
            and len(args) == 2 and args[0] == ">":
        # Tornado's curl client logs each body it sends: a refresh grant, form-encoded,
        # so its token is not even byte-equal to the one we know.  Never a body.
        size = len(args[1]) if isinstance(args[1], (str, bytes)) else 0
        rec.msg, rec.args = "> (%d bytes of request body, not logged)", (size,)
        return
    try:
        msg = rec.getMessage()
    except Exception:  # a bad format string: let the handler report it as it would
        return
    clean = SCRUBBER.text(msg)
    if clean != msg:
        rec.msg, rec.args = clean, ()
    if rec.exc_info and rec.exc_info[1] is not None and not rec.exc_text:
        tb = logging.Formatter().formatException(rec.exc_info)
        clean_tb = SCRUBBER.text(tb)
        if clean_tb != tb:
            rec.exc_text = clean_tb  # formatters print exc_text when it is set
    if rec.stack_info:
        rec.stack_info = SCRUBBER.text(rec.stack_info)


def install_logging() -> None:
    """Scrub every log record of this process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        rec = previous(*args, **kwargs)
        _scrub_record(rec)
        return rec

    logging.setLogRecordFactory(factory)
