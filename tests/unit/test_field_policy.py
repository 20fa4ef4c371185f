"""The field policy's tables against the official SDKs' typed params, and what the
client formats do with droppable, translated and rejected fields.

Every field the installed anthropic and openai SDKs define for a request has a
decision in ``tornado_proxy.fieldpolicy``: when an SDK release adds one, this test
fails until someone decides what it is (docs/field-policy.md).
"""
from __future__ import annotations

import typing
from typing import Any

import pytest
from anthropic.types import message_create_params as anthropic_params
from anthropic.types.beta import message_create_params as anthropic_beta_params
from openai.types.chat import completion_create_params as chat_params
from openai.types.responses import response_create_params as responses_params

from tornado_proxy import fieldpolicy
from tornado_proxy.apis.anthropic_messages import AnthropicMessagesFormat
from tornado_proxy.apis.openai_responses import ResponsesFormat
from tornado_proxy.errors import ErrorKind, ProxyError

DECISIONS = {fieldpolicy.TRANSLATED, fieldpolicy.DROPPABLE, fieldpolicy.EMULATED, fieldpolicy.REJECTED}


def sdk_fields(*typed_dicts: Any) -> set[str]:
    return {name for td in typed_dicts for name in typing.get_type_hints(td)}


SDK_PARAMS = [
    ("anthropic MessageCreateParams", "messages",
     sdk_fields(anthropic_params.MessageCreateParamsStreaming, anthropic_params.MessageCreateParamsNonStreaming)),
    ("anthropic beta MessageCreateParams", "messages",
     sdk_fields(anthropic_beta_params.MessageCreateParamsStreaming,
                anthropic_beta_params.MessageCreateParamsNonStreaming)),
    ("openai CompletionCreateParams", "chat_completions",
     sdk_fields(chat_params.CompletionCreateParamsStreaming, chat_params.CompletionCreateParamsNonStreaming)),
    ("openai ResponseCreateParams", "responses",
     sdk_fields(responses_params.ResponseCreateParamsStreaming, responses_params.ResponseCreateParamsNonStreaming)),
]


@pytest.mark.parametrize("name,route,fields", SDK_PARAMS, ids=[p[0] for p in SDK_PARAMS])
def test_every_sdk_field_has_a_decision(name: str, route: str, fields: set[str]) -> None:
    assert fields, name       # the SDK's params were found at all
    table = fieldpolicy.TABLES[route]
    unknown = sorted(fields - set(table))
    assert not unknown, f"{name}: no field-policy decision for {unknown} (tornado_proxy/fieldpolicy.py)"


@pytest.mark.parametrize("route", sorted(fieldpolicy.TABLES))
def test_every_decision_is_one_of_the_four(route: str) -> None:
    assert set(fieldpolicy.TABLES[route].values()) <= DECISIONS


# -- what the client formats do, by decision ----------------------------------------

MESSAGES = AnthropicMessagesFormat()
RESPONSES = ResponsesFormat()


def mreq(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **kw}


def rreq(**kw: Any) -> dict[str, Any]:
    return {"model": "m", "input": "hi", **kw}


@pytest.fixture
def drops() -> Any:
    seen: list[tuple[str, str]] = []
    fieldpolicy.set_sink(lambda route, field: seen.append((route, field)))
    yield seen
    fieldpolicy.set_sink(None)


DROPPED = [
    ("messages: no-op context edit", MESSAGES, mreq(context_management={"edits": [
        {"type": "clear_thinking_20251015", "keep": "all"}]}), [("messages", "context_management")]),
    ("messages: thinking display", MESSAGES, mreq(thinking={"type": "adaptive", "display": "updates"}),
     [("messages", "thinking.display")]),
    ("messages: ids and hints", MESSAGES, mreq(metadata={"user_id": "u"}, speed="fast", workspace_id="w"),
     [("messages", "metadata"), ("messages", "speed"), ("messages", "workspace_id")]),
    ("responses: Codex client_metadata", RESPONSES, rreq(client_metadata={"session_id": "s"}),
     [("responses", "client_metadata")]),
    ("responses: client-run tool search", RESPONSES, rreq(tools=[{"type": "tool_search", "execution": "client"}]),
     [("responses", "tools.tool_search")]),
    ("responses: offered web search", RESPONSES, rreq(tools=[{"type": "web_search"}]),
     [("responses", "tools.web_search")]),
]


@pytest.mark.parametrize("name,fmt,body,expected", DROPPED, ids=[d[0] for d in DROPPED])
def test_droppable_fields_are_dropped_and_counted(name: str, fmt: Any, body: dict[str, Any],
                                                 expected: list[tuple[str, str]], drops: Any) -> None:
    pivot = fmt.parse_request(body)
    assert drops == expected
    for _, field in expected:
        assert field.split(".")[0] not in pivot or field.split(".")[0] in ("thinking", "tools")


REJECTED = [
    ("messages: a context edit that clears", MESSAGES, mreq(context_management={"edits": [
        {"type": "clear_tool_uses_20250919"}]}), "context_management"),
    ("messages: clear_thinking keeping one turn", MESSAGES, mreq(context_management={"edits": [
        {"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 1}}]}), "context_management"),
    ("messages: mcp servers", MESSAGES, mreq(mcp_servers=[{"type": "url", "url": "https://x"}]), "mcp_servers"),
    ("messages: a field nobody decided", MESSAGES, mreq(brand_new_field=1), "brand_new_field"),
    ("responses: forced web search", RESPONSES, rreq(tools=[{"type": "web_search"}],
                                                    tool_choice={"type": "web_search"}), "tools[0].type"),
]


@pytest.mark.parametrize("name,fmt,body,param", REJECTED, ids=[r[0] for r in REJECTED])
def test_answer_changing_fields_are_rejected_naming_them(name: str, fmt: Any, body: dict[str, Any],
                                                        param: str) -> None:
    with pytest.raises(ProxyError) as info:
        fmt.parse_request(body)
    assert info.value.kind is ErrorKind.UNSUPPORTED and info.value.param == param


def test_mid_conversation_system_turn_keeps_its_place() -> None:
    pivot = MESSAGES.parse_request(mreq(messages=[
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "env: /tmp"}]},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"}]))
    assert [(m["role"], m["content"]) for m in pivot["messages"]] == [
        ("user", "hi"), ("system", "env: /tmp"), ("assistant", "hello"), ("user", "bye")]


def test_adaptive_thinking_turns_reasoning_on() -> None:
    assert MESSAGES.parse_request(mreq(thinking={"type": "adaptive"}, output_config={"effort": "medium"})
                                  )["reasoning_effort"] == "medium"
    assert MESSAGES.parse_request(mreq(thinking={"type": "adaptive"}))["reasoning_effort"] == "high"


NAMESPACE_TOOLS = [
    {"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {}}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [
        {"type": "function", "name": "spawn_agent", "parameters": {"type": "object", "properties": {}}},
        {"type": "function", "name": "exec_command", "parameters": {"type": "object", "properties": {}}}]},
    {"type": "custom", "name": "apply_patch", "description": "patch files",
     "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
]


def test_namespace_and_custom_tools_become_functions() -> None:
    pivot = RESPONSES.parse_request(rreq(tools=NAMESPACE_TOOLS, input=[
        {"type": "message", "role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "spawn_agent", "namespace": "multi_agent_v1",
         "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "done"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": None, "encrypted_content": None}]))
    fns = {t["function"]["name"]: t["function"] for t in pivot["tools"]}
    # flattened under their own names; a name already taken gets the namespace in front
    assert sorted(fns) == ["apply_patch", "exec_command", "multi_agent_v1__exec_command", "spawn_agent"]
    assert fns["apply_patch"]["parameters"]["required"] == ["input"]
    assert "start: /.+/" in fns["apply_patch"]["parameters"]["properties"]["input"]["description"]
    calls = [tc["function"] for m in pivot["messages"] for tc in m.get("tool_calls") or []]
    assert calls == [{"name": "spawn_agent", "arguments": "{}"},
                     {"name": "apply_patch", "arguments": '{"input":"*** Begin Patch"}'}]


# -- emulated: JSON mode where the upstream has none ---------------------------------

def test_json_mode_is_emulated_for_anthropic_and_bedrock() -> None:
    from providers.anthropic_messages import pivot_to_messages
    from providers.base import JSON_MODE_INSTRUCTION
    from providers.bedrock import converse_request

    req = {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
           "response_format": {"type": "json_object"}}
    body, _ = pivot_to_messages(req, {"id": "m", "upstream_model": "claude-x"}, False)
    assert body["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": JSON_MODE_INSTRUCTION}]
    conv = converse_request(req, {"id": "m", "upstream_model": "anthropic.claude-x"})
    assert conv["system"] == [{"text": "Be brief."}, {"text": JSON_MODE_INSTRUCTION}]


# -- Vercel AI SDK's structured output to Bedrock --------------------------------------

ONE_TOOL = [{"type": "function", "function": {"name": "json", "parameters": {"type": "object"}}}]


def test_one_forced_tool_without_parallel_calls_goes_to_bedrock() -> None:
    from providers.bedrock import converse_request

    # what /v1/messages makes of tool_choice {type: any, disable_parallel_tool_use: true} on one tool
    pivot = MESSAGES.parse_request(mreq(tools=[{"name": "json", "input_schema": {"type": "object"}}],
                                        tool_choice={"type": "any", "disable_parallel_tool_use": True}))
    assert pivot["tool_choice"] == "required" and pivot["parallel_tool_calls"] is False
    conv = converse_request(pivot, {"id": "m", "upstream_model": "anthropic.claude-x"})
    assert conv["toolConfig"]["toolChoice"] == {"any": {}}


def test_parallel_calls_off_is_refused_in_the_clients_own_words() -> None:
    from providers.bedrock import converse_request

    two = ONE_TOOL + [{"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}]
    req = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": two,
           "tool_choice": "required", "parallel_tool_calls": False}
    fieldpolicy.set_route("messages")
    try:
        with pytest.raises(ProxyError) as info:
            converse_request(req, {"id": "m", "upstream_model": "anthropic.claude-x"})
    finally:
        fieldpolicy.set_route("")
    assert info.value.param == "tool_choice.disable_parallel_tool_use"
