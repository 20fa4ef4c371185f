"""/v1/messages client side: Messages request -> pivot, pivot answer -> Messages
response and event stream (checked with the anthropic SDK's own accumulator)."""
from __future__ import annotations

from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message

from providers.base import StreamContext
from tornado_proxy import jsonutil
from tornado_proxy.apis.anthropic_messages import AnthropicMessagesFormat, estimate_input_tokens
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.sse import SSEDecoder

F = AnthropicMessagesFormat()
CTX = StreamContext(id="msg_abc", created=1700000000, model="gpt-x")
PNG = "iVBORw0KGgo="


def mreq(**kw: Any) -> dict[str, Any]:
    return {"model": "gpt-x", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **kw}


def preq(**kw: Any) -> dict[str, Any]:
    return {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, **kw}


# (name, Messages request, expected pivot)
PARSE = [
    ("minimal", mreq(), preq()),
    ("system blocks joined, cache_control and metadata dropped",
     mreq(system=[{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "b"}],
          metadata={"user_id": "claude-code-session"}),
     {"model": "gpt-x", "messages": [{"role": "system", "content": "a\n\nb"}, {"role": "user", "content": "hi"}],
      "max_tokens": 100}),
    ("sampling and stop", mreq(temperature=0.5, top_p=0.9, stop_sequences=["X"]),
     preq(temperature=0.5, top_p=0.9, stop=["X"])),
    ("stream asks for usage", mreq(stream=True), preq(stream=True, stream_options={"include_usage": True})),
    ("images and documents",
     mreq(messages=[{"role": "user", "content": [
         {"type": "text", "text": "look"},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
         {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
         {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
          "title": "a.pdf"}]}]),
     preq(messages=[{"role": "user", "content": [
         {"type": "text", "text": "look"},
         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
         {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
         {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}]}])),
    ("tool round trip with thinking: signature kept; tool results become tool messages, images follow",
     mreq(messages=[
         {"role": "user", "content": "weather?"},
         {"role": "assistant", "content": [
             {"type": "thinking", "thinking": "need tool", "signature": "sig"},
             {"type": "redacted_thinking", "data": "enc"},
             {"type": "text", "text": "Checking."},
             {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "Paris"}},
             {"type": "tool_use", "id": "toolu_2", "name": "shot", "input": {}}]},
         {"role": "user", "content": [
             {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
             {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": False, "content": [
                 {"type": "text", "text": "screenshot"},
                 {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
             {"type": "text", "text": "and?"}]}],
          tools=[{"name": "w", "description": "weather", "input_schema": {"type": "object"},
                  "cache_control": {"type": "ephemeral"}},
                 {"name": "shot", "input_schema": {"type": "object"}, "strict": True}],
          tool_choice={"type": "auto", "disable_parallel_tool_use": True}),
     preq(messages=[
         {"role": "user", "content": "weather?"},
         {"role": "assistant", "content": "Checking.", "reasoning_content": "need tool",
          "thinking_blocks": [{"type": "thinking", "thinking": "need tool", "signature": "sig"},
                              {"type": "redacted_thinking", "data": "enc"}],
          "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Paris\"}"}},
                         {"id": "toolu_2", "type": "function", "function": {"name": "shot", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
         {"role": "tool", "tool_call_id": "toolu_2", "content": "screenshot"},
         {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                                      {"type": "text", "text": "and?"}]}],
          tools=[{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}, "description": "weather"}},
                 {"type": "function", "function": {"name": "shot", "parameters": {"type": "object"}, "strict": True}}],
          tool_choice="auto", parallel_tool_calls=False)),
    ("tool_choice any / tool", mreq(tools=[{"name": "w", "input_schema": {"type": "object"}}],
                                    tool_choice={"type": "tool", "name": "w"}),
     preq(tools=[{"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}],
          tool_choice={"type": "function", "function": {"name": "w"}})),
    ("thinking budget -> effort", mreq(thinking={"type": "enabled", "budget_tokens": 10000}),
     preq(reasoning_effort="medium")),
    ("big budget -> high", mreq(thinking={"type": "enabled", "budget_tokens": 31999}), preq(reasoning_effort="high")),
    ("adaptive + effort", mreq(thinking={"type": "adaptive"}, output_config={"effort": "low"}), preq(reasoning_effort="low")),
    # adaptive thinking is on: with no effort, at Anthropic's default effort (high)
    ("adaptive alone: Anthropic's default effort", mreq(thinking={"type": "adaptive"}), preq(reasoning_effort="high")),
    ("disabled", mreq(thinking={"type": "disabled"}), preq()),
    ("structured output", mreq(output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}}),
     preq(response_format={"type": "json_schema", "json_schema": {"name": "output", "schema": {"type": "object"},
                                                                  "strict": True}})),
]


@pytest.mark.parametrize("name,body,expected", PARSE, ids=[p[0] for p in PARSE])
def test_parse_request(name: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert F.parse_request(body) == expected


@pytest.mark.parametrize("name,body,kind,param", [
    ("top_k", mreq(top_k=5), ErrorKind.UNSUPPORTED, "top_k"),
    ("server tool", mreq(tools=[{"type": "web_search_20250305", "name": "web_search"}]), ErrorKind.UNSUPPORTED, "tools[0]"),
    ("mcp servers", mreq(mcp_servers=[{"type": "url"}]), ErrorKind.UNSUPPORTED, "mcp_servers"),
    ("bad role", mreq(messages=[{"role": "system", "content": "x"}]), ErrorKind.INVALID_REQUEST, "messages[0].role"),
    ("server tool result in history", mreq(messages=[{"role": "assistant", "content": [
        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]),
     ErrorKind.UNSUPPORTED, "messages[0].content[0].type"),
    ("unknown thinking", mreq(thinking={"type": "maximum"}), ErrorKind.INVALID_REQUEST, "thinking.type"),
])
def test_parse_rejects(name: str, body: dict[str, Any], kind: ErrorKind, param: str) -> None:
    with pytest.raises(ProxyError) as info:
        F.parse_request(body)
    assert (info.value.kind, info.value.param) == (kind, param)


def completion(message: dict[str, Any], finish: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-up",
           "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    if usage:
        out["usage"] = usage
    return out


USAGE = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
         "prompt_tokens_details": {"cached_tokens": 800}, "completion_tokens_details": {"reasoning_tokens": 20}}
A_USAGE = {"input_tokens": 200, "output_tokens": 50, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 800,
           "output_tokens_details": {"thinking_tokens": 20}}


def amsg(content: list[dict[str, Any]], stop: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "msg_abc", "type": "message", "role": "assistant", "model": "gpt-x", "content": content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": usage or {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                               "cache_read_input_tokens": 0}}


RENDER = [
    ("text with cached usage", completion({"role": "assistant", "content": "Hello"}, "stop", USAGE),
     amsg([{"type": "text", "text": "Hello"}], "end_turn", A_USAGE)),
    ("length", completion({"role": "assistant", "content": "Hel"}, "length"), amsg([{"type": "text", "text": "Hel"}], "max_tokens")),
    ("content_filter", completion({"role": "assistant", "content": None, "refusal": "no"}, "content_filter"),
     amsg([{"type": "text", "text": "no"}], "refusal")),
    ("tool calls, unsigned reasoning shown as thinking",
     completion({"role": "assistant", "content": None, "reasoning_content": "plan", "tool_calls": [
         {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Paris\"}"}},
         {"id": "call_2", "type": "function", "function": {"name": "t", "arguments": ""}}]}, "tool_calls"),
     amsg([{"type": "thinking", "thinking": "plan", "signature": ""},
           {"type": "tool_use", "id": "call_1", "name": "w", "input": {"c": "Paris"}},
           {"type": "tool_use", "id": "call_2", "name": "t", "input": {}}], "tool_use")),
    ("signed thinking blocks win over reasoning_content",
     completion({"role": "assistant", "content": "ok", "reasoning_content": "r",
                 "thinking_blocks": [{"type": "thinking", "thinking": "r", "signature": "s", "id": "rs_1"},
                                     {"type": "redacted_thinking", "data": "d"}]}, "stop"),
     amsg([{"type": "thinking", "thinking": "r", "signature": "s"}, {"type": "redacted_thinking", "data": "d"},
           {"type": "text", "text": "ok"}], "end_turn")),
]


@pytest.mark.parametrize("name,pivot,expected", RENDER, ids=[r[0] for r in RENDER])
def test_render_response(name: str, pivot: dict[str, Any], expected: dict[str, Any]) -> None:
    out = F.render_response(pivot, CTX)
    assert out == expected
    Message.model_validate(out)  # the SDK's own model accepts it


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None,
          ) -> dict[str, Any]:
    c: dict[str, Any] = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "gpt-up",
                         "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        c["usage"] = usage
    return c


def sdk_fold(data: bytes) -> dict[str, Any]:
    snapshot = None
    bufs: dict[int, bytes] = {}
    dec = SSEDecoder()
    for ev in [*dec.feed(data), *dec.finish()]:
        snapshot = accumulate_event(event=ev.json(), current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None
    return snapshot.to_dict()


# (name, pivot chunks as an OpenAI-compatible upstream sends them, expected final Message content, stop, usage)
STREAMS = [
    ("text + usage chunk", [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
                            chunk({"content": "lo"}), chunk({}, "stop"), chunk(usage=USAGE)],
     [{"type": "text", "text": "Hello"}], "end_turn", A_USAGE),
    ("reasoning then text then two tools (OpenAI tool deltas)",
     [chunk({"role": "assistant", "reasoning_content": "think"}), chunk({"reasoning_content": "ing"}),
      chunk({"content": "Let me check."}),
      chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "w", "arguments": ""}}]}),
      chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"c\":"}}]}),
      chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
      chunk({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                             "function": {"name": "t", "arguments": "{}"}}]}),
      chunk({}, "tool_calls")],
     [{"type": "thinking", "thinking": "thinking", "signature": ""}, {"type": "text", "text": "Let me check."},
      {"type": "tool_use", "id": "call_1", "name": "w", "input": {"c": "Paris"}},
      {"type": "tool_use", "id": "call_2", "name": "t", "input": {}}], "tool_use",
     {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}),
    ("complete thinking blocks only (no reasoning deltas), with signature",
     [chunk({"role": "assistant"}), chunk({"thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"}]}),
      chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": "d"}]}), chunk({"content": "x"}),
      chunk({}, "length")],
     [{"type": "thinking", "thinking": "t", "signature": "s"}, {"type": "redacted_thinking", "data": "d"},
      {"type": "text", "text": "x"}], "max_tokens",
     {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}),
    ("empty stream still well-formed", [], [], "end_turn",
     {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}),
]


@pytest.mark.parametrize("name,chunks,content,stop,usage", STREAMS, ids=[s[0] for s in STREAMS])
def test_encoder_output_folds_in_the_sdk(name: str, chunks: list[dict[str, Any]], content: list[dict[str, Any]],
                                         stop: str, usage: dict[str, Any]) -> None:
    enc = F.new_encoder(CTX)
    data = b"".join(enc.feed(c) for c in chunks) + enc.finish()
    assert data.startswith(b"event: message_start\n") and data.endswith(
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    msg = sdk_fold(data)
    assert [{k: v for k, v in b.items() if v is not None and k != "citations"} for b in msg["content"]] == content
    assert msg["stop_reason"] == stop
    assert {k: v for k, v in msg["usage"].items() if v is not None} == usage
    assert (msg["id"], msg["model"]) == ("msg_abc", "gpt-x")


def test_encoder_new_id_at_the_same_index_is_a_new_call() -> None:
    enc = F.new_encoder(CTX)
    data = b"".join(enc.feed(c) for c in [
        chunk({"tool_calls": [{"id": "a", "function": {"name": "x", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"id": "b", "function": {"name": "y", "arguments": "{\"k\": 1}"}}]}),
        chunk({}, "tool_calls")]) + enc.finish()
    msg = sdk_fold(data)
    assert [(b["id"], b["name"], b["input"]) for b in msg["content"]] == [("a", "x", {}), ("b", "y", {"k": 1})]


def test_encoder_rejects_a_resumed_tool_call() -> None:
    enc = F.new_encoder(CTX)
    enc.feed(chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "x", "arguments": "{"}}]}))
    enc.feed(chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "y", "arguments": "{}"}}]}))
    with pytest.raises(ProxyError) as info:
        enc.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}))
    assert info.value.kind is ErrorKind.UPSTREAM_BAD_RESPONSE


def test_encoder_fail_is_an_error_event() -> None:
    enc = F.new_encoder(CTX)
    enc.feed(chunk({"content": "partial"}))
    out = enc.fail(ProxyError(ErrorKind.UPSTREAM_RATE_LIMITED, "slow down"))
    assert out == b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}\n\n'
    assert enc.finish() == b"" and enc.feed(chunk({"content": "late"})) == b""


def test_error_body_and_ids() -> None:
    assert F.error_body(ProxyError(ErrorKind.UPSTREAM_OVERLOADED, "busy")) == {
        "type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    assert F.context_id("0123abcd") == "msg_0123abcd"


@pytest.mark.parametrize("name,body,expected", [
    ("text only: chars / 3.5 + per-message", {"messages": [{"role": "user", "content": "x" * 35}]}, 14),
    ("system and blocks", {"system": "y" * 7, "messages": [{"role": "user", "content": [{"type": "text", "text": "z" * 7}]}]}, 8),
    ("an image costs a flat 1600", {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 10000}}]}]}, 1604),
    ("tools count by their JSON", {"messages": [], "tools": [{"name": "ab", "input_schema": {}}]},
     8 + 9),  # '{"name":"ab","input_schema":{}}' is 31 chars -> 9 tokens
])
def test_estimate_input_tokens(name: str, body: dict[str, Any], expected: int) -> None:
    assert estimate_input_tokens(body) == expected


def test_context_usage_of_render_is_valid_json() -> None:
    # The rendered message is plain JSON (no SDK objects), ready for the handler to write.
    out = F.render_response(completion({"role": "assistant", "content": "x"}, "stop", USAGE), CTX)
    assert jsonutil.loads(jsonutil.dumps(out)) == out
