"""Chat Completions (pivot) request -> Anthropic Messages request, as tables."""
from __future__ import annotations

from typing import Any

import pytest

from providers.anthropic_messages import AnthropicProvider, native_body, pivot_to_messages
from providers.base import Account
from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

MODEL: dict[str, Any] = {"id": "claude", "provider": "anthropic", "upstream_model": "claude-up", "max_tokens": 1000}
U = {"role": "user", "content": "hi"}
HI = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
PNG = "iVBORw0KGgo="


def req(**kw: Any) -> dict[str, Any]:
    return {"model": "claude", "messages": [U], **kw}


def model(**kw: Any) -> dict[str, Any]:
    return {**MODEL, **kw}


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "claude-up", "max_tokens": 1000, "messages": HI, **kw}


# (name, pivot request, model entry, expected body, expected anthropic-beta values)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], list[str]]] = [
    ("minimal", req(), MODEL, body(), []),
    ("default max_tokens when the model has none", req(), {**MODEL, "max_tokens": None},
     body(max_tokens=4096), []),
    ("max_completion_tokens wins", req(max_completion_tokens=50, max_tokens=70), MODEL, body(max_tokens=50), []),
    ("null parameters mean not given", req(temperature=None, stop=None, tools=None, n=None), MODEL, body(), []),
    ("system and developer go to system, in order; model prompt first",
     {"model": "claude", "messages": [{"role": "system", "content": "a"}, U,
                                      {"role": "developer", "content": [{"type": "text", "text": "b"}]}]},
     model(system_prompt="vendor"),
     body(system=[{"type": "text", "text": "vendor"}, {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
     []),
    ("consecutive same-role messages merge",
     {"model": "claude", "messages": [U, {"role": "user", "content": "again"},
                                      {"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]},
     MODEL, body(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]}]),
     []),
    ("images: data URI -> base64, https -> url; detail dropped",
     {"model": "claude", "messages": [{"role": "user", "content": [
         {"type": "text", "text": "look"},
         {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
         {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]},
     MODEL, body(messages=[{"role": "user", "content": [
         {"type": "text", "text": "look"},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
         {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]}]), []),
    ("pdf file -> document; cache breakpoints -> cache_control",
     {"model": "claude", "messages": [{"role": "user", "content": [
         {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
         {"type": "text", "text": "sum", "prompt_cache_breakpoint": {"mode": "explicit"}},
         {"type": "text", "text": "up", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]},
     MODEL, body(messages=[{"role": "user", "content": [
         {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
          "title": "a.pdf"},
         {"type": "text", "text": "sum", "cache_control": {"type": "ephemeral"}},
         {"type": "text", "text": "up", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]), []),
    ("tool round trip: tool_calls -> tool_use, tool -> tool_result in one user turn, then user text",
     {"model": "claude", "messages": [
         U,
         {"role": "assistant", "content": "", "tool_calls": [
             {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\": \"Paris\"}"}},
             {"id": "call_2", "type": "function", "function": {"name": "t", "arguments": ""}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
         {"role": "tool", "tool_call_id": "call_2", "content": [
             {"type": "text", "text": "12:00"},
             {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
         {"role": "user", "content": "thanks"}],
      "tools": [{"type": "function", "function": {"name": "w", "description": "weather",
                                                  "parameters": {"type": "object", "properties": {"c": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "t", "strict": True}}],
      "tool_choice": "auto", "parallel_tool_calls": False},
     MODEL, body(
         messages=[HI[0],
                   {"role": "assistant", "content": [
                       {"type": "tool_use", "id": "call_1", "name": "w", "input": {"c": "Paris"}},
                       {"type": "tool_use", "id": "call_2", "name": "t", "input": {}}]},
                   {"role": "user", "content": [
                       {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                       {"type": "tool_result", "tool_use_id": "call_2", "content": [
                           {"type": "text", "text": "12:00"},
                           {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
                       {"type": "text", "text": "thanks"}]}],
         tools=[{"name": "w", "description": "weather",
                 "input_schema": {"type": "object", "properties": {"c": {"type": "string"}}}},
                {"name": "t", "input_schema": {"type": "object", "properties": {}}, "strict": True}],
         tool_choice={"type": "auto", "disable_parallel_tool_use": True}), []),
    ("tool_choice required -> any; named -> tool",
     req(tools=[{"type": "function", "function": {"name": "w"}}], tool_choice={"type": "function", "function": {"name": "w"}}),
     MODEL, body(tools=[{"name": "w", "input_schema": {"type": "object", "properties": {}}}],
                 tool_choice={"type": "tool", "name": "w"}), []),
    ("allowed_tools filters the tools",
     req(tools=[{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "b"}}],
         tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
             {"type": "function", "function": {"name": "b"}}]}}),
     MODEL, body(tools=[{"name": "b", "input_schema": {"type": "object", "properties": {}}}],
                 tool_choice={"type": "any"}), []),
    ("sampling, stop, user",
     req(temperature=0.2, top_p=0.9, stop="END", user="u-1", stream_options={"include_usage": True}),
     MODEL, body(stop_sequences=["END"], temperature=0.2, top_p=0.9, metadata={"user_id": "u-1"}), []),
    ("metadata.user_id when no user; other metadata, store dropped",
     req(metadata={"user_id": "u-2", "tag": "x"}, store=True, n=1, presence_penalty=0),
     MODEL, body(metadata={"user_id": "u-2"}), []),
    ("drop_params for a model that rejects temperature",
     req(temperature=0.2, top_p=0.5), model(options={"drop_params": ["temperature"]}), body(top_p=0.5), []),
    ("json_schema -> output_config.format",
     req(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
     MODEL, body(output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}}), []),
    ("json_schema on a beta vendor -> output_format + beta",
     req(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
     model(options={"structured_outputs": "beta"}),
     body(output_format={"type": "json_schema", "schema": {"type": "object"}}), ["structured-outputs-2025-11-13"]),
    ("stream", req(stream=True), MODEL, body(stream=True), []),
    # -- reasoning ------------------------------------------------------------
    ("reasoning auto, no effort: no thinking", req(), model(reasoning="auto"), body(), []),
    ("client effort low; max_tokens raised above the budget",
     req(reasoning_effort="low"), MODEL,
     body(max_tokens=5096, thinking={"type": "enabled", "budget_tokens": 4096}), []),
    ("-thinking alias is high",
     {"model": "claude-thinking", "messages": [U], "max_tokens": 30000}, MODEL,
     body(max_tokens=30000, thinking={"type": "enabled", "budget_tokens": 24576}), []),
    ("client effort beats the alias",
     {"model": "claude-thinking", "messages": [U], "reasoning_effort": "medium"}, MODEL,
     body(max_tokens=13288, thinking={"type": "enabled", "budget_tokens": 12288}), []),
    ("model level beats the client; budgets configurable",
     req(reasoning_effort="high"), model(reasoning="low", reasoning_budgets={"low": 2048}),
     body(max_tokens=3048, thinking={"type": "enabled", "budget_tokens": 2048}), []),
    ("model off beats the alias", {"model": "claude-thinking", "messages": [U]}, model(reasoning="off"), body(), []),
    ("effort none: no thinking", req(reasoning_effort="none"), MODEL, body(), []),
    ("a level the core resolved wins", req(reasoning_level="low", reasoning_effort="high"), model(reasoning="high"),
     body(max_tokens=5096, thinking={"type": "enabled", "budget_tokens": 4096}), []),
    ("a resolved off wins over the alias", {"model": "claude-thinking", "messages": [U], "reasoning_level": "off"},
     MODEL, body(), []),
    ("adaptive-only model", req(reasoning_effort="xhigh"), model(options={"adaptive_thinking": True}),
     body(thinking={"type": "adaptive"}, output_config={"effort": "xhigh"}), []),
    ("thinking with tools adds the interleaved beta; temperature dropped, top_p >= .95 kept",
     req(reasoning_effort="low", temperature=0.3, top_p=0.97, tools=[{"type": "function", "function": {"name": "w"}}]),
     MODEL, body(max_tokens=5096, tools=[{"name": "w", "input_schema": {"type": "object", "properties": {}}}],
                 thinking={"type": "enabled", "budget_tokens": 4096}, top_p=0.97),
     ["interleaved-thinking-2025-05-14"]),
    ("forced tool use turns thinking off",
     req(reasoning_effort="high", tools=[{"type": "function", "function": {"name": "w"}}], tool_choice="required"),
     MODEL, body(tools=[{"name": "w", "input_schema": {"type": "object", "properties": {}}}],
                 tool_choice={"type": "any"}), []),
    ("thinking blocks restored before text and tool use; unsigned and Responses blocks skipped",
     {"model": "claude", "messages": [U, {
         "role": "assistant", "content": "ok", "reasoning_content": "ignored without blocks",
         "thinking_blocks": [{"type": "thinking", "thinking": "t1", "signature": "sig1"},
                             {"type": "redacted_thinking", "data": "enc"},
                             {"type": "thinking", "thinking": "unsigned", "signature": ""},
                             {"type": "thinking", "thinking": "rs", "signature": "gAAA", "id": "rs_1"}],
         "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "toolu_1", "content": "done"}]},
     MODEL, body(messages=[HI[0], {"role": "assistant", "content": [
         {"type": "thinking", "thinking": "t1", "signature": "sig1"},
         {"type": "redacted_thinking", "data": "enc"},
         {"type": "text", "text": "ok"},
         {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}]},
         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "done"}]}]), []),
    ("model betas always sent", req(), model(options={"betas": ["context-1m-2025-08-07"]}), body(),
     ["context-1m-2025-08-07"]),
]


@pytest.mark.parametrize("name,pivot,model_conf,expected,betas", CASES, ids=[c[0] for c in CASES])
def test_pivot_to_messages(name: str, pivot: dict[str, Any], model_conf: dict[str, Any],
                           expected: dict[str, Any], betas: list[str]) -> None:
    out, got_betas = pivot_to_messages(pivot, model_conf, bool(pivot.get("stream")))
    assert out == expected
    assert got_betas == betas


# (name, pivot request, error kind, param)
REJECTED = [
    ("n > 1", req(n=2), ErrorKind.UNSUPPORTED, "n"),
    ("logprobs", req(logprobs=True), ErrorKind.UNSUPPORTED, "logprobs"),
    ("penalty", req(frequency_penalty=0.5), ErrorKind.UNSUPPORTED, "frequency_penalty"),
    ("seed", req(seed=1), ErrorKind.UNSUPPORTED, "seed"),
    ("temperature above Anthropic's range", req(temperature=1.5), ErrorKind.UNSUPPORTED, "temperature"),
    ("audio output", req(modalities=["text", "audio"]), ErrorKind.UNSUPPORTED, "modalities"),
    ("unknown parameter", req(frobnicate=True), ErrorKind.UNSUPPORTED, "frobnicate"),
    ("structured outputs off", req(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
     ErrorKind.UNSUPPORTED, "response_format"),
    ("bad effort", req(reasoning_effort="huge"), ErrorKind.INVALID_REQUEST, "reasoning_effort"),
    ("legacy functions", req(functions=[{"name": "f"}]), ErrorKind.UNSUPPORTED, "functions"),
    ("custom tool", req(tools=[{"type": "custom", "custom": {"name": "x"}}]), ErrorKind.UNSUPPORTED, "tools[0].type"),
    ("tool_choice names an unknown tool", req(tools=[{"type": "function", "function": {"name": "a"}}],
                                              tool_choice={"type": "function", "function": {"name": "b"}}),
     ErrorKind.INVALID_REQUEST, "tool_choice.function.name"),
    ("audio input", {"model": "c", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]},
     ErrorKind.UNSUPPORTED, "messages[0].content[0].type"),
    ("svg image", {"model": "c", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}}]}]},
     ErrorKind.UNSUPPORTED, "messages[0].content[0].image_url.url"),
    ("not a data URI", {"model": "c", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}]},
     ErrorKind.INVALID_REQUEST, "messages[0].content[0].image_url.url"),
    ("file id", {"model": "c", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-1"}}]}]}, ErrorKind.UNSUPPORTED, "messages[0].content[0].file.file_id"),
    ("bad tool arguments", {"model": "c", "messages": [U, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{oops"}}]}]},
     ErrorKind.INVALID_REQUEST, "messages[1].tool_calls[0].function.arguments"),
    ("function role", {"model": "c", "messages": [{"role": "function", "name": "f", "content": "x"}]},
     ErrorKind.UNSUPPORTED, "messages[0].role"),
    ("tool without id", {"model": "c", "messages": [{"role": "tool", "content": "x"}]},
     ErrorKind.INVALID_REQUEST, "messages[0].tool_call_id"),
    ("no messages", {"model": "c", "messages": []}, ErrorKind.INVALID_REQUEST, "messages"),
]


@pytest.mark.parametrize("name,pivot,kind,param", REJECTED, ids=[c[0] for c in REJECTED])
def test_rejected(name: str, pivot: dict[str, Any], kind: ErrorKind, param: str) -> None:
    conf = model(options={"structured_outputs": "none"}) if name == "structured outputs off" else MODEL
    with pytest.raises(ProxyError) as info:
        pivot_to_messages(pivot, conf, False)
    assert info.value.kind is kind
    assert info.value.param == param


# -- headers and URL ------------------------------------------------------------

def provider(**opts: Any) -> AnthropicProvider:
    return AnthropicProvider({"name": "a", "type": "anthropic", "base_url": "https://vendor.example/api/",
                              "headers": {"X-Team": "t1"}, "options": opts})


# (name, provider options, account, model, expected headers)
HEADERS = [
    ("x-api-key by default", {}, Account("a1", "test-key-123"), MODEL,
     {"content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "test-key-123",
      "x-team": "t1"}),
    ("bearer for OAuth / vendors, betas merged from provider, model headers and features",
     {"auth": "bearer", "betas": ["oauth-2025-04-20"]}, Account("a1", "test-key-123"),
     model(headers={"anthropic-beta": "fine-grained-tool-streaming-2025-05-14", "X-Vendor-Token": "v"}),
     {"content-type": "application/json", "anthropic-version": "2023-06-01", "authorization": "Bearer test-key-123",
      "x-team": "t1", "x-vendor-token": "v",
      "anthropic-beta": "oauth-2025-04-20,fine-grained-tool-streaming-2025-05-14,interleaved-thinking-2025-05-14"}),
    ("Claude OAuth accounts use bearer and the OAuth beta", {},
     Account("a1", "sk-ant-oat01-test", extra={"credential": "oauth"}),
     MODEL, {"content-type": "application/json", "anthropic-version": "2023-06-01",
             "authorization": "Bearer sk-ant-oat01-test", "x-team": "t1", "anthropic-beta": "oauth-2025-04-20"}),
    ("a vendor's OAuth account (WorkOS...) uses bearer without the Claude OAuth beta", {},
     Account("a1", "test-token-123", extra={"credential": "oauth"}),
     MODEL, {"content-type": "application/json", "anthropic-version": "2023-06-01",
             "authorization": "Bearer test-token-123", "x-team": "t1"}),
    ("a client's own OAuth token passed through", {}, Account("client", "sk-ant-oat01-test", extra={"credential": "client"}),
     MODEL, {"content-type": "application/json", "anthropic-version": "2023-06-01",
             "authorization": "Bearer sk-ant-oat01-test", "x-team": "t1", "anthropic-beta": "oauth-2025-04-20"}),
    ("a client's own API key passed through", {}, Account("client", "sk-ant-api03-test", extra={"credential": "client"}),
     MODEL, {"content-type": "application/json", "anthropic-version": "2023-06-01",
             "x-api-key": "sk-ant-api03-test", "x-team": "t1"}),
]


@pytest.mark.parametrize("name,opts,account,model_conf,expected", HEADERS, ids=[h[0] for h in HEADERS])
def test_headers(name: str, opts: dict[str, Any], account: Account, model_conf: dict[str, Any],
                 expected: dict[str, str]) -> None:
    pivot = req(reasoning_effort="low", tools=[{"type": "function", "function": {"name": "w"}}]) \
        if "features" in name else req()
    up = provider(**opts).build_request(pivot, model_conf, account, stream=False)
    assert up.url == "https://vendor.example/api/v1/messages"
    assert up.method == "POST" and up.stream is False
    assert up.headers == expected


# -- native pass-through ----------------------------------------------------------

NATIVE_IN = {"model": "claude", "max_tokens": 100, "system": "be brief",
             "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}],
             "tools": [{"name": "w", "input_schema": {"type": "object"}}], "metadata": {"user_id": "u"},
             "some_new_field": {"kept": True}}

# (name, client body, model, count_tokens?, expected body, expected betas)
NATIVE = [
    ("model mapped, everything else as sent", NATIVE_IN, MODEL, False, {**NATIVE_IN, "model": "claude-up"}, []),
    ("system prompt prepended as its own block", NATIVE_IN, model(system_prompt="vendor rules"), False,
     {**NATIVE_IN, "model": "claude-up",
      "system": [{"type": "text", "text": "vendor rules"}, {"type": "text", "text": "be brief"}]}, []),
    ("fixed level applied when the client sent no thinking", NATIVE_IN, model(reasoning="low"), False,
     {**NATIVE_IN, "model": "claude-up", "max_tokens": 4196, "thinking": {"type": "enabled", "budget_tokens": 4096}},
     ["interleaved-thinking-2025-05-14"]),
    ("the client's thinking is kept", {**NATIVE_IN, "thinking": {"type": "disabled"}}, model(reasoning="high"), False,
     {**NATIVE_IN, "model": "claude-up", "thinking": {"type": "disabled"}}, []),
    ("-thinking alias on an adaptive model", {**NATIVE_IN, "model": "claude-thinking"},
     model(options={"adaptive_thinking": True}), False,
     {**NATIVE_IN, "model": "claude-up", "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}}, []),
    ("drop_params apply on the native route too", {**NATIVE_IN, "temperature": 0.7, "top_p": 0.9},
     model(options={"drop_params": ["temperature", "user"]}), False,
     {**{k: v for k, v in NATIVE_IN.items() if k != "metadata"}, "model": "claude-up", "top_p": 0.9}, []),
    ("count_tokens keeps only what it accepts", NATIVE_IN, MODEL, True,
     {"model": "claude-up", "system": "be brief", "messages": NATIVE_IN["messages"], "tools": NATIVE_IN["tools"]}, []),
]


@pytest.mark.parametrize("name,client,model_conf,count,expected,betas", NATIVE, ids=[n[0] for n in NATIVE])
def test_native_body(name: str, client: dict[str, Any], model_conf: dict[str, Any], count: bool,
                     expected: dict[str, Any], betas: list[str]) -> None:
    assert native_body(client, model_conf, count) == (expected, betas)


def test_native_request_passes_client_beta_and_version() -> None:
    up = provider().build_native_request(
        NATIVE_IN, jsonutil.dumpb(NATIVE_IN), model(options={"betas": ["b-model"]}), Account("a", "test-key-123"),
        True, {"anthropic-beta": "b-client,b-model", "anthropic-version": "2024-01-01", "x-api-key": "gateway-key"})
    assert up.url == "https://vendor.example/api/v1/messages" and up.stream
    assert up.headers["anthropic-beta"] == "b-client,b-model"
    assert up.headers["anthropic-version"] == "2024-01-01"
    assert up.headers["x-api-key"] == "test-key-123"  # the account's key, never the client's
    assert jsonutil.loads(up.body)["model"] == "claude-up"
    count = provider(count_tokens_path="/count").build_native_request(
        NATIVE_IN, b"", MODEL, Account("a", "k"), False, {}, path="/count_tokens")
    assert count.url == "https://vendor.example/api/count" and not count.stream


# -- config validation --------------------------------------------------------------

@pytest.mark.parametrize("name,opts,models,problems", [
    ("valid", {"auth": "bearer", "betas": ["x-1"]}, [{"id": "m", "options": {"adaptive_thinking": True}}], []),
    ("bad auth", {"auth": "basic"}, [], ["options.auth: 'basic' is not one of ['x-api-key', 'bearer']"]),
    ("unknown model option", {}, [{"id": "m", "options": {"thinking": 1}}],
     ["model 'm': options: Additional properties are not allowed ('thinking' was unexpected)"]),
    ("bad drop param", {}, [{"id": "m", "options": {"drop_params": ["seed"]}}],
     ["model 'm': options.drop_params[0]: 'seed' is not one of ['temperature', 'top_p', 'stop', 'user']"]),
])
def test_validate(name: str, opts: dict[str, Any], models: list[dict[str, Any]], problems: list[str]) -> None:
    assert provider(**opts).validate(models) == problems
