"""Pivot (Chat Completions) request -> Bedrock Converse request body."""
from __future__ import annotations

from typing import Any

import pytest

from providers.base import Account
from providers.bedrock import BedrockProvider, converse_request
from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

CLAUDE = {"id": "bedrock-claude", "provider": "bedrock", "upstream_model": "us.anthropic.claude-3-7-sonnet-20250219-v1:0"}
NOVA = {"id": "bedrock-nova", "provider": "bedrock", "upstream_model": "amazon.nova-pro-v1:0"}
USER = {"role": "user", "content": "Hi"}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
SIG = "EqQBCkYIBRgCIkB0ZXN0LXNpZ25hdHVyZQ=="
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
WEATHER_SPEC = {"toolSpec": {"name": "get_weather", "description": "Weather for a city",
                             "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}},
                                                      "required": ["city"]}}}}
TOOL_TURN = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None,
     "thinking_blocks": [{"type": "thinking", "thinking": "Use the tool.", "signature": SIG},
                         {"type": "redacted_thinking", "data": "cmVkYWN0ZWQ="}],
     "reasoning_content": "Use the tool.",
     "tool_calls": [{"id": "tooluse_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                    {"id": "tooluse_2", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
    {"role": "tool", "tool_call_id": "tooluse_1", "content": "18 C"},
    {"role": "tool", "tool_call_id": "tooluse_2", "content": [{"type": "text", "text": "sunny"}]},
]

# (name, pivot request, model entry, expected Converse body)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("plain", {"model": "m", "messages": [USER]}, NOVA,
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}),
    ("system, developer and the model's system_prompt", {"model": "m", "messages": [
        {"role": "system", "content": "Be brief."}, USER,
        {"role": "developer", "content": [{"type": "text", "text": "No emojis."}]}]},
     {**NOVA, "system_prompt": "You are a gateway test."},
     # the leading one joins system; the later one keeps its place, marked
     {"messages": [{"role": "user", "content": [{"text": "Hi"},
                                                {"text": "<system-reminder>\nNo emojis.\n</system-reminder>"}]}],
      "system": [{"text": "You are a gateway test."}, {"text": "Be brief."}]}),
    ("inference config table", {"model": "m", "messages": [USER], "max_tokens": 100, "temperature": 0.2,
                                "top_p": 0.9, "stop": "END", "n": 1, "presence_penalty": 0, "stream": True,
                                "stream_options": {"include_usage": True}},
     NOVA, {"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "inferenceConfig": {"maxTokens": 100, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]}}),
    ("max_completion_tokens wins, stop list", {"model": "m", "messages": [USER], "max_tokens": 100,
                                               "max_completion_tokens": 50, "stop": ["a", "b"]},
     NOVA, {"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "inferenceConfig": {"maxTokens": 50, "stopSequences": ["a", "b"]}}),
    ("model max_tokens as default", {"model": "m", "messages": [USER]}, {**NOVA, "max_tokens": 2048},
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 2048}}),
    ("image and pdf parts", {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
        {"type": "file", "file": {"filename": "report 2024.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}]}]},
     NOVA, {"messages": [{"role": "user", "content": [
         {"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": PNG}}},
         {"document": {"format": "pdf", "name": "report 2024", "source": {"bytes": "JVBERi0x"}}}]}]}),
    ("tools, tool calls, tool results, thinking restored", {"model": "m", "messages": TOOL_TURN, "tools": [WEATHER],
                                                            "tool_choice": "auto"},
     CLAUDE, {"messages": [
         {"role": "user", "content": [{"text": "Weather in Paris?"}]},
         {"role": "assistant", "content": [
             {"reasoningContent": {"reasoningText": {"text": "Use the tool.", "signature": SIG}}},
             {"reasoningContent": {"redactedContent": "cmVkYWN0ZWQ="}},
             {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}},
             {"toolUse": {"toolUseId": "tooluse_2", "name": "get_weather", "input": {}}}]},
         {"role": "user", "content": [
             {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "18 C"}]}},
             {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "sunny"}]}}]}],
         "toolConfig": {"tools": [WEATHER_SPEC]}}),
    ("unsigned and OpenAI reasoning are not replayed", {"model": "m", "messages": [
        USER, {"role": "assistant", "content": "Hello",
               "thinking_blocks": [{"type": "thinking", "thinking": "no signature", "signature": ""},
                                   {"type": "thinking", "thinking": "summary", "signature": "gAAAA", "id": "rs_1"}]},
        {"role": "user", "content": "Bye"}]},
     CLAUDE, {"messages": [{"role": "user", "content": [{"text": "Hi"}]},
                           {"role": "assistant", "content": [{"text": "Hello"}]},
                           {"role": "user", "content": [{"text": "Bye"}]}]}),
    ("consecutive user turns merge", {"model": "m", "messages": [USER, {"role": "user", "content": "again"}]}, NOVA,
     {"messages": [{"role": "user", "content": [{"text": "Hi"}, {"text": "again"}]}]}),
    ("tool_choice required", {"model": "m", "messages": [USER], "tools": [WEATHER], "tool_choice": "required"},
     NOVA, {"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "toolConfig": {"tools": [WEATHER_SPEC], "toolChoice": {"any": {}}}}),
    ("tool_choice a function, parameters missing, strict", {
        "model": "m", "messages": [USER], "tool_choice": {"type": "function", "function": {"name": "now"}},
        "tools": [{"type": "function", "function": {"name": "now", "strict": True}}], "parallel_tool_calls": True},
     NOVA, {"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "toolConfig": {"tools": [{"toolSpec": {"name": "now", "inputSchema": {"json": {"type": "object", "properties": {}}},
                                                   "strict": True}}],
                           "toolChoice": {"tool": {"name": "now"}}}}),
    ("tool_choice none leaves the tools out", {"model": "m", "messages": [USER], "tools": [WEATHER],
                                               "tool_choice": "none"},
     NOVA, {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}),
    ("reasoning_effort high on Claude", {"model": "m", "messages": [USER], "reasoning_effort": "high"}, CLAUDE,
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 24576 + 4096},
      "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 24576}}}),
    ("model budgets and max_tokens above them", {"model": "m", "messages": [USER], "reasoning_effort": "low",
                                                 "max_tokens": 8000},
     {**CLAUDE, "reasoning_budgets": {"low": 2000}},
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 8000},
      "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 2000}}}),
    ("budget shrunk under max_tokens", {"model": "m", "messages": [USER], "reasoning_effort": "medium",
                                        "max_tokens": 5000},
     CLAUDE, {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 5000},
              "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 4999}}}),
    ("model reasoning level, extra fields option", {"model": "m", "messages": [USER]},
     {**CLAUDE, "reasoning": "medium", "options": {"additional_model_request_fields": {"top_k": 40}}},
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 12288 + 4096},
      "additionalModelRequestFields": {"top_k": 40, "thinking": {"type": "enabled", "budget_tokens": 12288}}}),
    ("model reasoning off wins over the client", {"model": "m", "messages": [USER], "reasoning_effort": "high"},
     {**CLAUDE, "reasoning": "off"}, {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}),
    ("a fixed model level wins over the client", {"model": "m", "messages": [USER], "reasoning_effort": "none"},
     {**CLAUDE, "reasoning": "low"},
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 4096 + 4096},
      "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 4096}}}),
    ("reasoning_effort none", {"model": "m", "messages": [USER], "reasoning_effort": "none"},
     CLAUDE, {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}),
    ("reasoning_effort xhigh from an Anthropic client", {"model": "m", "messages": [USER], "reasoning_effort": "xhigh",
                                                         "max_tokens": 32000}, CLAUDE,
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 32000},
      "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 24576}}}),
    ("-thinking alias", {"model": "bedrock-claude-thinking", "messages": [USER]}, {**CLAUDE, "_thinking_alias": True},
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 24576 + 4096},
      "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 24576}}}),
    ("reasoning_level from the core wins", {"model": "m", "messages": [USER], "reasoning_level": "low",
                                            "reasoning_effort": "high"}, CLAUDE,
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 4096 + 4096},
      "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 4096}}}),
    ("reasoning_style option on an application profile", {"model": "m", "messages": [USER], "reasoning_effort": "minimal"},
     {**NOVA, "upstream_model": "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc",
      "options": {"reasoning_style": "claude"}},
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 1024 + 4096},
      "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 1024}}}),
    ("json_schema, service tier, user and metadata", {
        "model": "m", "messages": [USER], "service_tier": "flex", "user": "user-42", "metadata": {"team": "search"},
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}},
     NOVA, {"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "outputConfig": {"textFormat": {"type": "json_schema",
                                            "structure": {"jsonSchema": {"schema": "{\"type\":\"object\"}", "name": "answer"}}}},
            "serviceTier": {"type": "flex"}, "requestMetadata": {"team": "search", "user": "user-42"}}),
    ("text response_format and auto tier", {"model": "m", "messages": [USER], "response_format": {"type": "text"},
                                            "service_tier": "auto"},
     NOVA, {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}),
    ("neutral values and documented drops", {"model": "m", "messages": [USER], "n": 1, "logprobs": False,
                                             "logit_bias": {}, "modalities": ["text"], "frequency_penalty": 0,
                                             "store": True, "prompt_cache_key": "k1", "seed": None,
                                             "safety_identifier": "hash-1"},
     NOVA, {"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "requestMetadata": {"safety_identifier": "hash-1"}}),
]


@pytest.mark.parametrize("name,req,model,expected", CASES)
def test_converse_request(name: str, req: dict[str, Any], model: dict[str, Any], expected: dict[str, Any]) -> None:
    assert converse_request(req, model) == expected


# (name, pivot request, model entry, kind, param)
REJECTS: list[tuple[str, dict[str, Any], dict[str, Any], ErrorKind, str]] = [
    ("no messages", {"model": "m", "messages": []}, NOVA, ErrorKind.INVALID_REQUEST, "messages"),
    ("only a system message", {"model": "m", "messages": [{"role": "system", "content": "x"}]}, NOVA,
     ErrorKind.INVALID_REQUEST, "messages"),
    ("n > 1", {"model": "m", "messages": [USER], "n": 2}, NOVA, ErrorKind.UNSUPPORTED, "n"),
    ("logprobs", {"model": "m", "messages": [USER], "logprobs": True}, NOVA, ErrorKind.UNSUPPORTED, "logprobs"),
    ("penalty", {"model": "m", "messages": [USER], "frequency_penalty": 0.5}, NOVA, ErrorKind.UNSUPPORTED,
     "frequency_penalty"),
    ("seed", {"model": "m", "messages": [USER], "seed": 7}, NOVA, ErrorKind.UNSUPPORTED, "seed"),
    ("logit_bias", {"model": "m", "messages": [USER], "logit_bias": {"1": 2}}, NOVA, ErrorKind.UNSUPPORTED, "logit_bias"),
    ("parallel_tool_calls false", {"model": "m", "messages": [USER], "parallel_tool_calls": False}, NOVA,
     ErrorKind.UNSUPPORTED, "parallel_tool_calls"),
    ("audio modality", {"model": "m", "messages": [USER], "modalities": ["text", "audio"]}, NOVA,
     ErrorKind.UNSUPPORTED, "modalities"),
    ("top_logprobs", {"model": "m", "messages": [USER], "top_logprobs": 2}, NOVA, ErrorKind.UNSUPPORTED,
     "top_logprobs"),
    ("service tier scale", {"model": "m", "messages": [USER], "service_tier": "scale"}, NOVA, ErrorKind.UNSUPPORTED,
     "service_tier"),
    ("image by URL", {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}, NOVA,
     ErrorKind.UNSUPPORTED, "messages[0].content[0].image_url.url"),
    ("image type", {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]}, NOVA,
     ErrorKind.UNSUPPORTED, "messages[0].content[0].image_url.url"),
    ("data URL not base64", {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]}]}, NOVA,
     ErrorKind.INVALID_REQUEST, "messages[0].content[0].image_url.url"),
    ("audio part", {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}, NOVA,
     ErrorKind.UNSUPPORTED, "messages[0].content[0].type"),
    ("image in a system message", {"model": "m", "messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}, USER]}, NOVA,
     ErrorKind.UNSUPPORTED, "messages[0].content[0]"),
    ("bad tool arguments", {"model": "m", "messages": [USER, {"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, NOVA,
     ErrorKind.INVALID_REQUEST, "messages[1].tool_calls[0].function.arguments"),
    ("tool arguments not an object", {"model": "m", "messages": [USER, {"role": "assistant", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}, NOVA,
     ErrorKind.INVALID_REQUEST, "messages[1].tool_calls[0].function.arguments"),
    ("tool message without id", {"model": "m", "messages": [USER, {"role": "tool", "content": "x"}]}, NOVA,
     ErrorKind.INVALID_REQUEST, "messages[1].tool_call_id"),
    ("empty assistant", {"model": "m", "messages": [USER, {"role": "assistant", "content": ""}]}, NOVA,
     ErrorKind.INVALID_REQUEST, "messages[1].content"),
    ("function role", {"model": "m", "messages": [USER, {"role": "function", "name": "f", "content": "x"}]}, NOVA,
     ErrorKind.UNSUPPORTED, "messages[1].role"),
    ("non-function tool", {"model": "m", "messages": [USER], "tools": [{"type": "web_search"}]}, NOVA,
     ErrorKind.UNSUPPORTED, "tools[0].type"),
    ("tool_choice without tools", {"model": "m", "messages": [USER], "tool_choice": "required"}, NOVA,
     ErrorKind.INVALID_REQUEST, "tool_choice"),
    ("tool_choice none with tool history", {"model": "m", "messages": TOOL_TURN, "tools": [WEATHER],
                                            "tool_choice": "none"}, CLAUDE, ErrorKind.UNSUPPORTED, "tool_choice"),
    ("reasoning on a model without a known budget field", {"model": "m", "messages": [USER],
                                                           "reasoning_effort": "high"}, NOVA,
     ErrorKind.UNSUPPORTED, "reasoning_effort"),
    ("reasoning_effort value", {"model": "m", "messages": [USER], "reasoning_effort": "extreme"}, CLAUDE,
     ErrorKind.INVALID_REQUEST, "reasoning_effort"),
    ("max_tokens too small for reasoning", {"model": "m", "messages": [USER], "reasoning_effort": "low",
                                            "max_tokens": 500}, CLAUDE, ErrorKind.INVALID_REQUEST, "max_tokens"),
    ("max_tokens not a number", {"model": "m", "messages": [USER], "max_tokens": "10"}, NOVA,
     ErrorKind.INVALID_REQUEST, "max_tokens"),
    ("unknown field", {"model": "m", "messages": [USER], "prediction": {"type": "content", "content": "x"}}, NOVA,
     ErrorKind.UNSUPPORTED, "prediction"),
]


@pytest.mark.parametrize("name,req,model,kind,param", REJECTS)
def test_converse_request_rejects(name: str, req: dict[str, Any], model: dict[str, Any], kind: ErrorKind,
                                  param: str) -> None:
    with pytest.raises(ProxyError) as exc:
        converse_request(req, model)
    assert exc.value.kind is kind
    assert exc.value.param == param


def test_build_request_url_body_and_headers() -> None:
    prov = BedrockProvider({"name": "bedrock", "type": "bedrock", "headers": {"X-Team": "a"},
                            "options": {"region": "eu-west-3"}})
    account = Account("k", api_key="test-key-123", extra={"headers": {"X-Account": "b"}})
    up = prov.build_request({"model": "bedrock-claude", "messages": [USER]},
                            {**CLAUDE, "headers": {"X-Model": "c"}}, account, stream=True)
    assert up.method == "POST"
    assert up.url == ("https://bedrock-runtime.eu-west-3.amazonaws.com/model/"
                      "us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream")
    assert up.stream is True
    assert jsonutil.loads(up.body or b"") == {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}
    assert up.headers == {"Content-Type": "application/json", "Accept": "application/vnd.amazon.eventstream",
                          "X-Team": "a", "X-Account": "b", "X-Model": "c", "Authorization": "Bearer test-key-123"}
