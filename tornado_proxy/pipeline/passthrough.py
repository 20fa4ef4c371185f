"""What a passed-through answer needs besides its bytes: the model name the client
asked for, put back in place of the upstream's, and the usage read back from its
end for metrics (in the upstream's own terms, by ``Provider.usage_of``)."""
from __future__ import annotations

import functools
from typing import Any, Callable

from tornado_proxy import jsonutil

# What a passed-through stream keeps of its end: its last reads, each whole events (the
# end marker and the last usage live there), and, in a format that puts usage in its
# first event (Anthropic's message_start: the input tokens), its first read.
TAIL_READS = 4


def usage_from_tail(tail: bytes, usage_of: Callable[[Any], dict[str, Any] | None]) -> dict[str, Any] | None:
    """The last usage in the final bytes of a passed-through SSE stream (for metrics).

    Only the data lines that carry usage are parsed, from the end, each read by
    ``usage_of`` (the upstream's own reader, ``Provider.usage_of``).  Anthropic
    splits usage over message_start and message_delta, so input and output are
    merged (and the total is theirs added up).
    """
    best: dict[str, Any] | None = None
    end = len(tail)
    for _ in range(4):
        i = tail.rfind(b'"usage', 0, end)  # ("usage", Gemini's "usageMetadata")
        if i < 0:
            break
        start = tail.rfind(b"\n", 0, i) + 1
        stop = tail.find(b"\n", i)
        line = tail[start:stop if stop >= 0 else len(tail)]
        end = start
        if line.startswith(b"data:"):
            try:
                u = usage_of(jsonutil.loads(line[5:]))
            except ValueError:
                continue
            if u:
                # (a count of 0, or details all 0, is what a later event does not know)
                said = {k: v for k, v in u.items() if v and not (type(v) is dict and not any(v.values()))}
                best = {**said, **(best or {})}
    if best is not None and "total_tokens" in best:
        best["total_tokens"] = (best.get("prompt_tokens") or 0) + (best.get("completion_tokens") or 0)
    return best


# The key that names the model in each client format's answers (Gemini says which
# model version answered; the client named the model in its URL).
MODEL_KEYS = {"gemini": b'"modelVersion"'}


class ModelRewrite:
    """The model name in a passed-through answer, replaced by the one the client asked
    for (an alias routed to another ``upstream_model``).  Clients compare it with the
    model they called: Claude Code drops signed thinking blocks from turns whose
    ``model`` differs, and the next tool turn then fails upstream.

    No JSON is parsed: the first ``"model":"<name>"`` of the answer (the top-level
    one: in message_start, the first chat chunk, response.created, a whole body) tells
    the upstream's name, and from then on only that exact key and value are replaced,
    one ``bytes.replace`` per read (a JSON string cannot hold an unescaped ``"``, so
    the pattern never matches inside a text).  Works on complete lines only: the caller
    holds a line back until its newline."""

    __slots__ = ("key", "new", "old", "found", "off")

    def __init__(self, key: bytes, client_name: str) -> None:
        self.key = key
        self.new = _json_string(client_name)     # the JSON string, quotes included
        self.old = b""                           # key, separator and the upstream's JSON string
        self.found = b""                         # what replaces ``old``
        self.off = False                         # the upstream said the client's name (or an odd one)

    def feed(self, data: bytes) -> bytes:
        if not self.old:
            if self.off or not self._learn(data):
                return data
        return data.replace(self.old, self.found)  # (the same object when it has none)

    def _learn(self, data: bytes) -> bool:
        key = self.key
        at = data.find(key)
        if at < 0:
            return False
        i = at + len(key)
        n = len(data)
        while i < n and data[i] in b" \t:":
            i += 1
        sep = data[at + len(key):i]
        if i >= n or data[i] != 0x22 or sep.count(b":") != 1:
            return False  # not a key with a string value (the next one may be)
        end = data.find(b'"', i + 1)
        value = data[i:end + 1]
        if end < 0 or b"\\" in value or value == self.new:
            self.off = True  # the name asked for already, or one with escapes: left alone
            return False
        self.old = key + sep + value
        self.found = key + sep + self.new
        return True


@functools.lru_cache(maxsize=1024)
def _json_string(name: str) -> bytes:
    """A model name as a JSON string (a handful of names, written once each)."""
    return jsonutil.dumpb(name)
