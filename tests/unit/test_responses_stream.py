"""Responses upstream streams -> pivot chunks: recorded fixtures against golden files.

Each fixture in tests/fixtures/responses/ (see its README for provenance) is replayed
(tests/replay.py) through SSEDecoder + ResponsesToPivot whole, byte by byte, at random
split points and at every 2-piece split; all must give the golden chunks (and the
golden error, if any).  Folding the chunks must equal translating the whole Response
object.  Set UPDATE_GOLDEN=1 to rewrite the golden files (then review the diff).
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from providers.base import StreamContext, fold_chunks
from providers.openai_responses import ResponsesProvider, ResponsesToPivot
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.sse import SSEDecoder, SSEEvent
from tests.replay import MODES, cuts, error_record, fixture, golden, replay as run, splits

STREAMS = ["text", "reasoning_summary", "function_calls", "incomplete", "failed", "error_event", "cut"]
WHOLE = ["text", "reasoning_summary", "function_calls", "incomplete"]


def ctx() -> StreamContext:
    return StreamContext(id="chatcmpl-golden", created=1700000000, model="gpt-test")


def provider() -> ResponsesProvider:
    return ResponsesProvider({"name": "oai-resp", "type": "openai-responses", "base_url": "http://127.0.0.1:1/v1"})


def replay(data: bytes, pieces: list[bytes]) -> dict[str, Any]:
    assert b"".join(pieces) == data
    chunks, err = run(SSEDecoder(), provider().new_stream(ctx()), pieces)
    return {"chunks": chunks, "error": error_record(err)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", STREAMS)
def test_fixture_replay_matches_golden(name: str, mode: str) -> None:
    data = fixture(f"responses/{name}.sse")
    expected = golden(f"responses/{name}.chunks.json", replay(data, [data]))
    for reads in splits(data, mode):
        assert replay(data, reads) == expected, cuts(reads)


@pytest.mark.parametrize("name", WHOLE)
def test_fold_of_stream_equals_whole_response(name: str) -> None:
    data = fixture(f"responses/{name}.sse")
    streamed = fold_chunks(replay(data, [data])["chunks"])
    whole = provider().translate_response(fixture(f"responses/{name}.json"), ctx())
    assert streamed == whole


# (name, fixture, expected (finish_reason, usage subset, tool call indexes/ids, error kind))
EXPECTED = [
    ("text stops", "text", "stop", {"prompt_tokens": 14, "completion_tokens": 50}, [], None),
    ("reasoning usage details", "reasoning_summary", "stop",
     {"prompt_tokens": 1824, "prompt_tokens_details": {"cached_tokens": 1536},
      "completion_tokens_details": {"reasoning_tokens": 192}}, [], None),
    ("two calls keep their order", "function_calls", "tool_calls", {"completion_tokens": 87},
     [(0, "call_unLAR8MvFNptuiZK6K6HCy5k"), (1, "call_Kx3H1Fq0eZxJc7b2Wm9s4T8y")], None),
    ("max_output_tokens is length", "incomplete", "length", {"completion_tokens": 4}, [], None),
    ("response.failed raises", "failed", None, None, [], ErrorKind.UPSTREAM_ERROR),
    ("error event raises with its code", "error_event", None, None, [], ErrorKind.UPSTREAM_RATE_LIMITED),
    ("a cut stream is an error, not stop", "cut", None, None, [], ErrorKind.UPSTREAM_STREAM_CUT),
]


@pytest.mark.parametrize("name,stem,finish,usage,calls,error", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_stream_semantics(name: str, stem: str, finish: str | None, usage: dict[str, Any] | None,
                          calls: list[tuple[int, str]], error: ErrorKind | None) -> None:
    data = fixture(f"responses/{stem}.sse")
    got = replay(data, [data])
    chunks = got["chunks"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    if error is not None:
        assert got["error"]["kind"] == error.value
        assert not any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks)
        return
    assert got["error"] is None
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == finish and finishes.count(finish) == 1
    assert chunks[-1]["choices"] == [] and usage is not None
    for key, value in usage.items():
        assert chunks[-1]["usage"][key] == value
    firsts = [(tc["index"], tc["id"]) for c in chunks if c["choices"]
              for tc in c["choices"][0]["delta"].get("tool_calls", []) if "id" in tc]
    assert firsts == calls


def ev(obj: dict[str, Any]) -> SSEEvent:
    return SSEEvent(obj["type"], json.dumps(obj))


CREATED = {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "output": []}}

# (name, events after response.created, expected pivot deltas or error kind)
EDGE = [
    ("text only in output_text.done",
     [{"type": "response.output_item.added", "output_index": 0, "item": {"type": "message", "id": "m"}},
      {"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": "whole"}],
     [{"content": "whole"}]),
    ("function call announced only when done",
     [{"type": "response.output_item.done", "output_index": 0,
       "item": {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}}],
     [{"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]),
    ("arguments only in the done item",
     [{"type": "response.output_item.added", "output_index": 3,
       "item": {"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""}},
      {"type": "response.output_item.done", "output_index": 3,
       "item": {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"}}],
     [{"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
      {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]}]),
    ("raw reasoning text (open models)",
     [{"type": "response.reasoning_text.delta", "output_index": 0, "content_index": 0, "delta": "hm"}],
     [{"reasoning_content": "hm"}]),
    ("refusal", [{"type": "response.refusal.delta", "output_index": 0, "content_index": 0, "delta": "no"}],
     [{"refusal": "no"}]),
    ("unknown future events are ignored",
     [{"type": "response.web_search_call.searching", "output_index": 0}], []),
    ("arguments for an unknown item", [{"type": "response.function_call_arguments.delta", "output_index": 9,
                                        "delta": "x"}], ErrorKind.UPSTREAM_BAD_RESPONSE),
    ("second response.created", [CREATED], ErrorKind.UPSTREAM_BAD_RESPONSE),
    ("events after completion",
     [{"type": "response.completed", "response": {"status": "completed"}},
      {"type": "response.output_text.delta", "output_index": 0, "delta": "late"}], ErrorKind.UPSTREAM_BAD_RESPONSE),
    ("content_filter", [{"type": "response.incomplete",
                         "response": {"status": "incomplete", "incomplete_details": {"reason": "content_filter"}}}],
     [{}]),
    ("error nested like a chat error", [{"type": "error", "error": {"code": "server_error", "message": "x"}}],
     ErrorKind.UPSTREAM_ERROR),
]


@pytest.mark.parametrize("name,events,expected", EDGE, ids=[e[0] for e in EDGE])
def test_stream_edge_cases(name: str, events: list[dict[str, Any]], expected: Any) -> None:
    tr = ResponsesToPivot(ctx())
    assert tr.feed(ev(CREATED))[0]["choices"][0]["delta"] == {"role": "assistant"}
    if isinstance(expected, ErrorKind):
        with pytest.raises(ProxyError) as info:
            for e in events:
                tr.feed(ev(e))
        assert info.value.kind is expected
        return
    out = [c for e in events for c in tr.feed(ev(e))]
    assert [c["choices"][0]["delta"] for c in out] == expected
    if name == "content_filter":
        assert out[0]["choices"][0]["finish_reason"] == "content_filter"


def test_stream_must_start_with_created() -> None:
    tr = ResponsesToPivot(ctx())
    with pytest.raises(ProxyError) as info:
        tr.feed(ev({"type": "response.output_text.delta", "output_index": 0, "delta": "x"}))
    assert info.value.kind is ErrorKind.UPSTREAM_BAD_RESPONSE


@pytest.mark.parametrize("name", STREAMS)
def test_fixtures_are_accepted_by_openai_python(name: str) -> None:
    """The fixtures are well-formed: openai-python's own stream state machine takes them."""
    from openai._models import construct_type_unchecked
    from openai._types import omit
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent

    state = ResponseStreamState(text_format=omit, input_tools=omit)
    dec = SSEDecoder()
    seqs = []
    for sse in dec.feed(fixture(f"responses/{name}.sse")):
        obj = json.loads(sse.data)
        assert sse.event == obj["type"]
        seqs.append(obj["sequence_number"])
        state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=obj))  # type: ignore[arg-type]
    assert seqs == list(range(len(seqs)))
    if name in WHOLE and name != "incomplete":
        assert state._completed_response is not None
