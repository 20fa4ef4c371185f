"""The field policy end to end: the real gateway, the official SDKs, a fake
OpenAI-compatible upstream.

* droppable fields reach no upstream, and are counted in
  ``tornado_proxy_dropped_fields_total{route,field}`` (every series there at start);
* Codex's namespace and custom tools go upstream as functions, and the calls come
  back to the client as the tools it declared (``namespace`` / ``custom_tool_call``);
* ``/v1/messages`` takes a mid-conversation system turn, and words a bad body as
  Anthropic's API does.
"""
from __future__ import annotations

import json
import re
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.harness import LoopThread, Reply, openai_provider, simple_config


def gateway(harness: LoopThread) -> tuple[Any, Any]:
    up = harness.upstream()
    gw = harness.gateway(simple_config([openai_provider(up, name="chat")],
                                       [{"id": "m", "provider": "chat", "upstream_model": "gpt-4o-mini"}]))
    return gw, up


def chat_stream(*deltas: dict[str, Any], finish: str = "stop") -> Reply:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1767225600, "model": "gpt-4o-mini"}
    events = [{**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    events.append({**head, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return Reply.sse(data)


def dropped(gw: Any, route: str, field: str) -> float | None:
    m = re.search(rf'^tornado_proxy_dropped_fields_total{{field="{re.escape(field)}",route="{route}"}} (\S+)$',
                  gw.metrics_text(), re.M)
    return float(m.group(1)) if m else None


def test_codex_fields_dropped_counted_and_tools_mapped_back(harness: LoopThread) -> None:
    gw, up = gateway(harness)
    # every droppable series is there before any traffic
    assert dropped(gw, "responses", "client_metadata") == 0
    assert dropped(gw, "messages", "context_management") == 0
    up.push(chat_stream({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "spawn_agent", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"task": "x"}'}}]},
        {"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                         "function": {"name": "apply_patch", "arguments": '{"input": "*** Begin Patch\\n"}'}}]},
        finish="tool_calls"))
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)
    tools: Any = [
        {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [
            {"type": "function", "name": "spawn_agent", "strict": False,
             "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}]},
        {"type": "custom", "name": "apply_patch", "description": "Apply a patch",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
        {"type": "tool_search", "execution": "client"},
        {"type": "web_search", "external_web_access": True}]
    with c.responses.stream(model="m", input="go", tools=tools, text={"verbosity": "low"},
                            extra_body={"client_metadata": {"session_id": "s-1"}}) as s:
        kinds = [e.type for e in s]
        final = s.get_final_response()
    sent = up.requests[0].json()
    # to the chat upstream: functions only, none of the dropped fields
    assert [t["function"]["name"] for t in sent["tools"]] == ["spawn_agent", "apply_patch"]
    assert sent["verbosity"] == "low"     # a chat upstream takes it
    assert "client_metadata" not in sent
    # back to the client: the namespaced call with its namespace, the custom tool's call as one
    call, custom = [o.model_dump() for o in final.output]
    assert call["type"] == "function_call" and call["name"] == "spawn_agent"
    assert call["namespace"] == "multi_agent_v1" and json.loads(call["arguments"]) == {"task": "x"}
    assert custom["type"] == "custom_tool_call" and custom["name"] == "apply_patch"
    assert custom["input"] == "*** Begin Patch\n" and custom["call_id"] == "call_2"
    assert "response.custom_tool_call_input.done" in kinds
    assert dropped(gw, "responses", "client_metadata") == 1
    assert dropped(gw, "responses", "tools.tool_search") == 1
    assert dropped(gw, "responses", "tools.web_search") == 1


def test_messages_mid_conversation_system_turn_and_noop_context_edit(harness: LoopThread) -> None:
    gw, up = gateway(harness)
    up.push(chat_stream({"role": "assistant", "content": "PONG"}))
    c = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)
    with c.messages.stream(model="m", max_tokens=100, messages=[
            {"role": "user", "content": "ping"},
            {"role": "system", "content": "The working directory is /tmp."},  # type: ignore[list-item, misc]
    ], thinking={"type": "adaptive", "display": "updates"},  # type: ignore[typeddict-unknown-key, typeddict-item]
            extra_body={"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
                        "output_config": {"effort": "low"}}) as s:
        text = s.get_final_text()
    assert text == "PONG"
    sent = up.requests[0].json()
    assert sent["messages"] == [{"role": "user", "content": "ping"},
                                {"role": "system", "content": "The working directory is /tmp."}]
    assert sent["reasoning_effort"] == "low" and "context_management" not in sent
    assert dropped(gw, "messages", "context_management") == 1
    assert dropped(gw, "messages", "thinking.display") == 1


@pytest.mark.parametrize("body,message", [
    ({"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]},
     "messages.1.role: Input should be 'user', 'assistant' or 'system'"),
    ({"messages": [{"role": "user", "content": "a"}], "extra_body": {"temperature": 3}},
     "temperature: Input should be less than or equal to 1"),
    ({"messages": [{"role": "user"}]}, "messages.0.content: Field required"),
])
def test_messages_errors_in_anthropics_words(harness: LoopThread, body: dict[str, Any], message: str) -> None:
    gw, up = gateway(harness)
    c = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="m", max_tokens=10, **body)
    assert e.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    assert up.requests == []


PATCH = "*** Begin Patch\n*** Update File: src/app.py\n@@\n-print(\"hi\")\n+print(\"héllo 😀\\t\")\n*** End Patch\n"
APPLY_PATCH: Any = [{"type": "custom", "name": "apply_patch", "description": "Apply a patch",
                     "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}}]


def anthropic_patch_stream(args: list[str]) -> Reply:
    evs: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
            "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "apply_patch", "input": {}}}),
        *[("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "input_json_delta", "partial_json": a}}) for a in args],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"})]
    data = b"".join(f"event: {k}\ndata: {json.dumps(v)}\n\n".encode() for k, v in evs)
    return Reply.sse(data, delay=0.01)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_custom_tool_input_streams_as_deltas_to_the_sdk(harness: LoopThread, kind: str) -> None:
    up = harness.upstream()
    wrapped = json.dumps({"input": PATCH})
    args = [wrapped[i:i + 9] for i in range(0, len(wrapped), 9)]
    if kind == "openai":
        provider = openai_provider(up, name="chat")
        up.push(chat_stream({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_9", "type": "function", "function": {"name": "apply_patch", "arguments": ""}}]},
            *[{"tool_calls": [{"index": 0, "function": {"arguments": a}}]} for a in args], finish="tool_calls"))
    else:
        provider = {"name": "chat", "type": "anthropic", "base_url": up.url, "accounts": [{"id": "a", "api_key": "k"}]}
        up.push(anthropic_patch_stream(args))
    gw = harness.gateway(simple_config([provider], [{"id": "m", "provider": "chat", "upstream_model": "x",
                                                     "max_tokens": 1024}]))
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)
    with c.responses.stream(model="m", input="patch it", tools=APPLY_PATCH) as s:
        evs = list(s)
        final = s.get_final_response()
    deltas = [e.delta for e in evs if e.type == "response.custom_tool_call_input.delta"]
    [done] = [e for e in evs if e.type == "response.custom_tool_call_input.done"]
    assert len(deltas) > 3  # streamed as the upstream's fragments came
    assert "".join(deltas) == done.input == PATCH
    [item] = final.output
    assert item.type == "custom_tool_call" and item.input == PATCH and item.name == "apply_patch"
    # and the raw stream (create(stream=True)) says the same
    if kind == "openai":
        up.push(chat_stream({"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_9", "type": "function", "function": {"name": "apply_patch", "arguments": ""}}]},
            *[{"tool_calls": [{"index": 0, "function": {"arguments": a}}]} for a in args], finish="tool_calls"))
        raw = list(c.responses.create(model="m", input="patch it", tools=APPLY_PATCH, stream=True))
        assert "".join(e.delta for e in raw if e.type == "response.custom_tool_call_input.delta") == PATCH
