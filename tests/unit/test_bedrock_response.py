"""Whole (non-streaming) Converse answers -> pivot chat.completion.

The fixtures' answers are checked against goldens in test_bedrock_stream.py (with
the fold of their streams); this table covers the remaining shapes and bad bodies.
"""
from __future__ import annotations

from typing import Any

import pytest

from providers.base import StreamContext
from providers.bedrock import BedrockProvider
from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

PROVIDER = BedrockProvider({"name": "bedrock", "type": "bedrock", "options": {"region": "us-east-1"}})
USAGE = {"inputTokens": 5, "outputTokens": 7, "totalTokens": 12}


def answer(content: list[Any], stop: str = "end_turn", **more: Any) -> bytes:
    return jsonutil.dumpb({"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop,
                           "usage": USAGE, "metrics": {"latencyMs": 10}, **more})


def completion(message: dict[str, Any], finish: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
                               "prompt_tokens_details": {"cached_tokens": 0}}}


CASES = [
    ("tool call only: content is null", answer([{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}], "tool_use"),
     completion({"role": "assistant", "content": None, "tool_calls": [
         {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "tool_calls")),
    ("two text blocks join", answer([{"text": "a"}, {"text": "b"}], "stop_sequence"),
     completion({"role": "assistant", "content": "ab"}, "stop")),
    ("guardrail", answer([{"text": "Sorry."}], "guardrail_intervened"),
     completion({"role": "assistant", "content": "Sorry."}, "content_filter")),
    ("context window", answer([{"text": "x"}], "model_context_window_exceeded"),
     completion({"role": "assistant", "content": "x"}, "length")),
    ("cache write counted in prompt_tokens",
     jsonutil.dumpb({"output": {"message": {"role": "assistant", "content": [{"text": "x"}]}}, "stopReason": "end_turn",
                     "usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 505, "cacheReadInputTokens": 0,
                               "cacheWriteInputTokens": 500}, "metrics": {"latencyMs": 1}}),
     completion({"role": "assistant", "content": "x"}, "stop",
                {"prompt_tokens": 503, "completion_tokens": 2, "total_tokens": 505,
                 "prompt_tokens_details": {"cached_tokens": 0, "cache_creation_tokens": 500}})),
]


@pytest.mark.parametrize("name,body,expected", CASES)
def test_translate_response(name: str, body: bytes, expected: dict[str, Any]) -> None:
    ctx = StreamContext(id="chatcmpl-1", created=1, model="m")
    assert PROVIDER.translate_response(body, ctx) == expected
    assert ctx.upstream_latency_ms is not None and ctx.upstream_latency_ms >= 1


BAD = [
    ("not JSON", b"<html>", "not JSON"),
    ("not an object", b"[1]", "not an object"),
    ("no output", b'{"stopReason":"end_turn"}', "output.message.content"),
    ("unexpected block", answer([{"citationsContent": {}}]), "citationsContent"),
    ("malformed output", answer([{"text": "x"}], "malformed_model_output"), "malformed_model_output"),
    ("unknown stop reason", answer([{"text": "x"}], "tired"), "tired"),
]


@pytest.mark.parametrize("name,body,words", BAD)
def test_translate_response_rejects(name: str, body: bytes, words: str) -> None:
    with pytest.raises(ProxyError) as exc:
        PROVIDER.translate_response(body, StreamContext(id="c", created=1, model="m"))
    assert exc.value.kind is ErrorKind.UPSTREAM_BAD_RESPONSE
    assert words in exc.value.message
