"""``/v1/embeddings`` to a Gemini model reports real token usage, never 0.

The Gemini API's ``batchEmbedContents`` answers with the vectors only (the
fixture is such an answer): the gateway then counts the way Google documents
Gemini tokens, about four characters each.  An answer that carries
``usageMetadata`` (Vertex-style) is reported as it says."""
from __future__ import annotations

import math

import openai

from tests.clients.harness import provider_config
from tests.e2e.harness import LoopThread, Reply, fixture_bytes


def gateway(harness: LoopThread, *replies: Reply) -> openai.OpenAI:
    up = harness.upstream().push(*replies)
    gw = harness.gateway({"server": {}, "providers": [provider_config("gemini", up.url)],
                          "models": [{"id": "embed", "provider": "up", "upstream_model": "gemini-embedding-001"}]})
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)


def test_usage_without_usage_metadata_is_counted(harness: LoopThread) -> None:
    texts = ["The quick brown fox jumps over the lazy dog.", "hi"]
    c = gateway(harness, Reply(200, {"Content-Type": "application/json"}, fixture_bytes("gemini/embeddings.json")))
    r = c.embeddings.create(model="embed", input=texts, encoding_format="float")
    expected = math.ceil(len(texts[0]) / 4) + 1
    assert r.usage.prompt_tokens == expected == r.usage.total_tokens
    assert len(r.data) == 2


def test_usage_metadata_is_reported_as_sent(harness: LoopThread) -> None:
    c = gateway(harness, Reply.json({"embeddings": [{"values": [0.5, 0.25]}],
                                     "usageMetadata": {"promptTokenCount": 9}}))
    r = c.embeddings.create(model="embed", input="hello there", encoding_format="float")
    assert r.usage.prompt_tokens == 9 and r.usage.total_tokens == 9
