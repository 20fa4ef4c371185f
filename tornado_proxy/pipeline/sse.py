"""A push-fed Server-Sent Events decoder and the encoders we need.

``SSEDecoder.feed(bytes)`` takes bytes exactly as curl delivers them and returns
the events completed by them.  It follows the WHATWG event-stream rules: lines end
in CR, LF or CRLF (a CR at the end of one read and an LF at the start of the next
are one line end), ``:`` starts a comment, a field without a colon has an empty
value, one space after the colon is dropped, ``data`` lines are joined with LF and
a blank line dispatches.  Lines are decoded as UTF-8 only once complete, so a
multi-byte character split across reads is never mangled.

An event still incomplete is held, up to ``max_event_bytes``: an upstream that sends
one endless line (or endless data lines and never a blank one) gets
``UPSTREAM_BAD_RESPONSE`` rather than our memory.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

MAX_EVENT_BYTES = 64 * 1024 * 1024


class SSEEvent:
    """One event.  ``data`` is text; an event cut out by the fast path keeps its data as
    the raw bytes and decodes them only if asked, since ``json()`` parses the bytes."""

    __slots__ = ("event", "_data", "raw", "id", "retry")

    def __init__(self, event: str | None, data: str | None, id: str | None = None, retry: int | None = None,
                 raw: bytes | None = None) -> None:
        self.event = event
        self._data = data
        self.raw = raw
        self.id = id
        self.retry = retry

    @property
    def data(self) -> str:
        d = self._data
        if d is None:
            d = self._data = self.raw.decode("utf-8", "replace")  # type: ignore[union-attr]
        return d

    def json(self) -> Any:
        raw = self.raw
        if raw is not None:
            try:
                return jsonutil.loads(raw)
            except ValueError:
                pass  # e.g. invalid UTF-8 inside a string: decoded with replacement below
        return jsonutil.loads(self.data)

    def __repr__(self) -> str:
        return f"SSEEvent(event={self.event!r}, data={self.data!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SSEEvent) and self.event == other.event and self.data == other.data
                and self.id == other.id and self.retry == other.retry)


# Event names repeat: decoded once each (bounded).
_NAMES: dict[bytes, str] = {}


def _name(raw: bytes) -> str:
    n = _NAMES.get(raw)
    if n is None:
        n = raw.decode("utf-8", "replace")
        if len(_NAMES) < 256:
            _NAMES[raw] = n
    return n


_BLANK = [b""]


class SSEDecoder:
    __slots__ = ("_buf", "_data", "_event", "_id", "_retry", "_seen", "_skip_lf", "_max", "_held")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._held = 0  # bytes of data lines of the event being read (the line path)
        self._buf = b""
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._seen = False  # any field seen since the last dispatch
        self._skip_lf = False

    def feed(self, chunk: bytes) -> Iterable[SSEEvent]:
        """The events ``chunk`` completes (a list; when an event outgrows the cap, the
        events before it and then ``UPSTREAM_BAD_RESPONSE``, raised while iterating)."""
        out = self._feed(chunk)
        if len(self._buf) + self._held > self._max:
            return self._then_fail(out)
        return out

    def _then_fail(self, out: Iterable[Any]) -> Iterator[Any]:
        """The events completed before the oversized one, then the error (as they would
        be had the oversized event come in a later read)."""
        self._buf = b""
        self._data = []
        self._held = 0
        yield from out
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                         f"upstream sent a stream event larger than the gateway's limit of {self._max} bytes")

    def _feed(self, chunk: bytes) -> Iterable[Any]:
        if self._skip_lf:
            # The previous read ended in CR, which already ended a line: an LF
            # that starts this read is the second half of that CRLF.
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            self._skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        elif not self._seen:
            return self._whole(buf)
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        return self._lines(lines) if lines else []

    def _whole(self, buf: bytes) -> Iterable[Any]:
        """LF line ends and no event half-read: the complete events of ``buf``, whole
        blocks at a time (the fused text lane takes over here: text_lane.py)."""
        blocks = buf.split(b"\n\n")
        self._buf = blocks.pop()  # what follows the last blank line waits whole
        return self._blocks(blocks)

    def _blocks(self, blocks: Any) -> list[SSEEvent]:
        """The fast path (LF line ends, no event half-read): whole events at a time.

        The usual event is ``event: NAME\\ndata: JSON`` or ``data: JSON``; those are cut
        out directly, anything else goes through the line rules.
        """
        out: list[SSEEvent] = []
        append = out.append
        ident = self._id
        for block in blocks:
            nl = block.find(b"\n")
            if nl < 0:
                if block.startswith(b"data: "):
                    append(SSEEvent(None, None, ident, None, block[6:]))
                    continue
            elif block.startswith(b"event: ") and block.startswith(b"data: ", nl + 1) \
                    and block.find(b"\n", nl + 1) < 0:
                append(SSEEvent(_name(block[7:nl]), None, ident, None, block[nl + 7:]))
                continue
            out.extend(self._lines(block.split(b"\n")))
            out.extend(self._lines(_BLANK))
            ident = self._id
        return out

    def _lines(self, lines: list[bytes]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for raw in lines:
            if not raw:
                if self._seen:
                    out.append(SSEEvent(self._event, "\n".join(self._data), self._id, self._retry))
                    self._data = []
                    self._held = 0
                    self._event = None
                    self._retry = None
                    self._seen = False
                continue
            if raw[0] == 58:  # b":" comment
                continue
            line = raw.decode("utf-8", "replace")
            field, sep, value = line.partition(":")
            if sep and value.startswith(" "):
                value = value[1:]
            if field == "data":
                self._data.append(value)
                self._seen = True
                self._held += len(raw)
            elif field == "event":
                self._event = value
                self._seen = True
            elif field == "id":
                if "\0" not in value:
                    self._id = value
                self._seen = True
            elif field == "retry":
                if value.isdigit():
                    self._retry = int(value)
                self._seen = True
        return out

    def finish(self) -> list[SSEEvent]:
        """End of stream: a last event not followed by a blank line is still delivered.

        Strict SSE would drop it; upstreams that forget the final blank line are
        common enough that losing their last event would be worse.
        """
        rest = self._buf
        self._buf = b""
        out = self._lines(rest.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")) if rest else []
        out.extend(self._lines(_BLANK))
        return out


def encode_event(data: str, event: str | None = None) -> bytes:
    if event is None:
        return b"data: " + data.encode("utf-8") + b"\n\n"
    return b"event: " + event.encode("utf-8") + b"\ndata: " + data.encode("utf-8") + b"\n\n"


def encode_json(obj: Any, event: str | None = None) -> bytes:
    if event is None:
        return b"data: " + jsonutil.dumpb(obj) + b"\n\n"
    return b"event: " + event.encode("utf-8") + b"\ndata: " + jsonutil.dumpb(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"
