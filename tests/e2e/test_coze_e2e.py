"""End to end against a fake Coze upstream: the openai SDK (Chat Completions and
Responses) and the anthropic SDK reach a Coze bot through the pivot, streaming and not;
errors Coze sends as HTTP 200 with a code; a chat that fails mid-stream.

The fake answers by path, as Coze does: ``POST /v3/chat`` (a stream or the Chat),
``GET /v3/chat/retrieve``, ``GET /v3/chat/message/list``; bodies from tests/fixtures/coze/.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import anthropic
import openai
import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Recorded, Reply, fixture_bytes, simple_config

TIMEOUTS = {"connect": 2, "first_byte": 5, "idle": 5}
BOT = "7379462189365198898"
PAT = "pat-test-" + "coze1"
MSGS = [{"role": "user", "content": "What day is 1 October 2024?"}]


def coze_config(up: FakeUpstream, **options: Any) -> dict[str, Any]:
    return simple_config(
        [{"name": "coze", "type": "coze", "base_url": up.url, "timeouts": TIMEOUTS,
          "accounts": [{"id": "coze-1", "api_key": PAT, "user_id": "acct-user"}],
          "options": {"poll_interval": 0.01, "poll_timeout": 5, **options}}],
        [{"id": "helper-bot", "provider": "coze", "upstream_model": BOT}])


def json_fixture(name: str) -> Reply:
    return Reply(200, {"Content-Type": "application/json", "x-tt-logid": "20241001LOGID"}, fixture_bytes(name))


def poller(retrieves: list[str], create: str = "coze/create.json",
           listing: str = "coze/message_list.json") -> Any:
    """A fake Coze that answers a non-streaming chat by path."""
    left = list(retrieves)

    def handler(rec: Recorded) -> Reply | None:
        if rec.path == "/v3/chat":
            return json_fixture(create)
        if rec.path == "/v3/chat/retrieve":
            return json_fixture(left.pop(0))
        if rec.path == "/v3/chat/message/list":
            return json_fixture(listing)
        return None

    return handler


def oai(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)


def ant(gw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)


def test_openai_chat_non_stream_polls_then_lists(harness: LoopThread) -> None:
    up = harness.upstream()
    up.handler = poller(["coze/retrieve_in_progress.json", "coze/retrieve_completed.json"])
    gw = harness.gateway(coze_config(up))
    r = oai(gw).chat.completions.create(model="helper-bot", messages=MSGS, user="u-7")  # type: ignore[arg-type]
    assert r.choices[0].message.content == "2024 年 10 月 1 日是星期三。"
    assert r.model == "helper-bot" and r.usage is not None and r.usage.prompt_tokens == 614
    assert [(q.method, q.path) for q in up.requests] == [
        ("POST", "/v3/chat"), ("GET", "/v3/chat/retrieve"), ("GET", "/v3/chat/retrieve"),
        ("GET", "/v3/chat/message/list")]
    create = up.requests[0]
    assert create.headers["authorization"] == "Bearer " + PAT
    body = create.json()
    assert body["bot_id"] == BOT and body["user_id"] == "u-7" and body["stream"] is False
    assert body["additional_messages"][0]["content"] == MSGS[0]["content"]
    for q in up.requests[1:]:
        assert parse_qs(q.query) == {"conversation_id": ["7381473525342978089"], "chat_id": ["7382159487131697202"]}
        assert q.headers["authorization"] == "Bearer " + PAT


def test_openai_chat_stream(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply.sse_file("coze/reasoning.sse"))
    gw = harness.gateway(coze_config(up))
    text, reasoning, usage = "", "", None
    for ch in oai(gw).chat.completions.create(model="helper-bot", messages=MSGS, stream=True,  # type: ignore[arg-type]
                                              stream_options={"include_usage": True}):
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            text += c.delta.content or ""
            reasoning += getattr(c.delta, "reasoning_content", None) or ""
    assert (text, reasoning) == ("It is Wednesday.", "The user asks for a date.")
    assert usage is not None and usage.completion_tokens == 20
    body = up.requests[0].json()
    assert body["stream"] is True and body["user_id"] == "acct-user"  # the account's default
    assert up.requests[0].headers["accept"] == "text/event-stream"


def test_anthropic_sdk_stream_and_non_stream(harness: LoopThread) -> None:
    up = harness.upstream()
    up.handler = poller(["coze/retrieve_completed.json"])
    gw = harness.gateway(coze_config(up))
    msg = ant(gw).messages.create(model="helper-bot", max_tokens=100, system="Be brief.",
                                  messages=[{"role": "user", "content": "What day is 1 October 2024?"}])
    assert msg.content[0].text == "2024 年 10 月 1 日是星期三。"  # type: ignore[union-attr]
    assert msg.model == "helper-bot" and msg.stop_reason == "end_turn" and msg.usage.output_tokens == 19
    sent = up.requests[0].json()["additional_messages"]
    assert [m["content"] for m in sent] == ["Be brief.", "What day is 1 October 2024?"]

    up.handler = None
    up.push(Reply.sse_file("coze/text.sse", split=7))
    with ant(gw).messages.stream(model="helper-bot", max_tokens=100,
                                 messages=[{"role": "user", "content": "hi"}]) as s:
        got = "".join(s.text_stream)
        final = s.get_final_message()
    assert got == "20星期三。" and final.usage.output_tokens == 19


def test_responses_client_reaches_coze(harness: LoopThread) -> None:
    up = harness.upstream()
    up.handler = poller(["coze/retrieve_completed.json"])
    gw = harness.gateway(coze_config(up))
    r = oai(gw).responses.create(model="helper-bot", input="What day is 1 October 2024?")
    assert r.output_text == "2024 年 10 月 1 日是星期三。"


@pytest.mark.parametrize("stream", [False, True])
def test_errors_sent_as_200_with_a_code(harness: LoopThread, stream: bool) -> None:
    up = harness.upstream()
    up.default = json_fixture("coze/auth_error.json")
    gw = harness.gateway(coze_config(up))
    with pytest.raises(openai.APIStatusError) as ei:
        oai(gw).chat.completions.create(model="helper-bot", messages=MSGS, stream=stream)  # type: ignore[call-overload]
    assert ei.value.status_code == 502
    assert "Coze error 4100" in str(ei.value) and PAT not in str(ei.value)
    assert ei.value.code == "upstream_auth_failed"


def test_rate_limit_code_is_a_429_in_the_anthropic_shape(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = json_fixture("coze/rate_limited.json")
    gw = harness.gateway(coze_config(up))
    with pytest.raises(anthropic.RateLimitError) as ei:
        ant(gw).messages.create(model="helper-bot", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_chat_failed_mid_stream_is_an_error_frame(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply.sse_file("coze/failed_midstream.sse", delay=0.05))
    gw = harness.gateway(coze_config(up))
    text = ""
    with pytest.raises(openai.APIError) as ei:
        for ch in oai(gw).chat.completions.create(model="helper-bot", messages=MSGS, stream=True):  # type: ignore[arg-type]
            for c in ch.choices:
                text += c.delta.content or ""
                assert c.finish_reason is None
    assert text == "Hello" and "5000" in str(ei.value)

    up.push(Reply.sse_file("coze/failed_midstream.sse", delay=0.05))
    with pytest.raises(anthropic.APIStatusError):
        with ant(gw).messages.stream(model="helper-bot", max_tokens=10,
                                     messages=[{"role": "user", "content": "hi"}]) as s:
            for _ in s.text_stream:
                pass


def test_poll_deadline_is_a_timeout_not_a_hang(harness: LoopThread) -> None:
    up = harness.upstream()
    up.handler = poller(["coze/retrieve_in_progress.json"] * 1000)
    gw = harness.gateway(coze_config(up, poll_interval=0.05, poll_timeout=0.3))
    with pytest.raises(openai.APIStatusError) as ei:
        oai(gw).chat.completions.create(model="helper-bot", messages=MSGS)  # type: ignore[arg-type]
    assert ei.value.status_code == 504
    assert 3 <= sum(q.path == "/v3/chat/retrieve" for q in up.requests) <= 8


def test_conversation_id_from_header_or_metadata_goes_to_the_query_quoted(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = Reply.sse(fixture_bytes("coze/text.sse"))
    gw = harness.gateway(coze_config(up))
    client = oai(gw)
    list(client.chat.completions.create(model="helper-bot", messages=MSGS, stream=True,  # type: ignore[arg-type]
                                        extra_headers={"x-coze-conversation-id": "7381473525342978089"}))
    list(client.chat.completions.create(model="helper-bot", messages=MSGS, stream=True,  # type: ignore[arg-type]
                                        metadata={"conversation_id": "7390331532575195148"}))
    assert [parse_qs(q.query) for q in up.requests] == [{"conversation_id": ["7381473525342978089"]},
                                                        {"conversation_id": ["7390331532575195148"]}]
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="helper-bot", messages=MSGS,  # type: ignore[arg-type]
                                       extra_headers={"x-coze-conversation-id": "1&chat_id=2"})
    assert ei.value.param == "x-coze-conversation-id"
    assert len(up.requests) == 2  # nothing sent


def test_unsupported_fields_rejected_in_each_clients_shape(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway(coze_config(up))
    with pytest.raises(openai.BadRequestError) as ei:
        oai(gw).chat.completions.create(model="helper-bot", messages=MSGS, temperature=0.2)  # type: ignore[arg-type]
    assert ei.value.param == "temperature" and "temperature" in ei.value.message
    with pytest.raises(anthropic.BadRequestError) as ai:
        ant(gw).messages.create(model="helper-bot", max_tokens=10, messages=[{"role": "user", "content": "hi"}],
                                tools=[{"name": "f", "input_schema": {"type": "object"}}])
    assert ai.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "tools" in ai.value.message
    assert up.requests == []
