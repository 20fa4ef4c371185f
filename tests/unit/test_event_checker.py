"""sse.EventChecker (byte pass-through): the bytes come back unchanged, whole events
only, at every split point and with every line ending; an event whose data is not
JSON is refused before any of it is handed back."""
from __future__ import annotations

import pytest

from tests.e2e.harness import fixture_bytes
from tornado_proxy.pipeline.sse import BadEvent, EventChecker

STREAMS = [
    ("openai LF", fixture_bytes("openai/text.sse")),
    ("anthropic LF", fixture_bytes("anthropic/text.sse")),
    ("gemini CRLF", fixture_bytes("gemini/text.sse")),
    ("CR only", fixture_bytes("openai/text.sse").replace(b"\n", b"\r")),
    ("comments, ids, two data lines", b': keep-alive\n\nid: 7\ndata: {"a":\ndata: 1}\n\nretry: 10\n\n'
                                      b'event: x\r\ndata: [DONE]\r\n\r\n'),
]


@pytest.mark.parametrize("name,data", STREAMS, ids=[s[0] for s in STREAMS])
def test_every_split_point_gives_back_the_same_bytes_in_whole_events(name: str, data: bytes) -> None:
    for cut in range(1, len(data)):
        chk = EventChecker()
        first = chk.feed(data[:cut])
        second = chk.feed(data[cut:])
        assert first + second + chk.finish() == data, cut
        assert data[:len(first)] == first and (not first or first[-1:] in (b"\n", b"\r")), cut
        assert not (first.endswith(b"\r") and data[len(first):len(first) + 1] == b"\n"), cut  # CRLF kept whole


@pytest.mark.parametrize("name,bad", [
    ("cut JSON", b'data: {"malformed": tru\n\n'),
    ("named event", b'event: content_block_delta\ndata: {"a":\n\n'),
    ("CRLF", b'data: {"x": }\r\n\r\n'),
    ("not JSON at all", b"data: hello\n\n"),
])
def test_a_malformed_event_is_refused_at_every_split_point(name: str, bad: bytes) -> None:
    good = fixture_bytes("openai/text.sse").split(b"\n\n")[0] + b"\n\n"
    data = good + bad + good
    for cut in range(1, len(data)):
        chk = EventChecker()
        out = b""
        with pytest.raises(BadEvent) as e:
            out += chk.feed(data[:cut])
            out += chk.feed(data[cut:])
        assert out in (b"", good), cut  # never any byte of the bad event
        assert e.value.good in (b"", good)


def test_a_last_event_without_its_blank_line_is_checked_at_the_end() -> None:
    chk = EventChecker()
    assert chk.feed(b'data: {"a": 1}\n\ndata: [DONE]') == b'data: {"a": 1}\n\n'
    assert chk.finish() == b"data: [DONE]"
    chk = EventChecker()
    chk.feed(b'data: {"a": ')
    with pytest.raises(BadEvent):
        chk.finish()


def test_error_events_are_counted() -> None:
    chk = EventChecker()
    chk.feed(b'data: {"error": {"message": "x"}}\n\nevent: error\ndata: {"type": "error"}\n\n'
             b'data: {"type": "response.failed"}\n\ndata: {"choices": []}\n\n')
    assert chk.error_events == 3


def test_a_cr_inside_the_data_line_is_read_as_sse_reads_it() -> None:
    # SSE ends a line at a lone CR: the client sees data `{"a":` (and a field `1}`), which is
    # not JSON, even though the bytes between "data: " and the blank line would parse.
    for stream in (b'data: {"a":\r1}\n\n', b'data: {"x":1}\n\ndata: {"a":\r1}\n\n'):
        with pytest.raises(BadEvent):
            EventChecker().feed(stream)


CHUNK = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'


@pytest.mark.parametrize("read,errors", [
    (CHUNK * 3, 0),
    (CHUNK * 2 + b"data: [DONE]\n\n", 0),
    (CHUNK + b'data: {"error":{"message":"boom"}}\n\n' + CHUNK, 1),
    (b'data: {"type":"error","error":{"type":"overloaded_error"}}\n\n' * 2, 2),
])
def test_a_read_of_several_data_events_is_checked_event_by_event(read: bytes, errors: int) -> None:
    chk = EventChecker()
    assert chk.feed(read) == read
    assert chk.error_events == errors
    if errors:
        assert chk.first_error.startswith(b'{"') and b"error" in chk.first_error


@pytest.mark.parametrize("bad", [
    b'data: {"a":\n1}\n\n',                     # an LF between tokens: SSE ends the line there
    b'data: {"a":1}\n\ndata: {"b":\n2}\n\n',
    b'data: {"a":1}\n\ndata: {"b": tru\n\n',
    b'data: {"a":1}\n\ndata: [DONE]\n\ndata: {"b": 2\n\n',
    b'data: [1\n\ndata: 2],3\n\n',               # not JSON apart, though "[1,2],3" would be
])
def test_a_bad_event_among_several_in_one_read_is_refused(bad: bytes) -> None:
    chk = EventChecker()
    with pytest.raises(BadEvent):
        chk.feed(CHUNK + bad)


@pytest.mark.parametrize("bad", [b'data: [1\n\n', b'data: "abc\n\n', b'data: 12x\n\n', b'event: x\ndata: [true,\n\n'])
def test_data_that_is_not_an_object_is_still_read_whole(bad: bytes) -> None:
    # (the probe stops at a first byte that is not "{": the rest must still be JSON)
    with pytest.raises(BadEvent):
        EventChecker().feed(bad)
    assert EventChecker().feed(b'data: [1,2]\n\ndata: 5\n\n') == b'data: [1,2]\n\ndata: 5\n\n'


@pytest.mark.parametrize("bad", [
    b'data: {"a":[1,\n\ndata: 2]}\n\n',          # two halves of one object: one value where two events were
    b'data: {"a":1} {"b":2}\n\ndata: {}\n\n',    # one event that is two values
])
def test_a_read_of_several_events_holds_each_event_to_one_value(bad: bytes) -> None:
    """Each event of a several-event read is one JSON value by itself: not two, not the
    half of one that the next event completes."""
    with pytest.raises(BadEvent):
        EventChecker().feed(CHUNK * 3 + bad)


@pytest.mark.parametrize("odd", [b'data: 7\n\n', b'data: \n\n', b'data: {"a":1}\n\ndata: [DONE]\n\n'])
def test_events_the_quick_reading_cannot_take_are_passed_by_the_general_one(odd: bytes) -> None:
    # (a number is JSON; an empty data line is no event to SSE; [DONE] ends a stream)
    read = CHUNK * 2 + odd + CHUNK
    assert EventChecker().feed(read) == read


@pytest.mark.parametrize("read,errors", [
    (CHUNK * 2 + b'data: {"\\u0065rror":{"message":"boom"}}\n\n', 1),   # a key spelled with an escape
    (CHUNK + b'data: {"type":"response.failed","response":{}}\n\n' + CHUNK + b"data: [DONE]\n\n", 1),
    (CHUNK + b'data: {"text":"an \\"error\\" in the text"}\n\n', 0),
])
def test_error_events_among_several_are_found_however_spelled(read: bytes, errors: int) -> None:
    chk = EventChecker()
    assert chk.feed(read) == read
    assert chk.error_events == errors
    if errors:
        assert chk.first_error.startswith(b'{"') and chk.first_error != CHUNK[6:-2]
