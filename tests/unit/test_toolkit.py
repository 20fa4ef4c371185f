"""providers.toolkit: the helpers every upstream shares (the reasoning precedence, text-only
content, the pivot's chunk and answer shapes, the options check)."""
from __future__ import annotations

from typing import Any

import pytest

from providers.base import StreamContext, text_chunk
from providers.toolkit import (ReasoningAsk, assistant_message, delta_chunk, iter_parts, options_problems,
                               resolve_reasoning, text_of, usage_chunk)
from tornado_proxy.errors import ErrorKind, ProxyError

# (name, request fields, model entry, any_effort, expected)
REASONING: list[tuple[str, dict[str, Any], dict[str, Any], bool, ReasoningAsk]] = [
    ("nothing asked", {}, {}, False, ReasoningAsk(None, None)),
    ("the core's level wins", {"reasoning_level": "low", "reasoning_effort": "high"}, {"reasoning": "high"}, False,
     ReasoningAsk("level", "low")),
    ("a fixed model level beats the client", {"reasoning_effort": "minimal"}, {"reasoning": "high"}, False,
     ReasoningAsk("model", "high")),
    ("model off beats the alias", {}, {"reasoning": "off", "_thinking_alias": True}, False,
     ReasoningAsk("model", "off")),
    ("client effort when the model is auto", {"reasoning_effort": "medium"}, {"reasoning": "auto"}, False,
     ReasoningAsk("client", "medium", "medium")),
    ("none is off", {"reasoning_effort": "none"}, {}, False, ReasoningAsk("client", "off", "none")),
    ("xhigh is the highest level, the effort kept", {"reasoning_effort": "xhigh"}, {}, False,
     ReasoningAsk("client", "high", "xhigh")),
    ("the client beats the alias", {"reasoning_effort": "low"}, {"_thinking_alias": True}, False,
     ReasoningAsk("client", "low", "low")),
    ("the alias is high", {}, {"_thinking_alias": True}, False, ReasoningAsk("alias", "high")),
    ("an unknown effort passed on", {"reasoning_effort": "ultra"}, {}, True, ReasoningAsk("client", None, "ultra")),
]


@pytest.mark.parametrize("name,req,model,any_effort,expected", REASONING, ids=[r[0] for r in REASONING])
def test_resolve_reasoning(name: str, req: dict[str, Any], model: dict[str, Any], any_effort: bool,
                           expected: ReasoningAsk) -> None:
    assert resolve_reasoning(req, model, any_effort=any_effort) == expected


@pytest.mark.parametrize("name,req,param", [
    ("unknown level", {"reasoning_level": "max"}, "reasoning_level"),
    ("unknown effort", {"reasoning_effort": "extreme"}, "reasoning_effort"),
    ("effort not a string", {"reasoning_effort": 3}, "reasoning_effort"),
])
def test_resolve_reasoning_rejects(name: str, req: dict[str, Any], param: str) -> None:
    with pytest.raises(ProxyError) as info:
        resolve_reasoning(req, {}, any_effort=name == "effort not a string")
    assert (info.value.kind, info.value.param) == (ErrorKind.INVALID_REQUEST, param)


# (name, content, kinds, expected text)
TEXT = [
    ("none", None, ("text",), ""),
    ("string", "hi", ("text",), "hi"),
    ("text parts", [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], ("text",), "ab"),
    ("refusal where taken", [{"type": "refusal", "refusal": "no"}], ("text", "refusal"), "no"),
]


@pytest.mark.parametrize("name,content,kinds,expected", TEXT, ids=[t[0] for t in TEXT])
def test_text_of(name: str, content: Any, kinds: tuple[str, ...], expected: str) -> None:
    assert text_of(content, "messages[0].content", kinds) == expected


@pytest.mark.parametrize("name,content,kind,param", [
    ("an image part", [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}],
     ErrorKind.UNSUPPORTED, "messages[0].content[1]"),
    ("refusal where not taken", [{"type": "refusal", "refusal": "no"}], ErrorKind.UNSUPPORTED,
     "messages[0].content[0]"),
    ("text not a string", [{"type": "text", "text": 1}], ErrorKind.INVALID_REQUEST, "messages[0].content[0].text"),
    ("not a list", {"type": "text"}, ErrorKind.INVALID_REQUEST, "messages[0].content"),
])
def test_text_of_rejects_naming_the_param(name: str, content: Any, kind: ErrorKind, param: str) -> None:
    with pytest.raises(ProxyError) as info:
        text_of(content, "messages[0].content")
    assert (info.value.kind, info.value.param) == (kind, param)


def test_iter_parts_names_the_part() -> None:
    assert [p for p, _ in iter_parts([{"type": "text"}], "c")] == ["c[0]"]
    with pytest.raises(ProxyError) as info:
        list(iter_parts([{"type": "text"}, "x"], "c"))
    assert info.value.param == "c[1]"


CTX = StreamContext(id="chatcmpl-1", created=1700000000, model="m")


def test_chunks() -> None:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}
    assert delta_chunk(CTX, {"content": "x"}, index=1) == {
        **head, "choices": [{"index": 1, "delta": {"content": "x"}, "finish_reason": None}]}
    assert usage_chunk(CTX, {"total_tokens": 3}) == {**head, "choices": [], "usage": {"total_tokens": 3}}
    # The text lane's chunk (providers.base) is the builder's text delta.
    assert text_chunk(CTX, "hi") == delta_chunk(CTX, {"content": "hi"})


def test_assistant_message_only_what_it_holds() -> None:
    assert assistant_message(None) == {"role": "assistant", "content": None}
    assert list(assistant_message("a", refusal="r", reasoning="t", thinking_blocks=[{"type": "thinking"}],
                                  tool_calls=[{"id": "c"}])) == [
        "role", "content", "refusal", "reasoning_content", "thinking_blocks", "tool_calls"]


def test_options_problems() -> None:
    assert options_problems("providers/anthropic.options", {"auth": "bearer"}, "options", "provider_options") == []
    assert options_problems("providers/anthropic.options", {"drop_params": ["seed"]}, "model 'm': options",
                            "model_options") == [
        "model 'm': options.drop_params[0]: 'seed' is not one of ['temperature', 'top_p', 'stop', 'user']"]
