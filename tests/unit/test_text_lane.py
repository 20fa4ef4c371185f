"""The fused text lane (tornado_proxy/pipeline/text_lane.py): plain text deltas go from upstream
bytes to client bytes without being parsed.  Taking the lane must never change the
stream a client gets: every case here runs through the pipeline's own
``translate_read`` twice, with the lane and without, read by read at many split
points (tests/replay.py, plus one read per event), and the two must give the same
chunks and end the same way.  Each case also
says whether the lane must have been taken, so a lane that silently stops matching
fails here rather than only in the benchmark.
"""
from __future__ import annotations

from typing import Any

import pytest

from providers.anthropic_messages import AnthropicProvider
from providers.base import StreamContext, text_chunk
from tornado_proxy.apis.openai_chat import OpenAIChatFormat, OpenAIEncoder
from tornado_proxy import jsonutil
from tornado_proxy.errors import ProxyError
from tornado_proxy.pipeline.handler import translate_read
from tornado_proxy.pipeline.sse import SSEDecoder
from tornado_proxy.pipeline.text_lane import PLAIN_JSON_STRING, FusedSSEDecoder, TextLane
from tests.replay import MODES, cuts, fixture, splits
CTX = StreamContext(id="chatcmpl-lane123", created=1700000000, model='claude "test"', include_usage=True)


def start(*blocks: bytes) -> bytes:
    return (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
            b'"role":"assistant","content":[],"model":"claude-test","stop_reason":null,"stop_sequence":null,'
            b'"usage":{"input_tokens":7,"output_tokens":1}}}\n\n') + b"".join(blocks)


def open_text(i: int) -> bytes:
    return (b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
            b'"content_block":{"type":"text","text":""}}\n\n' % i)


def delta(i: int, literal: bytes) -> bytes:
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"text_delta","text":"%s"}}\n\n' % (i, literal))


def stop(i: int) -> bytes:
    return b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n' % i


END = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
       b'"stop_sequence":null},"usage":{"output_tokens":9}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')

TRICKY = [b"plain", b'say \\"hi\\"', b"back\\\\slash", b"two\\nlines\\ttab", b"slash\\/ok", b"",
          "Ünïcödé → ✓ 😀".encode(), b"esc \\u00e9 \\ud83d\\ude00", b"del \x7f ok", b"{\\\"json\\\": [1,2]}"]

SYNTHETIC: dict[str, tuple[bytes, bool | None]] = {
    # name: (stream, lane must be taken at least once / never / either)
    "tricky_texts": (start(open_text(0), *(delta(0, t) for t in TRICKY), stop(0)) + END, True),
    "two_text_blocks": (start(open_text(0), delta(0, b"a"), stop(0), open_text(1), delta(1, b"b"),
                              delta(1, b"c"), stop(1)) + END, True),
    "tool_between_texts": (start(open_text(0), delta(0, b"x"), stop(0),
                                 b'event: content_block_start\ndata: {"type":"content_block_start","index":1,'
                                 b'"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}\n\n',
                                 b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
                                 b'"delta":{"type":"input_json_delta","partial_json":"{\\"a\\": 1}"}}\n\n',
                                 stop(1), open_text(2), delta(2, b"after"), stop(2)) + END, True),
    # The same bytes after the block closed are an error, lane or not.
    "delta_after_stop": (start(open_text(0), delta(0, b"a"), stop(0), delta(0, b"late")) + END, True),
    "delta_before_start": (start(delta(0, b"early"), open_text(0), stop(0)) + END, False),
    "delta_to_other_index": (start(open_text(0), delta(3, b"where"), stop(0)) + END, False),
    # Bytes that are not UTF-8 are replaced by the event path; the lane leaves a run
    # holding them to it (so whether "ok" takes the lane depends on the reads).
    "bad_utf8": (start(open_text(0), delta(0, b"ok"), delta(0, b"bad \xff\xfe byte"), stop(0)) + END, None),
    # A raw control character is not JSON: the event path rejects it, so must the lane.
    "raw_control": (start(open_text(0), delta(0, b"tab\there"), stop(0)) + END, False),
    "unterminated_escape": (start(open_text(0),
                                  b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                                  b'"delta":{"type":"text_delta","text":"x\\"}}\n\n', stop(0)) + END, False),
    "error_midstream": (start(open_text(0), delta(0, b"partial"),
                              b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                              b'"message":"Overloaded"}}\n\n', delta(0, b"never")), True),
    "ping_between": (start(open_text(0), delta(0, b"a"), b'event: ping\ndata: {"type": "ping"}\n\n',
                           delta(0, b"b"), stop(0)) + END, True),
    "no_event_lines": (start(open_text(0), delta(0, b"a").split(b"\n", 1)[1], stop(0)) + END, False),
    "crlf": (start(open_text(0), delta(0, b"a"), stop(0)).replace(b"\n", b"\r\n") + END, False),
}
RECORDED = ["text", "tools", "thinking_tools", "redacted_thinking", "tool_no_input", "error_midstream", "cut"]
# thinking_tools.sse is spaced JSON (the docs' example): the event path handles it alone.
LANE_RECORDED = {"text", "tools", "redacted_thinking", "error_midstream", "cut"}


def stream_of(name: str) -> tuple[bytes, bool | None]:
    if name in SYNTHETIC:
        return SYNTHETIC[name]
    return fixture(f"anthropic/{name}.sse"), name in LANE_RECORDED


def run(reads: list[bytes], fused: bool) -> tuple[list[Any], str | None, int]:
    """What a client gets: the data of each frame decoded, how the stream ended, and
    how many times the lane answered."""
    tr = AnthropicProvider({"name": "anthropic", "type": "anthropic"}).new_stream(CTX)
    enc = OpenAIChatFormat().new_encoder(CTX)
    lane_items = 0
    dec: SSEDecoder = SSEDecoder()
    if fused:
        def text_bytes(lits: list[bytes]) -> bytes:
            nonlocal lane_items
            lane_items += len(lits)
            return enc.text_bytes(lits)
        dec = FusedSSEDecoder(tr.text_lane, text_bytes)
    out: list[bytes] = []
    usage: list[Any] = []
    end = None
    try:
        for piece in reads:
            translate_read(dec, tr, enc, piece, out, usage.append)
        for ev in dec.finish():
            out.extend(enc.feed(c) for c in tr.feed(ev))
        out.extend(enc.feed(c) for c in tr.finish())
        out.append(enc.finish())
    except ProxyError as err:
        end = f"{err.kind.value}: {err.message}"
    frames = [f for f in b"".join(out).split(b"\n\n") if f]
    assert all(f.startswith(b"data: ") for f in frames)
    return [f[6:].decode() if f == b"data: [DONE]" else jsonutil.loads(f[6:]) for f in frames] + [usage], \
        end, lane_items


@pytest.mark.parametrize("mode", [*MODES, "events"])
@pytest.mark.parametrize("name", [*RECORDED, *SYNTHETIC])
def test_lane_gives_the_same_stream(name: str, mode: str) -> None:
    data, must_take = stream_of(name)
    for reads in splits(data, mode):
        plain, plain_end, none = run(reads, fused=False)
        fused, fused_end, taken = run(reads, fused=True)
        assert none == 0
        assert fused == plain, cuts(reads)
        assert fused_end == plain_end, cuts(reads)
        if must_take and mode != "bytes":
            assert taken > 0, f"the lane was never taken ({cuts(reads)})"
        if must_take is False:
            assert taken == 0, cuts(reads)


def test_lane_output_is_byte_identical_for_plain_text() -> None:
    data = start(open_text(0), *(delta(0, b"word%d " % i) for i in range(20)), stop(0)) + END
    plain, _, _ = run([data], fused=False)
    fused_frames, _, taken = run([data], fused=True)
    assert taken == 20
    assert fused_frames == plain
    enc = OpenAIEncoder(False, CTX)
    assert enc.text_bytes([b"a", b"b\\n"]) == enc.feed(text_chunk(CTX, "a")) + enc.feed(text_chunk(CTX, "b\n"))


def test_a_run_of_deltas_is_one_write() -> None:
    """The point of the lane: forty deltas in one read cost one regex pass and one join."""
    data = start(open_text(0), *(delta(0, b"w%d" % i) for i in range(40)), stop(0)) + END
    tr = AnthropicProvider({"name": "anthropic", "type": "anthropic"}).new_stream(CTX)
    enc = OpenAIChatFormat().new_encoder(CTX)
    dec = FusedSSEDecoder(tr.text_lane, enc.text_bytes)
    items = []
    for ev in dec.feed(data):
        items.append(ev)
        if ev.__class__ is not bytes:
            tr.feed(ev)
    lane = [x for x in items if x.__class__ is bytes]
    assert len(lane) == 1 and lane[0].count(b"data: ") == 40


@pytest.mark.parametrize("literal,ok", [
    (b"abc", True), (b'a\\"b', True), (b"a\\\\", True), (b"\\n\\r\\t\\b\\f\\/", True), (b"", True),
    ("é✓".encode(), True), (b'a"b', False), (b"a\\", False), (b"a\\q", False), (b"\\u00e9", False),
    (b"a\x01b", False), (b"a\nb", False),
])
def test_plain_json_string(literal: bytes, ok: bool) -> None:
    import re
    assert (re.fullmatch(PLAIN_JSON_STRING, literal) is not None) is ok
    lane = TextLane.of(b"<", b">")
    block = b"<" + literal + b">\n\n"
    assert (lane.run.fullmatch(block) is not None) is ok
    if ok:
        assert lane.one.findall(block) == [literal]
        assert jsonutil.loads(b'"' + literal + b'"') is not None
