"""Pivot (Chat Completions) requests -> Gemini generateContent requests, as tables."""
from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from providers.base import Account, StreamContext
from providers.gemini import GeminiProvider, SKIP_SIGNATURE, clean_schema
from tornado_proxy.errors import ErrorKind, ProxyError

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "gemini"
ACCOUNT = Account(id="k1", api_key="test-key-123")
FLASH = {"id": "gemini-flash", "provider": "gem", "upstream_model": "gemini-2.5-flash"}
G3 = {"id": "gemini-3", "provider": "gem", "upstream_model": "gemini-3-flash-preview"}


def gem(options: dict[str, Any] | None = None, **conf: Any) -> GeminiProvider:
    return GeminiProvider({"name": "gem", "type": "gemini", "options": options or {}, **conf})


def body_of(req: dict[str, Any], model: dict[str, Any] = FLASH, options: dict[str, Any] | None = None) -> dict[str, Any]:
    up = gem(options).build_request({"model": model["id"], **req}, model, ACCOUNT, False)
    assert up.body is not None
    return json.loads(up.body)


USER = {"role": "user", "content": "Hi"}

# (name, pivot request fields, model, expected body)
BODIES = [
    ("plain user text", {"messages": [USER]}, FLASH,
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}),
    ("leading system joins systemInstruction, a later developer message keeps its place",
     {"messages": [{"role": "system", "content": "Be terse."}, USER,
                   {"role": "developer", "content": [{"type": "text", "text": "Use SI units."}]}]}, FLASH,
     {"systemInstruction": {"parts": [{"text": "Be terse."}]},
      "contents": [{"role": "user", "parts": [{"text": "Hi"},
                                              {"text": "<system-reminder>\nUse SI units.\n</system-reminder>"}]}]}),
    ("model system_prompt comes first",
     {"messages": [{"role": "system", "content": "Client rules."}, USER]}, {**FLASH, "system_prompt": "Operator rules."},
     {"systemInstruction": {"parts": [{"text": "Operator rules."}, {"text": "Client rules."}]},
      "contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}),
    ("assistant turns become model turns, consecutive users merge",
     {"messages": [USER, {"role": "user", "content": "Still there?"},
                   {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "Good."}]}, FLASH,
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}, {"text": "Still there?"}]},
                   {"role": "model", "parts": [{"text": "Yes."}]},
                   {"role": "user", "parts": [{"text": "Good."}]}]}),
    ("assistant reasoning is not sent back",
     {"messages": [USER, {"role": "assistant", "content": "A", "reasoning_content": "thinking...",
                          "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
                   {"role": "user", "content": "B"}]}, FLASH,
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}, {"role": "model", "parts": [{"text": "A"}]},
                   {"role": "user", "parts": [{"text": "B"}]}]}),
    ("images: data URI inline, URL as fileData",
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": "Compare"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
         {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
         {"type": "image_url", "image_url": {"url": "https://example.com/render?id=7"}}]}]}, FLASH,
     {"contents": [{"role": "user", "parts": [
         {"text": "Compare"},
         {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
         {"fileData": {"fileUri": "https://example.com/cat.jpg", "mimeType": "image/jpeg"}},
         {"fileData": {"fileUri": "https://example.com/render?id=7"}}]}]}),
    ("audio and file parts",
     {"messages": [{"role": "user", "content": [
         {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
         {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
         {"type": "text", "text": ""}]}]}, FLASH,
     {"contents": [{"role": "user", "parts": [
         {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
         {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}}]}]}),
    ("tools, cleaned schema, tool_choice function",
     {"messages": [USER],
      "tools": [{"type": "function", "function": {
          "name": "get_weather", "description": "Weather now", "strict": True,
          "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                         "additionalProperties": False,
                         "properties": {"city": {"type": "string", "format": "uri"},
                                        "unit": {"type": ["string", "null"], "enum": ["c", "f", None]}},
                         "required": ["city", "ghost"]}}},
                {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}],
      "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, FLASH,
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
      "tools": [{"functionDeclarations": [
          {"name": "get_weather", "description": "Weather now",
           "parameters": {"type": "OBJECT", "properties": {
               "city": {"type": "STRING"},
               "unit": {"type": "STRING", "enum": ["c", "f"], "nullable": True}},
               "required": ["city"]}},
          {"name": "now"}]}],
      "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}}),
    ("generation parameters",
     {"messages": [USER], "temperature": 0.2, "top_p": 0.9, "top_k": 40, "max_tokens": 100, "stop": "END",
      "n": 2, "seed": 7, "presence_penalty": 0.1, "frequency_penalty": 0.3, "user": "u-1", "metadata": {"a": "b"},
      "parallel_tool_calls": True, "stream_options": {"include_usage": True}, "store": False}, FLASH,
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
      "generationConfig": {"temperature": 0.2, "topP": 0.9, "topK": 40, "presencePenalty": 0.1,
                           "frequencyPenalty": 0.3, "seed": 7, "maxOutputTokens": 100,
                           "stopSequences": ["END"], "candidateCount": 2}}),
    ("max_completion_tokens wins; stop list",
     {"messages": [USER], "max_tokens": 10, "max_completion_tokens": 20, "stop": ["a", "b"], "n": 1}, FLASH,
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
      "generationConfig": {"maxOutputTokens": 20, "stopSequences": ["a", "b"]}}),
    ("model max_tokens is the default", {"messages": [USER]}, {**FLASH, "max_tokens": 512},
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "generationConfig": {"maxOutputTokens": 512}}),
    ("response_format json_object", {"messages": [USER], "response_format": {"type": "json_object"}}, FLASH,
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
      "generationConfig": {"responseMimeType": "application/json"}}),
    ("response_format json_schema",
     {"messages": [USER], "response_format": {"type": "json_schema", "json_schema": {
         "name": "r", "strict": True,
         "schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}},
                    "required": ["n"], "additionalProperties": False}}}}, FLASH,
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
      "generationConfig": {"responseMimeType": "application/json", "responseSchema": {
          "type": "OBJECT", "properties": {"n": {"type": "INTEGER", "minimum": 0}}, "required": ["n"]}}}),
    ("response_format text is the default", {"messages": [USER], "response_format": {"type": "text"}}, FLASH,
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}),
    ("web_search_options asks for Google Search", {"messages": [USER], "web_search_options": {}}, FLASH,
     {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], "tools": [{"googleSearch": {}}]}),
]


@pytest.mark.parametrize("name,req,model,expected", BODIES, ids=[b[0] for b in BODIES])
def test_request_body(name: str, req: dict[str, Any], model: dict[str, Any], expected: dict[str, Any]) -> None:
    assert body_of(req, model) == expected


# (name, request fields, model, provider options, expected generationConfig.thinkingConfig or None)
REASONING = [
    ("nothing asked: Gemini's default", {}, FLASH, {}, None),
    ("reasoning_effort low on 2.5: budget", {"reasoning_effort": "low"}, FLASH, {},
     {"thinkingBudget": 4096, "includeThoughts": True}),
    ("reasoning_effort high on 3: level", {"reasoning_effort": "high"}, G3, {},
     {"thinkingLevel": "high", "includeThoughts": True}),
    ("reasoning_effort none on 2.5: budget 0", {"reasoning_effort": "none"}, FLASH, {}, {"thinkingBudget": 0}),
    ("reasoning_effort none on 3: minimal level", {"reasoning_effort": "none"}, G3, {}, {"thinkingLevel": "minimal"}),
    ("model reasoning medium", {}, {**FLASH, "reasoning": "medium"}, {},
     {"thinkingBudget": 12288, "includeThoughts": True}),
    ("custom budgets", {"reasoning_effort": "high"}, {**FLASH, "reasoning_budgets": {"high": 30000}}, {},
     {"thinkingBudget": 30000, "includeThoughts": True}),
    ("a fixed model level beats the client", {"reasoning_effort": "minimal"}, {**FLASH, "reasoning": "high"}, {},
     {"thinkingBudget": 24576, "includeThoughts": True}),
    ("model off beats the client", {"reasoning_effort": "high"}, {**FLASH, "reasoning": "off"}, {},
     {"thinkingBudget": 0}),
    ("client effort with model auto", {"reasoning_effort": "minimal"}, {**FLASH, "reasoning": "auto"}, {},
     {"thinkingBudget": 1024, "includeThoughts": True}),
    ("reasoning_level resolved by the core wins", {"reasoning_level": "low", "reasoning_effort": "high"},
     {**FLASH, "reasoning": "high"}, {}, {"thinkingBudget": 4096, "includeThoughts": True}),
    ("-thinking alias: dynamic with thoughts", {"model": "gemini-2.5-flash-thinking"}, FLASH, {},
     {"thinkingBudget": -1, "includeThoughts": True}),
    ("-thinking alias on 3: default level with thoughts", {"model": "gemini-3-flash-thinking"}, G3, {},
     {"includeThoughts": True}),
    ("router's thinking alias flag", {"model": "gemini-flash"}, {**FLASH, "_thinking_alias": True}, {},
     {"thinkingBudget": -1, "includeThoughts": True}),
    ("-thinking through a glob model", {"model": "gemini-2.5-flash-thinking"},
     {**FLASH, "upstream_model": "gemini-2.5-flash-thinking"}, {}, {"thinkingBudget": -1, "includeThoughts": True}),
    ("-nothinking alias", {"model": "gemini-2.5-flash-nothinking"}, FLASH, {}, {"thinkingBudget": 0}),
    ("anthropic-style thinking budget", {"thinking": {"type": "enabled", "budget_tokens": 2000}}, FLASH, {},
     {"thinkingBudget": 2000, "includeThoughts": True}),
    ("anthropic-style budget on 3 picks a level", {"thinking": {"type": "enabled", "budget_tokens": 10000}}, G3, {},
     {"thinkingLevel": "medium", "includeThoughts": True}),
    ("include_thoughts off", {"reasoning_effort": "low"}, FLASH, {"include_thoughts": False}, {"thinkingBudget": 4096}),
    ("thinking_style forced", {"reasoning_effort": "low"}, FLASH, {"thinking_style": "level"},
     {"thinkingLevel": "low", "includeThoughts": True}),
]


@pytest.mark.parametrize("name,req,model,options,expected", REASONING, ids=[r[0] for r in REASONING])
def test_reasoning(name: str, req: dict[str, Any], model: dict[str, Any], options: dict[str, Any],
                   expected: dict[str, Any] | None) -> None:
    up = gem(options).build_request({"model": model["id"], "messages": [USER], **req}, model, ACCOUNT, False)
    body = json.loads(up.body or b"{}")
    assert body.get("generationConfig", {}).get("thinkingConfig") == expected


# (name, provider options, model options, expected extra body fields)
OPTIONS = [
    ("native tools", {"google_search": True, "code_execution": True, "url_context": True}, {},
     {"tools": [{"googleSearch": {}}, {"codeExecution": {}}, {"urlContext": {}}]}),
    ("safety settings as a map", {"safety_settings": {"HARM_CATEGORY_HARASSMENT": "BLOCK_NONE"}}, {},
     {"safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]}),
    ("model safety settings replace the provider's",
     {"safety_settings": {"HARM_CATEGORY_HARASSMENT": "BLOCK_NONE"}},
     {"safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "OFF"}]},
     {"safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "OFF"}]}),
    ("model turns search on", {}, {"google_search": True}, {"tools": [{"googleSearch": {}}]}),
    ("generation_config is merged", {"generation_config": {"responseModalities": ["TEXT"]}}, {},
     {"generationConfig": {"responseModalities": ["TEXT"]}}),
]


@pytest.mark.parametrize("name,popts,mopts,expected", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_options(name: str, popts: dict[str, Any], mopts: dict[str, Any], expected: dict[str, Any]) -> None:
    model = {**FLASH, "options": mopts}
    body = json.loads(gem(popts).build_request({"messages": [USER]}, model, ACCOUNT, False).body or b"")
    assert body == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], **expected}


CALLS = [
    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
     "extra_content": {"google": {"thought_signature": "SIG-A"}}},
    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
]
TOOL_TURN = [
    USER,
    {"role": "assistant", "content": None, "tool_calls": CALLS},
    # answered out of order: the functionResponses must follow the calls' order
    {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
    {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\": 21}"},
    {"role": "user", "content": "Thanks"},
]


@pytest.mark.parametrize("name,messages,model,expected_contents", [
    ("tool calls and results", TOOL_TURN, FLASH, [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "SIG-A"},
            {"functionCall": {"name": "get_time", "args": {}}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
            {"functionResponse": {"name": "get_time", "response": {"output": "12:00"}}},
            {"text": "Thanks"}]}]),
    ("gemini 3: a missing signature gets the documented skip value on the first call only",
     [USER, {"role": "assistant", "tool_calls": [
         {"id": "x1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
         {"id": "x2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "x1", "content": [{"type": "text", "text": "[1, 2]"}]},
      {"role": "tool", "tool_call_id": "x2", "content": "plain"}], G3, [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": SKIP_SIGNATURE},
                                    {"functionCall": {"name": "g", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"output": [1, 2]}}},
                                   {"functionResponse": {"name": "g", "response": {"output": "plain"}}}]}]),
])
def test_tool_turns(name: str, messages: list[dict[str, Any]], model: dict[str, Any],
                    expected_contents: list[dict[str, Any]]) -> None:
    assert body_of({"messages": messages}, model)["contents"] == expected_contents


def test_thought_signature_survives_a_round_trip() -> None:
    """Gemini answer -> OpenAI client message -> next request: the signature is back on its part."""
    p = gem()
    ctx = StreamContext(id="chatcmpl-rt1", created=1714000000, model="gemini-3")
    answer = p.translate_response((FIXTURES / "parallel_calls.json").read_bytes(), ctx)
    msg = answer["choices"][0]["message"]
    calls = msg["tool_calls"]
    messages = [USER, {"role": "assistant", "content": msg["content"], "tool_calls": calls}] + [
        {"role": "tool", "tool_call_id": c["id"], "content": "sunny"} for c in calls]
    up = p.build_request({"model": "gemini-3", "messages": messages}, G3, ACCOUNT, True)
    contents = json.loads(up.body or b"")["contents"]
    assert contents[1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"location": "Paris, FR", "unit": "celsius"}},
         "thoughtSignature": "CqQCAVSoXO5xH9k3Zr0fakeSignatureForTests9wQ=="},
        {"functionCall": {"name": "get_weather", "args": {"location": "London, UK", "unit": "celsius"}}},
        {"functionCall": {"name": "get_time", "args": {"tz": "Asia/Tokyo"}}}]}
    assert [p["functionResponse"]["name"] for p in contents[2]["parts"]] == ["get_weather", "get_weather", "get_time"]


# (name, request fields, error kind, param)
REJECTS = [
    ("unknown parameter", {"messages": [USER], "foo": 1}, ErrorKind.UNSUPPORTED, "foo"),
    ("logprobs", {"messages": [USER], "logprobs": True}, ErrorKind.UNSUPPORTED, "logprobs"),
    ("logit_bias", {"messages": [USER], "logit_bias": {"50256": -100}}, ErrorKind.UNSUPPORTED, "logit_bias"),
    ("audio output", {"messages": [USER], "modalities": ["text", "audio"]}, ErrorKind.UNSUPPORTED, "modalities"),
    ("legacy functions", {"messages": [USER], "functions": []}, ErrorKind.UNSUPPORTED, "functions"),
    ("no messages", {"messages": []}, ErrorKind.INVALID_REQUEST, "messages"),
    ("only system", {"messages": [{"role": "system", "content": "x"}]}, ErrorKind.INVALID_REQUEST, "messages"),
    ("empty user", {"messages": [{"role": "user", "content": ""}]}, ErrorKind.INVALID_REQUEST, "messages[0].content"),
    ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, ErrorKind.INVALID_REQUEST, "messages[0].role"),
    ("legacy function role", {"messages": [{"role": "function", "name": "f", "content": "x"}]},
     ErrorKind.UNSUPPORTED, "messages[0].role"),
    ("unknown tool_call_id", {"messages": [USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
     ErrorKind.INVALID_REQUEST, "messages[1].tool_call_id"),
    ("bad arguments JSON", {"messages": [USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     ErrorKind.INVALID_REQUEST, "messages[1].tool_calls[0].function.arguments"),
    ("image URL scheme", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
     ErrorKind.INVALID_REQUEST, "messages[0].content[0].image_url.url"),
    ("bad data URI", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64"}}]}]},
     ErrorKind.INVALID_REQUEST, "messages[0].content[0].image_url.url"),
    ("unknown part type", {"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]},
     ErrorKind.UNSUPPORTED, "messages[0].content[0].type"),
    ("OpenAI file id", {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]},
     ErrorKind.UNSUPPORTED, "messages[0].content[0].file.file_id"),
    ("custom tool", {"messages": [USER], "tools": [{"type": "custom", "custom": {"name": "x"}}]},
     ErrorKind.UNSUPPORTED, "tools[0].type"),
    ("recursive schema", {"messages": [USER], "tools": [{"type": "function", "function": {
        "name": "tree", "parameters": {"type": "object", "properties": {"node": {"$ref": "#/$defs/N"}},
                                       "$defs": {"N": {"type": "object",
                                                       "properties": {"kids": {"type": "array",
                                                                               "items": {"$ref": "#/$defs/N"}}}}}}}}]},
     ErrorKind.UNSUPPORTED, "tools[0].function.parameters.properties.node.properties.kids.items"),
    ("bad tool_choice", {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}],
                         "tool_choice": "sometimes"}, ErrorKind.INVALID_REQUEST, "tool_choice"),
    ("tool_choice without tools", {"messages": [USER], "tool_choice": "required"}, ErrorKind.INVALID_REQUEST,
     "tool_choice"),
    ("bad reasoning_level", {"messages": [USER], "reasoning_level": "max"}, ErrorKind.INVALID_REQUEST,
     "reasoning_level"),
    ("bad reasoning_effort", {"messages": [USER], "reasoning_effort": "extreme"}, ErrorKind.INVALID_REQUEST,
     "reasoning_effort"),
    ("bad response_format", {"messages": [USER], "response_format": {"type": "yaml"}}, ErrorKind.INVALID_REQUEST,
     "response_format.type"),
]


@pytest.mark.parametrize("name,req,kind,param", REJECTS, ids=[r[0] for r in REJECTS])
def test_rejects(name: str, req: dict[str, Any], kind: ErrorKind, param: str) -> None:
    with pytest.raises(ProxyError) as info:
        body_of(req)
    assert (info.value.kind, info.value.param) == (kind, param)


@pytest.mark.parametrize("name,choice,expected", [
    ("auto", "auto", {"mode": "AUTO"}),
    ("none", "none", {"mode": "NONE"}),
    ("required", "required", {"mode": "ANY"}),
    ("function", {"type": "function", "function": {"name": "f"}}, {"mode": "ANY", "allowedFunctionNames": ["f"]}),
    ("allowed tools, auto", {"type": "allowed_tools", "allowed_tools": {
        "mode": "auto", "tools": [{"type": "function", "function": {"name": "f"}}]}},
     {"mode": "VALIDATED", "allowedFunctionNames": ["f"]}),
    ("allowed tools, required", {"type": "allowed_tools", "allowed_tools": {
        "mode": "required", "tools": [{"type": "function", "function": {"name": "f"}},
                                      {"type": "function", "function": {"name": "g"}}]}},
     {"mode": "ANY", "allowedFunctionNames": ["f", "g"]}),
])
def test_tool_choice(name: str, choice: Any, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": n}} for n in ("f", "g")]
    body = body_of({"messages": [USER], "tools": tools, "tool_choice": choice})
    assert body["toolConfig"] == {"functionCallingConfig": expected}


SCHEMAS = [
    ("type list with null", {"type": ["integer", "null"]}, {"type": "INTEGER", "nullable": True}),
    ("anyOf with null", {"anyOf": [{"type": "string"}, {"type": "null"}]}, {"type": "STRING", "nullable": True}),
    ("anyOf of two types", {"anyOf": [{"type": "string"}, {"type": "integer"}]},
     {"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]}),
    ("oneOf becomes anyOf", {"oneOf": [{"type": "string"}, {"type": "boolean"}]},
     {"anyOf": [{"type": "STRING"}, {"type": "BOOLEAN"}]}),
    ("const", {"const": "fixed"}, {"enum": ["fixed"], "type": "STRING"}),
    ("number enum becomes strings", {"type": "integer", "enum": [1, 2]}, {"type": "STRING", "enum": ["1", "2"]}),
    ("ref inlined", {"type": "object", "properties": {"p": {"$ref": "#/definitions/P", "description": "where"}},
                     "definitions": {"P": {"type": "object", "properties": {"x": {"type": "number"}}}}},
     {"type": "OBJECT", "properties": {"p": {"type": "OBJECT", "description": "where",
                                             "properties": {"x": {"type": "NUMBER"}}}}}),
    ("unknown keys and formats dropped",
     {"type": "object", "additionalProperties": {"type": "string"}, "patternProperties": {},
      "properties": {"when": {"type": "string", "format": "date-time"}, "url": {"type": "string", "format": "uri"},
                     "n": {"type": "integer", "format": "int64", "exclusiveMinimum": 0}}},
     {"type": "OBJECT", "properties": {"when": {"type": "STRING", "format": "date-time"}, "url": {"type": "STRING"},
                                       "n": {"type": "INTEGER", "format": "int64"}}}),
    ("allOf merged", {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                                {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
     {"type": "OBJECT", "properties": {"a": {"type": "STRING"}, "b": {"type": "BOOLEAN"}}, "required": ["a", "b"]}),
    ("examples give example", {"type": "string", "examples": ["x", "y"], "title": "T"},
     {"type": "STRING", "example": "x", "title": "T"}),
    ("array items and bounds", {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3,
                                "uniqueItems": True},
     {"type": "ARRAY", "items": {"type": "STRING"}, "minItems": 1, "maxItems": 3}),
    ("tuple items", {"type": "array", "items": [{"type": "string"}, {"type": "number"}]},
     {"type": "ARRAY", "items": {"anyOf": [{"type": "STRING"}, {"type": "NUMBER"}]}}),
    ("null alone", {"type": "null"}, {"type": "STRING", "nullable": True}),
    ("properties imply object", {"properties": {"a": {"type": "string"}}},
     {"properties": {"a": {"type": "STRING"}}, "type": "OBJECT"}),
]


@pytest.mark.parametrize("name,schema,expected", SCHEMAS, ids=[s[0] for s in SCHEMAS])
def test_clean_schema(name: str, schema: dict[str, Any], expected: dict[str, Any]) -> None:
    assert clean_schema(schema) == expected


def test_tool_schema_json_schema_option_sends_schemas_untouched() -> None:
    params = {"type": "object", "properties": {"a": {"type": ["string", "null"]}}, "additionalProperties": False}
    body = body_of({"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "parameters": params}}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": params}}},
                   {**FLASH, "options": {"tool_schema": "json_schema"}})
    assert body["tools"] == [{"functionDeclarations": [{"name": "f", "parametersJsonSchema": params}]}]
    assert body["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": params}


@pytest.mark.parametrize("name,conf,model,stream,url,headers", [
    ("non-stream", {}, FLASH, False,
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
     {"content-type": "application/json", "x-goog-api-key": "test-key-123"}),
    ("stream asks for SSE", {}, FLASH, True,
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
     {"content-type": "application/json", "x-goog-api-key": "test-key-123"}),
    ("a glob model's -thinking suffix is the alias, not the upstream name", {},
     {**FLASH, "upstream_model": "gemini-2.5-flash-thinking"}, False,
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
     {"content-type": "application/json", "x-goog-api-key": "test-key-123"}),
    ("host-only base_url gets the version; api_version option",
     {"base_url": "http://127.0.0.1:9", "options": {"api_version": "v1alpha"}}, FLASH, False,
     "http://127.0.0.1:9/v1alpha/models/gemini-2.5-flash:generateContent",
     {"content-type": "application/json", "x-goog-api-key": "test-key-123"}),
    ("base_url with a version, models/ prefix, extra headers",
     {"base_url": "http://127.0.0.1:9/v1beta/", "headers": {"x-a": "1"}},
     {**FLASH, "upstream_model": "models/gemini-2.0-flash", "headers": {"x-b": "2"}}, False,
     "http://127.0.0.1:9/v1beta/models/gemini-2.0-flash:generateContent",
     {"content-type": "application/json", "x-a": "1", "x-b": "2", "x-goog-api-key": "test-key-123"}),
])
def test_url_and_headers(name: str, conf: dict[str, Any], model: dict[str, Any], stream: bool, url: str,
                         headers: dict[str, str]) -> None:
    up = gem(**conf).build_request({"messages": [USER]}, model, ACCOUNT, stream)
    assert (up.method, up.url, up.headers, up.stream) == ("POST", url, headers, stream)


@pytest.mark.parametrize("name,method,body,stream,url_tail,sent", [
    ("generate, body untouched", "generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}, False,
     "models/gemini-2.5-flash:generateContent", None),
    ("stream asks for SSE", "streamGenerateContent", {"contents": []}, True,
     "models/gemini-2.5-flash:streamGenerateContent?alt=sse", None),
    ("batch embed: model names mapped", "batchEmbedContents",
     {"requests": [{"model": "models/my-embed", "content": {"parts": [{"text": "a"}]}}]}, False,
     "models/gemini-2.5-flash:batchEmbedContents",
     {"requests": [{"model": "models/gemini-2.5-flash", "content": {"parts": [{"text": "a"}]}}]}),
    ("countTokens: inner request mapped", "countTokens",
     {"generateContentRequest": {"model": "models/alias", "contents": []}}, False,
     "models/gemini-2.5-flash:countTokens",
     {"generateContentRequest": {"model": "models/gemini-2.5-flash", "contents": []}}),
])
def test_native_request(name: str, method: str, body: dict[str, Any], stream: bool, url_tail: str,
                        sent: dict[str, Any] | None) -> None:
    raw = json.dumps(body).encode()
    up = gem().build_native_request(body, raw, FLASH, ACCOUNT, stream, {"x-goog-api-key": "gateway-key"}, method)
    assert up.url == "https://generativelanguage.googleapis.com/v1beta/" + url_tail
    assert up.headers["x-goog-api-key"] == "test-key-123"
    assert up.stream is stream
    if sent is None:
        assert up.body == raw
    else:
        assert json.loads(up.body or b"") == sent


def test_native_request_unknown_method() -> None:
    with pytest.raises(ProxyError) as info:
        gem().build_native_request({}, b"{}", FLASH, ACCOUNT, False, {}, "deleteEverything")
    assert info.value.kind is ErrorKind.NOT_FOUND


@pytest.mark.parametrize("name,popts,models,problems", [
    ("valid", {"google_search": True, "safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH",
                                                           "threshold": "BLOCK_NONE"}]},
     [{"id": "m", "upstream_model": "gemini-2.5-flash", "options": {"thinking_style": "budget"}}], []),
    ("unknown option", {"serach": True}, [],
     ["provider 'gem' options: Additional properties are not allowed ('serach' was unexpected)"]),
    ("bad model option", {}, [{"id": "m", "upstream_model": "x", "options": {"image_urls": "fetch"}}],
     ["model 'm' options.image_urls: 'fetch' is not one of ['file_data']"]),
    ("image_urls inline was never carried out: refused at start", {"image_urls": "inline"}, [],
     ["provider 'gem' options.image_urls: 'inline' is not one of ['file_data']"]),
    ("glob model without upstream_model", {"api_version": "v1alpha"}, [{"id": "gemini-*"}], []),
])
def test_validate(name: str, popts: dict[str, Any], models: list[dict[str, Any]], problems: list[str]) -> None:
    assert gem(popts).validate(models) == problems
