"""The fused text lane: plain text deltas go from upstream bytes to client bytes without
being parsed, the one fast path allowed past the SSE decoder (STYLE, "Streaming").

Everything the lane is lives here: the patterns a translator hands out
(``StreamTranslator.text_lane()`` returns a :class:`TextLane`; the encoder's
``text_bytes(literals)`` renders them) and :class:`FusedSSEDecoder`, the SSE decoder
that uses them.  Its equivalence test is ``tests/unit/test_text_lane.py``: every stream
there runs with the lane and without it, read by read at many split points, and must
give the client the same chunks and end the same way.

The plain :class:`~tornado_proxy.pipeline.sse.SSEDecoder` yields events only; the fused
decoder yields events and, in place of each run of text-delta blocks the lane takes,
the client bytes for them (never empty).  The pipeline's ``translate_read`` passes
those bytes straight to the client.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterator

from tornado_proxy.pipeline.sse import MAX_EVENT_BYTES, SSEDecoder

# The body of a JSON string literal (between its quotes) that decodes to the same text
# in any JSON parser: no raw quote, backslash or control character, escapes of one
# character only (``\uXXXX`` goes the long way: a lone surrogate is not portable).
# Bytes >= 0x80 pass; the SSE decoder checks a run is UTF-8 before it takes the lane.
PLAIN_JSON_STRING = rb'[^"\\\x00-\x1f]*(?:\\["\\/bfnrt][^"\\\x00-\x1f]*)*'


class TextLane:
    """Patterns for the event blocks ``head + LITERAL + tail`` (one whole block and its
    blank line, LF line ends), where LITERAL is the text's JSON string literal without
    its quotes, as the upstream writes it.

    ``run.match(buf, pos, endpos)`` matches one or more such blocks back to back; over
    that span ``one.findall`` returns each block's literal (``b""`` for an empty text,
    which ``feed`` drops).  Built once per (head, tail) and shared.
    """

    __slots__ = ("run", "one")
    _cache: dict[tuple[bytes, bytes], "TextLane"] = {}

    def __init__(self, head: bytes, tail: bytes) -> None:
        item = re.escape(head) + b"(" + PLAIN_JSON_STRING + b")" + re.escape(tail) + b"\n\n"
        self.one = re.compile(item)
        self.run = re.compile(b"(?:" + re.escape(head) + PLAIN_JSON_STRING + re.escape(tail) + b"\n\n)+")

    @classmethod
    def of(cls, head: bytes, tail: bytes) -> "TextLane":
        lane = cls._cache.get((head, tail))
        if lane is None:
            lane = cls(head, tail)
            if len(cls._cache) < 1024:
                cls._cache[(head, tail)] = lane
        return lane



def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class FusedSSEDecoder(SSEDecoder):
    """An :class:`SSEDecoder` whose ``feed`` returns an iterator over events and, in place
    of each run of event blocks ``text_lane()`` takes, ``text_bytes(literals)``.

    The lane is asked again each time the consumer wants the next item, so the
    translator has seen every event before it.  The lane runs on the whole-block path
    (LF line ends, no event half-read); anything unusual is an event, and so is a run
    that is not valid UTF-8 (the event path replaces the bad bytes).
    """

    __slots__ = ("_lane_of", "_lane_bytes")

    def __init__(self, text_lane: Callable[[], TextLane | None], text_bytes: Callable[[list[bytes]], bytes],
                 max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        super().__init__(max_event_bytes)
        self._lane_of = text_lane     # the translator's text_lane
        self._lane_bytes = text_bytes  # the encoder's text_bytes

    def _whole(self, buf: bytes) -> Iterator[Any]:  # type: ignore[override]
        end = buf.rfind(b"\n\n") + 2
        if end < 2:
            self._buf = buf
            return iter(())
        self._buf = buf[end:]  # what follows the last blank line waits whole
        return self._lane(buf, end)

    def _lane(self, buf: bytes, end: int) -> Iterator[Any]:
        """The blocks of ``buf[:end]`` (which ends in a blank line), runs of text deltas fused."""
        text_lane = self._lane_of
        ascii_only = buf.isascii()
        pos = 0
        while pos < end:
            lane = text_lane()
            if lane is not None:
                m = lane.run.match(buf, pos, end)
                if m is not None:
                    stop = m.end()
                    if ascii_only or _utf8(buf[pos:stop]):
                        lits = lane.one.findall(buf, pos, stop)
                        if not all(lits):
                            lits = [x for x in lits if x]
                        if lits:
                            yield self._lane_bytes(lits)
                        pos = stop
                        continue
            stop = buf.find(b"\n\n", pos, end)
            yield from self._blocks((buf[pos:stop],))
            pos = stop + 2
