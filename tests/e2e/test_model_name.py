"""Every route answers with the model id the client asked for, pass-through included.

The model ``team-model`` is an alias: its ``upstream_model`` is another name, and
the fake upstreams answer with yet another (the dated snapshot names real
upstreams report).  Through the gateway the client sees only ``team-model``: in
every chat chunk, in ``message_start``, in every Responses event that carries a
response, in Gemini's ``modelVersion``, and in every whole body.
"""
from __future__ import annotations

import json
from typing import Any

import urllib.request

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes

from tests.clients.harness import provider_config
from tests.e2e.harness import LoopThread, Reply, fixture_bytes

ALIAS = "team-model"
UPSTREAM = {"openai": "gpt-4o-mini", "anthropic": "claude-sonnet-4-5", "openai-responses": "gpt-4o-mini",
            "gemini": "gemini-2.5-flash-lite"}


def gateway(harness: LoopThread, kind: str, reply: Reply) -> tuple[Any, Any]:
    up = harness.upstream().push(reply)
    cfg = {"server": {}, "providers": [provider_config(kind, up.url)],
           "models": [{"id": ALIAS, "provider": "up", "upstream_model": UPSTREAM[kind]}]}
    return harness.gateway(cfg), up


def oai(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)


def test_chat_stream_every_chunk(harness: LoopThread) -> None:
    gw, up = gateway(harness, "openai", Reply.sse_file("openai/text.sse", split=7))
    chunks = list(oai(gw).chat.completions.create(model=ALIAS, stream=True, messages=[{"role": "user", "content": "hi"}]))
    assert len(chunks) > 3 and {c.model for c in chunks} == {ALIAS}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)   # text unchanged
    assert up.requests[0].json()["model"] == UPSTREAM["openai"]


def test_chat_whole_body(harness: LoopThread) -> None:
    gw, _ = gateway(harness, "openai", Reply(200, {"Content-Type": "application/json"},
                                             fixture_bytes("openai/text.json")))
    r = oai(gw).chat.completions.create(model=ALIAS, messages=[{"role": "user", "content": "hi"}])
    assert r.model == ALIAS and r.choices[0].message.content


def test_embeddings_whole_body(harness: LoopThread) -> None:
    body = {"object": "list", "model": "text-embedding-3-small-v2",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    gw, _ = gateway(harness, "openai", Reply.json(body))
    r = oai(gw).embeddings.create(model=ALIAS, input="hi", encoding_format="float")
    assert r.model == ALIAS and r.data[0].embedding == [0.5, -0.25]


def test_messages_stream_message_start(harness: LoopThread) -> None:
    gw, up = gateway(harness, "anthropic", Reply.sse_file("anthropic/thinking_tools.sse", split=5))
    client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)
    with client.messages.stream(model=ALIAS, max_tokens=100, messages=[{"role": "user", "content": "hi"}]) as s:
        events = list(s)
        final = s.get_final_message()
    [start] = [e for e in events if e.type == "message_start"]
    assert start.message.model == ALIAS and final.model == ALIAS
    assert [b.type for b in final.content][:1] == ["thinking"] and final.content[0].signature
    assert up.requests[0].json()["model"] == UPSTREAM["anthropic"]


def test_messages_whole_body(harness: LoopThread) -> None:
    gw, _ = gateway(harness, "anthropic", Reply(200, {"Content-Type": "application/json"},
                                                fixture_bytes("anthropic/message.json")))
    client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)
    m = client.messages.create(model=ALIAS, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    assert m.model == ALIAS


def test_responses_stream_every_event_with_a_response(harness: LoopThread) -> None:
    gw, up = gateway(harness, "openai-responses", Reply.sse_file("responses/text.sse", split=11))
    events = list(oai(gw).responses.create(model=ALIAS, input="hi", stream=True))
    with_response = [e for e in events if getattr(e, "response", None) is not None]
    assert len(with_response) >= 3 and {e.response.model for e in with_response} == {ALIAS}
    assert events[-1].type == "response.completed"
    assert up.requests[0].json()["model"] == UPSTREAM["openai-responses"]


def test_responses_whole_body(harness: LoopThread) -> None:
    gw, _ = gateway(harness, "openai-responses", Reply(200, {"Content-Type": "application/json"},
                                                       fixture_bytes("responses/text.json")))
    r = oai(gw).responses.create(model=ALIAS, input="hi")
    assert r.model == ALIAS and r.output_text


def gclient(gw: Any) -> genai.Client:
    return genai.Client(api_key="k", http_options=gtypes.HttpOptions(base_url=gw.url, api_version="v1beta",
                                                                      timeout=20_000))


def test_gemini_stream_model_version(harness: LoopThread) -> None:
    gw, up = gateway(harness, "gemini", Reply.sse_file("gemini/text.sse", split=9))
    c = gclient(gw)  # (held: the client closes its HTTP client when collected)
    chunks = list(c.models.generate_content_stream(model=ALIAS, contents="hi"))
    assert len(chunks) > 1 and {c.model_version for c in chunks} == {ALIAS}
    assert UPSTREAM["gemini"] in up.requests[0].path


def test_gemini_whole_body(harness: LoopThread) -> None:
    gw, _ = gateway(harness, "gemini", Reply(200, {"Content-Type": "application/json"},
                                             fixture_bytes("gemini/text.json")))
    c = gclient(gw)
    r = c.models.generate_content(model=ALIAS, contents="hi")
    assert r.model_version == ALIAS and r.text


@pytest.mark.parametrize("kind", ["openai", "openai-responses"])
def test_a_model_name_inside_the_text_is_left_alone(harness: LoopThread, kind: str) -> None:
    # The answer quotes the upstream's model key and value inside its text: only the
    # JSON key is rewritten, never what the model said.
    said = '{"model":"gpt-4o-mini-2024-07-18"}'
    if kind == "openai":
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini-2024-07-18",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": said}, "finish_reason": "stop"}]}
        data = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\ndata: [DONE]\n\n"
        gw, _ = gateway(harness, kind, Reply.sse(data))
        req = urllib.request.Request(gw.url + "/v1/chat/completions", method="POST", data=json.dumps({
            "model": ALIAS, "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=20) as r:
            first = json.loads(r.read().decode().split("\n")[0][6:])
        assert first["model"] == ALIAS and first["choices"][0]["delta"]["content"] == said
    else:
        sse = fixture_bytes("responses/text.sse").replace(b'"delta":"', b'"delta":' + json.dumps(said).encode()[:-1], 1)
        gw, _ = gateway(harness, kind, Reply.sse(sse))
        events = list(oai(gw).responses.create(model=ALIAS, input="hi", stream=True))
        assert any(said in (getattr(e, "delta", "") or "") for e in events)
        assert events[-1].response.model == ALIAS
