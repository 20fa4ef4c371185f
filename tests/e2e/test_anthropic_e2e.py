"""End to end: the official openai SDK against an ``anthropic`` fake upstream, and the
official anthropic SDK on /v1/messages against Anthropic and OpenAI-compatible
fake upstreams (streams, tools round trip, thinking signatures, images, usage, errors)."""
from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Reply, fixture_bytes, openai_provider, simple_config

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
MSGS = [{"role": "user", "content": "What's the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
A_TOOLS = [{"name": "get_weather", "description": "weather", "input_schema": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}]


def anthropic_provider(up: FakeUpstream, name: str = "anth", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "anthropic", "base_url": up.url,
            "accounts": [{"id": "acct-1", "api_key": "test-key-anthropic"}],
            "timeouts": {"connect": 2, "first_byte": 5, "idle": 5}, **extra}


def claude_config(up: FakeUpstream, **model: Any) -> dict[str, Any]:
    return simple_config([anthropic_provider(up)],
                         [{"id": "claude", "provider": "anth", "upstream_model": "claude-sonnet-4-20250514",
                           "max_tokens": 1024, **model}])


def gpt_config(up: FakeUpstream) -> dict[str, Any]:
    return simple_config([openai_provider(up, timeouts={"connect": 2, "first_byte": 5, "idle": 5})],
                         [{"id": "gpt", "provider": "up", "upstream_model": "gpt-4o-mini"}])


def oai(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)


def ant(gw: Any, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, max_retries=0, timeout=20, **({"api_key": "k"} | kw))


# ---------------------------------------------------------------------------
# OpenAI clients -> anthropic upstream
# ---------------------------------------------------------------------------

def test_openai_sdk_whole_response_with_thinking_tools_and_cache_usage(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"}, fixture_bytes("anthropic/message.json")))
    gw = harness.gateway(claude_config(up, system_prompt="Be brief."))
    r = oai(gw).chat.completions.create(
        model="claude", tools=TOOLS, temperature=0.5, stop=["END"], user="u-7",
        messages=[{"role": "system", "content": "You are a weather bot."},
                  {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
                                               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert m.content == "Let me check the weather in Paris."
    assert m.tool_calls[0].id == "toolu_01A09q90qw90lq917835lq9"
    assert json.loads(m.tool_calls[0].function.arguments) == {"location": "Paris, France", "unit": "celsius"}
    extra = m.model_extra or {}
    assert extra["reasoning_content"] == "The user asks for the weather; I should call the tool."
    assert extra["thinking_blocks"][0]["signature"] == "EqQBCgIYAhIM-test-signature-json=="
    assert r.usage.prompt_tokens == 472 + 100 + 1500 and r.usage.completion_tokens == 89
    assert r.usage.prompt_tokens_details.cached_tokens == 1500
    assert r.model == "claude"

    sent = up.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == "test-key-anthropic"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    body = sent.json()
    assert body["model"] == "claude-sonnet-4-20250514" and body["max_tokens"] == 1024
    assert body["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "You are a weather bot."}]
    assert body["messages"][0]["content"][1] == {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": PNG}}
    assert body["stop_sequences"] == ["END"] and body["temperature"] == 0.5
    assert body["metadata"] == {"user_id": "u-7"}
    assert [t["name"] for t in body["tools"]] == ["get_weather", "get_time"]


@pytest.mark.parametrize("split", [None, 1, 13])
def test_openai_sdk_stream_thinking_and_tools_then_signature_round_trip(harness: LoopThread,
                                                                         split: int | None) -> None:
    up = harness.upstream().push(Reply.sse_file("anthropic/thinking_tools.sse", split=split),
                                 Reply.sse_file("anthropic/text.sse"))
    gw = harness.gateway(claude_config(up))
    c = oai(gw)
    calls: dict[int, dict[str, Any]] = {}
    reasoning, text, blocks, finish, usage = "", "", [], None, None
    for ch in c.chat.completions.create(model="claude-thinking", messages=MSGS, tools=TOOLS, stream=True,
                                        stream_options={"include_usage": True}):
        if ch.usage:
            usage = ch.usage
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        extra = d.model_extra or {}
        reasoning += extra.get("reasoning_content") or ""
        blocks += extra.get("thinking_blocks") or []
        text += d.content or ""
        for tc in d.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            call["id"] = call["id"] or tc.id
            call["name"] = call["name"] or tc.function.name
            call["args"] += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    # tool indexes count tool calls, whatever thinking/text blocks came before them
    assert calls[0] == {"id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                        "args": '{"location": "Paris, France"}'}
    assert calls[1]["name"] == "get_time" and json.loads(calls[1]["args"]) == {"timezone": "Europe/Paris"}
    assert finish == "tool_calls"
    assert text == "27 * 453 = 12,231. Let me look up Paris."
    assert reasoning.startswith("The user wants") and reasoning.endswith("Also the local time.")
    assert [b["signature"] for b in blocks] == ["EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds-test-signature-1==",
                                                "EuYBCkQYAiJAtest-signature-2/interleaved+abc=="]
    assert usage.prompt_tokens == 512 and usage.completion_tokens == 301
    first = up.requests[0].json()
    # the -thinking alias is level high: budget 24576, max_tokens raised above it, interleaved beta for tools
    assert first["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    assert first["max_tokens"] == 24576 + 1024 and first["stream"] is True
    assert up.requests[0].headers["anthropic-beta"] == "interleaved-thinking-2025-05-14"

    # the next turn sends the blocks back; the gateway restores them before the tool_use blocks
    assistant = {"role": "assistant", "content": text, "reasoning_content": reasoning, "thinking_blocks": blocks,
                 "tool_calls": [{"id": calls[i]["id"], "type": "function",
                                 "function": {"name": calls[i]["name"], "arguments": calls[i]["args"]}} for i in (0, 1)]}
    list(c.chat.completions.create(model="claude-thinking", tools=TOOLS, stream=True, messages=[
        *MSGS, assistant,
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18C"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "10:00"}]))
    turns = up.requests[1].json()["messages"]
    assert [b["type"] for b in turns[1]["content"]] == ["thinking", "thinking", "text", "tool_use", "tool_use"]
    assert turns[1]["content"][0] == {"type": "thinking", "thinking": blocks[0]["thinking"],
                                      "signature": blocks[0]["signature"]}
    assert turns[2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": calls[0]["id"], "content": "18C"},
        {"type": "tool_result", "tool_use_id": calls[1]["id"], "content": "10:00"}]}


@pytest.mark.parametrize("status,headers,body,exc,code", [
    (529, {}, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
     openai.InternalServerError, 503),
    (429, {"retry-after": "9"}, {"type": "error", "error": {"type": "rate_limit_error", "message": "Too many"}},
     openai.RateLimitError, 429),
    (400, {}, {"type": "error", "error": {"type": "invalid_request_error", "message": "messages.0: bad"}},
     openai.BadRequestError, 400),
])
def test_openai_sdk_upstream_errors(harness: LoopThread, status: int, headers: dict[str, str], body: dict[str, Any],
                                    exc: type[Exception], code: int) -> None:
    up = harness.upstream()
    up.default = Reply.json(body, status=status, headers=headers)
    gw = harness.gateway(claude_config(up))
    with pytest.raises(exc) as e:
        oai(gw).chat.completions.create(model="claude", messages=MSGS)
    assert e.value.status_code == code  # type: ignore[attr-defined]
    assert body["error"]["message"] in e.value.message  # type: ignore[attr-defined]
    if status == 429:
        assert e.value.response.headers["retry-after"] == "9"  # type: ignore[attr-defined]


def test_error_read_with_the_first_text_fails_over_before_the_first_byte(harness: LoopThread) -> None:
    """Text and an error event in one upstream read: nothing has reached the client yet,
    so the gateway drops the partial text and retries on the next account."""
    up = harness.upstream()
    up.push(Reply(200, {"Content-Type": "text/event-stream"}, fixture_bytes("anthropic/error_midstream.sse")))
    up.push(Reply.sse_file("anthropic/text.sse"))
    prov = anthropic_provider(up)
    prov["accounts"] = [{"id": "acct-1", "api_key": "test-key-anthropic-1"},
                        {"id": "acct-2", "api_key": "test-key-anthropic-2"}]
    gw = harness.gateway(simple_config([prov], [{"id": "claude", "provider": "anth",
                                                 "upstream_model": "claude-sonnet-4-20250514"}]))
    chunks = list(oai(gw).chat.completions.create(model="claude", messages=MSGS, stream=True))
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert text == "Hello there! Ünïcödé → ok"  # none of the first attempt's text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    keys = [r.headers.get("x-api-key") for r in up.requests]
    assert keys == ["test-key-anthropic-1", "test-key-anthropic-2"]


def test_openai_sdk_unsupported_parameter_is_rejected_before_upstream(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway(claude_config(up))
    with pytest.raises(openai.BadRequestError) as e:
        oai(gw).chat.completions.create(model="claude", messages=MSGS, n=3)
    assert e.value.body["param"] == "n"  # type: ignore[index]
    assert up.requests == []


# ---------------------------------------------------------------------------
# anthropic SDK on /v1/messages -> anthropic upstream (pass-through)
# ---------------------------------------------------------------------------

def test_anthropic_sdk_passthrough_stream_keeps_everything(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply.sse_file("anthropic/thinking_tools.sse", split=7))
    gw = harness.gateway(claude_config(up))
    c = ant(gw, default_headers={"anthropic-beta": "fine-grained-tool-streaming-2025-05-14"})
    with c.messages.stream(model="claude", max_tokens=2048, messages=MSGS, tools=A_TOOLS,
                           thinking={"type": "enabled", "budget_tokens": 1024}) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "thinking", "tool_use"]
    assert final.content[0].signature == "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds-test-signature-1=="
    assert final.content[4].input == {"timezone": "Europe/Paris"}
    assert final.usage.output_tokens == 301 and final.stop_reason == "tool_use"
    sent = up.requests[0]
    body = sent.json()
    assert body["model"] == "claude-sonnet-4-20250514"  # only the model is mapped
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024} and body["max_tokens"] == 2048
    assert sent.headers["x-api-key"] == "test-key-anthropic"  # the account's key, not the client's
    assert sent.headers["anthropic-beta"] == "fine-grained-tool-streaming-2025-05-14,interleaved-thinking-2025-05-14"


def test_anthropic_sdk_bearer_auth_count_tokens_and_errors(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway({**claude_config(up), "server": {"access_keys": ["gw-secret"]}})
    up.push(Reply.json({"input_tokens": 42}))
    # current SDKs send Authorization: Bearer (auth_token); x-api-key works as well
    n = ant(gw, api_key=None, auth_token="gw-secret").messages.count_tokens(model="claude", messages=MSGS)
    assert n.input_tokens == 42
    assert up.requests[0].path == "/v1/messages/count_tokens"
    assert up.requests[0].json() == {"model": "claude-sonnet-4-20250514", "messages": MSGS}
    with pytest.raises(anthropic.AuthenticationError) as e:
        ant(gw, api_key="wrong").messages.create(model="claude", max_tokens=10, messages=MSGS)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    up.push(Reply.json({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, status=529))
    with pytest.raises(anthropic.APIStatusError) as e2:
        ant(gw, api_key="gw-secret").messages.create(model="claude", max_tokens=10, messages=MSGS)
    assert e2.value.status_code == 503 and e2.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as e3:
        ant(gw, api_key="gw-secret").messages.create(model="nope", max_tokens=10, messages=MSGS)
    assert e3.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


def test_anthropic_sdk_passthrough_midstream_error(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply.sse_file("anthropic/error_midstream.sse"))
    gw = harness.gateway(claude_config(up))
    with pytest.raises(anthropic.APIStatusError) as e:
        with ant(gw).messages.stream(model="claude", max_tokens=100, messages=MSGS) as s:
            s.get_final_message()
    assert "Overloaded" in str(e.value)


# ---------------------------------------------------------------------------
# anthropic SDK on /v1/messages -> OpenAI-compatible upstream (translated)
# ---------------------------------------------------------------------------

def test_anthropic_sdk_on_gpt_whole_response_and_image(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json")))
    gw = harness.gateway(gpt_config(up))
    r = ant(gw).messages.create(model="gpt", max_tokens=300, system=[{"type": "text", "text": "sys",
                                                                      "cache_control": {"type": "ephemeral"}}],
                                messages=[{"role": "user", "content": [
                                    {"type": "text", "text": "what is this?"},
                                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}])
    assert r.content[0].type == "text" and r.content[0].text == "Hello! How can I help you today?"
    assert r.stop_reason == "end_turn" and r.model == "gpt" and r.id.startswith("msg_")
    assert (r.usage.input_tokens, r.usage.output_tokens) == (19, 10)
    body = up.requests[0].json()
    assert body["model"] == "gpt-4o-mini" and body["max_tokens"] == 300
    assert body["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]


@pytest.mark.parametrize("split", [None, 5])
def test_anthropic_sdk_on_gpt_stream_tools_round_trip(harness: LoopThread, split: int | None) -> None:
    up = harness.upstream().push(Reply.sse_file("openai/tools.sse", split=split),
                                 Reply.sse_file("openai/text.sse"))
    gw = harness.gateway(gpt_config(up))
    c = ant(gw)
    tools = [*A_TOOLS, {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}]
    with c.messages.stream(model="gpt", max_tokens=300, messages=MSGS, tools=tools) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert [b.type for b in final.content] == ["tool_use", "tool_use"]
    assert final.content[0].id == "call_DdmO9pD3xa9XTPNJ32zg2hcA" and final.content[0].input == {"location": "Paris"}
    assert final.content[1].name == "get_time" and final.content[1].input == {"tz": "CET"}
    assert final.stop_reason == "tool_use" and final.usage.input_tokens == 19 and final.usage.output_tokens == 10
    first = up.requests[0].json()
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    assert first["tools"][0] == {"type": "function", "function": {
        "name": "get_weather", "description": "weather", "parameters": A_TOOLS[0]["input_schema"]}}

    with c.messages.stream(model="gpt", max_tokens=300, tools=tools, messages=[
            *MSGS, {"role": "assistant", "content": final.content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": final.content[0].id, "content": "18C"},
                {"type": "tool_result", "tool_use_id": final.content[1].id,
                 "content": [{"type": "text", "text": "10:00"}]}]}]) as s2:
        assert s2.get_final_text() == "Hello! How can I help you today?"
    sent = up.requests[1].json()["messages"]
    assert sent[1]["role"] == "assistant" and sent[1]["content"] is None
    assert [tc["id"] for tc in sent[1]["tool_calls"]] == [final.content[0].id, final.content[1].id]
    assert json.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"location": "Paris"}
    assert sent[2:] == [{"role": "tool", "tool_call_id": final.content[0].id, "content": "18C"},
                        {"role": "tool", "tool_call_id": final.content[1].id, "content": "10:00"}]


def test_anthropic_sdk_on_gpt_reasoning_becomes_thinking(harness: LoopThread) -> None:
    # An OpenAI-compatible reasoning server (DeepSeek-style reasoning_content deltas).
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Let me think"}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": " hard."}}]},
        {"choices": [{"index": 0, "delta": {"content": "42"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37,
                                  "prompt_tokens_details": {"cached_tokens": 20}}},
    ]
    data = b"".join(b"data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                                           "model": "r1", **ch}).encode() + b"\n\n" for ch in chunks)
    up = harness.upstream().push(Reply.sse(data + b"data: [DONE]\n\n"))
    gw = harness.gateway(gpt_config(up))
    with ant(gw).messages.stream(model="gpt", max_tokens=300, messages=MSGS,
                                 thinking={"type": "enabled", "budget_tokens": 2000}) as s:
        final = s.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].thinking == "Let me think hard."
    assert final.content[1].type == "text" and final.content[1].text == "42"
    assert final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (10, 20, 7)
    assert up.requests[0].json()["reasoning_effort"] == "low"


def test_anthropic_sdk_on_gpt_errors_and_count_tokens(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway(gpt_config(up))
    c = ant(gw)
    n = c.messages.count_tokens(model="gpt", messages=[{"role": "user", "content": "x" * 35}])
    assert n.input_tokens == 14  # local estimate: 35 chars / 3.5 + 4 per message
    with pytest.raises(anthropic.BadRequestError) as e:
        c.messages.create(model="gpt", max_tokens=10, messages=MSGS, extra_body={"top_k": 5})
    assert e.value.body["error"]["type"] == "invalid_request_error" and "top_k" in e.value.message  # type: ignore[index]
    up.push(Reply.sse_file("openai/error_midstream.sse"))
    with pytest.raises(anthropic.APIStatusError) as e3:
        with c.messages.stream(model="gpt", max_tokens=10, messages=MSGS) as s:
            s.get_final_message()
    assert "server had an error" in str(e3.value)
    # last: a 429 cools the only account down
    up.push(Reply.json({"error": {"message": "slow down", "type": "requests"}}, status=429,
                       headers={"retry-after": "3"}))
    with pytest.raises(anthropic.RateLimitError) as e2:
        c.messages.create(model="gpt", max_tokens=10, messages=MSGS)
    assert e2.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert e2.value.response.headers["retry-after"] == "3"
    assert len(up.requests) == 2  # count_tokens and the rejected request never reached it


def test_anthropic_only_fields_pass_through_but_are_rejected_for_other_upstreams(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"}, fixture_bytes("anthropic/message.json")))
    other = harness.upstream()
    gw = harness.gateway(simple_config(
        [anthropic_provider(up), openai_provider(other)],
        [{"id": "claude", "provider": "anth", "upstream_model": "claude-up"},
         {"id": "gpt", "provider": "up", "upstream_model": "gpt-4o-mini"}]))
    server_tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    extra = {"context_management": {"edits": []}, "top_k": 3}
    r = ant(gw).messages.create(model="claude", max_tokens=50, messages=MSGS, tools=[server_tool], extra_body=extra)
    assert r.stop_reason == "tool_use"
    sent = up.requests[0].json()
    assert sent["tools"] == [server_tool] and sent["context_management"] == {"edits": []} and sent["top_k"] == 3
    with pytest.raises(anthropic.BadRequestError) as e:
        ant(gw).messages.create(model="gpt", max_tokens=50, messages=MSGS, tools=[server_tool])
    assert "tools[0]" in e.value.message
    assert other.requests == []


def test_vendor_example_config_is_just_configuration(harness: LoopThread) -> None:
    """conf/anthropic-vendor.example.json with its vendor pointed at a fake upstream: own path,
    Bearer token, own headers, the model's system prompt and fixed reasoning level, on both routes."""
    from pathlib import Path

    raw = json.loads((Path(__file__).resolve().parents[2] / "conf" / "anthropic-vendor.example.json").read_text())
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"}, fixture_bytes("anthropic/message.json")),
                                 Reply.sse_file("anthropic/text.sse"))
    vendor = next(p for p in raw["providers"] if p["name"] == "vendor")
    vendor["base_url"] = up.url
    raw["server"] = {"access_keys": ["${PROXY_KEY}"]}
    env = {"PROXY_KEY": "test-proxy-key", "ANTHROPIC_API_KEY": "test-key-1", "VENDOR_PROJECT": "proj-9",
           "VENDOR_TOKEN_A": "test-vendor-token-a", "VENDOR_TOKEN_B": "test-vendor-token-b"}
    gw = harness.gateway(raw, env=env)
    r = openai.OpenAI(base_url=gw.url + "/v1", api_key="test-proxy-key", max_retries=0).chat.completions.create(
        model="vendor-claude", messages=MSGS, response_format={"type": "json_schema", "json_schema": {
            "name": "w", "schema": {"type": "object", "properties": {"t": {"type": "number"}}}}})
    assert r.choices[0].finish_reason == "tool_calls"
    with ant(gw, api_key=None, auth_token="test-proxy-key").messages.stream(
            model="vendor-claude", max_tokens=100, messages=MSGS) as s:
        assert s.get_final_text() == "Hello there! Ünïcödé → ok"
    for sent in up.requests:
        assert sent.path == "/anthropic/v1/messages"
        assert sent.headers["authorization"] in ("Bearer test-vendor-token-a", "Bearer test-vendor-token-b")
        assert "x-api-key" not in sent.headers
        assert sent.headers["x-vendor-project"] == "proj-9" and sent.headers["x-vendor-route"] == "eu-west"
        body = sent.json()
        assert body["model"] == "claude-sonnet-4-5@vendor"
        assert body["system"][0] == {"type": "text", "text": "You are the assistant of ACME Corp. Answer in the user's language."}
        assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192}  # the model's fixed level "medium"
    betas = [s.headers["anthropic-beta"].split(",") for s in up.requests]
    assert betas[0] == ["context-1m-2025-08-07", "fine-grained-tool-streaming-2025-05-14", "structured-outputs-2025-11-13"]
    assert up.requests[0].json()["output_format"] == {"type": "json_schema", "schema": {
        "type": "object", "properties": {"t": {"type": "number"}}}}
    assert betas[1] == ["context-1m-2025-08-07", "fine-grained-tool-streaming-2025-05-14"]


def test_a_long_passed_through_stream_counts_the_input_tokens_of_its_message_start(harness: LoopThread) -> None:
    """Anthropic reports input tokens in message_start, the stream's first event, and its
    message_delta (here, as in the API reference's example) only the output tokens.
    However long the stream, both reach the token metrics."""
    import time

    fixture = fixture_bytes("anthropic/text.sse")
    head, sep, rest = fixture.partition(b"event: content_block_delta")
    delta = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
             b'{"type":"text_delta","text":"word "}}\n\n')
    data = head + delta * 300 + sep + rest  # ~35 KiB of deltas between message_start and the end
    up = harness.upstream().push(Reply.sse(data, delay=0.001))  # (read by read, as a model writes them)
    gw = harness.gateway(claude_config(up))
    with ant(gw).messages.stream(model="claude", max_tokens=64, messages=MSGS) as s:
        final = s.get_final_message()
    assert final.content[0].text.startswith("word " * 300)  # type: ignore[union-attr]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 6)
    want = ['tornado_proxy_tokens_total{direction="in",model="claude",provider="anth"} 11.0',
            'tornado_proxy_tokens_total{direction="out",model="claude",provider="anth"} 6.0']
    deadline = time.monotonic() + 5  # (recorded as the upstream transfer ends, a moment after the client's last read)
    while not all(w in gw.metrics_text() for w in want) and time.monotonic() < deadline:
        time.sleep(0.02)
    text = gw.metrics_text()
    assert all(w in text for w in want), [line for line in text.splitlines() if "tokens_total{" in line]
