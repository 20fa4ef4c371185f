"""Bedrock ConverseStream: event-stream decoding and translation, replayed from fixtures.

Every ``tests/fixtures/bedrock/*.bin`` is replayed (tests/replay.py) through
``EventStreamDecoder`` and ``BedrockStream`` whole, byte by byte, in its recorded
reads (which split frames mid-prelude, mid-header, mid-payload and mid-CRC), at
seeded random split points and at every 2-piece split;
the pivot chunks (plus the error, for streams that fail) must equal
``tests/golden/bedrock/<name>.chunks.jsonl`` every time, and the bytes an OpenAI
client receives must equal ``<name>.openai.sse``.  A stream with a paired
non-streaming answer must fold to what ``translate_response`` gives for it.
"""
from __future__ import annotations

import importlib.util
import struct
import zlib
from typing import Any

import pytest

from providers.base import StreamContext, fold_chunks as fold
from providers.bedrock import BedrockProvider, BedrockStream, EventStreamDecoder
from tornado_proxy.apis.openai_chat import OpenAIEncoder
from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError
from tests.replay import FIXTURES, MODES, cuts, error_record, fixture, golden, replay as run, splits

_spec = importlib.util.spec_from_file_location("bedrock_make_fixtures", FIXTURES / "bedrock" / "make_fixtures.py")
assert _spec and _spec.loader
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)

STREAMS: dict[str, Any] = make.load_specs()
PAIRED = sorted(n for n, s in STREAMS.items() if "paired" in s)
PROVIDER = BedrockProvider({"name": "bedrock", "type": "bedrock", "options": {"region": "us-east-1"}})


def ctx() -> StreamContext:
    return StreamContext(id="chatcmpl-test", created=1700000000, model="bedrock-claude", include_usage=True)


def pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in sizes:
        if pos >= len(data):
            break
        out.append(data[pos:pos + n])
        pos += n
    if pos < len(data):
        out.append(data[pos:])
    return out


def replay(data: bytes, reads: list[bytes]) -> tuple[list[Any], bytes]:
    """-> (pivot chunks plus a final {"error": ...} if the stream failed, OpenAI client bytes)."""
    c = ctx()
    chunks, err = run(EventStreamDecoder(), BedrockStream(c), reads)
    encoder = OpenAIEncoder(True)
    sse = b"".join(encoder.feed(chunk) for chunk in chunks) + (encoder.fail(err) if err else encoder.finish())
    if err is not None:
        chunks.append({"error": error_record(err)})
    chunks.append({"upstream_latency_ms": c.upstream_latency_ms})
    return chunks, sse


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_fixture_bytes_are_what_the_builder_makes(name: str) -> None:
    assert fixture(f"bedrock/{name}.bin") == make.build(STREAMS[name])


@pytest.mark.parametrize("mode", [*MODES, "recorded reads"])
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_replay_matches_golden_at_any_split(name: str, mode: str) -> None:
    data = fixture(f"bedrock/{name}.bin")
    whole_chunks, whole_sse = replay(data, [data])
    assert whole_chunks == golden(f"bedrock/{name}.chunks.jsonl", whole_chunks)
    assert whole_sse == golden(f"bedrock/{name}.openai.sse", whole_sse)
    if mode == "recorded reads":
        ways = [pieces(data, STREAMS[name]["reads"])]
        # the recorded reads really do split frames
        assert len(ways[0]) > 1
    else:
        ways = list(splits(data, mode))
    for reads in ways:
        assert b"".join(reads) == data
        assert replay(data, reads) == (whole_chunks, whole_sse), cuts(reads)


def normalise_arguments(completion: dict[str, Any]) -> dict[str, Any]:
    """Tool arguments compared as JSON values: a stream carries the model's own spacing."""
    completion = jsonutil.loads(jsonutil.dumps(completion))
    for tc in completion["choices"][0]["message"].get("tool_calls") or []:
        tc["function"]["arguments"] = jsonutil.loads(tc["function"]["arguments"])
    return completion


@pytest.mark.parametrize("name", PAIRED)
def test_fold_of_stream_equals_whole_response(name: str) -> None:
    data = fixture(f"bedrock/{name}.bin")
    chunks, _ = replay(data, [data])
    assert "error" not in chunks[-2]
    folded = fold(chunks[:-1])
    body = fixture(f"bedrock/{STREAMS[name]['paired']}.converse.json")
    c = ctx()
    whole = PROVIDER.translate_response(body, c)
    assert whole == golden(f"bedrock/{name}.completion.json", whole)
    assert normalise_arguments(folded) == normalise_arguments(whole)
    assert c.upstream_latency_ms == chunks[-1]["upstream_latency_ms"]


# --- the decoder on its own ------------------------------------------------------

def frame(event: str, payload: bytes) -> bytes:
    return make.encode_frame([(":event-type", event), (":content-type", "application/json"),
                              (":message-type", "event")], payload)


def corrupt_prelude_crc(f: bytes) -> bytes:
    return f[:8] + bytes([f[8] ^ 0x01]) + f[9:]


def bad_lengths(f: bytes) -> bytes:
    # total length smaller than a frame can be, with a prelude CRC that matches it
    prelude = struct.pack(">II", 8, 0)
    return prelude + struct.pack(">I", zlib.crc32(prelude)) + f[12:]


GOOD = frame("messageStart", b'{"role":"assistant"}')


@pytest.mark.parametrize("name,data,kind,phase", [
    ("prelude CRC wrong", corrupt_prelude_crc(GOOD), ErrorKind.UPSTREAM_BAD_RESPONSE, "feed"),
    ("message CRC wrong", GOOD[:-1] + bytes([GOOD[-1] ^ 0x80]), ErrorKind.UPSTREAM_BAD_RESPONSE, "feed"),
    ("payload byte flipped", GOOD[:20] + bytes([GOOD[20] ^ 0x01]) + GOOD[21:], ErrorKind.UPSTREAM_BAD_RESPONSE, "feed"),
    ("impossible lengths", bad_lengths(GOOD), ErrorKind.UPSTREAM_BAD_RESPONSE, "feed"),
    ("only a prelude", GOOD[:12], ErrorKind.UPSTREAM_STREAM_CUT, "finish"),
    ("half a prelude", GOOD[:5], ErrorKind.UPSTREAM_STREAM_CUT, "finish"),
    ("frame less its CRC", GOOD[:-4], ErrorKind.UPSTREAM_STREAM_CUT, "finish"),
    ("one whole frame then 3 bytes", GOOD + GOOD[:3], ErrorKind.UPSTREAM_STREAM_CUT, "finish"),
])
def test_decoder_rejects_bad_bytes(name: str, data: bytes, kind: ErrorKind, phase: str) -> None:
    decoder = EventStreamDecoder()
    if phase == "feed":
        with pytest.raises(ProxyError) as exc:
            decoder.feed(data)
        assert exc.value.kind is kind
        # nothing after a corrupt frame is trusted
        with pytest.raises(ProxyError):
            decoder.feed(GOOD)
    else:
        decoder.feed(data)
        with pytest.raises(ProxyError) as exc:
            decoder.finish()
        assert exc.value.kind is kind


def test_decoder_gives_headers_and_payload_and_ends_clean() -> None:
    decoder = EventStreamDecoder()
    two = GOOD + frame("messageStop", b'{"stopReason":"end_turn"}')
    msgs = decoder.feed(two[:30]) + decoder.feed(two[30:])
    assert [(m.headers[":event-type"], m.payload) for m in msgs] == [
        ("messageStart", b'{"role":"assistant"}'), ("messageStop", b'{"stopReason":"end_turn"}')]
    assert decoder.feed(b"") == []
    assert decoder.finish() == []


def test_provider_gives_the_eventstream_decoder() -> None:
    assert PROVIDER.stream_decoder == "eventstream"
    assert isinstance(PROVIDER.new_decoder(), EventStreamDecoder)
