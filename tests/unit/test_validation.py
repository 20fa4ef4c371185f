"""Request validation against schemas/: what real clients send passes, mistakes get a 400 naming the field.

Valid requests are the shapes of the OpenAI API reference and of openai-python's
README and tests (tests/lib/chat/test_completions.py), plus what LangChain and
chat front ends send and the gateway's own pivot extensions.  Responses and
chunks are openai-python's recorded live answers (the inline snapshots of
tests/lib/chat/test_completions.py and the .inline-snapshot/external/*.bin
streams of tests/lib/chat/test_completions_streaming.py), byte for byte.
"""
from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from tornado_proxy.pipeline import validation
from tornado_proxy.errors import ERROR_TABLE, ErrorKind, ProxyError, openai_body
from tornado_proxy.pipeline.validation import is_valid, load_schema, validate_body

REQ = "chat_completions.request.v1"
RESP = "chat_completions.response.v1"
CHUNK = "chat_completions.chunk.v1"
MINE = [REQ, RESP, CHUNK, "error.v1", "models.list.v1"]


def schema_names() -> list[str]:
    """Every schema shipped in ``schemas/``, by the name load_schema takes."""
    root = validation.schema_dir()
    return sorted(p.relative_to(root).as_posix()[: -len(".json")] for p in root.rglob("*.json"))

USER = {"role": "user", "content": "Hello!"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "state": {"type": "string"}},
                       "required": ["city", "state"], "additionalProperties": False},
        "strict": True,
    },
}
TOOL_TURN = [
    {"role": "user", "content": "What's the weather like in Edinburgh?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_Y6qJ7ofLgOrBnMD5WbVAeiRV", "type": "function",
         "function": {"name": "GetWeatherArgs", "arguments": "{\"city\":\"Edinburgh\",\"country\":\"UK\",\"units\":\"c\"}"}}]},
    {"role": "tool", "tool_call_id": "call_Y6qJ7ofLgOrBnMD5WbVAeiRV", "content": "{\"temperature\": 11}"},
]
PNG_DATA_URI = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def req(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [USER]}
    body.update(extra)
    return body


VALID_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("readme_developer_and_user", {"model": "gpt-4o", "messages": [
        {"role": "developer", "content": "Talk like a pirate."},
        {"role": "user", "content": "How do I check if a Python object is an instance of a class?"}]}),
    ("system_parts_and_name", req(messages=[
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}], "name": "policy"}, USER])),
    ("vision_url", req(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/wikipedia/commons/3/3b/Gfp-wisconsin-madison-the-nature-boardwalk.jpg"}}]}])),
    ("vision_data_uri_detail", req(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": PNG_DATA_URI, "detail": "low"}}]}])),
    ("input_audio", req(model="gpt-4o-audio-preview", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this recording?"},
        {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}]}])),
    ("file_part_pdf", req(messages=[{"role": "user", "content": [
        {"type": "file", "file": {"filename": "draconomicon.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}},
        {"type": "text", "text": "What is the first dragon in the book?"}]}])),
    ("file_part_id", req(messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc123"}}]}])),
    ("strict_tool", req(tools=[WEATHER_TOOL])),
    ("sdk_pydantic_function_tool", req(tools=[{"type": "function", "function": {
        "name": "GetWeatherArgs", "strict": True, "parameters": {
            "properties": {"city": {"title": "City", "type": "string"}}, "required": ["city"],
            "title": "GetWeatherArgs", "type": "object", "additionalProperties": False}}}])),
    ("tool_round_trip", req(messages=TOOL_TURN, tools=[WEATHER_TOOL], tool_choice="auto", parallel_tool_calls=False)),
    ("tool_choice_named", req(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}})),
    ("tool_choice_required", req(tools=[WEATHER_TOOL], tool_choice="required")),
    ("tool_choice_allowed_tools", req(tools=[WEATHER_TOOL], tool_choice={"type": "allowed_tools", "allowed_tools": {
        "mode": "auto", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}})),
    ("custom_tool_grammar", req(tools=[{"type": "custom", "custom": {
        "name": "math_exp", "description": "Creates valid mathematical expressions",
        "format": {"type": "grammar", "grammar": {"syntax": "lark", "definition": "start: expr"}}}}],
        tool_choice={"type": "custom", "custom": {"name": "math_exp"}})),
    ("custom_tool_call_history", req(messages=[USER, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "custom", "custom": {"name": "math_exp", "input": "1 + 1"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "2"}]}])),
    ("legacy_functions", req(functions=[{"name": "get_weather", "parameters": {"type": "object"}}],
                             function_call={"name": "get_weather"},
                             messages=[USER, {"role": "assistant", "content": None,
                                              "function_call": {"name": "get_weather", "arguments": "{}"}},
                                       {"role": "function", "name": "get_weather", "content": "sunny"}])),
    ("legacy_function_call_auto", req(functions=[{"name": "f"}], function_call="auto")),
    ("response_format_json_schema", req(response_format={"type": "json_schema", "json_schema": {
        "name": "Location", "strict": True, "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}})),
    ("response_format_json_object", req(response_format={"type": "json_object"})),
    ("response_format_text", req(response_format={"type": "text"})),
    ("stream_with_usage", req(stream=True, stream_options={"include_usage": True})),
    ("sampling_knobs", req(temperature=0.7, top_p=1, n=3, seed=42, stop=["\n\n", "END"], presence_penalty=-0.5,
                           frequency_penalty=2, logit_bias={"50256": -100, "15496": 5}, logprobs=True,
                           top_logprobs=20, max_tokens=256, user="user-1234")),
    ("stop_string", req(stop="END")),
    ("audio_output", req(model="gpt-4o-audio-preview", modalities=["text", "audio"],
                         audio={"voice": "alloy", "format": "wav"})),
    ("audio_custom_voice", req(modalities=["audio"], audio={"voice": {"id": "voice_123"}, "format": "pcm16"})),
    ("predicted_output", req(prediction={"type": "content", "content": "class User {\n  firstName: string;\n}"})),
    ("reasoning", req(model="o3-mini", reasoning_effort="high", max_completion_tokens=4096, verbosity="low")),
    ("reasoning_xhigh", req(reasoning_effort="xhigh")),
    ("web_search", req(model="gpt-4o-search-preview", web_search_options={
        "search_context_size": "low",
        "user_location": {"type": "approximate", "approximate": {"country": "GB", "city": "London"}}})),
    ("store_metadata_tier", req(store=True, metadata={"session": "abc", "team": "x"}, service_tier="flex",
                                prompt_cache_key="tenant-1", prompt_cache_retention="24h",
                                safety_identifier="hash-1")),
    ("all_optional_null", req(temperature=None, top_p=None, n=None, stop=None, max_tokens=None, seed=None,
                              tools=None, tool_choice=None, response_format=None, stream=None,
                              stream_options=None, logit_bias=None, reasoning_effort=None, metadata=None)),
    ("integral_float_is_an_integer", req(max_tokens=256.0)),
    ("vendor_top_level_extensions", req(top_k=40, repetition_penalty=1.1,
                                        chat_template_kwargs={"enable_thinking": False}, thinking={"type": "enabled"})),
    ("langchain_assistant_empty_content", req(messages=[USER, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "ok", "tool_call_id": "call_a"}])),
    ("assistant_refusal_parts", req(messages=[USER, {"role": "assistant", "refusal": "I can't help with that.",
                                                      "content": [{"type": "refusal", "refusal": "I can't."}]}])),
    ("assistant_text_parts_name", req(messages=[USER, {"role": "assistant", "name": "bot",
                                                        "content": [{"type": "text", "text": "Hi"}]}])),
    ("assistant_tool_calls_empty_list", req(messages=[USER, {"role": "assistant", "content": "x", "tool_calls": []}])),
    ("pivot_reasoning_extensions", req(messages=[USER, {
        "role": "assistant", "content": "42", "reasoning_content": "Let me think.",
        "thinking_blocks": [{"type": "thinking", "thinking": "Let me think.", "signature": "EqQBCgIYAhIM"},
                            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                            {"type": "thinking", "thinking": "summary", "signature": "gAAAAB", "id": "rs_123"}],
        "tool_calls": [{"id": "call_g", "type": "function", "function": {"name": "f", "arguments": "{}"},
                        "extra_content": {"google": {"thought_signature": "CiQBVKhc"}}}]},
        {"role": "tool", "tool_call_id": "call_g", "content": "done"}])),
    ("tool_result_image_extension", req(messages=[USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "screenshot", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url", "image_url": {"url": PNG_DATA_URI}}]}])),
    ("prompt_cache_breakpoint", req(messages=[{"role": "user", "content": [
        {"type": "text", "text": "long context", "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "12h"}}]}])),
    ("part_vendor_keys_allowed", req(messages=[{"role": "user", "content": [
        {"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}]}])),
]


@pytest.mark.parametrize("name,body", VALID_REQUESTS, ids=[n for n, _ in VALID_REQUESTS])
def test_valid_requests_pass(name: str, body: dict[str, Any]) -> None:
    validate_body(REQ, body)
    assert validation.validator(REQ).is_valid(body)  # the reference agrees


def _msgs(*messages: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": list(messages)}


# (name, body, param, message)
INVALID_REQUESTS: list[tuple[str, Any, str | None, str]] = [
    ("missing_model", {"messages": [USER]}, "model", "Missing required parameter: 'model'."),
    ("model_not_string", req(model=42), "model",
     "Invalid type for 'model': expected a string, but got an integer instead."),
    ("model_empty", req(model=""), "model",
     "Invalid 'model': empty string. Expected a string with at least 1 character."),
    ("missing_messages", {"model": "m"}, "messages", "Missing required parameter: 'messages'."),
    ("messages_empty", req(messages=[]), "messages",
     "Invalid 'messages': empty array. Expected an array with at least 1 item."),
    ("messages_not_array", req(messages="hi"), "messages",
     "Invalid type for 'messages': expected an array, but got a string instead."),
    ("message_not_object", _msgs("hi"), "messages[0]",
     "Invalid type for 'messages[0]': expected an object, but got a string instead."),
    ("unknown_role", _msgs({"role": "bot", "content": "hi"}), "messages[0].role",
     "Invalid value for 'messages[0].role': 'bot'. Supported values are: 'system', 'developer', 'user', "
     "'assistant', 'tool' or 'function'."),
    ("missing_role", _msgs({"content": "hi"}), "messages[0].role", "Missing required parameter: 'messages[0].role'."),
    ("user_without_content", _msgs({"role": "system", "content": "s"}, {"role": "user"}), "messages[1].content",
     "Missing required parameter: 'messages[1].content'."),
    ("content_integer", _msgs({"role": "user", "content": 42}), "messages[0].content",
     "Invalid type for 'messages[0].content': expected a string or an array, but got an integer instead."),
    ("unknown_part_type", _msgs({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video"}]}),
     "messages[0].content[1].type",
     "Invalid value for 'messages[0].content[1].type': 'video'. Supported values are: 'text', 'image_url', "
     "'input_audio' or 'file'."),
    ("part_without_type", _msgs({"role": "user", "content": [{"text": "a"}]}), "messages[0].content[0].type",
     "Missing required parameter: 'messages[0].content[0].type'."),
    ("text_part_without_text", _msgs({"role": "user", "content": [{"type": "text"}]}), "messages[0].content[0].text",
     "Missing required parameter: 'messages[0].content[0].text'."),
    ("image_url_as_string", _msgs({"role": "user", "content": [{"type": "image_url", "image_url": "http://x/y.png"}]}),
     "messages[0].content[0].image_url",
     "Invalid type for 'messages[0].content[0].image_url': expected an object, but got a string instead."),
    ("image_url_without_url", _msgs({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}),
     "messages[0].content[0].image_url.url", "Missing required parameter: 'messages[0].content[0].image_url.url'."),
    ("image_detail_bad", _msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "max"}}]}),
     "messages[0].content[0].image_url.detail",
     "Invalid value for 'messages[0].content[0].image_url.detail': 'max'. Supported values are: 'auto', 'low', "
     "'high' or 'original'."),
    ("audio_format_bad", _msgs({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "ogg"}}]}),
     "messages[0].content[0].input_audio.format",
     "Invalid value for 'messages[0].content[0].input_audio.format': 'ogg'. Supported values are: 'wav' or 'mp3'."),
    ("file_without_data_or_id", _msgs({"role": "user", "content": [{"type": "file", "file": {"filename": "a.pdf"}}]}),
     "messages[0].content[0].file", "Invalid 'messages[0].content[0].file': needs 'file_data' or 'file_id'."),
    ("image_in_system_message", _msgs({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}),
     "messages[0].content[0].type",
     "Invalid value for 'messages[0].content[0].type': 'image_url'. Supported values are: 'text'."),
    ("image_in_assistant_message", _msgs(USER, {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}),
     "messages[1].content[0].type",
     "Invalid value for 'messages[1].content[0].type': 'image_url'. Supported values are: 'text' or 'refusal'."),
    ("tool_without_tool_call_id", _msgs(USER, {"role": "tool", "content": "x"}), "messages[1].tool_call_id",
     "Missing required parameter: 'messages[1].tool_call_id'."),
    ("function_message_without_name", _msgs({"role": "function", "content": "x"}), "messages[0].name",
     "Missing required parameter: 'messages[0].name'."),
    ("tool_call_arguments_object", _msgs(USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}),
     "messages[1].tool_calls[0].function.arguments",
     "Invalid type for 'messages[1].tool_calls[0].function.arguments': expected a string, but got an object instead."),
    ("tool_call_without_type", _msgs(USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
     "messages[1].tool_calls[0].type", "Missing required parameter: 'messages[1].tool_calls[0].type'."),
    ("thinking_block_bad_type", _msgs(USER, {"role": "assistant", "content": "x",
                                             "thinking_blocks": [{"type": "reasoning", "text": "t"}]}),
     "messages[1].thinking_blocks[0].type",
     "Invalid value for 'messages[1].thinking_blocks[0].type': 'reasoning'. Supported values are: 'thinking' or "
     "'redacted_thinking'."),
    ("redacted_thinking_without_data", _msgs(USER, {"role": "assistant", "content": "x",
                                                    "thinking_blocks": [{"type": "redacted_thinking"}]}),
     "messages[1].thinking_blocks[0].data", "Missing required parameter: 'messages[1].thinking_blocks[0].data'."),
    ("thought_signature_not_string", _msgs(USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"},
         "extra_content": {"google": {"thought_signature": 5}}}]}),
     "messages[1].tool_calls[0].extra_content.google.thought_signature",
     "Invalid type for 'messages[1].tool_calls[0].extra_content.google.thought_signature': expected a string, "
     "but got an integer instead."),
    ("temperature_too_high", req(temperature=3), "temperature",
     "Invalid 'temperature': expected a value at most 2, but got 3 instead."),
    ("temperature_string", req(temperature="hot"), "temperature",
     "Invalid type for 'temperature': expected a number or null, but got a string instead."),
    ("temperature_boolean", req(temperature=True), "temperature",
     "Invalid type for 'temperature': expected a number or null, but got a boolean instead."),
    ("n_zero", req(n=0), "n", "Invalid 'n': expected a value at least 1, but got 0 instead."),
    ("max_tokens_fraction", req(max_tokens=10.5), "max_tokens",
     "Invalid type for 'max_tokens': expected an integer or null, but got a number instead."),
    ("top_logprobs_21", req(top_logprobs=21), "top_logprobs",
     "Invalid 'top_logprobs': expected a value at most 20, but got 21 instead."),
    ("stream_string", req(stream="yes"), "stream",
     "Invalid type for 'stream': expected a boolean or null, but got a string instead."),
    ("stream_options_include_usage_string", req(stream_options={"include_usage": "yes"}), "stream_options.include_usage",
     "Invalid type for 'stream_options.include_usage': expected a boolean, but got a string instead."),
    ("stop_number", req(stop=5), "stop",
     "Invalid type for 'stop': expected a string, an array or null, but got an integer instead."),
    ("stop_list_of_numbers", req(stop=["a", 5]), "stop[1]",
     "Invalid type for 'stop[1]': expected a string, but got an integer instead."),
    ("tool_choice_unknown_string", req(tool_choice="maybe"), "tool_choice",
     "Invalid value for 'tool_choice': 'maybe'. Supported values are: 'none', 'auto' or 'required'."),
    ("tool_choice_number", req(tool_choice=1), "tool_choice",
     "Invalid type for 'tool_choice': expected a string, an object or null, but got an integer instead."),
    ("tool_choice_function_without_name", req(tool_choice={"type": "function"}), "tool_choice.function",
     "Missing required parameter: 'tool_choice.function'."),
    ("tool_type_unknown", req(tools=[{"type": "retrieval"}]), "tools[0].type",
     "Invalid value for 'tools[0].type': 'retrieval'. Supported values are: 'function' or 'custom'."),
    ("tool_function_without_name", req(tools=[{"type": "function", "function": {"parameters": {}}}]),
     "tools[0].function.name", "Missing required parameter: 'tools[0].function.name'."),
    ("tool_parameters_not_object", req(tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
     "tools[0].function.parameters",
     "Invalid type for 'tools[0].function.parameters': expected an object, but got a string instead."),
    ("response_format_missing_json_schema", req(response_format={"type": "json_schema"}), "response_format.json_schema",
     "Missing required parameter: 'response_format.json_schema'."),
    ("response_format_unknown_type", req(response_format={"type": "xml"}), "response_format.type",
     "Invalid value for 'response_format.type': 'xml'. Supported values are: 'text', 'json_object' or 'json_schema'."),
    ("reasoning_effort_unknown", req(reasoning_effort="extreme"), "reasoning_effort",
     "Invalid value for 'reasoning_effort': 'extreme'. Supported values are: 'none', 'minimal', 'low', 'medium', "
     "'high', 'xhigh', 'max' or null."),
    ("modalities_unknown", req(modalities=["video"]), "modalities[0]",
     "Invalid value for 'modalities[0]': 'video'. Supported values are: 'text' or 'audio'."),
    ("logit_bias_out_of_range", req(logit_bias={"50256": 200}), 'logit_bias["50256"]',
     "Invalid 'logit_bias[\"50256\"]': expected a value at most 100, but got 200 instead."),
    ("metadata_value_not_string", req(metadata={"team": 7}), "metadata.team",
     "Invalid type for 'metadata.team': expected a string, but got an integer instead."),
    ("parallel_tool_calls_string", req(parallel_tool_calls="true"), "parallel_tool_calls",
     "Invalid type for 'parallel_tool_calls': expected a boolean or null, but got a string instead."),
    ("body_is_array", [USER], None,
     "Invalid type for the request body: expected an object, but got an array instead."),
]


@pytest.mark.parametrize("name,body,param,message", INVALID_REQUESTS, ids=[c[0] for c in INVALID_REQUESTS])
def test_invalid_requests_name_the_field(name: str, body: Any, param: str | None, message: str) -> None:
    with pytest.raises(ProxyError) as info:
        validate_body(REQ, body)
    err = info.value
    assert err.kind is ErrorKind.INVALID_REQUEST and err.status == 400
    assert (err.param, err.message) == (param, message)
    assert not validation.validator(REQ).is_valid(body)  # the reference agrees


GOOD_TURNS = [USER, {"role": "assistant", "content": "Hi! How can I help?"}] * 40 + [USER]


def _long(messages: list[Any], **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": messages, **extra}


# Long bodies: only the failing items reach jsonschema; the error must be the one a full run gives.
# (name, body, param)
LONG_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("bad_message_deep_in_history", _long(GOOD_TURNS[:57] + [{"role": "bot", "content": "x"}] + GOOD_TURNS[57:]),
     "messages[57].role"),
    ("two_bad_messages_shallowest_reported", _long(GOOD_TURNS[:30] + [{"role": "user", "content": 1}] + GOOD_TURNS[30:60]
                                              + [{"role": "user"}] + GOOD_TURNS[60:]), "messages[61].content"),
    ("bad_part_in_last_message", _long(GOOD_TURNS + [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                                  {"type": "audio"}]}]),
     "messages[81].content[1].type"),
    ("bad_tool_among_many", _long(GOOD_TURNS, tools=[WEATHER_TOOL] * 6 + [{"type": "function", "function": {}}]
                                  + [WEATHER_TOOL] * 3), "tools[6].function.name"),
    ("top_level_error_with_good_history", _long(GOOD_TURNS, temperature=-1), "temperature"),
    ("missing_model_first", {"messages": GOOD_TURNS + [{"role": "bot"}]}, "model"),
]


@pytest.mark.parametrize("name,body,param", LONG_BODIES, ids=[c[0] for c in LONG_BODIES])
def test_long_bodies_report_the_same_error_as_a_full_run(name: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(ProxyError) as info:
        validate_body(REQ, body)
    full = validation.error_from(validation.validator(REQ).iter_errors(body))
    assert (info.value.param, info.value.message) == (full.param, full.message)
    assert info.value.param == param


def test_long_values_are_not_echoed_whole() -> None:
    with pytest.raises(ProxyError) as info:
        validate_body(REQ, _msgs({"role": "x" * 5000, "content": "hi"}))
    assert info.value.param == "messages[0].role"
    assert len(info.value.message) < 300 and "xxx..." in info.value.message


def test_first_problem_is_reported_when_there_are_several() -> None:
    # best_match prefers the error closest to the top: the missing model, not the deep part type
    body = {"messages": [{"role": "user", "content": [{"type": "video"}]}]}
    with pytest.raises(ProxyError) as info:
        validate_body(REQ, body)
    assert info.value.param == "model"


def test_validation_error_renders_as_openai_error_body() -> None:
    with pytest.raises(ProxyError) as info:
        validate_body(REQ, req(temperature=3))
    body = openai_body(info.value)
    assert body["error"]["param"] == "temperature" and body["error"]["code"] == "invalid_value"
    assert is_valid("error.v1", body)


# -- responses and chunks: openai-python's recorded live answers -------------------------------------

# tests/lib/chat/test_completions.py snapshots (test_parse_nothing, test_parse_pydantic_tool,
# test_parse_pydantic_model_refusal, test_parse_max_tokens_reached)
RESPONSES: list[tuple[str, str]] = [
    ("text", '{"id": "chatcmpl-ABfvaueLEMLNYbT8YzpJxsmiQ6HSY", "object": "chat.completion", "created": 1727346142, "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "message": {"role": "assistant", "content": "I\'m unable to provide real-time weather updates. To get the current weather in San Francisco, I recommend checking a reliable weather website or app like the Weather Channel or a local news station.", "refusal": null}, "logprobs": null, "finish_reason": "stop"}], "usage": {"prompt_tokens": 14, "completion_tokens": 37, "total_tokens": 51, "completion_tokens_details": {"reasoning_tokens": 0}}, "system_fingerprint": "fp_b40fb1c6fb"}'),
    ("tool_call", '{"id": "chatcmpl-ABfvx6Z4dchiW2nya1N8KMsHFrQRE", "object": "chat.completion", "created": 1727346165, "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_Y6qJ7ofLgOrBnMD5WbVAeiRV", "type": "function", "function": {"name": "GetWeatherArgs", "arguments": "{\\"city\\":\\"Edinburgh\\",\\"country\\":\\"UK\\",\\"units\\":\\"c\\"}"}}], "refusal": null}, "logprobs": null, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 76, "completion_tokens": 24, "total_tokens": 100, "completion_tokens_details": {"reasoning_tokens": 0}}, "system_fingerprint": "fp_e45dabd248"}'),
    ("refusal", '{"id": "chatcmpl-ABfvwoKVWPQj2UPlAcAKM7s40GsRx", "object": "chat.completion", "created": 1727346164, "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": "I\'m very sorry, but I can\'t assist with that."}, "logprobs": null, "finish_reason": "stop"}], "usage": {"prompt_tokens": 79, "completion_tokens": 12, "total_tokens": 91, "completion_tokens_details": {"reasoning_tokens": 0}}, "system_fingerprint": "fp_5050236cbd"}'),
    ("length", '{"id": "chatcmpl-ABfvvX7eB1KsfeZj8VcF3z7G7SbaA", "object": "chat.completion", "created": 1727346163, "model": "gpt-4o-2024-08-06", "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\\"", "refusal": null}, "logprobs": null, "finish_reason": "length"}], "usage": {"prompt_tokens": 79, "completion_tokens": 1, "total_tokens": 80, "completion_tokens_details": {"reasoning_tokens": 0}}, "system_fingerprint": "fp_7568d46099"}'),
    # the gateway's own extensions (providers/base.py): reasoning, thinking blocks, Gemini signatures, cache usage
    ("pivot_extensions", json.dumps({
        "id": "chatcmpl-0123", "object": "chat.completion", "created": 1700000000, "model": "claude",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Checking.", "reasoning_content": "Need the tool.",
            "thinking_blocks": [{"type": "thinking", "thinking": "Need the tool.", "signature": "EqQB"},
                                {"type": "redacted_thinking", "data": "EmwK"}],
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"},
                            "extra_content": {"google": {"thought_signature": "CiQB"}}}]}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
                  "prompt_tokens_details": {"cached_tokens": 100, "cache_creation_tokens": 10},
                  "completion_tokens_details": {"reasoning_tokens": 12}}})),
]

# .inline-snapshot/external/be1089999ca5*.bin (logprobs), ca015b8b1eba*.bin (refusal), dae1b261f197*.bin (tool call)
CHUNKS: list[tuple[str, str]] = [
    ("first_with_logprobs", '{"id":"chatcmpl-9tXjliCPGY1wrAHNJ4DBnWJxKYyuf","object":"chat.completion.chunk","created":1723024753,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_845eaabc1f","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":{"content":[],"refusal":null},"finish_reason":null}]}'),
    ("content_logprobs", '{"id":"chatcmpl-9tXjliCPGY1wrAHNJ4DBnWJxKYyuf","object":"chat.completion.chunk","created":1723024753,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_845eaabc1f","choices":[{"index":0,"delta":{"content":"Foo"},"logprobs":{"content":[{"token":"Foo","logprob":-0.0067602484,"bytes":[70,111,111],"top_logprobs":[]}],"refusal":null},"finish_reason":null}]}'),
    ("finish", '{"id":"chatcmpl-9tXjliCPGY1wrAHNJ4DBnWJxKYyuf","object":"chat.completion.chunk","created":1723024753,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_845eaabc1f","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}'),
    ("usage", '{"id":"chatcmpl-9tXjliCPGY1wrAHNJ4DBnWJxKYyuf","object":"chat.completion.chunk","created":1723024753,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_845eaabc1f","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}'),
    ("refusal_start", '{"id":"chatcmpl-9tXmMGFPkLS0t0u0895fzYOblnfYa","object":"chat.completion.chunk","created":1723024914,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_845eaabc1f","choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""},"logprobs":null,"finish_reason":null}]}'),
    ("refusal_delta", '{"id":"chatcmpl-9tXmMGFPkLS0t0u0895fzYOblnfYa","object":"chat.completion.chunk","created":1723024914,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_845eaabc1f","choices":[{"index":0,"delta":{"refusal":" sorry"},"logprobs":null,"finish_reason":null}]}'),
    ("tool_call_start", '{"id":"chatcmpl-9tXjtfxZZh2FYaFVxXKf2jiqNDiSo","object":"chat.completion.chunk","created":1723024761,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_845eaabc1f","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_5uxEBMFySqqQGu02I5QHA8k6","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}'),
    ("tool_call_arguments", '{"id":"chatcmpl-9tXjtfxZZh2FYaFVxXKf2jiqNDiSo","object":"chat.completion.chunk","created":1723024761,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_845eaabc1f","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\""}}]},"logprobs":null,"finish_reason":null}]}'),
    ("tool_call_finish", '{"id":"chatcmpl-9tXjtfxZZh2FYaFVxXKf2jiqNDiSo","object":"chat.completion.chunk","created":1723024761,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_845eaabc1f","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}'),
    # the gateway's stream extensions
    ("pivot_reasoning_delta", '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"reasoning_content":"Hmm"},"finish_reason":null}]}'),
    ("pivot_thinking_blocks", '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"thinking_blocks":[{"type":"thinking","thinking":"Hmm","signature":"EqQB"}]},"finish_reason":null}]}'),
    ("pivot_tool_signature", '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""},"extra_content":{"google":{"thought_signature":"CiQB"}}}]},"finish_reason":null}]}'),
]


@pytest.mark.parametrize("name,text", RESPONSES, ids=[n for n, _ in RESPONSES])
def test_real_responses_match_the_response_schema(name: str, text: str) -> None:
    assert is_valid(RESP, json.loads(text))


@pytest.mark.parametrize("name,text", CHUNKS, ids=[n for n, _ in CHUNKS])
def test_real_chunks_match_the_chunk_schema(name: str, text: str) -> None:
    assert is_valid(CHUNK, json.loads(text))


def _patched(text: str, path: list[Any], value: Any) -> Any:
    obj = json.loads(text)
    node = obj
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return obj


_DELETE = object()
BROKEN_ANSWERS: list[tuple[str, str, Any]] = [
    ("response_wrong_object", RESP, _patched(RESPONSES[0][1], ["object"], "chat.completion.chunk")),
    ("response_without_id", RESP, _patched(RESPONSES[0][1], ["id"], _DELETE)),
    ("response_unknown_finish_reason", RESP, _patched(RESPONSES[0][1], ["choices", 0, "finish_reason"], "eos")),
    ("response_role_user", RESP, _patched(RESPONSES[0][1], ["choices", 0, "message", "role"], "user")),
    ("response_usage_string", RESP, _patched(RESPONSES[0][1], ["usage", "prompt_tokens"], "14")),
    ("response_arguments_object", RESP, _patched(RESPONSES[1][1], ["choices", 0, "message", "tool_calls", 0, "function", "arguments"], {})),
    ("chunk_wrong_object", CHUNK, _patched(CHUNKS[0][1], ["object"], "chat.completion")),
    ("chunk_tool_call_without_index", CHUNK, _patched(CHUNKS[6][1], ["choices", 0, "delta", "tool_calls", 0, "index"], _DELETE)),
    ("chunk_content_number", CHUNK, _patched(CHUNKS[1][1], ["choices", 0, "delta", "content"], 5)),
]


@pytest.mark.parametrize("name,schema,answer", BROKEN_ANSWERS, ids=[c[0] for c in BROKEN_ANSWERS])
def test_broken_answers_fail(name: str, schema: str, answer: Any) -> None:
    assert not is_valid(schema, answer)
    with pytest.raises(ProxyError):
        validate_body(schema, answer)


@pytest.mark.parametrize("kind", list(ErrorKind), ids=[k.value for k in ErrorKind])
def test_every_gateway_error_matches_the_error_schema(kind: ErrorKind) -> None:
    assert ERROR_TABLE[kind]
    assert is_valid("error.v1", openai_body(ProxyError(kind, "message", param="messages[0]")))
    assert is_valid("error.v1", openai_body(ProxyError(kind, "message")))


def test_model_list_schema() -> None:
    listing = {"object": "list", "data": [{"id": "gpt-4o", "object": "model", "created": 1686935002, "owned_by": "openai"}]}
    assert is_valid("models.list.v1", listing)
    assert not is_valid("models.list.v1", {"object": "list", "data": [{"id": "gpt-4o"}]})


def test_response_and_chunk_share_their_common_definitions() -> None:
    resp, chunk = load_schema(RESP)["$defs"], load_schema(CHUNK)["$defs"]
    for name in ("usage", "logprobs", "token_logprob", "thinking_block", "extra_content", "annotation"):
        assert resp[name] == chunk[name], name


# -- the schema files --------------------------------------------------------------------------------

def test_schema_files_are_listed_loadable_and_identified() -> None:
    names = schema_names()
    for name in MINE:
        assert name in names
        schema = load_schema(name)
        assert load_schema(name + ".json") is schema
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == validation.SCHEMA_BASE_URI + name + ".json"
        validation.validator(name)  # checked against the 2020-12 metaschema


@pytest.mark.parametrize("name", ["no_such_schema", "../setup", "../tornado_proxy/__init__"])
def test_unknown_schema_names_are_refused(name: str) -> None:
    with pytest.raises(KeyError):
        load_schema(name)


def test_every_schema_in_the_repo_has_the_compiled_fast_path() -> None:
    for name in schema_names():
        assert validation.has_fast_path(name), name


# -- the compiled fast path agrees with jsonschema ---------------------------------------------------

_POOL: list[Any] = [None, True, False, 0, 1, -1, 2.5, 300, "", "text", "user", "assistant", "function",
                    "image_url", "auto", [], [1], ["a"], {}, {"type": "text"}, {"role": "user"},
                    {"type": "function", "function": {"name": "f"}}, 1.0]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(body: Any, rng: random.Random) -> Any:
    body = copy.deepcopy(body)
    path = rng.choice(_paths(body))
    if not path:
        return rng.choice(_POOL)
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    roll = rng.random()
    if roll < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
    elif roll < 0.3 and isinstance(parent, dict):
        parent["extra_" + str(rng.randrange(3))] = rng.choice(_POOL)
    else:
        parent[path[-1]] = copy.deepcopy(rng.choice(_POOL))
    return body


def test_fast_path_agrees_with_jsonschema_on_the_tables() -> None:
    for name, body in VALID_REQUESTS:
        assert is_valid(REQ, body), name
    for name, body, _, _ in INVALID_REQUESTS:
        assert not is_valid(REQ, body), name


@pytest.mark.parametrize("schema,seeds", [
    (REQ, [b for _, b in VALID_REQUESTS]),
    (RESP, [json.loads(t) for _, t in RESPONSES]),
    (CHUNK, [json.loads(t) for _, t in CHUNKS]),
])
def test_fast_path_agrees_with_jsonschema_on_mutations(schema: str, seeds: list[Any]) -> None:
    rng = random.Random(20240611)
    reference = validation.validator(schema)
    checked = 0
    for _ in range(300):
        body = _mutate(rng.choice(seeds), rng)
        if rng.random() < 0.3:
            body = _mutate(body, rng)
        assert is_valid(schema, body) == reference.is_valid(body), body
        checked += 1
    assert checked == 300
