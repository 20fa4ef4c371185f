"""The openai upstream's request building (translated path) and its stream checks."""
from __future__ import annotations

import pytest

from providers.base import Account
from providers.openai_chat import OpenAIChatProvider, OpenAIChatStream
from tornado_proxy.apis.openai_chat import OpenAIChatFormat, OpenAIEncoder
from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.sse import SSEEvent

ACCT = Account(id="a", api_key="test-key")
MSG = [{"role": "user", "content": "hi"}]


def build(req: dict, model: dict, options: dict | None = None, stream: bool = False) -> dict:
    p = OpenAIChatProvider({"name": "p", "type": "openai", "base_url": "http://127.0.0.1:1/v1",
                            "options": options or {}})
    return jsonutil.loads(p.build_request(req, {"upstream_model": "m", **model}, ACCT, stream).body)


CASES = [
    ("model mapped", {"model": "alias", "messages": MSG}, {}, None, {"model": "m", "messages": MSG}),
    ("system prompt prepended", {"model": "x", "messages": MSG}, {"system_prompt": "S"}, None,
     {"model": "m", "messages": [{"role": "system", "content": "S"}, *MSG]}),
    ("default max_tokens from model", {"model": "x", "messages": MSG}, {"max_tokens": 99}, None,
     {"model": "m", "messages": MSG, "max_tokens": 99}),
    ("reasoning model gets max_completion_tokens", {"model": "x", "messages": MSG, "max_tokens": 50},
     {"upstream_model": "o3-mini"}, None, {"model": "o3-mini", "messages": MSG, "max_completion_tokens": 50}),
    ("gpt-5 too", {"model": "x", "messages": MSG, "max_tokens": 50}, {"upstream_model": "gpt-5.1"}, None,
     {"model": "gpt-5.1", "messages": MSG, "max_completion_tokens": 50}),
    ("forced by option", {"model": "x", "messages": MSG, "max_tokens": 5}, {},
     {"max_tokens_field": "max_completion_tokens"}, {"model": "m", "messages": MSG, "max_completion_tokens": 5}),
    ("pivot extensions removed", {"model": "x", "messages": [
        {"role": "assistant", "content": "a", "reasoning_content": "r",
         "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"}],
         "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"},
                         "extra_content": {"google": {"thought_signature": "x"}}}]}]}, {}, None,
     {"model": "m", "messages": [{"role": "assistant", "content": "a", "tool_calls": [
         {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}),
    ("reasoning_content kept when the server takes it", {"model": "x", "messages": [
        {"role": "assistant", "content": "a", "reasoning_content": "r"}]}, {}, {"send_reasoning_content": True},
     {"model": "m", "messages": [{"role": "assistant", "content": "a", "reasoning_content": "r"}]}),
]


@pytest.mark.parametrize("name,req,model,options,expected", CASES, ids=[c[0] for c in CASES])
def test_build_request(name: str, req: dict, model: dict, options: dict | None, expected: dict) -> None:
    assert build(req, model, options) == expected


def test_stream_always_asks_for_usage_and_encoder_drops_it_unless_asked() -> None:
    body = build({"model": "x", "messages": MSG, "stream": True}, {}, stream=True)
    assert body["stream_options"] == {"include_usage": True}
    usage_chunk = {"id": "c", "choices": [], "usage": {"prompt_tokens": 1}}
    assert OpenAIEncoder(False).feed(usage_chunk) == b""
    assert OpenAIEncoder(True).feed(usage_chunk).startswith(b"data: {")


def test_stream_checks() -> None:
    t = OpenAIChatStream()
    t.feed(SSEEvent(None, '{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}'))
    with pytest.raises(ProxyError) as e:
        t.finish()
    assert e.value.kind is ErrorKind.UPSTREAM_STREAM_CUT
    with pytest.raises(ProxyError):
        OpenAIChatStream().feed(SSEEvent(None, '{"error": {"message": "boom"}}'))
    t2 = OpenAIChatStream()
    t2.feed(SSEEvent(None, "[DONE]"))
    assert t2.finish() == []


def test_null_params_are_not_given() -> None:
    assert OpenAIChatFormat().parse_request({"model": "m", "temperature": None, "messages": MSG}) == \
        {"model": "m", "messages": MSG}
