"""Request translation, both ways, as tables of (name, input, expected)."""
from __future__ import annotations

import json
from typing import Any

import pytest

from providers.base import Account
from providers.openai_responses import ResponsesProvider, pivot_to_responses
from tornado_proxy.apis.openai_responses import ResponsesFormat, encode_envelope, responses_to_pivot_request
from tornado_proxy.errors import ErrorKind, ProxyError

MODEL = {"id": "gpt-5", "provider": "oai", "upstream_model": "gpt-5-2025-08-07"}
CONF = {"name": "oai", "type": "openai-responses"}
ENC = "gAAAAABo_fake_encrypted_reasoning"
U = {"role": "user", "content": "hi"}


def req(**kw: Any) -> dict[str, Any]:
    return {"model": "gpt-5", "messages": [U], **kw}


BASE = {"model": "gpt-5-2025-08-07", "store": False, "include": ["reasoning.encrypted_content"]}
HI = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]

# (name, pivot request, model entry overrides, expected Responses body (merged over BASE))
PIVOT_TO_RESPONSES = [
    ("plain user text", req(), {}, {"input": HI}),
    ("system and developer lead -> instructions",
     {"model": "x", "messages": [{"role": "system", "content": "be brief"},
                                 {"role": "developer", "content": [{"type": "text", "text": "use SI"}]}, U]},
     {}, {"instructions": "be brief\n\nuse SI", "input": HI}),
    ("later system message stays in place",
     {"model": "x", "messages": [U, {"role": "system", "content": "now French"}]}, {},
     {"input": HI + [{"type": "message", "role": "system", "content": [{"type": "input_text", "text": "now French"}]}]}),
    ("model system_prompt goes first", req(), {"system_prompt": "house rules"},
     {"instructions": "house rules", "input": HI}),
    ("image part",
     {"model": "x", "messages": [{"role": "user", "content": [
         {"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA",
                                                                               "detail": "low"}}]}]}, {},
     {"input": [{"type": "message", "role": "user", "content": [
         {"type": "input_text", "text": "what?"},
         {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "low"}]}]}),
    ("assistant text, tool calls and tool results, reasoning restored",
     {"model": "x", "messages": [
         U,
         {"role": "assistant", "content": "let me look",
          "thinking_blocks": [{"type": "thinking", "thinking": "plan", "signature": ENC, "id": "rs_1"},
                              {"type": "thinking", "thinking": "claude's", "signature": "sig-anthropic"}],
          "tool_calls": [{"id": "call_1", "type": "function",
                          "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]}, {},
     {"input": HI + [
         {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "plan"}],
          "encrypted_content": ENC},
         {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "let me look",
                                                                "annotations": []}]},
         {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
         {"type": "function_call_output", "call_id": "call_1", "output": "18C"}]}),
    ("reasoning without encrypted content is skipped when not storing",
     {"model": "x", "messages": [U, {"role": "assistant", "content": "ok",
                                     "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "",
                                                          "id": "rs_2"}]}]}, {},
     {"input": HI + [{"type": "message", "role": "assistant",
                      "content": [{"type": "output_text", "text": "ok", "annotations": []}]}]}),
    ("max_tokens, sampling, user, metadata",
     req(max_tokens=100, temperature=0.2, top_p=0.9, user="u-1", metadata={"k": "v"}, n=1, presence_penalty=0), {},
     {"input": HI, "max_output_tokens": 100, "temperature": 0.2, "top_p": 0.9, "user": "u-1",
      "metadata": {"k": "v"}}),
    ("max_completion_tokens wins", req(max_tokens=100, max_completion_tokens=50), {},
     {"input": HI, "max_output_tokens": 50}),
    ("model max_tokens is the default", req(), {"max_tokens": 4096}, {"input": HI, "max_output_tokens": 4096}),
    ("tools and tool_choice",
     req(tools=[{"type": "function", "function": {"name": "f", "description": "d",
                                                  "parameters": {"type": "object"}, "strict": True}}],
         tool_choice={"type": "function", "function": {"name": "f"}}, parallel_tool_calls=False), {},
     {"input": HI, "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"},
                              "description": "d", "strict": True}],
      "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False}),
    ("json_schema response_format and verbosity",
     req(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"},
                                                                 "strict": True}}, verbosity="low"), {},
     {"input": HI, "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"},
                                       "strict": True}, "verbosity": "low"}}),
    ("client reasoning_effort", req(reasoning_effort="high"), {},
     {"input": HI, "reasoning": {"effort": "high", "summary": "auto"}}),
    ("model reasoning level", req(), {"reasoning": "low"},
     {"input": HI, "reasoning": {"effort": "low", "summary": "auto"}}),
    ("model level beats client effort", req(reasoning_effort="minimal"), {"reasoning": "high"},
     {"input": HI, "reasoning": {"effort": "high", "summary": "auto"}}),
    ("client effort when the model is auto", req(reasoning_effort="minimal"), {"reasoning": "auto"},
     {"input": HI, "reasoning": {"effort": "minimal", "summary": "auto"}}),
    ("-thinking alias means high", req(), {"_thinking_alias": True},
     {"input": HI, "reasoning": {"effort": "high", "summary": "auto"}}),
    ("reasoning off: no reasoning, no include", req(), {"reasoning": "off"}, {"input": HI, "include": None}),
    ("model off drops the client's effort", req(reasoning_effort="high"), {"reasoning": "off"},
     {"input": HI, "include": None}),
    ("core-resolved level wins", req(reasoning_effort="high", reasoning_level="low"), {"reasoning": "off"},
     {"input": HI, "reasoning": {"effort": "low", "summary": "auto"}}),
    ("effort none: no summary, no include", req(reasoning_effort="none"), {},
     {"input": HI, "include": None, "reasoning": {"effort": "none"}}),
    ("reasoning off with off_effort", req(), {"reasoning": "off", "options": {"off_effort": "none"}},
     {"input": HI, "include": None, "reasoning": {"effort": "none"}}),
    ("store option: no include", req(), {"options": {"store": True}}, {"input": HI, "store": True, "include": None}),
    ("summary option", req(reasoning_effort="low"), {"options": {"reasoning_summary": "detailed"}},
     {"input": HI, "reasoning": {"effort": "low", "summary": "detailed"}}),
    ("stream options are the client's business", req(stream=True, stream_options={"include_usage": True}), {},
     {"input": HI, "stream": True}),
]


@pytest.mark.parametrize("name,pivot,model,expected", PIVOT_TO_RESPONSES, ids=[c[0] for c in PIVOT_TO_RESPONSES])
def test_pivot_to_responses(name: str, pivot: dict[str, Any], model: dict[str, Any],
                            expected: dict[str, Any]) -> None:
    want = {k: v for k, v in {**BASE, **expected}.items() if v is not None}
    got = pivot_to_responses(pivot, {**MODEL, **model}, CONF, bool(pivot.get("stream")))
    assert got == want


# (name, pivot request, param named in the error, kind)
PIVOT_REJECTS = [
    ("stop", req(stop=["x"]), "stop", ErrorKind.UNSUPPORTED),
    ("n > 1", req(n=2), "n", ErrorKind.UNSUPPORTED),
    ("logprobs", req(logprobs=True), "logprobs", ErrorKind.UNSUPPORTED),
    ("seed", req(seed=7), "seed", ErrorKind.UNSUPPORTED),
    ("unknown field", req(frobnicate=1), "frobnicate", ErrorKind.UNSUPPORTED),
    ("non-function tool", req(tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0].type",
     ErrorKind.UNSUPPORTED),
    ("bad role", {"model": "x", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role",
     ErrorKind.INVALID_REQUEST),
    ("tool without id", {"model": "x", "messages": [U, {"role": "tool", "content": "x"}]},
     "messages[1].tool_call_id", ErrorKind.INVALID_REQUEST),
    ("unknown content part", {"model": "x", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "messages[0].content[0].type", ErrorKind.UNSUPPORTED),
    ("empty messages", {"model": "x", "messages": []}, "messages", ErrorKind.INVALID_REQUEST),
    ("bad max_tokens", req(max_tokens=0), "max_tokens", ErrorKind.INVALID_REQUEST),
]


@pytest.mark.parametrize("name,pivot,param,kind", PIVOT_REJECTS, ids=[c[0] for c in PIVOT_REJECTS])
def test_pivot_to_responses_rejects(name: str, pivot: dict[str, Any], param: str, kind: ErrorKind) -> None:
    with pytest.raises(ProxyError) as info:
        pivot_to_responses(pivot, MODEL, CONF, False)
    assert info.value.kind is kind
    assert info.value.param == param


def test_build_request_url_headers_and_body() -> None:
    p = ResponsesProvider({"name": "oai", "type": "openai-responses", "base_url": "http://127.0.0.1:9/v1/",
                           "headers": {"x-extra": "1"}})
    up = p.build_request(req(), {**MODEL, "headers": {"x-model": "2"}}, Account(id="a", api_key="test-key-123"), True)
    assert (up.method, up.url, up.stream) == ("POST", "http://127.0.0.1:9/v1/responses", True)
    assert up.headers["authorization"] == "Bearer test-key-123"
    assert up.headers["accept"] == "text/event-stream"
    assert up.headers["x-extra"] == "1" and up.headers["x-model"] == "2"
    assert json.loads(up.body or b"")["stream"] is True
    azure = ResponsesProvider({"name": "az", "type": "openai-responses", "base_url": "https://x.example/openai/v1",
                               "options": {"auth_header": "api-key", "api_version": "preview"}})
    up = azure.build_request(req(), MODEL, Account(id="a", api_key="test-key-123"), False)
    assert up.url == "https://x.example/openai/v1/responses?api-version=preview"
    assert up.headers["api-key"] == "test-key-123" and "authorization" not in up.headers


def test_native_request_maps_only_the_model() -> None:
    p = ResponsesProvider({"name": "oai", "type": "openai-responses", "base_url": "http://127.0.0.1:9/v1"})
    raw = b'{"model":"gpt-5","input":"hi","tools":[{"type":"web_search"}]}'
    up = p.build_native_request(json.loads(raw), raw, MODEL, Account(id="a", api_key="test-key-123"), False, {})
    assert json.loads(up.body or b"") == {"model": "gpt-5-2025-08-07", "input": "hi", "tools": [{"type": "web_search"}]}
    same = p.build_native_request(json.loads(raw), raw, {**MODEL, "upstream_model": "gpt-5"},
                                  Account(id="a", api_key="k"), False, {})
    assert same.body == raw


@pytest.mark.parametrize("name,options,problems", [
    ("good", {"store": True, "reasoning_summary": "concise", "auth_header": "api-key"}, 0),
    ("unknown option", {"stor": True}, 1),
    ("bad summary", {"reasoning_summary": "verbose"}, 1),
])
def test_validate_options(name: str, options: dict[str, Any], problems: int) -> None:
    p = ResponsesProvider({"name": "oai", "type": "openai-responses", "options": options})
    assert len(p.validate([{"id": "m", "options": {"store": "yes"}}])) == problems + 1


@pytest.mark.parametrize("name,status,body,kind", [
    ("quota is payment", 429, b'{"error":{"message":"You exceeded your current quota","type":"insufficient_quota",'
                              b'"code":"insufficient_quota"}}', ErrorKind.UPSTREAM_PAYMENT),
    ("rate limit", 429, b'{"error":{"message":"Rate limit","code":"rate_limit_exceeded"}}',
     ErrorKind.UPSTREAM_RATE_LIMITED),
    ("bad request", 400, b'{"error":{"message":"bad","param":"input"}}', ErrorKind.UPSTREAM_BAD_REQUEST),
])
def test_classify_error(name: str, status: int, body: bytes, kind: ErrorKind) -> None:
    p = ResponsesProvider({"name": "oai", "type": "openai-responses"})
    assert p.classify_error(status, {}, body).kind is kind


# ----------------------------------------------------------------------------
# Responses request -> pivot
# ----------------------------------------------------------------------------

BLOCKS = [{"type": "thinking", "thinking": "claude thought", "signature": "sig-anthropic"}]

# (name, Responses request (model added), expected pivot (model added))
RESPONSES_TO_PIVOT = [
    ("string input", {"input": "hi"}, {"messages": [U]}),
    ("instructions first", {"instructions": "be brief", "input": "hi"},
     {"messages": [{"role": "system", "content": "be brief"}, U]}),
    ("easy messages with parts",
     {"input": [{"role": "developer", "content": "dev"},
                {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                             {"type": "input_image", "image_url": "https://x.example/a.png",
                                              "detail": "high"}]}]},
     {"messages": [{"role": "developer", "content": "dev"},
                   {"role": "user", "content": [{"type": "text", "text": "look"},
                                                {"type": "image_url", "image_url": {"url": "https://x.example/a.png",
                                                                                    "detail": "high"}}]}]}),
    ("a tool round trip with our reasoning envelope",
     {"input": ["hi-placeholder",
                {"type": "reasoning", "id": "rs_x", "summary": [], "encrypted_content": encode_envelope(BLOCKS)},
                {"type": "message", "role": "assistant", "id": "msg_x", "status": "completed",
                 "content": [{"type": "output_text", "text": "checking", "annotations": []}]},
                {"type": "function_call", "id": "fc_x", "call_id": "call_1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "id": "fc_y", "call_id": "call_2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "one"},
                {"type": "function_call_output", "call_id": "call_2", "output": "two"}]},
     {"messages": [U, {"role": "assistant", "content": "checking", "thinking_blocks": BLOCKS,
                       "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                                      {"id": "call_2", "type": "function",
                                       "function": {"name": "g", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "one"},
                   {"role": "tool", "tool_call_id": "call_2", "content": "two"}]}),
    ("OpenAI's own reasoning item keeps its id",
     {"input": ["hi-placeholder",
                {"type": "reasoning", "id": "rs_o", "summary": [{"type": "summary_text", "text": "s"}],
                 "encrypted_content": ENC},
                {"role": "assistant", "content": "ok"}]},
     {"messages": [U, {"role": "assistant", "content": "ok",
                       "thinking_blocks": [{"type": "thinking", "thinking": "s", "signature": ENC, "id": "rs_o"}]}]}),
    ("reasoning with nothing to restore is skipped",
     {"input": ["hi-placeholder", {"type": "reasoning", "id": "rs_o", "summary": []},
                {"role": "assistant", "content": "ok"}]},
     {"messages": [U, {"role": "assistant", "content": "ok"}]}),
    ("parameters",
     {"input": "hi", "max_output_tokens": 64, "temperature": 0.5, "top_p": 1, "user": "u", "metadata": {"a": "b"},
      "parallel_tool_calls": False, "store": False, "truncation": "disabled", "include": ["reasoning.encrypted_content"],
      "stream": True, "stream_options": {"include_obfuscation": False},
      "reasoning": {"effort": "low", "summary": "auto"}, "text": {"format": {"type": "json_object"},
                                                                  "verbosity": "low"}},
     {"messages": [U], "max_tokens": 64, "temperature": 0.5, "top_p": 1, "user": "u", "metadata": {"a": "b"},
      "parallel_tool_calls": False, "stream": True, "reasoning_effort": "low",
      "response_format": {"type": "json_object"}, "verbosity": "low"}),
    ("function tools are strict by default",
     {"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}},
                               {"type": "function", "name": "g", "description": "d", "strict": False,
                                "parameters": None}],
      "tool_choice": {"type": "function", "name": "f"}},
     {"messages": [U], "tools": [
         {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}},
         {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {}},
                                           "description": "d", "strict": False}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ("json_schema format",
     {"input": "hi", "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"},
                                         "strict": True}}},
     {"messages": [U], "response_format": {"type": "json_schema",
                                           "json_schema": {"name": "n", "schema": {"type": "object"},
                                                           "strict": True}}}),
]


def _fix_input(body: dict[str, Any]) -> dict[str, Any]:
    inp = body.get("input")
    if isinstance(inp, list):
        body = {**body, "input": [{"role": "user", "content": "hi"} if i == "hi-placeholder" else i for i in inp]}
    return {"model": "claude-x", **body}


@pytest.mark.parametrize("name,body,expected", RESPONSES_TO_PIVOT, ids=[c[0] for c in RESPONSES_TO_PIVOT])
def test_responses_to_pivot(name: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert ResponsesFormat().parse_request(_fix_input(body)) == {"model": "claude-x", **expected}


def test_history_goes_between_instructions_and_input() -> None:
    history = [U, {"role": "assistant", "content": "hello"}]
    got = responses_to_pivot_request({"model": "m", "instructions": "new rules", "input": "again",
                                      "previous_response_id": "resp_1"}, history)
    assert got["messages"] == [{"role": "system", "content": "new rules"}, *history,
                               {"role": "user", "content": "again"}]


# (name, Responses request, param, kind)
RESPONSES_REJECTS = [
    ("hosted tool", {"input": "hi", "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type",
     ErrorKind.UNSUPPORTED),
    ("background", {"input": "hi", "background": True}, "background", ErrorKind.UNSUPPORTED),
    ("conversation", {"input": "hi", "conversation": "conv_1"}, "conversation", ErrorKind.UNSUPPORTED),
    ("truncation auto", {"input": "hi", "truncation": "auto"}, "truncation", ErrorKind.UNSUPPORTED),
    ("logprobs include", {"input": "hi", "include": ["message.output_text.logprobs"]}, "include[0]",
     ErrorKind.UNSUPPORTED),
    ("item_reference", {"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type",
     ErrorKind.UNSUPPORTED),
    ("computer call item", {"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type",
     ErrorKind.UNSUPPORTED),
    ("image by file id", {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input[0].content[0].file_id", ErrorKind.UNSUPPORTED),
    ("unknown parameter", {"input": "hi", "frobnicate": True}, "frobnicate", ErrorKind.UNSUPPORTED),
    ("wrong type", {"input": "hi", "max_output_tokens": "ten"}, "max_output_tokens", ErrorKind.INVALID_REQUEST),
    ("previous_response_id unknown", {"input": "hi", "previous_response_id": "resp_gone"}, "previous_response_id",
     ErrorKind.INVALID_REQUEST),
    ("no input", {"instructions": "x"}, "input", ErrorKind.INVALID_REQUEST),
    ("bad envelope", {"input": [{"type": "reasoning", "id": "rs_1", "summary": [],
                                 "encrypted_content": "tpr1.!!!"}]}, "input[0].encrypted_content",
     ErrorKind.INVALID_REQUEST),
    ("hosted tool_choice", {"input": "hi", "tool_choice": {"type": "web_search_preview"}}, "tool_choice.type",
     ErrorKind.UNSUPPORTED),
]


@pytest.mark.parametrize("name,body,param,kind", RESPONSES_REJECTS, ids=[c[0] for c in RESPONSES_REJECTS])
def test_responses_to_pivot_rejects(name: str, body: dict[str, Any], param: str, kind: ErrorKind) -> None:
    with pytest.raises(ProxyError) as info:
        ResponsesFormat().parse_request({"model": "m", **body})
    assert info.value.kind is kind
    assert info.value.param == param


def test_round_trip_chat_request_through_both_translations() -> None:
    """Responses request -> pivot -> Responses request keeps the conversation."""
    body = {"model": "gpt-5", "instructions": "sys", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "r"}]}
    again = pivot_to_responses(responses_to_pivot_request(body), MODEL, {"options": {"encrypted_reasoning": False}},
                               False)
    assert again["instructions"] == "sys"
    assert again["input"] == [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                              {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                              {"type": "function_call_output", "call_id": "c", "output": "r"}]
