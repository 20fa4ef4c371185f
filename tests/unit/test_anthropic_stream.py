"""Recorded Anthropic streams replayed through SSEDecoder + AnthropicStream.

Each fixture in tests/fixtures/anthropic/ is replayed (tests/replay.py) whole, byte
by byte, at random split points and at every 2-piece split; every way must give the
golden pivot chunks (or the golden error).
Folding the chunks must equal translating the whole response (built from the same
stream by the anthropic SDK's own accumulator), and re-encoding the chunks for a
/v1/messages client must give the golden Anthropic stream, which the SDK's
accumulator must read back into the same message.

Regenerate goldens (then read the diff!) with UPDATE_GOLDEN=1.
"""
from __future__ import annotations

from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event

from providers.anthropic_messages import AnthropicProvider
from providers.base import StreamContext, fold_chunks as fold
from tornado_proxy import jsonutil
from tornado_proxy.apis.anthropic_messages import MessagesEncoder
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.sse import SSEDecoder
from tests.replay import MODES, cuts, fixture, golden, replay as run, splits

# fixture -> the error kind it must end with (None: completes)
CASES = [
    ("text", None),
    ("tools", None),
    ("thinking_tools", None),
    ("redacted_thinking", None),
    ("tool_no_input", None),
    ("error_midstream", ErrorKind.UPSTREAM_OVERLOADED),
    ("cut", ErrorKind.UPSTREAM_STREAM_CUT),
]
NAMES = [c[0] for c in CASES]


def ctx() -> StreamContext:
    return StreamContext(id="chatcmpl-test123", created=1700000000, model="claude-test")


def msg_ctx() -> StreamContext:
    return StreamContext(id="msg_gateway123", created=1700000000, model="claude-test")


def replay(name: str, reads: list[bytes] | None = None) -> tuple[list[dict[str, Any]], ProxyError | None]:
    """The fixture through SSEDecoder + AnthropicStream (whole, or as ``reads``); on an
    error the chunks ``fail`` adds are kept too."""
    tr = AnthropicProvider({"name": "anthropic", "type": "anthropic"}).new_stream(ctx())
    chunks, err = run(SSEDecoder(), tr, reads or [fixture(f"anthropic/{name}.sse")])
    if err is not None:
        chunks.extend(tr.fail(err))
    return chunks, err


def result_of(chunks: list[dict[str, Any]], err: ProxyError | None) -> dict[str, Any]:
    out: dict[str, Any] = {"chunks": chunks}
    if err is not None:
        out["error"] = {"kind": err.kind.value, "message": err.message}
    return out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,kind", CASES, ids=NAMES)
def test_replay_matches_golden(name: str, kind: ErrorKind | None, mode: str) -> None:
    expected = golden(f"anthropic/{name}.chunks.json", result_of(*replay(name)))
    for reads in splits(fixture(f"anthropic/{name}.sse"), mode):
        chunks, err = replay(name, reads)
        assert (err.kind if err else None) == kind
        assert result_of(chunks, err) == expected, cuts(reads)


def sdk_message(data: bytes) -> dict[str, Any]:
    """The whole Message the anthropic SDK's stream accumulator builds from a stream."""
    dec = SSEDecoder()
    snapshot = None
    bufs: dict[int, bytes] = {}
    for ev in [*dec.feed(data), *dec.finish()]:
        obj = ev.json()
        if obj["type"] in ("ping", "error"):
            continue
        snapshot = accumulate_event(event=obj, current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None
    return snapshot.to_dict()


def normalise(msg: dict[str, Any]) -> dict[str, Any]:
    """What must survive a round trip: content blocks, stop reason, usage."""
    content = []
    for b in msg["content"]:
        b = {k: v for k, v in b.items() if v is not None and k not in ("caller", "citations", "parsed_output")}
        content.append(b)
    usage = {k: v for k, v in msg["usage"].items() if k in (
        "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
        "output_tokens_details") and v}
    return {"content": content, "stop_reason": msg["stop_reason"], "usage": usage}


COMPLETE = [n for n, k in CASES if k is None]


@pytest.mark.parametrize("name", COMPLETE)
def test_fold_equals_whole_response(name: str) -> None:
    chunks, err = replay(name)
    assert err is None
    whole = sdk_message(fixture(f"anthropic/{name}.sse"))
    provider = AnthropicProvider({"name": "anthropic", "type": "anthropic"})
    assert parsed_args(fold(chunks)) == parsed_args(provider.translate_response(jsonutil.dumpb(whole), ctx()))


def parsed_args(completion: dict[str, Any]) -> dict[str, Any]:
    """Tool arguments compared as JSON values: the stream carries Anthropic's own
    text (with its spaces), the whole response our serialisation of ``input``."""
    for call in completion["choices"][0]["message"].get("tool_calls") or []:
        call["function"]["arguments"] = jsonutil.loads(call["function"]["arguments"])
    return completion


@pytest.mark.parametrize("name,kind", CASES, ids=NAMES)
def test_reencoded_for_messages_client(name: str, kind: ErrorKind | None) -> None:
    chunks, err = replay(name)
    enc = MessagesEncoder(msg_ctx())
    out = b"".join(enc.feed(c) for c in chunks) + (enc.fail(err) if err else enc.finish())
    assert out == golden(f"anthropic/{name}.messages.sse", out)
    if kind is None:
        # Anthropic -> pivot -> Anthropic loses nothing a client can see.
        original = sdk_message(fixture(f"anthropic/{name}.sse"))
        again = sdk_message(out)
        assert again["id"] == "msg_gateway123" and again["model"] == "claude-test"
        assert normalise(again) == normalise(original)
    else:
        assert out.endswith(b"event: error\ndata: " + jsonutil.dumpb(
            {"type": "error", "error": {"type": err.info.anthropic_type, "message": err.message}}) + b"\n\n")


# -- the state machine rejects what Anthropic never sends -----------------------------

def _ev(obj: dict[str, Any]) -> Any:
    from tornado_proxy.pipeline.sse import SSEEvent
    return SSEEvent(obj["type"], jsonutil.dumps(obj))


START = {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                              "content": [], "model": "m", "usage": {"input_tokens": 3}}}


@pytest.mark.parametrize("name,events,message", [
    ("delta before start", [{"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": "x"}}], "before message_start"),
    ("delta for unopened block", [START, {"type": "content_block_delta", "index": 3,
                                          "delta": {"type": "text_delta", "text": "x"}}], "not open"),
    ("block opened twice", [START, {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}],
     "open block 0"),
    ("json delta in text block", [START, {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}},
                                  {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "input_json_delta", "partial_json": "{"}}], "in a text block"),
    ("stop with open block", [START, {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}},
                              {"type": "message_stop"}], "still open"),
    ("event after stop", [START, {"type": "message_stop"}, {"type": "message_delta", "delta": {}}],
     "after the stream ended"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_protocol_violations(name: str, events: list[dict[str, Any]], message: str) -> None:
    tr = AnthropicProvider({"name": "a", "type": "anthropic"}).new_stream(ctx())
    with pytest.raises(ProxyError) as info:
        for e in events:
            tr.feed(_ev(e))
    assert info.value.kind is ErrorKind.UPSTREAM_BAD_RESPONSE
    assert message in info.value.message


@pytest.mark.parametrize("etype,kind", [
    ("overloaded_error", ErrorKind.UPSTREAM_OVERLOADED),
    ("rate_limit_error", ErrorKind.UPSTREAM_RATE_LIMITED),
    ("api_error", ErrorKind.UPSTREAM_ERROR),
    ("invalid_request_error", ErrorKind.UPSTREAM_BAD_REQUEST),
    ("something_new", ErrorKind.UPSTREAM_ERROR),
])
def test_error_event_kinds(etype: str, kind: ErrorKind) -> None:
    tr = AnthropicProvider({"name": "a", "type": "anthropic"}).new_stream(ctx())
    tr.feed(_ev(START))
    with pytest.raises(ProxyError) as info:
        tr.feed(_ev({"type": "error", "error": {"type": etype, "message": "boom"}}))
    assert info.value.kind is kind and "boom" in info.value.message


def test_unknown_events_and_pings_are_ignored() -> None:
    tr = AnthropicProvider({"name": "a", "type": "anthropic"}).new_stream(ctx())
    assert len(tr.feed(_ev(START))) == 1
    assert tr.feed(_ev({"type": "ping"})) == []
    assert tr.feed(_ev({"type": "some_future_event", "x": 1})) == []
    out = tr.feed(_ev({"type": "message_stop"}))
    assert out[0]["choices"][0]["finish_reason"] == "stop"
    assert out[1]["usage"]["prompt_tokens"] == 3
