"""Anthropic whole responses and error answers -> the pivot, as tables."""
from __future__ import annotations

from typing import Any

import pytest

from providers.anthropic_messages import AnthropicProvider
from providers.base import StreamContext
from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

CTX = StreamContext(id="chatcmpl-1", created=1700000000, model="claude-x")
P = AnthropicProvider({"name": "anthropic", "type": "anthropic"})


def msg(content: list[dict[str, Any]], stop: str = "end_turn", **usage: int) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up", "content": content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5, **usage}}


def completion(message: dict[str, Any], finish: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "claude-x",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}


def usage(prompt: int = 10, completion_: int = 5, cached: int = 0, created: int = 0, **extra: Any) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion_, "total_tokens": prompt + completion_,
            "prompt_tokens_details": {"cached_tokens": cached, "cache_creation_tokens": created}, **extra}


RESPONSES = [
    ("text", msg([{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]),
     completion({"role": "assistant", "content": "Hi there"}, "stop", usage())),
    ("stop_sequence is stop", msg([{"type": "text", "text": "a"}], "stop_sequence"),
     completion({"role": "assistant", "content": "a"}, "stop", usage())),
    ("max_tokens is length", msg([{"type": "text", "text": "a"}], "max_tokens"),
     completion({"role": "assistant", "content": "a"}, "length", usage())),
    ("refusal is content_filter", msg([], "refusal"),
     completion({"role": "assistant", "content": ""}, "content_filter", usage())),
    ("tool use keeps ids; no text -> content null",
     msg([{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "Paris"}},
          {"type": "tool_use", "id": "toolu_2", "name": "t", "input": {}}], "tool_use"),
     completion({"role": "assistant", "content": None, "tool_calls": [
         {"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Paris\"}"}},
         {"id": "toolu_2", "type": "function", "function": {"name": "t", "arguments": "{}"}}]}, "tool_calls", usage())),
    ("thinking with signature and redacted thinking",
     msg([{"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "redacted_thinking", "data": "enc"},
          {"type": "text", "text": "ok"}], output_tokens_details={"thinking_tokens": 3}),  # type: ignore[arg-type]
     completion({"role": "assistant", "content": "ok", "reasoning_content": "hmm",
                 "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                     {"type": "redacted_thinking", "data": "enc"}]}, "stop",
                usage(completion_tokens_details={"reasoning_tokens": 3}))),
    ("cache usage: prompt_tokens includes reads and writes",
     msg([{"type": "text", "text": "a"}], cache_read_input_tokens=2000, cache_creation_input_tokens=300),
     completion({"role": "assistant", "content": "a"}, "stop", usage(prompt=2310, cached=2000, created=300))),
]


@pytest.mark.parametrize("name,upstream,expected", RESPONSES, ids=[r[0] for r in RESPONSES])
def test_translate_response(name: str, upstream: dict[str, Any], expected: dict[str, Any]) -> None:
    assert P.translate_response(jsonutil.dumpb(upstream), CTX) == expected


@pytest.mark.parametrize("name,body,kind", [
    ("not JSON", b"<html>", ErrorKind.UPSTREAM_BAD_RESPONSE),
    ("not a message", b'{"type":"completion"}', ErrorKind.UPSTREAM_BAD_RESPONSE),
    ("an error body with 200", b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}',
     ErrorKind.UPSTREAM_OVERLOADED),
])
def test_bad_responses(name: str, body: bytes, kind: ErrorKind) -> None:
    with pytest.raises(ProxyError) as info:
        P.translate_response(body, CTX)
    assert info.value.kind is kind


def err(etype: str, message: str = "m") -> bytes:
    return jsonutil.dumpb({"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_1"})


# (name, status, headers, body, kind, retry_after)
ERRORS = [
    ("529 overloaded", 529, {}, err("overloaded_error", "Overloaded"), ErrorKind.UPSTREAM_OVERLOADED, None),
    ("529 whatever the body", 529, {}, b"oops", ErrorKind.UPSTREAM_OVERLOADED, None),
    ("429 with retry-after", 429, {"retry-after": "17", "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:17Z"},
     err("rate_limit_error"), ErrorKind.UPSTREAM_RATE_LIMITED, 17.0),
    ("400 invalid request", 400, {}, err("invalid_request_error", "max_tokens: too big"),
     ErrorKind.UPSTREAM_BAD_REQUEST, None),
    ("401", 401, {}, err("authentication_error"), ErrorKind.UPSTREAM_AUTH, None),
    ("402 billing", 402, {}, err("billing_error"), ErrorKind.UPSTREAM_PAYMENT, None),
    ("403", 403, {}, err("permission_error"), ErrorKind.UPSTREAM_FORBIDDEN, None),
    ("404", 404, {}, err("not_found_error"), ErrorKind.UPSTREAM_NOT_FOUND, None),
    ("413", 413, {}, err("request_too_large"), ErrorKind.BODY_TOO_LARGE, None),
    ("500 api_error", 500, {}, err("api_error"), ErrorKind.UPSTREAM_ERROR, None),
    ("unknown type: status decides", 503, {}, err("brand_new_error"), ErrorKind.UPSTREAM_OVERLOADED, None),
    ("HTML from a proxy", 502, {}, b"<html>bad gateway</html>", ErrorKind.UPSTREAM_ERROR, None),
]


@pytest.mark.parametrize("name,status,headers,body,kind,retry_after", ERRORS, ids=[e[0] for e in ERRORS])
def test_classify_error(name: str, status: int, headers: dict[str, str], body: bytes, kind: ErrorKind,
                        retry_after: float | None) -> None:
    e = P.classify_error(status, headers, body)
    assert e.kind is kind
    assert e.retry_after == retry_after
    assert e.headers == headers  # the scheduler reads anthropic-ratelimit-*-reset from them
    assert e.upstream_status == status
    assert str(status) in e.message
