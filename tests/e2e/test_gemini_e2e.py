"""End to end against a fake Gemini upstream: the openai SDK on /v1 (chat, stream,
tools round trip, images, embeddings) and the google-genai SDK on the native /v1beta routes."""
from __future__ import annotations

import base64
import json
from typing import Any

import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes

from tests.e2e.harness import FakeUpstream, LoopThread, Recorded, Reply, fixture_bytes, simple_config

TIMEOUTS = {"connect": 2, "first_byte": 5, "idle": 5}
MSGS = [{"role": "user", "content": "Why is the sky blue?"}]
GW_KEY = "gw-key-123"


def gemini_provider(up: FakeUpstream, accounts: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    # base_url is the host: the provider adds /v1beta, as Google's SDK does.
    return {"name": "gem", "type": "gemini", "base_url": up.url, "timeouts": TIMEOUTS,
            "accounts": accounts or [{"id": "g1", "api_key": "test-key-g1"}], **extra}


def config(up: FakeUpstream, accounts: list[dict[str, Any]] | None = None, options: dict[str, Any] | None = None,
           **server: Any) -> dict[str, Any]:
    return simple_config(
        [gemini_provider(up, accounts, options=options or {})],
        [{"id": "gemini-flash", "provider": "gem", "upstream_model": "gemini-2.5-flash", "aliases": ["flash"]},
         {"id": "gemini-3", "provider": "gem", "upstream_model": "gemini-3-flash-preview"},
         {"id": "gemini-embed", "provider": "gem", "upstream_model": "gemini-embedding-001"}],
        **server)


def oai(gw: Any, key: str = GW_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=20)


def sse_events(name: str, **kw: Any) -> Reply:
    """A Gemini SSE fixture written one event per write (Gemini ends events with CRLF CRLF)."""
    data = fixture_bytes(name)
    return Reply(200, {"Content-Type": "text/event-stream"},
                 chunks=[p + b"\r\n\r\n" for p in data.split(b"\r\n\r\n") if p], **kw)


def json_reply(name: str, status: int = 200) -> Reply:
    return Reply(status, {"Content-Type": "application/json; charset=UTF-8"}, fixture_bytes(name))


def collect(stream: Any) -> dict[str, Any]:
    """Fold an openai SDK stream into text, reasoning, tool calls, finish reason and usage."""
    out: dict[str, Any] = {"text": "", "reasoning": "", "calls": {}, "finish": None, "usage": None}
    for ch in stream:
        if ch.usage is not None:
            out["usage"] = ch.usage
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        out["text"] += d.content or ""
        out["reasoning"] += getattr(d, "reasoning_content", None) or ""
        for tc in d.tool_calls or []:
            c = out["calls"].setdefault(tc.index, {"id": tc.id, "type": "function",
                                                   "function": {"name": tc.function.name, "arguments": ""}})
            c["function"]["arguments"] += tc.function.arguments or ""
            extra = (tc.model_extra or {}).get("extra_content")
            if extra:
                c["extra_content"] = extra
        out["finish"] = ch.choices[0].finish_reason or out["finish"]
    return out


def test_chat_translates_request_and_answer(harness: LoopThread) -> None:
    up = harness.upstream().push(json_reply("gemini/text.json"))
    gw = harness.gateway(config(up, access_keys=[GW_KEY]))
    r = oai(gw).chat.completions.create(model="flash", messages=[{"role": "system", "content": "Be brief."}, *MSGS],
                                        temperature=0.3, max_tokens=200, stop=["\n\n"])
    assert r.choices[0].message.content.startswith("The sky is blue because of Rayleigh scattering")
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (8, 24, 32)
    assert r.usage.prompt_tokens_details.cached_tokens == 4
    sent = up.requests[0]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == "test-key-g1"
    assert "authorization" not in sent.headers  # the gateway key never goes upstream
    assert sent.json() == {
        "contents": [{"role": "user", "parts": [{"text": "Why is the sky blue?"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.3, "maxOutputTokens": 200, "stopSequences": ["\n\n"]}}


@pytest.mark.parametrize("split", [None, 1, 13])
def test_stream_with_thoughts(harness: LoopThread, split: int | None) -> None:
    up = harness.upstream().push(Reply.sse_file("gemini/thinking.sse", split=split))
    gw = harness.gateway(config(up))
    got = collect(oai(gw).chat.completions.create(model="gemini-flash", messages=MSGS, stream=True,
                                                  reasoning_effort="low", stream_options={"include_usage": True}))
    assert got["text"] == "2 + 2 = 4."
    assert got["reasoning"] == "**Working out the sum**\n\nThe user wants 2+2. That is 4."
    assert got["finish"] == "stop"
    assert got["usage"].completion_tokens == 53 and got["usage"].completion_tokens_details.reasoning_tokens == 45
    sent = up.requests[0]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent" and sent.query == "alt=sse"
    assert sent.json()["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 4096, "includeThoughts": True}


def test_tools_round_trip_keeps_thought_signatures(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply.sse_file("gemini/parallel_calls.sse"), json_reply("gemini/text.json"))
    gw = harness.gateway(config(up))
    c = oai(gw)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["location"], "additionalProperties": False}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {
            "type": "object", "properties": {"tz": {"type": "string"}}}}}]
    first = collect(c.chat.completions.create(model="gemini-3", messages=MSGS, tools=tools, stream=True))
    assert first["finish"] == "tool_calls"
    calls = [first["calls"][i] for i in sorted(first["calls"])]
    assert [(x["function"]["name"], json.loads(x["function"]["arguments"])) for x in calls] == [
        ("get_weather", {"location": "Paris, FR", "unit": "celsius"}),
        ("get_weather", {"location": "London, UK", "unit": "celsius"}),
        ("get_time", {"tz": "Asia/Tokyo"})]
    assert len({x["id"] for x in calls}) == 3
    assert calls[0]["extra_content"] == {"google": {"thought_signature": "CqQCAVSoXO5xH9k3Zr0fakeSignatureForTests9wQ=="}}
    decl = up.requests[0].json()["tools"][0]["functionDeclarations"][0]
    assert decl["parameters"] == {"type": "OBJECT", "required": ["location"], "properties": {
        "location": {"type": "STRING"}, "unit": {"type": "STRING", "enum": ["celsius", "fahrenheit"]}}}

    # The client sends the calls back (with extra_content, as Google's own endpoint does) and the results.
    results = ["18C", "14C", "21:00"]
    follow = [*MSGS, {"role": "assistant", "content": None, "tool_calls": calls},
              *({"role": "tool", "tool_call_id": x["id"], "content": r} for x, r in zip(calls, results))]
    r = c.chat.completions.create(model="gemini-3", messages=follow, tools=tools)
    assert r.choices[0].message.content
    contents = up.requests[1].json()["contents"]
    assert contents[1]["role"] == "model"
    assert contents[1]["parts"][0]["thoughtSignature"] == "CqQCAVSoXO5xH9k3Zr0fakeSignatureForTests9wQ=="
    assert all("thoughtSignature" not in p for p in contents[1]["parts"][1:])
    assert contents[2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"output": "18C"}}},
        {"functionResponse": {"name": "get_weather", "response": {"output": "14C"}}},
        {"functionResponse": {"name": "get_time", "response": {"output": "21:00"}}}]}


def test_images(harness: LoopThread) -> None:
    up = harness.upstream().push(json_reply("gemini/text.json"))
    gw = harness.gateway(config(up))
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n-fake").decode()
    oai(gw).chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/photo.webp"}}]}])
    assert up.requests[0].json()["contents"][0]["parts"] == [
        {"text": "What is in these?"},
        {"inlineData": {"mimeType": "image/png", "data": png}},
        {"fileData": {"fileUri": "https://example.com/photo.webp", "mimeType": "image/webp"}}]


def test_grounding_links_and_native_tools_from_options(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply.sse_file("gemini/grounding.sse"))
    gw = harness.gateway(config(up, options={"google_search": True, "show_search_links": True}))
    got = collect(oai(gw).chat.completions.create(model="gemini-flash", messages=MSGS, stream=True))
    assert got["text"].startswith("Spain won Euro 2024, beating England 2-1.\n\n---\n**Sources:**\n1. [uefa.com](")
    assert up.requests[0].json()["tools"] == [{"googleSearch": {}}]


def test_a_models_own_options_reach_the_translator_on_every_route(harness: LoopThread) -> None:
    """show_search_links set on the model (not the provider) adds the sources on
    /v1/chat/completions and on /v1/responses alike: each route hands the translator
    the model entry it resolved."""
    up = harness.upstream().push(Reply.sse_file("gemini/grounding.sse"), Reply.sse_file("gemini/grounding.sse"))
    cfg = config(up, options={"google_search": True})
    cfg["models"][0]["options"] = {"show_search_links": True}
    gw = harness.gateway(cfg)
    got = collect(oai(gw).chat.completions.create(model="gemini-flash", messages=MSGS, stream=True))
    assert "**Sources:**" in got["text"]
    text = "".join(ev.delta for ev in oai(gw).responses.create(model="gemini-flash", input="Who won?", stream=True)
                   if ev.type == "response.output_text.delta")
    assert text.startswith("Spain won Euro 2024") and "**Sources:**\n1. [uefa.com](" in text


def test_bad_input_names_the_field_and_reaches_no_upstream(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway(config(up))
    with pytest.raises(openai.BadRequestError) as e:
        oai(gw).chat.completions.create(model="gemini-flash", messages=[
            *MSGS, {"role": "tool", "tool_call_id": "call_nope", "content": "x"}])
    assert e.value.body["param"] == "messages[1].tool_call_id"
    assert up.requests == []


def test_429_retry_info_fails_over_then_is_reported_with_retry_after(harness: LoopThread) -> None:
    up = harness.upstream().push(json_reply("gemini/error_429_retry_info.json", 429), json_reply("gemini/text.json"))
    accounts = [{"id": "g1", "api_key": "test-key-g1"}, {"id": "g2", "api_key": "test-key-g2"}]
    gw = harness.gateway(config(up, accounts))
    r = oai(gw).chat.completions.create(model="gemini-flash", messages=MSGS)
    assert r.choices[0].message.content
    assert {q.headers["x-goog-api-key"] for q in up.requests} == {"test-key-g1", "test-key-g2"}

    up2 = harness.upstream()
    up2.default = json_reply("gemini/error_429_retry_info.json", 429)
    gw2 = harness.gateway(config(up2))
    with pytest.raises(openai.RateLimitError) as e:
        oai(gw2).chat.completions.create(model="gemini-flash", messages=MSGS)
    assert e.value.response.headers["retry-after"] == "17"
    assert "RESOURCE_EXHAUSTED" in e.value.message


def test_bad_key_is_an_account_problem_not_the_clients(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = json_reply("gemini/error_400_api_key_invalid.json", 400)
    gw = harness.gateway(config(up))
    with pytest.raises(openai.APIStatusError) as e:
        oai(gw).chat.completions.create(model="gemini-flash", messages=MSGS)
    assert e.value.status_code == 502 and e.value.code == "upstream_auth_failed"


def test_blocked_prompt_is_a_content_filter_error(harness: LoopThread) -> None:
    up = harness.upstream().push(sse_events("gemini/prompt_blocked.sse"), json_reply("gemini/prompt_blocked.json"))
    gw = harness.gateway(config(up))
    for stream in (True, False):
        with pytest.raises(openai.BadRequestError) as e:
            r = oai(gw).chat.completions.create(model="gemini-flash", messages=MSGS, stream=stream)
            if stream:
                list(r)  # type: ignore[arg-type]
        assert e.value.code == "content_filter" and "PROHIBITED_CONTENT" in e.value.message


def test_embeddings_gemini_and_openai(harness: LoopThread) -> None:
    up = harness.upstream().push(json_reply("gemini/embeddings.json"),
                                 Reply.json({"embeddings": [{"values": [0.013168523, 0.5]}]}))
    oa = harness.upstream().push(Reply.json({"object": "list", "model": "text-embedding-3-small", "data": [
        {"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}], "usage": {"prompt_tokens": 2, "total_tokens": 2}}))
    cfg = config(up)
    cfg["providers"].append({"name": "oa", "type": "openai", "base_url": oa.url + "/v1", "timeouts": TIMEOUTS,
                             "accounts": [{"id": "o1", "api_key": "test-key-o1"}]})
    cfg["models"].append({"id": "small-embed", "provider": "oa", "upstream_model": "text-embedding-3-small"})
    gw = harness.gateway(cfg)
    c = oai(gw)
    # The SDK asks for base64 by default and decodes it: the float32 packing is checked.
    r = c.embeddings.create(model="gemini-embed", input=["a", "b"], dimensions=4)
    assert [len(d.embedding) for d in r.data] == [4, 4]
    assert r.data[1].embedding == [pytest.approx(-0.0265), pytest.approx(0.0125), 0.5, -1.0]
    sent = up.requests[0]
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent.json()["requests"][0] == {"model": "models/gemini-embedding-001",
                                          "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 4}
    r2 = c.embeddings.create(model="gemini-embed", input="a b", encoding_format="float")
    assert r2.data[0].embedding[0] == pytest.approx(0.013168523)
    r3 = c.embeddings.create(model="small-embed", input="hi", encoding_format="float")
    assert r3.data[0].embedding == [0.5, 0.25] and r3.usage.total_tokens == 2
    assert oa.requests[0].path == "/v1/embeddings"
    assert oa.requests[0].json() == {"model": "text-embedding-3-small", "input": "hi", "encoding_format": "float"}
    with pytest.raises(openai.BadRequestError) as e:
        c.embeddings.create(model="gemini-embed", input=[[1, 2, 3]])
    assert e.value.body["param"] == "input"


# -- the google-genai SDK on the native routes -------------------------------------------

def gclient(gw: Any, key: str = GW_KEY) -> genai.Client:
    return genai.Client(api_key=key, http_options=gtypes.HttpOptions(base_url=gw.url, api_version="v1beta",
                                                                      timeout=20_000))


def native_up(harness: LoopThread) -> FakeUpstream:
    """A fake Gemini that answers each method with its recorded fixture."""
    up = harness.upstream()

    def pick(rec: Recorded) -> Reply | None:
        method = rec.path.rsplit(":", 1)[-1]
        if method == "streamGenerateContent":
            return Reply.sse_file("gemini/text.sse")
        if method == "generateContent":
            return json_reply("gemini/text.json")
        if method == "countTokens":
            return Reply.json({"totalTokens": 31})
        if method == "batchEmbedContents":
            return json_reply("gemini/embeddings.json")
        return None

    up.handler = pick
    return up


def test_google_genai_sdk_on_native_routes(harness: LoopThread) -> None:
    up = native_up(harness)
    gw = harness.gateway(config(up, access_keys=[GW_KEY]))
    c = gclient(gw)
    r = c.models.generate_content(model="flash", contents="Why is the sky blue?",
                                  config=gtypes.GenerateContentConfig(temperature=0.1))
    assert r.text.startswith("The sky is blue")
    assert r.usage_metadata.prompt_token_count == 8
    sent = up.requests[-1]
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == "test-key-g1"  # the account's key, not the client's
    assert sent.json()["generationConfig"] == {"temperature": 0.1}

    text = "".join(ch.text or "" for ch in c.models.generate_content_stream(model="gemini-flash", contents="hi"))
    assert text.startswith("The sky is blue") and text.endswith("☀️→🔵.")
    assert up.requests[-1].query == "alt=sse"

    assert c.models.count_tokens(model="gemini-flash", contents="hello").total_tokens == 31
    emb = c.models.embed_content(model="gemini-embed", contents=["a", "b"])
    assert [e.values[3] for e in emb.embeddings] == [pytest.approx(0.00069968984), -1.0]
    assert up.requests[-1].json()["requests"][0]["model"] == "models/gemini-embedding-001"

    names = sorted(m.name for m in c.models.list())
    assert names == ["models/flash", "models/gemini-3", "models/gemini-embed", "models/gemini-flash"]


def test_google_genai_sdk_keys_and_errors(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = json_reply("gemini/error_429_retry_info.json", 429)
    gw = harness.gateway(config(up, access_keys=[GW_KEY]))
    # (a Client closes its HTTP client when collected: keep both alive)
    wrong, good = gclient(gw, key="wrong-key"), gclient(gw)
    with pytest.raises(genai_errors.ClientError) as e:
        wrong.models.generate_content(model="flash", contents="hi")
    assert e.value.code == 401 and e.value.status == "UNAUTHENTICATED"
    assert up.requests == []
    with pytest.raises(genai_errors.ClientError) as e2:
        good.models.generate_content(model="flash", contents="hi")
    assert e2.value.code == 429 and e2.value.status == "RESOURCE_EXHAUSTED"
    assert e2.value.details["error"]["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                     "retryDelay": "17s"}]
    with pytest.raises(genai_errors.ClientError) as e3:
        good.models.generate_content(model="no-such-model", contents="hi")
    assert e3.value.code == 404


def test_native_key_in_query_and_non_gemini_models(harness: LoopThread) -> None:
    import urllib.error
    import urllib.request

    up = native_up(harness)
    cfg = config(up, access_keys=[GW_KEY])
    cfg["providers"].append({"name": "echo", "type": "echo"})
    cfg["models"].append({"id": "echo", "provider": "echo"})
    gw = harness.gateway(cfg)
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()
    req = urllib.request.Request(f"{gw.url}/v1beta/models/gemini-flash:generateContent?key={GW_KEY}", data=body,
                                 headers={"Content-Type": "application/json"})
    out = json.loads(urllib.request.urlopen(req).read())
    assert out["candidates"][0]["finishReason"] == "STOP"
    assert "key=" not in up.requests[-1].query
    req2 = urllib.request.Request(f"{gw.url}/v1beta/models/echo:generateContent?key={GW_KEY}", data=body,
                                  headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req2)
    err = json.loads(e.value.read())["error"]
    assert (e.value.code, err["status"]) == (400, "INVALID_ARGUMENT") and "gemini provider" in err["message"]
