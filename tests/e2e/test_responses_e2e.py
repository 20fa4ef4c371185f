"""End to end with the official openai SDK: the Responses API both ways.

* chat.completions against an ``openai-responses`` fake upstream;
* client.responses (create, stream=True, the .stream() helper, retrieve, delete,
  input_items) against ``openai-responses`` (pass-through), ``openai`` (chat) and
  ``anthropic`` fake upstreams, with previous_response_id kept by the gateway.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from providers import PROVIDER_TYPES
from tests.e2e.harness import FakeUpstream, LoopThread, Reply, fixture_bytes, openai_provider, simple_config

TIMEOUTS = {"connect": 2, "first_byte": 5, "idle": 5}


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)


def responses_upstream(up: FakeUpstream) -> dict[str, Any]:
    return {"name": "oai-resp", "type": "openai-responses", "base_url": up.url + "/v1", "timeouts": TIMEOUTS,
            "accounts": [{"id": "r1", "api_key": "test-key-r1"}]}


def anthropic_upstream(up: FakeUpstream) -> dict[str, Any]:
    return {"name": "claude", "type": "anthropic", "base_url": up.url, "timeouts": TIMEOUTS,
            "accounts": [{"id": "c1", "api_key": "test-key-c1"}]}


def config(*providers: dict[str, Any], **server: Any) -> dict[str, Any]:
    models = []
    for p in providers:
        if p["type"] == "openai-responses":
            models.append({"id": "gpt-5", "provider": p["name"], "upstream_model": "gpt-5-2025-08-07"})
        elif p["type"] == "openai":
            models.append({"id": "chat-model", "provider": p["name"], "upstream_model": "gpt-4o-mini"})
        elif p["type"] == "anthropic":
            models.append({"id": "claude", "provider": p["name"], "upstream_model": "claude-opus-4-1-20250805",
                           "max_tokens": 1024})
    return simple_config(list(providers), models, **server)


needs_anthropic = pytest.mark.skipif("anthropic" not in dict(PROVIDER_TYPES),
                                     reason="the anthropic provider is not registered in this tree")

# ---------------------------------------------------------------------------
# Chat Completions clients -> openai-responses upstream
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", [None, 61])
def test_chat_stream_from_responses_upstream(harness: LoopThread, split: int | None) -> None:
    up = harness.upstream().push(Reply.sse_file("responses/reasoning_summary.sse", split=split))
    gw = harness.gateway(config(responses_upstream(up)))
    chunks = list(client(gw).chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "17 × 24?"}], stream=True, reasoning_effort="medium",
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert text == "17 × 24 = **408**."
    assert reasoning.startswith("**Calculating the sum**") and "\n\n**Double-checking**" in reasoning
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 1536
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == 192
    sent = up.requests[0]
    assert sent.path == "/v1/responses" and sent.headers["authorization"] == "Bearer test-key-r1"
    body = sent.json()
    assert body["model"] == "gpt-5-2025-08-07" and body["stream"] is True and body["store"] is False
    assert body["include"] == ["reasoning.encrypted_content"]
    assert body["reasoning"] == {"effort": "medium", "summary": "auto"}
    assert body["input"] == [{"type": "message", "role": "user", "content": [{"type": "input_text",
                                                                               "text": "17 × 24?"}]}]


def test_chat_tool_loop_keeps_reasoning_state(harness: LoopThread) -> None:
    """Turn 1 streams two function calls; turn 2 sends the reasoning back as thinking_blocks."""
    up = harness.upstream().push(Reply.sse_file("responses/function_calls.sse"),
                                 Reply(200, {"Content-Type": "application/json"},
                                       fixture_bytes("responses/text.json")))
    gw = harness.gateway(config(responses_upstream(up)))
    c = client(gw)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris and Bogotá?"}]
    calls: dict[int, dict[str, Any]] = {}
    blocks: list[dict[str, Any]] = []
    finish = None
    for ch in c.chat.completions.create(model="gpt-5", messages=msgs, tools=tools, stream=True):
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        blocks += (d.model_extra or {}).get("thinking_blocks") or []
        for tc in d.tool_calls or []:
            cur = calls.setdefault(tc.index, {"id": tc.id, "name": tc.function.name, "args": ""})
            cur["args"] += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [(v["id"], json.loads(v["args"])) for _, v in sorted(calls.items())] == [
        ("call_unLAR8MvFNptuiZK6K6HCy5k", {"location": "Paris, France"}),
        ("call_Kx3H1Fq0eZxJc7b2Wm9s4T8y", {"location": "Bogotá, Colombia"})]
    assert blocks and blocks[0]["id"].startswith("rs_") and blocks[0]["signature"].startswith("gAAAA")
    msgs.append({"role": "assistant", "content": None, "thinking_blocks": blocks,
                 "tool_calls": [{"id": v["id"], "type": "function",
                                 "function": {"name": v["name"], "arguments": v["args"]}}
                                for _, v in sorted(calls.items())]})
    msgs += [{"role": "tool", "tool_call_id": v["id"], "content": "20C"} for _, v in sorted(calls.items())]
    r = c.chat.completions.create(model="gpt-5", messages=msgs, tools=tools)
    assert r.choices[0].message.content.startswith("I can't provide real-time updates")
    assert r.usage.total_tokens == 64
    second = up.requests[1].json()
    kinds = [i["type"] for i in second["input"]]
    assert kinds == ["message", "reasoning", "function_call", "function_call", "function_call_output",
                     "function_call_output"]
    assert second["input"][1] == {"type": "reasoning", "id": blocks[0]["id"], "summary": [],
                                  "encrypted_content": blocks[0]["signature"]}


@pytest.mark.parametrize("fixture,message", [("failed.sse", "server had an error"),
                                             ("error_event.sse", "Rate limit reached"),
                                             ("cut.sse", "ended before it finished")])
def test_chat_stream_upstream_failure_is_an_error(harness: LoopThread, fixture: str, message: str) -> None:
    up = harness.upstream().push(Reply.sse_file("responses/" + fixture))
    gw = harness.gateway(config(responses_upstream(up)))
    with pytest.raises(openai.APIError) as e:
        for _ in client(gw).chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}],
                                                    stream=True):
            pass
    assert message in e.value.message


def test_chat_incomplete_is_length(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"},
                                       fixture_bytes("responses/incomplete.json")))
    gw = harness.gateway(config(responses_upstream(up)))
    r = client(gw).chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}], max_tokens=16)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content == "The Responses API is"
    assert up.requests[0].json()["max_output_tokens"] == 16


# ---------------------------------------------------------------------------
# Responses clients -> openai-responses upstream (pass-through)
# ---------------------------------------------------------------------------


def test_responses_passthrough_whole_and_stream(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"},
                                       fixture_bytes("responses/text.json")),
                                 Reply.sse_file("responses/reasoning_summary.sse", split=97))
    gw = harness.gateway(config(responses_upstream(up)))
    c = client(gw)
    r = c.responses.create(model="gpt-5", input="What's the weather like in SF?",
                           tools=[{"type": "web_search"}])
    assert r.id == "resp_689a0b2545288193953c892439b42e2800b2e36c65a1fd4b"
    assert r.output_text.startswith("I can't provide real-time updates")
    sent = up.requests[0].json()
    # only the model is mapped: hosted tools and everything else reach OpenAI as sent
    assert sent == {"model": "gpt-5-2025-08-07", "input": "What's the weather like in SF?",
                    "tools": [{"type": "web_search"}]}
    with c.responses.stream(model="gpt-5", input="17 × 24?", reasoning={"effort": "medium", "summary": "auto"}) as s:
        events = [e.type for e in s]
        final = s.get_final_response()
    assert final.output_text == "17 × 24 = **408**."
    assert events[0] == "response.created" and events[-1] == "response.completed"


@pytest.mark.parametrize("split", [None, 1000])
def test_responses_passthrough_stream_usage_behind_a_long_completed_event(harness: LoopThread,
                                                                          split: int | None) -> None:
    """response.completed repeats the whole answer before its usage: the tokens it
    reports reach the metrics however long the event is (a Codex turn's is tens of KiB)."""
    long_text = "word " * 4000
    lines = []
    for line in fixture_bytes("responses/text.sse").split(b"\n"):
        if line.startswith(b"data:") and b'"response.completed"' in line:
            ev = json.loads(line[5:])
            ev["response"]["instructions"] = long_text
            line = b"data: " + json.dumps(ev).encode()
        lines.append(line)
    up = harness.upstream().push(Reply.sse(b"\n".join(lines), split=split))
    gw = harness.gateway(config(responses_upstream(up)))
    with client(gw).responses.stream(model="gpt-5", input="hi") as s:
        final = s.get_final_response()
    assert final.instructions == long_text and final.usage is not None
    want = [f'tornado_proxy_tokens_total{{direction="in",model="gpt-5",provider="oai-resp"}} '
            f'{float(final.usage.input_tokens)}',
            f'tornado_proxy_tokens_total{{direction="out",model="gpt-5",provider="oai-resp"}} '
            f'{float(final.usage.output_tokens)}']
    deadline = time.monotonic() + 5  # (recorded as the upstream transfer ends, a moment after the client's last read)
    while not all(w in gw.metrics_text() for w in want) and time.monotonic() < deadline:
        time.sleep(0.02)
    text = gw.metrics_text()
    assert all(w in text for w in want), [line for line in text.splitlines() if "tokens_total{" in line]


def test_responses_passthrough_resources_are_forwarded(harness: LoopThread) -> None:
    stored = json.loads(fixture_bytes("responses/text.json"))
    up = harness.upstream().push(Reply.json(stored), Reply.json({"id": stored["id"], "object": "response",
                                                                 "deleted": True}))
    gw = harness.gateway(config(responses_upstream(up)))
    c = client(gw)
    assert c.responses.retrieve(stored["id"]).output_text == stored["output"][0]["content"][0]["text"]
    c.responses.delete(stored["id"])
    assert [(r.method, r.path) for r in up.requests] == [("GET", f"/v1/responses/{stored['id']}"),
                                                         ("DELETE", f"/v1/responses/{stored['id']}")]
    assert up.requests[0].headers["authorization"] == "Bearer test-key-r1"


# ---------------------------------------------------------------------------
# Responses clients -> OpenAI chat upstream (translated)
# ---------------------------------------------------------------------------


def test_responses_on_chat_upstream_with_previous_response_id(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json")),
                                 Reply.sse_file("openai/text.sse", split=5))
    gw = harness.gateway(config(openai_provider(up, name="chat", timeouts=TIMEOUTS)))
    c = client(gw)
    r1 = c.responses.create(model="chat-model", instructions="Be nice.", input="Say hello", max_output_tokens=50)
    assert r1.id.startswith("resp_") and r1.output_text == "Hello! How can I help you today?"
    assert r1.status == "completed" and r1.usage.total_tokens == 29
    assert up.requests[0].json() == {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [
        {"role": "system", "content": "Be nice."}, {"role": "user", "content": "Say hello"}]}
    with c.responses.stream(model="chat-model", input="And again", previous_response_id=r1.id) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == final.output_text == "Hello! How can I help you today?"
    second = up.requests[1].json()
    # the stored conversation, without the previous instructions (OpenAI does not carry them over)
    assert second["messages"] == [{"role": "user", "content": "Say hello"},
                                  {"role": "assistant", "content": "Hello! How can I help you today?"},
                                  {"role": "user", "content": "And again"}]
    assert c.responses.retrieve(final.id).output_text == final.output_text
    items = c.responses.input_items.list(final.id)
    assert [i.content[0].text for i in items.data] == ["And again"]
    c.responses.delete(r1.id)
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="chat-model", input="x", previous_response_id=r1.id)
    assert e.value.body["param"] == "previous_response_id"
    assert len(up.requests) == 2


def test_responses_errors_are_in_the_responses_shape(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway(config(openai_provider(up, name="chat", timeouts=TIMEOUTS)))
    c = client(gw)
    with pytest.raises(openai.BadRequestError) as e:
        c.responses.create(model="chat-model", input="x", tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}])
    assert e.value.code == "unsupported_parameter" and e.value.body["param"] == "tools[0].type"
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="nope", input="x")
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve("resp_unknown")  # no openai-responses provider to ask
    assert up.requests == []


def test_store_disabled_says_so(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway(config(openai_provider(up, name="chat", timeouts=TIMEOUTS),
                                response_store={"enabled": False}))
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).responses.create(model="chat-model", input="x", previous_response_id="resp_1")
    assert "disabled" in e.value.message


# ---------------------------------------------------------------------------
# Responses clients -> Anthropic upstream (translated)
# ---------------------------------------------------------------------------


@needs_anthropic
@pytest.mark.parametrize("split", [None, 3])
def test_responses_stream_on_anthropic_with_reasoning_round_trip(harness: LoopThread, split: int | None) -> None:
    up = harness.upstream().push(Reply.sse_file("anthropic/thinking_tools.sse", split=split),
                                 Reply.sse_file("anthropic/text.sse"))
    gw = harness.gateway(config(anthropic_upstream(up)))
    c = client(gw)
    kw: dict[str, Any] = dict(model="claude", input="27 * 453, and the weather in Paris?", store=False,
                              reasoning={"effort": "high", "summary": "auto"},
                              include=["reasoning.encrypted_content"],
                              tools=[{"type": "function", "name": "get_weather",
                                      "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}},
                                     {"type": "function", "name": "get_time",
                                      "parameters": {"type": "object", "properties": {}}}])
    raw = list(c.responses.create(stream=True, **kw))
    assert [e.sequence_number for e in raw] == list(range(len(raw)))
    assert raw[0].type == "response.created" and raw[-1].type == "response.completed"
    final = raw[-1].response
    calls = [o for o in final.output if o.type == "function_call"]
    assert [c_.name for c_ in calls] == ["get_weather", "get_time"]
    assert calls[0].call_id.startswith("toolu_") and json.loads(calls[0].arguments) == {"location": "Paris, France"}
    assert "12,231" in final.output_text
    reasoning = [o for o in final.output if o.type == "reasoning"]
    assert reasoning and reasoning[0].summary[0].text.startswith("The user wants 27 * 453")
    assert reasoning[0].encrypted_content.startswith("tpr1.")
    assert final.usage.input_tokens > 0
    # Turn 2, stateless: the output items go back as input with the tool results.
    follow = [*[o.to_dict() for o in final.output],
              *[{"type": "function_call_output", "call_id": t.call_id, "output": "sunny"} for t in calls]]
    with c.responses.stream(**{**kw, "input": [{"role": "user", "content": kw["input"]}, *follow]}) as s:
        text = s.get_final_response().output_text
    assert text
    second = up.requests[1].json()
    assistant = [m for m in second["messages"] if m["role"] == "assistant"]
    blocks = [b for m in assistant for b in m["content"] if b["type"] == "thinking"]
    assert blocks and blocks[0]["signature"].endswith("test-signature-1==")
    assert second["thinking"]["type"] in ("enabled", "adaptive")


@needs_anthropic
def test_responses_midstream_error_on_anthropic(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply.sse_file("anthropic/error_midstream.sse", delay=0.02))
    gw = harness.gateway(config(anthropic_upstream(up)))
    events = list(client(gw).responses.create(model="claude", input="hi", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1].response.status == "failed" and events[-1].response.error.message
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text  # what arrived before the error was delivered


def test_input_items_and_cancel_for_local_responses(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json")))
    gw = harness.gateway(config(openai_provider(up, name="chat", timeouts=TIMEOUTS)))
    c = client(gw)
    r = c.responses.create(model="chat-model", input=[{"role": "user", "content": "one"},
                                                      {"role": "user", "content": "two"}])
    asc = c.responses.input_items.list(r.id, order="asc", limit=1)
    assert [i.content[0].text for i in asc.data] == ["one"] and asc.has_more
    with pytest.raises(openai.BadRequestError):
        c.responses.cancel(r.id)
    req = urllib.request.Request(gw.url + f"/v1/responses/{r.id}", method="PUT", data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 405


@pytest.mark.parametrize("fixture,last", [("cut.sse", "error"), ("incomplete.sse", "response.incomplete")])
def test_responses_passthrough_stream_end(harness: LoopThread, fixture: str, last: str) -> None:
    """A cut pass-through stream ends with one `error` event continuing the upstream's numbering;
    response.incomplete is a whole stream and gets nothing added."""
    up = harness.upstream().push(Reply.sse_file("responses/" + fixture, cut=fixture == "cut.sse"))
    gw = harness.gateway(config(responses_upstream(up)))
    events = list(client(gw).responses.create(model="gpt-5", input="x", stream=True))
    assert events[-1].type == last
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_responses_on_the_local_echo_model(harness: LoopThread) -> None:
    gw = harness.gateway(simple_config([{"name": "echo", "type": "echo"}],
                                       [{"id": "echo", "provider": "echo", "upstream_model": "echo"}]))
    c = client(gw)
    r = c.responses.create(model="echo", input="one two three")
    assert r.output_text == "one two three" and r.status == "completed"
    with c.responses.stream(model="echo", input="four five", previous_response_id=r.id) as s:
        final = s.get_final_response()
    assert final.output_text == "four five"
    assert final.previous_response_id == r.id
