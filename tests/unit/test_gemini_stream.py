"""Gemini answers -> pivot: recorded fixtures replayed against golden files.

Each ``tests/fixtures/gemini/*.sse`` is replayed (tests/replay.py) through SSEDecoder +
GeminiStreamTranslator whole, byte by byte, at random split points and at every
2-piece split; all must give ``tests/golden/gemini/<name>.chunks.json``.  Each
``*.json`` answer goes through ``translate_response`` against ``<name>.completion.json``.  Folding the translated stream
must equal translating the whole answer.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from providers.base import StreamContext
from providers.gemini import GeminiProvider, GeminiStreamTranslator
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.sse import SSEDecoder, SSEEvent
from tests.replay import MODES, cuts, fixture, golden, replay as run, splits

CTX = dict(id="chatcmpl-gem0001", created=1714000000, model="gemini-flash")


def ctx() -> StreamContext:
    return StreamContext(**CTX)


def provider(show_links: bool = False) -> GeminiProvider:
    return GeminiProvider({"name": "gem", "type": "gemini", "options": {"show_search_links": show_links}})


def error_record(err: ProxyError) -> dict[str, Any]:
    return {"error": {"kind": err.kind.value, "message": err.message, "retry_after": err.retry_after}}


def replay(data: bytes, show_links: bool, reads: list[bytes] | None = None) -> list[dict[str, Any]]:
    """``data`` (whole, or as ``reads``) through decoder and translator; an error becomes a last record."""
    chunks, err = run(SSEDecoder(), provider(show_links).new_stream(ctx()), reads or [data])
    return chunks + ([error_record(err)] if err is not None else [])


def translate_whole(data: bytes, show_links: bool) -> dict[str, Any]:
    try:
        return provider(show_links).translate_response(data, ctx())
    except ProxyError as err:
        return error_record(err)


def fold(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Pivot chunks -> the chat.completion they add up to (an error record stays one)."""
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for ch in chunks:
        if "error" in ch:
            return ch
        assert ch["object"] == "chat.completion.chunk"
        assert (ch["id"], ch["created"], ch["model"]) == (CTX["id"], CTX["created"], CTX["model"])
        if "usage" in ch:
            assert ch["choices"] == []
            usage = ch["usage"]
        for c in ch["choices"]:
            st = choices.setdefault(c["index"], {"content": None, "reasoning": None, "calls": {}, "finish": None,
                                                 "role": None})
            assert st["finish"] is None, "delta after finish_reason"
            d = c["delta"]
            if "role" in d:
                assert st["role"] is None, "role sent twice"
                st["role"] = d["role"]
            assert st["role"] == "assistant", "first delta lacks the role"
            if "content" in d:
                st["content"] = (st["content"] or "") + d["content"]
            if "reasoning_content" in d:
                st["reasoning"] = (st["reasoning"] or "") + d["reasoning_content"]
            for tc in d.get("tool_calls") or []:
                call = st["calls"].get(tc["index"])
                if call is None:
                    assert tc["index"] == len(st["calls"]), "tool call indexes must be dense and in order"
                    call = st["calls"][tc["index"]] = {"id": tc["id"], "type": tc["type"],
                                                       "function": {"name": tc["function"]["name"], "arguments": ""}}
                    if "extra_content" in tc:
                        call["extra_content"] = tc["extra_content"]
                call["function"]["arguments"] += tc["function"].get("arguments", "")
            if c.get("finish_reason"):
                st["finish"] = c["finish_reason"]
    out_choices = []
    for i in sorted(choices):
        st = choices[i]
        msg: dict[str, Any] = {"role": "assistant", "content": st["content"]}
        if st["reasoning"] is not None:
            msg["reasoning_content"] = st["reasoning"]
        if st["calls"]:
            msg["tool_calls"] = [st["calls"][k] for k in sorted(st["calls"])]
        assert st["finish"] is not None, "choice without finish_reason"
        out_choices.append({"index": i, "message": msg, "finish_reason": st["finish"]})
    out: dict[str, Any] = {"id": CTX["id"], "object": "chat.completion", "created": CTX["created"],
                           "model": CTX["model"], "choices": out_choices}
    if usage is not None:
        out["usage"] = usage
    return out


# (fixture stem, show_search_links)
STREAMS = [
    ("text", False),
    ("thinking", False),
    ("parallel_calls", False),
    ("grounding", True),
    ("code_execution", False),
    ("safety_block", False),
    ("prompt_blocked", False),
    ("two_candidates", False),
    ("cut", False),
    ("midstream_error", False),
]
WHOLES = [
    ("text", False),
    ("thinking", False),
    ("parallel_calls", False),
    ("grounding", True),
    ("code_execution", False),
    ("safety_block", False),
    ("prompt_blocked", False),
    ("two_candidates", False),
]
# Streams recorded as the same answer as their whole counterpart.  (safety_block
# differs on purpose: a blocked whole answer carries no content at all.)
PAIRS = ["text", "thinking", "parallel_calls", "grounding", "code_execution", "prompt_blocked", "two_candidates"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,show_links", STREAMS)
def test_stream_replay_matches_golden(name: str, show_links: bool, mode: str) -> None:
    data = fixture(f"gemini/{name}.sse")
    expected = golden(f"gemini/{name}.chunks.json", replay(data, show_links))
    for reads in splits(data, mode):
        assert replay(data, show_links, reads) == expected, cuts(reads)


@pytest.mark.parametrize("name,show_links", WHOLES)
def test_whole_answer_matches_golden(name: str, show_links: bool) -> None:
    got = translate_whole(fixture(f"gemini/{name}.json"), show_links)
    assert got == golden(f"gemini/{name}.completion.json", got)


@pytest.mark.parametrize("name", PAIRS)
def test_folded_stream_equals_whole_answer(name: str) -> None:
    show = dict(STREAMS)[name]
    chunks = replay(fixture(f"gemini/{name}.sse"), show)
    assert fold(chunks) == translate_whole(fixture(f"gemini/{name}.json"), show)


# Specific behaviour the goldens encode, asserted by name so a regenerated golden
# cannot quietly lose it.
@pytest.mark.parametrize("name,check", [
    ("parallel_calls", lambda r: [c["id"] for c in r["choices"][0]["message"]["tool_calls"]]
     == ["call_chatcmpl-gem0001_0", "call_chatcmpl-gem0001_1", "call_chatcmpl-gem0001_2"]),
    ("parallel_calls", lambda r: [c.get("extra_content") for c in r["choices"][0]["message"]["tool_calls"]]
     == [{"google": {"thought_signature": "CqQCAVSoXO5xH9k3Zr0fakeSignatureForTests9wQ=="}}, None, None]),
    ("parallel_calls", lambda r: r["choices"][0]["finish_reason"] == "tool_calls"),
    ("parallel_calls", lambda r: json.loads(r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
     == {"location": "Paris, FR", "unit": "celsius"}),
    ("thinking", lambda r: r["choices"][0]["message"]["reasoning_content"].startswith("**Working out the sum**")),
    ("thinking", lambda r: r["usage"]["completion_tokens"] == 8 + 45
     and r["usage"]["completion_tokens_details"] == {"reasoning_tokens": 45}),
    ("text", lambda r: r["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}),
    ("grounding", lambda r: r["choices"][0]["message"]["content"].endswith(
        "1. [uefa.com](https://vertexaisearch.cloud.google.com/grounding-api-redirect/AAA111)"
        "\n2. [aljazeera.com](https://vertexaisearch.cloud.google.com/grounding-api-redirect/BBB222)")),
    ("grounding", lambda r: r["usage"]["prompt_tokens"] == 12 + 96),
    ("code_execution", lambda r: "```python\nprint(sum(range(1, 51)))\n```" in r["choices"][0]["message"]["content"]
     and "```output\n1275\n```" in r["choices"][0]["message"]["content"]),
    ("two_candidates", lambda r: [(c["index"], c["message"]["content"], c["finish_reason"]) for c in r["choices"]]
     == [(0, "Red.", "stop"), (1, "Blue!", "length")]),
    ("safety_block", lambda r: r["choices"][0]["finish_reason"] == "content_filter"),
    ("prompt_blocked", lambda r: r["error"]["kind"] == ErrorKind.CONTENT_FILTER.value),
])
def test_whole_answer_semantics(name: str, check: Any) -> None:
    assert check(translate_whole(fixture(f"gemini/{name}.json"), dict(STREAMS)[name]))


@pytest.mark.parametrize("name,kind", [
    ("cut", ErrorKind.UPSTREAM_STREAM_CUT),
    ("midstream_error", ErrorKind.UPSTREAM_OVERLOADED),
    ("prompt_blocked", ErrorKind.CONTENT_FILTER),
])
def test_stream_failures_end_in_an_error(name: str, kind: ErrorKind) -> None:
    out = replay(fixture(f"gemini/{name}.sse"), False)
    assert out[-1]["error"]["kind"] == kind.value
    assert all("finish_reason" not in json.dumps(c) or c["choices"][0]["finish_reason"] is None
               for c in out[:-1] if c.get("choices"))


def test_safety_stream_keeps_text_then_content_filter() -> None:
    out = replay(fixture("gemini/safety_block.sse"), False)
    folded = fold(out)
    assert folded["choices"][0]["message"]["content"] == "Here is how"
    assert folded["choices"][0]["finish_reason"] == "content_filter"


def ev(obj: Any) -> SSEEvent:
    return SSEEvent(None, json.dumps(obj))


@pytest.mark.parametrize("name,events,kind", [
    ("not json", [SSEEvent(None, "{nope")], ErrorKind.UPSTREAM_BAD_RESPONSE),
    ("not an object", [ev([1, 2])], ErrorKind.UPSTREAM_BAD_RESPONSE),
    ("parts after finish", [ev({"candidates": [{"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"}]}),
                            ev({"candidates": [{"content": {"parts": [{"text": "b"}]}}]})],
     ErrorKind.UPSTREAM_BAD_RESPONSE),
    ("429 in stream", [ev({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "slow down",
                                     "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                  "retryDelay": "3s"}]}})],
     ErrorKind.UPSTREAM_RATE_LIMITED),
])
def test_stream_rejects_events_its_phase_does_not_allow(name: str, events: list[SSEEvent], kind: ErrorKind) -> None:
    tr = GeminiStreamTranslator(ctx())
    with pytest.raises(ProxyError) as info:
        for e in events:
            tr.feed(e)
    assert info.value.kind is kind
    # A failed translator stays failed.
    with pytest.raises(ProxyError):
        tr.feed(ev({"candidates": []}))
    assert tr.finish() == []


@pytest.mark.parametrize("name,events,expect", [
    ("usage-only chunk after finish is fine",
     [ev({"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}]}),
      ev({"usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4}})],
     {"content": "hi", "finish": "stop", "usage": 4}),
    ("an empty part after finish is fine",
     [ev({"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}]}),
      ev({"candidates": [{"content": {"parts": [{"text": "", "thoughtSignature": "c2ln"}]}, "finishReason": "STOP"}]})],
     {"content": "hi", "finish": "stop", "usage": None}),
    ("empty data frame ignored",
     [SSEEvent(None, ""), ev({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "MAX_TOKENS"}]})],
     {"content": "x", "finish": "length", "usage": None}),
    ("OTHER maps to stop, no usage chunk without usageMetadata",
     [ev({"candidates": [{"content": {"parts": [{"text": "y"}]}, "finishReason": "OTHER"}]})],
     {"content": "y", "finish": "stop", "usage": None}),
    ("function call id from Gemini is kept",
     [ev({"candidates": [{"content": {"parts": [{"functionCall": {"id": "fc-77", "name": "f", "args": {}}}]},
                          "finishReason": "STOP"}]})],
     {"content": None, "finish": "tool_calls", "usage": None, "call_id": "fc-77"}),
])
def test_stream_edge_cases(name: str, events: list[SSEEvent], expect: dict[str, Any]) -> None:
    tr = GeminiStreamTranslator(ctx())
    chunks = [c for e in events for c in tr.feed(e)] + tr.finish()
    folded = fold(chunks)
    choice = folded["choices"][0]
    assert choice["message"]["content"] == expect["content"]
    assert choice["finish_reason"] == expect["finish"]
    assert (folded.get("usage") or {}).get("total_tokens") == expect["usage"]
    if "call_id" in expect:
        assert choice["message"]["tool_calls"][0]["id"] == expect["call_id"]


def test_model_options_in_ctx_model_entry_turn_on_search_links() -> None:
    p = provider(False)
    c = StreamContext(**CTX, model_entry={"id": "m", "options": {"show_search_links": True}})
    out = p.translate_response(fixture("gemini/grounding.json"), c)
    assert "**Sources:**" in out["choices"][0]["message"]["content"]
    assert "**Sources:**" not in p.translate_response(fixture("gemini/grounding.json"), ctx())[
        "choices"][0]["message"]["content"]
