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

from typing import Any, Iterable, Iterator, Union

import msgspec

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


def encode_json(obj: Any, event: str | None = None) -> bytes:
    if event is None:
        return b"data: " + jsonutil.dumpb(obj) + b"\n\n"
    return b"event: " + event.encode("utf-8") + b"\ndata: " + jsonutil.dumpb(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def last_event_end(buf: bytes) -> int:
    """The index just past the last blank line of ``buf`` (0 if there is none): the bytes
    before it are whole events.  A line ends in CR, LF or CRLF."""
    if b"\r" not in buf:
        return buf.rfind(b"\n\n") + 2 if b"\n\n" in buf else 0
    # The last place where one line end follows another (CRLF is one line end).  A CR
    # that ends the buffer waits for the next read: it may be the first half of a CRLF,
    # and the client should get the whole of it in one piece.
    limit = len(buf) - 1 if buf[-1:] == b"\r" else len(buf)
    end = 0
    for pair in (b"\n\n", b"\r\r", b"\n\r"):
        i = buf.rfind(pair, 0, limit)
        if i >= 0:
            end = max(end, i + 2)
    for triple in (b"\n\r\n", b"\r\r\n"):
        i = buf.rfind(triple, 0, limit)
        if i >= 0:
            end = max(end, i + 3)
    return end


class BadEvent(ValueError):
    """An event whose data is not JSON (``data``: its first bytes).  ``good`` are the
    whole, good events before it in the same read (empty when that is not known)."""

    def __init__(self, data: bytes, at: int) -> None:
        super().__init__("upstream sent a stream event whose data is not JSON")
        self.data = data
        self.at = at  # its offset in what was checked
        self.good = b""


class EventChecker:
    """For byte pass-through: hands back the upstream's bytes as they came, but only
    whole events, each checked to carry JSON data (``[DONE]`` aside).

    The events are not rebuilt: ``feed`` returns the bytes up to the last blank line
    and keeps the rest for the next read, so a malformed event is caught before any
    of it reaches the client.  The usual shapes (``data: X``, or ``event: N`` then
    ``data: X``, in a read that ends an event with LF LF or CRLF CRLF) are cut
    directly and their data parsed as it is; an event only :class:`SSEDecoder`'s
    rules read right (comments, ``id:``, several data lines, CR line ends) is taken
    through the decoder, and an event is refused only when neither reading is JSON.
    ``error_events`` counts events whose JSON is an error (an ``error`` member, or
    ``type`` ``error`` or ``response.failed``, as OpenAI, Anthropic, Gemini and
    Responses send them); ``first_error`` is the first one's data, for the caller to
    classify (the stream's client still gets the event as it came).
    """

    __slots__ = ("_pending", "_decoder", "error_events", "first_error", "limit")

    def __init__(self, limit: int = 64 << 20) -> None:
        self._pending = b""
        self._decoder: SSEDecoder | None = None
        self.error_events = 0
        self.first_error = b""
        self.limit = limit  # one event larger than this is an error, not a memory leak

    def feed(self, data: bytes) -> bytes:
        # The usual read: one ``data:`` line and its blank line, checked inline.  (The
        # first LF is the last but one byte and the last is LF; no CR.  ``find`` with an
        # int and slice compares are the cheapest bytes tests CPython has: this runs
        # once per upstream read.)
        if (data.find(10) == len(data) - 2 and data[-1:] == b"\n" and data[:6] == b"data: "
                and data.find(13) < 0 and not self._pending):
            try:
                p = _probe(data[6:-2])
            except msgspec.DecodeError:
                pass  # not an object, [DONE], or worse: the general path decides
            else:
                if p.error is not _UNSET or p.type in _ERROR_TYPES:
                    self._error(data[6:-2])
                return data
        elif not self._pending and data[:6] == b"data: " and data[-2:] == b"\n\n" and data.find(13) < 0:
            # A read of several such events (a busy upstream's): split at each
            # "\n\ndata: "; when those and the last blank line are all its LFs (no
            # payload holds one), every event is one data line and the payloads are all
            # there is to check.  (Joined and searched: a memcpy and a memchr, where
            # ``data.count(10)`` walks byte by byte, ~9x slower on a 50-event read.)
            payloads = data[6:-2].split(b"\n\ndata: ")
            if b"".join(payloads).find(10) < 0 and self._probe_all(payloads):
                return data
        buf = self._pending + data if self._pending else data
        tail = buf[-4:]
        if tail[2:] != b"\n\n" and tail != b"\r\n\r\n":  # (else the usual read: it ends an event)
            end = last_event_end(buf)
            if end == 0:
                if len(buf) > self.limit:
                    raise BadEvent(buf[:80], 0)
                self._pending = buf
                return b""
            self._pending = buf[end:]
            buf = buf[:end]
        elif self._pending:
            self._pending = b""
        try:
            self._check(buf)
        except BadEvent as bad:
            bad.good = buf[:bad.at]
            raise
        return buf

    def _probe_all(self, payloads: list[bytes]) -> bool:
        """Each payload JSON (the last may be ``[DONE]``): True, and its error events
        counted; False (nothing counted): the general path reads the events."""
        errors: list[bytes] = []
        for p in payloads:
            try:
                r = _probe(p)
            except msgspec.DecodeError:
                if p is payloads[-1] and p == b"[DONE]":
                    continue
                return False
            if r.error is not _UNSET or r.type in _ERROR_TYPES:
                errors.append(p)
        for p in errors:
            self._error(p)
        return True

    def finish(self) -> bytes:
        """The end of the stream: a last event without its blank line, checked."""
        rest = self._pending
        self._pending = b""
        if rest.strip():
            self._slow(rest + b"\n\n", 0)
        return rest

    def _check(self, buf: bytes) -> None:
        tail = buf[-4:]
        if tail == b"\r\n\r\n":
            eol = b"\r\n"
        elif tail[2:] == b"\n\n":
            eol = b"\n"
        else:  # CR line ends
            self._slow(buf, 0)
            return
        last = len(buf) - 2 * len(eol)  # where the event's last line ends
        # The usual read is one event of one or two lines: one or two scans find that.
        first = buf.find(eol)
        if first == last and buf[:6] == b"data: ":
            self._json(buf[6:last], buf, 0)
            return
        if first > 0 and buf[:7] == b"event: ":
            second = first + len(eol)
            if buf.find(eol, second) == last and buf.startswith(b"data: ", second):
                self._json(buf[second + 6:last], buf, 0)
                return
        sep = eol + eol
        pos = 0
        probe, unset = _probe, msgspec.UNSET
        for block in buf.split(sep):
            start = pos
            pos += len(block) + len(sep)
            if block[:6] == b"data: " and b"\r" not in block and eol not in block:
                # (the usual event of a read that holds several, inline: ``_json`` less a call)
                try:
                    p = probe(block[6:])
                except msgspec.DecodeError:
                    self._json(block[6:], block + sep, start)  # not an object, [DONE], or worse
                    continue
                if p.error is not unset or p.type in _ERROR_TYPES:
                    self._error(block[6:])
            elif block[:7] == b"event: ":
                nl = block.find(eol) + len(eol)
                if block.startswith(b"data: ", nl) and block.find(eol, nl) < 0:
                    self._json(block[nl + 6:], block + sep, start)
                else:
                    self._slow(block + sep, start)
            elif block:
                self._slow(block + sep, start)

    def _json(self, payload: bytes, event: bytes, start: int) -> None:
        if payload == b"[DONE]":
            return
        if b"\r" in payload:  # a CR ends an SSE line: the event is not what a JSON parser sees
            self._slow(event, start)
            return
        try:
            probe = _probe(payload)
        except msgspec.ValidationError:
            # Not an object: the probe stops at the first byte, so the rest is still
            # to be read (``[1`` would pass otherwise).
            try:
                _valid(payload)
            except msgspec.DecodeError:
                self._slow(event, start)  # not JSON strictly read: the decoder decides
            return  # JSON, but not an object: nothing to count
        except msgspec.DecodeError:
            # Not JSON by the strict reading (or NaN, a lone surrogate): the decoder and
            # our lenient parser decide, as for any unusual event.
            self._slow(event, start)
            return
        if probe.error is not msgspec.UNSET or probe.type in _ERROR_TYPES:
            self._error(payload)

    def _error(self, payload: bytes) -> None:
        self.error_events += 1
        if not self.first_error:
            self.first_error = payload

    def _slow(self, chunk: bytes, start: int) -> None:
        """``chunk`` (whole events) by the decoder's rules; ``start`` is its offset."""
        dec = self._decoder
        if dec is None:
            dec = self._decoder = SSEDecoder()
        for ev in dec.feed(chunk.lstrip(b"\r\n")):
            if not ev.data or ev.data == "[DONE]":
                continue
            try:
                obj = ev.json()
            except ValueError:
                raise BadEvent(chunk[:80], start) from None
            if isinstance(obj, dict) and ("error" in obj or obj.get("type") in _ERROR_TYPES):
                self._error(ev.data.encode("utf-8", "surrogatepass"))


_ERROR_TYPES = ("error", "response.failed")


class _Probe(msgspec.Struct):
    """What the checker reads of an event: whether it has an ``error`` member and its
    ``type``.  Every other member is validated and skipped, never built."""

    error: Union[msgspec.Raw, msgspec.UnsetType] = msgspec.UNSET
    type: Any = None


_probe = msgspec.json.Decoder(_Probe).decode
_valid = msgspec.json.Decoder(msgspec.Raw).decode  # any JSON value, checked whole, nothing built
_UNSET = msgspec.UNSET
