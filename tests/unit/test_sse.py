"""The push-fed SSE decoder: line endings, splits across reads, UTF-8, comments, fields."""
from __future__ import annotations

import random

import pytest

from tornado_proxy.pipeline.sse import SSEDecoder, SSEEvent, encode_json


def decode(chunks: list[bytes]) -> list[SSEEvent]:
    d = SSEDecoder()
    out: list[SSEEvent] = []
    for c in chunks:
        out.extend(d.feed(c))
    out.extend(d.finish())
    return out


CASES = [
    ("lf", b"data: a\n\ndata: b\n\n", [SSEEvent(None, "a"), SSEEvent(None, "b")]),
    ("crlf", b"data: a\r\n\r\ndata: b\r\n\r\n", [SSEEvent(None, "a"), SSEEvent(None, "b")]),
    ("cr", b"data: a\r\rdata: b\r\r", [SSEEvent(None, "a"), SSEEvent(None, "b")]),
    ("mixed", b"event: x\r\ndata: 1\n\rdata: 2\r\n\n", [SSEEvent("x", "1"), SSEEvent(None, "2")]),
    ("multiline data", b"data: l1\ndata: l2\n\n", [SSEEvent(None, "l1\nl2")]),
    ("event name", b"event: message_start\ndata: {}\n\n", [SSEEvent("message_start", "{}")]),
    ("comment ignored", b": ping\n\ndata: a\n\n", [SSEEvent(None, "a")]),
    ("no space after colon", b"data:a\n\n", [SSEEvent(None, "a")]),
    ("only one space dropped", b"data:  a\n\n", [SSEEvent(None, " a")]),
    ("field without colon", b"data\n\n", [SSEEvent(None, "")]),
    ("id and retry", b"id: 7\nretry: 1000\ndata: a\n\n", [SSEEvent(None, "a", "7", 1000)]),
    ("unknown field ignored", b"foo: bar\ndata: a\n\n", [SSEEvent(None, "a")]),
    ("blank lines alone dispatch nothing", b"\n\n\n", []),
    ("last event without blank line", b"data: a\n\ndata: [DONE]", [SSEEvent(None, "a"), SSEEvent(None, "[DONE]")]),
    ("utf-8", "data: héllo 日本 🎉\n\n".encode(), [SSEEvent(None, "héllo 日本 🎉")]),
]


@pytest.mark.parametrize("name,raw,expected", CASES, ids=[c[0] for c in CASES])
def test_whole_bytewise_and_random_splits(name: str, raw: bytes, expected: list[SSEEvent]) -> None:
    assert decode([raw]) == expected
    assert decode([raw[i:i + 1] for i in range(len(raw))]) == expected
    rng = random.Random(name)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 4)))) if len(raw) > 1 else []
        parts = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        assert decode(parts) == expected


def test_crlf_split_between_reads_is_one_line_end() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: a\r") == []
    assert d.feed(b"\n") == []          # the LF completes the CRLF, it is not a blank line
    assert d.feed(b"\r\n") == [SSEEvent(None, "a")]


def test_events_come_out_as_soon_as_complete() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: {\"a\":") == []
    assert d.feed(b"1}\n") == []
    assert [e.json() for e in d.feed(b"\ndata: 2")] == [{"a": 1}]


def test_encoders() -> None:
    assert encode_json({"a": "é/"}, "e") == 'event: e\ndata: {"a":"é/"}\n\n'.encode()


def reference(raw: bytes) -> list[SSEEvent]:
    """The WHATWG rules, line by line on the whole input: what any split must give."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").decode("utf-8", "replace")
    out: list[SSEEvent] = []
    data: list[str] = []
    event = None
    ident = None
    retry = None
    seen = False
    for line in text.split("\n") + [""]:
        if not line:
            if seen:
                out.append(SSEEvent(event, "\n".join(data), ident, retry))
            data, event, retry, seen = [], None, None, False
            continue
        if line.startswith(":"):
            continue
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data.append(value)
            seen = True
        elif field == "event":
            event, seen = value, True
        elif field == "id":
            ident, seen = value, True
        elif field == "retry":
            if value.isdigit():
                retry = int(value)
            seen = True
    return out


def test_random_streams_decode_the_same_however_split() -> None:
    """The whole-event fast path and the line path must agree, for any line ends and splits."""
    rnd = random.Random(8)
    pieces = [b"data: {\"a\": 1}", b"event: content_block_delta", b"data: x", b"data:y", b": ping",
              b"id: 3", b"retry: 50", b"data: \xc3\xa9\xe6\x97\xa5", b"event: e", b"data", b"foo: bar", b""]
    for _ in range(300):
        ends = rnd.choice([[b"\n"], [b"\r\n"], [b"\n", b"\r\n", b"\r"]])
        raw = b"".join(rnd.choice(pieces) + rnd.choice(ends) for _ in range(rnd.randint(1, 30)))
        raw += b"\n\n"
        want = reference(raw)
        assert decode([raw]) == want, raw
        cuts = sorted(rnd.sample(range(1, len(raw)), min(len(raw) - 1, rnd.randint(1, 8))))
        parts = [raw[i:j] for i, j in zip([0] + cuts, cuts + [len(raw)])]
        assert decode(parts) == want, (raw, cuts)


@pytest.mark.parametrize("name,stream", [
    ("one endless line", b"data: " + b"y" * 5000),
    ("endless data lines, never a blank one (CRLF: the line path)", b"data: yyyyyyyyy\r\n" * 400),
    ("endless data lines, LF", b"data: yyyyyyyyy\n" * 400),
])
def test_an_event_over_the_cap_is_an_error_after_the_events_before_it(name: str, stream: bytes) -> None:
    from tornado_proxy.errors import ErrorKind, ProxyError

    for split in (1, 7, 512, len(stream) + 20):
        d = SSEDecoder(max_event_bytes=4096)
        raw = b"data: first\r\n\r\n" + stream
        got: list[SSEEvent] = []
        with pytest.raises(ProxyError) as e:
            for i in range(0, len(raw), split):
                got.extend(d.feed(raw[i:i + split]))
        assert e.value.kind is ErrorKind.UPSTREAM_BAD_RESPONSE, name
        assert got == [SSEEvent(None, "first")], (name, split)


def test_events_under_the_cap_are_untouched() -> None:
    d = SSEDecoder(max_event_bytes=4096)
    ev = b"data: " + b"y" * 4000 + b"\n\n"
    assert [e.data for e in d.feed(ev * 20)] == ["y" * 4000] * 20
