"""A custom tool's input, decoded from the JSON-wrapped argument fragments.

An upstream that only has functions calls a custom tool (Codex's ``apply_patch``)
as a function whose one parameter is ``input`` (``request.py``); its arguments
arrive in fragments, ``{"input": "..."}``.  The client is owed the input itself,
as it comes (``response.custom_tool_call_input.delta``): :class:`CustomInput`
decodes the string value fragment by fragment; :func:`input_of` reads the whole
arguments at the end (the ``.done`` event, the output item, a non-streamed answer).
"""
from __future__ import annotations

import json
import re

from tornado_proxy import jsonutil

from .request import CUSTOM_INPUT

_OPEN = re.compile(r"\s*\{")
_KEY = re.compile(r'\s*"((?:[^"\\]|\\.)*)"\s*:\s*')
_NEXT = re.compile(r"\s*([,}])")
_NUMBER_TAIL = re.compile(r"[0-9.eE+-]+")
_SKIP = json.JSONDecoder().raw_decode  # one JSON value from an offset: (value, end)
HEAD_LIMIT = 4096  # members before "input" read this far, then the input goes out at the end
_SPECIAL = re.compile(r'["\\]')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")


class CustomInput:
    """Decodes, fragment by fragment, the string value of ``{"input": "..."}`` (how a
    custom tool's call comes back from an upstream that only has functions): each
    ``feed`` returns the text newly decoded.  Text is given out only once it is
    certain: an escape split between fragments (``\\``, ``\\u00e9``, a surrogate pair)
    waits for its end.  Members before ``input`` (a model may write another key
    first) are skipped as they complete, within ``HEAD_LIMIT`` characters.  Arguments
    of another shape (no object, ``input`` not a string, or not found in time) or an
    escape JSON does not have stop the decoding: the rest of the input then goes out
    whole when the call is done (``ResponsesEncoder._custom_rest``)."""

    __slots__ = ("_buf", "_state", "_out")

    HEAD, VALUE, END = 0, 1, 2

    def __init__(self) -> None:
        self._buf = ""
        self._state = self.HEAD
        self._out: list[str] = []

    def text(self) -> str:
        """All the text given out so far."""
        if len(self._out) > 1:
            self._out = ["".join(self._out)]
        return self._out[0] if self._out else ""

    def feed(self, fragment: str) -> str:
        if self._state == self.END:
            return ""
        buf = self._buf + fragment
        if self._state == self.HEAD:
            at = _value_start(buf)
            if at is None and len(buf) <= HEAD_LIMIT:
                self._buf = buf  # (read again from the start with the next fragment)
                return ""
            if at is None or at < 0:
                self._stop()
                return ""
            buf = buf[at:]
            self._state = self.VALUE
        out, rest = self._decode(buf)
        self._buf = rest
        if out:
            self._out.append(out)
        return out

    def _stop(self) -> None:
        self._state = self.END
        self._buf = ""

    def _decode(self, buf: str) -> tuple[str, str]:
        """The text decoded from ``buf`` and what is left of it (an escape not yet whole)."""
        out: list[str] = []
        i, n = 0, len(buf)
        while i < n:
            m = _SPECIAL.search(buf, i)
            if m is None:
                out.append(buf[i:])
                return "".join(out), ""
            j = m.start()
            out.append(buf[i:j])
            if buf[j] == '"':  # the end of the value: nothing after it is input
                self._stop()
                return "".join(out), ""
            if j + 1 >= n:
                return "".join(out), buf[j:]
            c = buf[j + 1]
            if c in _ESCAPES:
                out.append(_ESCAPES[c])
                i = j + 2
                continue
            if c != "u":
                self._stop()
                return "".join(out), ""
            if j + 6 > n:
                if not _HEX.issuperset(buf[j + 2:]):
                    self._stop()
                    return "".join(out), ""
                return "".join(out), buf[j:]
            code = _hex4(buf, j + 2)
            if code < 0:
                self._stop()
                return "".join(out), ""
            if 0xD800 <= code < 0xDC00:  # a high surrogate: its low half may follow
                low = buf[j + 6:j + 12]
                if len(low) < 6 and _may_be_low(low):
                    return "".join(out), buf[j:]
                low_code = _hex4(buf, j + 8) if low.startswith("\\u") else -1
                if 0xDC00 <= low_code < 0xE000:
                    out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low_code - 0xDC00)))
                    i = j + 12
                    continue
            out.append(chr(code))  # (a lone surrogate is kept, as the final parse keeps it)
            i = j + 6
        return "".join(out), ""


def _value_start(buf: str) -> int | None:
    """Where the ``input`` string's text begins in ``buf`` (just after its quote);
    None: not known yet (more may come); -1: these arguments have no string ``input``
    to stream."""
    m = _OPEN.match(buf)
    if m is None:
        return None if not buf.strip() else -1
    i, n = m.end(), len(buf)
    while True:
        m = _KEY.match(buf, i)
        if m is None:
            rest = buf[i:].lstrip()
            return None if not rest or rest[0] == '"' else -1  # (a key not yet whole)
        key = m.group(1)
        if "\\" in key:
            try:
                key = json.loads('"' + key + '"')
            except ValueError:
                return -1
        i = m.end()
        if i >= n:
            return None
        if key == CUSTOM_INPUT:
            return i + 1 if buf[i] == '"' else -1
        try:
            _, i = _SKIP(buf, i)  # another member's value
        except ValueError:
            return None  # (not whole yet, or never: HEAD_LIMIT ends the wait)
        m = _NEXT.match(buf, i)
        if m is None:  # (a number may go on: "12" of "12.5")
            return None if not buf[i:].strip() or _NUMBER_TAIL.fullmatch(buf, i) else -1
        if m.group(1) == "}":
            return -1
        i = m.end()


def input_of(arguments: str) -> str:
    """A custom tool's input from its whole arguments: the ``input`` string of the JSON;
    when the arguments are not JSON (cut short by the output limit) the part of the
    input they do hold, which is what the deltas streamed; "" for any other shape."""
    try:
        value = jsonutil.loads(arguments)
    except ValueError:
        dec = CustomInput()
        dec.feed(arguments)
        return dec.text()
    inp = value.get(CUSTOM_INPUT) if isinstance(value, dict) else None
    return inp if isinstance(inp, str) else ""


def _hex4(s: str, at: int) -> int:
    h = s[at:at + 4]
    return int(h, 16) if len(h) == 4 and _HEX.issuperset(h) else -1


def _may_be_low(s: str) -> bool:
    """Whether ``s`` (shorter than 6) may be the start of ``\\uDC00``..``\\uDFFF``."""
    pattern = ("\\", "u", "dD", "cdefCDEF", "0123456789abcdefABCDEF", "0123456789abcdefABCDEF")
    return all(ch in pattern[k] for k, ch in enumerate(s))
