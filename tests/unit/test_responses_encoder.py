"""Pivot answers -> Responses objects and event streams (the /v1/responses client side).

Inputs are pivot chunk sequences: the golden chunks of the Responses fixtures
(so OpenAI streams make a round trip) and hand-written ones in the shapes the
other upstreams produce (Anthropic thinking + signature, parallel tool calls,
refusal).  The encoded stream must match its golden file, be accepted by
openai-python's ResponseStreamState, and its final Response must equal the
Response rendered from the folded chunks (goldens: tests/golden/responses/
<case>.responses.sse, the case being the fixture for a round trip).  UPDATE_GOLDEN=1
rewrites goldens.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from providers.base import StreamContext, fold_chunks
from providers.openai_responses import ENVELOPE_PREFIX
from tornado_proxy.apis.openai_responses import ResponsesFormat, decode_envelope
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.sse import SSEDecoder
from tests.replay import GOLDEN, golden

REQ_FULL = {"model": "claude-x", "input": "hi", "reasoning": {"effort": "medium", "summary": "auto"},
            "include": ["reasoning.encrypted_content"], "store": False}
REQ_PLAIN = {"model": "claude-x", "input": "hi"}


def ctx(req: dict[str, Any]) -> StreamContext:
    return StreamContext(id="resp_0123abcd", created=1700000000, model="claude-x", client_request=req)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    c: dict[str, Any] = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                         "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        c["usage"] = usage
    return c


USAGE = {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160,
         "prompt_tokens_details": {"cached_tokens": 100, "cache_creation_tokens": 8},
         "completion_tokens_details": {"reasoning_tokens": 12}}
SIG_BLOCK = {"type": "thinking", "thinking": "Need the weather.", "signature": "EqQBCkYIBxgCKkDfake"}

ANTHROPIC_TOOLS = [
    chunk({"role": "assistant"}),
    chunk({"reasoning_content": "Need the"}), chunk({"reasoning_content": " weather."}),
    chunk({"thinking_blocks": [SIG_BLOCK]}),
    chunk({"content": "Checking both."}),
    chunk({"tool_calls": [{"index": 0, "id": "toolu_01", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "toolu_02", "type": "function",
                           "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]}),
    chunk({}, "tool_calls"), chunk(None, usage=USAGE),
]
REFUSAL = [chunk({"role": "assistant"}), chunk({"refusal": "I can't"}), chunk({"refusal": " help."}),
           chunk({}, "stop")]
EMPTY: list[dict[str, Any]] = []


def golden_chunks(name: str) -> list[dict[str, Any]]:
    return json.loads((GOLDEN / "responses" / f"{name}.chunks.json").read_text())["chunks"]


# (name, chunks, request); a round trip is named after the fixture its chunks come from
CASES = [
    ("anthropic_tools", ANTHROPIC_TOOLS, REQ_FULL),
    ("anthropic_tools_plain", ANTHROPIC_TOOLS, REQ_PLAIN),
    ("refusal", REFUSAL, REQ_PLAIN),
    ("empty", EMPTY, REQ_PLAIN),
    ("roundtrip_text", golden_chunks("text"), REQ_PLAIN),
    ("roundtrip_reasoning_summary", golden_chunks("reasoning_summary"), REQ_FULL),
    ("roundtrip_function_calls", golden_chunks("function_calls"), REQ_FULL),
    ("roundtrip_incomplete", golden_chunks("incomplete"), REQ_PLAIN),
]


def encode(chunks: list[dict[str, Any]], req: dict[str, Any]) -> bytes:
    enc = ResponsesFormat().new_encoder(ctx(req))
    return b"".join(enc.feed(c) for c in chunks) + enc.finish()


def events(data: bytes) -> list[dict[str, Any]]:
    out = []
    for sse in SSEDecoder().feed(data):
        obj = json.loads(sse.data)
        assert sse.event == obj["type"]
        out.append(obj)
    return out


@pytest.mark.parametrize("name,chunks,req", CASES, ids=[c[0] for c in CASES])
def test_encoder_matches_golden(name: str, chunks: list[dict[str, Any]], req: dict[str, Any]) -> None:
    data = encode(chunks, req)
    assert data == golden(f"responses/{name.removeprefix('roundtrip_')}.responses.sse", data)


@pytest.mark.parametrize("name,chunks,req", CASES, ids=[c[0] for c in CASES])
def test_final_response_equals_rendered_fold(name: str, chunks: list[dict[str, Any]], req: dict[str, Any]) -> None:
    evs = events(encode(chunks, req))
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    assert evs[0]["type"] == "response.created" and evs[1]["type"] == "response.in_progress"
    final = evs[-1]
    assert final["type"] in ("response.completed", "response.incomplete")
    assert final["response"] == ResponsesFormat().render_response(fold_chunks(chunks), ctx(req))
    # Every item the stream announced is done, in the final output, in order.
    done = [e["item"] for e in evs if e["type"] == "response.output_item.done"]
    assert done == final["response"]["output"]


@pytest.mark.parametrize("name,chunks,req", CASES, ids=[c[0] for c in CASES])
def test_openai_python_stream_state_accepts_it(name: str, chunks: list[dict[str, Any]], req: dict[str, Any]) -> None:
    from openai._models import construct_type_unchecked
    from openai._types import omit
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent

    state = ResponseStreamState(text_format=omit, input_tools=omit)
    fired = []
    for obj in events(encode(chunks, req)):
        fired += state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=obj))  # type: ignore[arg-type]
    folded = fold_chunks(chunks)["choices"][0]["message"]
    if fired[-1].type == "response.completed":
        final = state._completed_response
        assert final is not None
        assert final.output_text == (folded.get("content") or "")
        calls = [o for o in final.output if o.type == "function_call"]
        assert [(c.call_id, c.arguments) for c in calls] == [
            (t["id"], t["function"]["arguments"]) for t in folded.get("tool_calls") or []]
    # The SDK's text deltas carry the text so far; its last snapshot is the whole text.
    snaps = [e.snapshot for e in fired if e.type == "response.output_text.delta"]
    if snaps:
        assert snaps[-1] == folded["content"]


def test_reasoning_envelope_carries_thinking_blocks_back() -> None:
    evs = events(encode(ANTHROPIC_TOOLS, REQ_FULL))
    rs = [e["item"] for e in evs if e["type"] == "response.output_item.done" and e["item"]["type"] == "reasoning"][0]
    assert rs["summary"] == [{"type": "summary_text", "text": "Need the weather."}]
    assert rs["encrypted_content"].startswith(ENVELOPE_PREFIX)
    assert decode_envelope(rs["encrypted_content"], "x") == [SIG_BLOCK]
    # ...and the client sending the items back gets the same pivot conversation.
    output = evs[-1]["response"]["output"]
    pivot = ResponsesFormat().parse_request({"model": "claude-x", "input": [{"role": "user", "content": "hi"},
                                                                           *output]})
    msg = pivot["messages"][1]
    assert msg["thinking_blocks"] == [SIG_BLOCK]
    assert msg["content"] == "Checking both."
    assert [c["id"] for c in msg["tool_calls"]] == ["toolu_01", "toolu_02"]


def test_no_summary_and_no_encrypted_content_unless_asked() -> None:
    evs = events(encode(ANTHROPIC_TOOLS, REQ_PLAIN))
    assert not any(e["type"].startswith("response.reasoning_summary") for e in evs)
    rs = evs[-1]["response"]["output"][0]
    assert rs == {"id": "rs_0123abcd_0", "type": "reasoning", "summary": []}


def test_usage_maps_cached_cache_write_and_reasoning_tokens() -> None:
    usage = events(encode(ANTHROPIC_TOOLS, REQ_PLAIN))[-1]["response"]["usage"]
    assert usage == {"input_tokens": 120, "input_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 8},
                     "output_tokens": 40, "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 160}


@pytest.mark.parametrize("name,err,code,started", [
    ("mid-stream upstream failure", ProxyError(ErrorKind.UPSTREAM_STREAM_CUT, "upstream stream ended"),
     "server_error", True),
    ("rate limit before any chunk", ProxyError(ErrorKind.UPSTREAM_RATE_LIMITED, "slow down"),
     "rate_limit_exceeded", False),
])
def test_fail_emits_error_then_response_failed(name: str, err: ProxyError, code: str, started: bool) -> None:
    enc = ResponsesFormat().new_encoder(ctx(REQ_PLAIN))
    data = b""
    if started:
        data += enc.feed(chunk({"role": "assistant"})) + enc.feed(chunk({"content": "Once"}))
    data += enc.fail(err)
    evs = events(data)
    assert evs[0]["type"] == "response.created"
    assert [e["type"] for e in evs[-2:]] == ["error", "response.failed"]
    assert evs[-2]["code"] == code and evs[-2]["message"] == err.message
    failed = evs[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": code, "message": err.message}
    assert enc.finish() == b"" and enc.fail(err) == b""
    with pytest.raises(ProxyError):
        enc.feed(chunk({"content": "late"}))


def test_render_response_non_stream() -> None:
    pivot = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "finish_reason": "length",
                          "message": {"role": "assistant", "content": "partial"}}],
             "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
    req = {"model": "claude-x", "input": "hi", "instructions": "sys", "max_output_tokens": 2, "temperature": 0.1,
           "tools": [], "metadata": {"a": "b"}}
    resp = ResponsesFormat().render_response(pivot, ctx(req))
    assert resp["status"] == "incomplete" and resp["incomplete_details"] == {"reason": "max_output_tokens"}
    assert resp["output"] == [{"id": "msg_0123abcd_0", "type": "message", "status": "completed", "role": "assistant",
                               "content": [{"type": "output_text", "annotations": [], "logprobs": [],
                                            "text": "partial"}]}]
    assert (resp["id"], resp["object"], resp["created_at"], resp["model"]) == ("resp_0123abcd", "response",
                                                                               1700000000, "claude-x")
    assert (resp["instructions"], resp["max_output_tokens"], resp["temperature"], resp["metadata"]) == (
        "sys", 2, 0.1, {"a": "b"})
    from openai.types.responses import Response

    assert Response.model_validate(resp).output_text == "partial"


def test_error_body_and_context_id() -> None:
    fmt = ResponsesFormat()
    assert fmt.context_id("abc") == "resp_abc"
    body = fmt.error_body(ProxyError(ErrorKind.UNSUPPORTED, "no", param="tools[0].type"))
    assert body == {"error": {"message": "no", "type": "invalid_request_error", "param": "tools[0].type",
                              "code": "unsupported_parameter"}}
