"""End to end with the official openai SDK: the gateway against a fake Bedrock Runtime.

The fake answers like Bedrock does, and first checks every request's SigV4
signature the way AWS would: it re-signs the request it received (method, raw
path, the headers named in SignedHeaders, body) with botocore and the account's
secret, compares, and checks the signing time is within five minutes of its own
clock.  A bad signature gets Bedrock's 403 ``InvalidSignatureException``, so every
test that gets an answer also proves the gateway signed correctly.  Streams are the
byte-exact ``tests/fixtures/bedrock/*.bin`` files, written in reads that split frames.
"""
from __future__ import annotations

import calendar
import hmac
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.e2e.harness import FakeUpstream, LoopThread, Recorded, Reply, fixture_bytes, simple_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bedrock"
STREAMS: dict[str, Any] = json.loads((FIXTURES / "streams.json").read_text(encoding="utf-8"))["streams"]

KEY_ID = "AKIDEXAMPLE"
SECRETS = {"AKIDEXAMPLE": "test-secret-123", "AKIDEXAMPLE2": "test-secret-456"}
UPSTREAM_MODEL = "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
MODEL_PATH = "/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0"
MSGS = [{"role": "user", "content": "Say hello"}]


def aws_error(status: int, error_type: str, message: str) -> Reply:
    return Reply(status, {"Content-Type": "application/json",
                          "x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
                 json.dumps({"message": message}).encode())


def converse(name: str) -> Reply:
    return Reply(200, {"Content-Type": "application/json"}, fixture_bytes(f"bedrock/{name}.converse.json"))


def eventstream(name: str, split: int | None = None, delay: float = 0.0) -> Reply:
    """A ConverseStream answer in the fixture's recorded reads (or ``split``-byte pieces).

    Without ``delay`` the pieces may reach curl coalesced into fewer reads.
    """
    data = fixture_bytes(f"bedrock/{name}.bin")
    if split:
        chunks = [data[i:i + split] for i in range(0, len(data), split)]
    else:
        chunks, pos = [], 0
        for n in STREAMS[name]["reads"]:
            if pos < len(data):
                chunks.append(data[pos:pos + n])
                pos += n
        if pos < len(data):
            chunks.append(data[pos:])
    return Reply(200, {"Content-Type": "application/vnd.amazon.eventstream"}, chunks=chunks, delay=delay)


class FakeBedrock:
    """Checks the signature (or bearer key) of each request, then answers from a queue."""

    def __init__(self, up: FakeUpstream, clock_skew: float = 0.0, api_keys: tuple[str, ...] = ()) -> None:
        self.up = up
        self.clock_skew = clock_skew
        self.api_keys = api_keys
        self.verified: list[str] = []   # account key id (or "bearer") of each request that passed
        up.handler = self.check

    def check(self, rec: Recorded) -> Reply | None:
        auth = rec.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            if auth[7:] in self.api_keys:
                self.verified.append("bearer")
                return None
            return aws_error(403, "UnrecognizedClientException", "Invalid API Key format: Must start with pre-defined prefix")
        problem = self.signature_problem(rec, auth)
        if problem is not None:
            return aws_error(403, "InvalidSignatureException", problem)
        return None  # the queued reply

    def signature_problem(self, rec: Recorded, auth: str) -> str | None:
        try:
            algo, rest = auth.split(" ", 1)
            fields = dict(p.strip().split("=", 1) for p in rest.split(","))
            key_id, date, region, service, term = fields["Credential"].split("/")
            names = fields["SignedHeaders"].split(";")
        except (ValueError, KeyError):
            return "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature'"
        if algo != "AWS4-HMAC-SHA256" or service != "bedrock" or term != "aws4_request" or key_id not in SECRETS:
            return f"bad credential scope {fields['Credential']}"
        if "host" not in names or "x-amz-date" not in names:
            return "host and x-amz-date must be signed"
        stamp = rec.headers["x-amz-date"]
        signed_at = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
        now = time.time() + self.clock_skew
        if abs(now - signed_at) > 300:
            now_s = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
            return f"Signature expired: {stamp} is now earlier than {now_s} - 5 min."
        url = f"http://{rec.headers['host']}{rec.path}" + (f"?{rec.query}" if rec.query else "")
        request = AWSRequest(method=rec.method, url=url, headers={n: rec.headers[n] for n in names}, data=rec.body)
        request.context["timestamp"] = stamp
        signer = SigV4Auth(Credentials(key_id, SECRETS[key_id], rec.headers.get("x-amz-security-token")),
                           "bedrock", region)
        expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
        if date != stamp[:8] or not hmac.compare_digest(expected, fields.get("Signature", "")):
            return ("The request signature we calculated does not match the signature you provided. "
                    "Check your AWS Secret Access Key and signing method.")
        self.verified.append(key_id)
        return None


def bedrock_provider(up: FakeUpstream, accounts: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": "bedrock", "type": "bedrock", "base_url": up.url, "options": {"region": "us-east-1"},
            "timeouts": {"connect": 2, "first_byte": 5, "idle": 5},
            "accounts": accounts or [{"id": "aws-1", "aws_access_key_id": KEY_ID,
                                      "aws_secret_access_key": SECRETS[KEY_ID]}], **extra}


def setup(harness: LoopThread, accounts: list[dict[str, Any]] | None = None, **fake: Any) -> tuple[FakeBedrock, Any]:
    up = harness.upstream()
    bedrock = FakeBedrock(up, **fake)
    cfg = simple_config([bedrock_provider(up, accounts)],
                        [{"id": "bedrock-claude", "provider": "bedrock", "upstream_model": UPSTREAM_MODEL}])
    return bedrock, harness.gateway(cfg)


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)


def test_chat_is_signed_and_translated(harness: LoopThread) -> None:
    bedrock, gw = setup(harness, accounts=[{"id": "aws-1", "aws_access_key_id": KEY_ID,
                                            "aws_secret_access_key": SECRETS[KEY_ID],
                                            "aws_session_token": "test-session-token-123"}])
    bedrock.up.push(converse("text"))
    r = client(gw).chat.completions.create(model="bedrock-claude", messages=[
        {"role": "system", "content": "Be kind."}, *MSGS], max_tokens=200, temperature=0.3, stop=["END"])
    assert r.choices[0].message.content == "Hello! How can I help you today? 👋"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (12, 11, 23)
    assert r.model == "bedrock-claude"
    assert bedrock.verified == [KEY_ID]
    sent = bedrock.up.requests[0]
    assert sent.path == MODEL_PATH + "/converse"
    assert sent.headers["x-amz-security-token"] == "test-session-token-123"
    assert "x-amz-security-token" in sent.headers["authorization"]
    assert sent.json() == {"messages": [{"role": "user", "content": [{"text": "Say hello"}]}],
                           "system": [{"text": "Be kind."}],
                           "inferenceConfig": {"maxTokens": 200, "temperature": 0.3, "stopSequences": ["END"]}}


@pytest.mark.parametrize("split", [None, 1, 13])
def test_stream_in_split_reads(harness: LoopThread, split: int | None) -> None:
    bedrock, gw = setup(harness)
    bedrock.up.push(eventstream("text", split))
    chunks = list(client(gw).chat.completions.create(model="bedrock-claude", messages=MSGS, stream=True,
                                                     stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello! How can I help you today? 👋"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 23
    assert len({c.id for c in chunks}) == 1
    assert bedrock.up.requests[0].path == MODEL_PATH + "/converse-stream"
    assert bedrock.up.requests[0].headers["accept"] == "application/vnd.amazon.eventstream"
    assert bedrock.verified == [KEY_ID]


def test_stream_without_include_usage_has_no_usage_chunk(harness: LoopThread) -> None:
    bedrock, gw = setup(harness)
    bedrock.up.push(eventstream("max_tokens"))
    chunks = list(client(gw).chat.completions.create(model="bedrock-claude", messages=MSGS, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {
                                               "location": {"type": "string"}, "unit": {"type": "string"}},
                                               "required": ["location"]}}}]


def test_tool_call_stream_and_tool_result_turn(harness: LoopThread) -> None:
    bedrock, gw = setup(harness)
    bedrock.up.push(eventstream("tool_use"), converse("text"))
    c = client(gw)
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for ch in c.chat.completions.create(model="bedrock-claude", messages=MSGS, tools=TOOLS, tool_choice="required",
                                        stream=True):
        if not ch.choices:
            continue
        for tc in ch.choices[0].delta.tool_calls or []:
            call = calls.setdefault(tc.index, {"id": None, "name": None, "args": ""})
            call["id"] = call["id"] or tc.id
            call["name"] = call["name"] or (tc.function.name if tc.function else None)
            call["args"] += (tc.function.arguments or "") if tc.function else ""
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls == {0: {"id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather",
                         "args": '{"location": "Paris", "unit": "celsius"}'}}
    assert bedrock.up.requests[0].json()["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "get_weather", "description": "Weather in a city",
                                "inputSchema": {"json": TOOLS[0]["function"]["parameters"]}}}],
        "toolChoice": {"any": {}}}
    # the next turn: the assistant's call and the tool's result
    c.chat.completions.create(model="bedrock-claude", tools=TOOLS, messages=[
        *MSGS, {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": calls[0]["id"], "type": "function",
             "function": {"name": "get_weather", "arguments": calls[0]["args"]}}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18 C"}])
    assert bedrock.up.requests[1].json()["messages"][1:] == [
        {"role": "assistant", "content": [{"text": "Let me check."}, {"toolUse": {
            "toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather",
            "input": {"location": "Paris", "unit": "celsius"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q",
                                                     "content": [{"text": "18 C"}]}}]}]
    assert bedrock.verified == [KEY_ID, KEY_ID]


def test_reasoning_budget_and_signature_round_trip(harness: LoopThread) -> None:
    bedrock, gw = setup(harness)
    bedrock.up.push(eventstream("reasoning"), converse("text"))
    c = client(gw)
    reasoning, blocks, text = "", [], ""
    for ch in c.chat.completions.create(model="bedrock-claude", messages=MSGS, stream=True, reasoning_effort="low"):
        if not ch.choices:
            continue
        extra = ch.choices[0].delta.model_extra or {}
        reasoning += extra.get("reasoning_content") or ""
        blocks.extend(extra.get("thinking_blocks") or [])
        text += ch.choices[0].delta.content or ""
    assert text == "17 × 23 = **391**."
    assert reasoning == "The user asks for 17 * 23. 17 * 20 = 340, 17 * 3 = 51, so 391."
    assert [b["type"] for b in blocks] == ["thinking", "redacted_thinking"]
    first = bedrock.up.requests[0].json()
    assert first["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 4096}}
    assert first["inferenceConfig"] == {"maxTokens": 8192}
    # the client sends the blocks back with the assistant turn; Bedrock gets them as reasoningContent
    c.chat.completions.create(model="bedrock-claude", reasoning_effort="low", messages=[
        *MSGS, {"role": "assistant", "content": text, "thinking_blocks": blocks},  # type: ignore[misc]
        {"role": "user", "content": "Thanks"}])
    assistant = bedrock.up.requests[1].json()["messages"][1]
    assert assistant["content"] == [
        {"reasoningContent": {"reasoningText": {"text": blocks[0]["thinking"], "signature": blocks[0]["signature"]}}},
        {"reasoningContent": {"redactedContent": blocks[1]["data"]}},
        {"text": text}]


@pytest.mark.parametrize("fixture,words", [
    ("throttled", "Too many tokens"),
    ("model_stream_error", "invalid sequence"),
    ("truncated", "ended before it finished"),
    ("corrupt_crc", "corrupt event-stream frame"),
    ("cut_at_frame", "no messageStop"),
])
def test_stream_failures_raise_in_the_sdk(harness: LoopThread, fixture: str, words: str) -> None:
    bedrock, gw = setup(harness)
    # paced, so that each recorded read reaches the gateway as a read of its own
    bedrock.up.push(eventstream(fixture, delay=0.02))
    got = ""
    with pytest.raises(openai.APIError) as e:
        for ch in client(gw).chat.completions.create(model="bedrock-claude", messages=MSGS, stream=True):
            got += (ch.choices[0].delta.content or "") if ch.choices else ""
    assert words in e.value.message
    # the text before the failure arrives; the corrupt frame's own text never does
    assert got == {"throttled": "Sure, here", "model_stream_error": "Partial", "corrupt_crc": ""}.get(fixture, "Hello")


def test_exception_frame_before_anything_was_sent_fails_over(harness: LoopThread) -> None:
    """A throttlingException in the first read: nothing reached the client yet, so the
    gateway tries the next account and the client sees one clean stream."""
    accounts = [{"id": "aws-1", "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": SECRETS["AKIDEXAMPLE"]},
                {"id": "aws-2", "aws_access_key_id": "AKIDEXAMPLE2", "aws_secret_access_key": SECRETS["AKIDEXAMPLE2"]}]
    bedrock, gw = setup(harness, accounts=accounts)
    bedrock.up.push(Reply(200, {"Content-Type": "application/vnd.amazon.eventstream"},
                          fixture_bytes("bedrock/throttled.bin")), eventstream("text"))
    chunks = list(client(gw).chat.completions.create(model="bedrock-claude", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello! How can I help you today? 👋"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.role]) == 1
    assert sorted(bedrock.verified) == ["AKIDEXAMPLE", "AKIDEXAMPLE2"]


def test_throttled_account_fails_over_to_the_next(harness: LoopThread) -> None:
    accounts = [{"id": "aws-1", "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": SECRETS["AKIDEXAMPLE"]},
                {"id": "aws-2", "aws_access_key_id": "AKIDEXAMPLE2", "aws_secret_access_key": SECRETS["AKIDEXAMPLE2"]}]
    bedrock, gw = setup(harness, accounts=accounts)
    bedrock.up.push(aws_error(429, "ThrottlingException", "Too many requests, please wait before trying again."),
                    eventstream("text"))
    chunks = list(client(gw).chat.completions.create(model="bedrock-claude", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Hello!")
    assert sorted(bedrock.verified) == ["AKIDEXAMPLE", "AKIDEXAMPLE2"]


@pytest.mark.parametrize("reply,exc_type,status,code,words", [
    (aws_error(429, "ThrottlingException", "Too many requests"), openai.RateLimitError, 429, "rate_limit_exceeded",
     "Too many requests"),
    (aws_error(403, "AccessDeniedException", "You don't have access to the model with the specified model ID."),
     openai.InternalServerError, 502, "upstream_forbidden", "access to the model"),
    (aws_error(400, "ValidationException", "messages: roles must alternate"), openai.BadRequestError, 400,
     "upstream_bad_request", "roles must alternate"),
    (aws_error(503, "ServiceUnavailableException", "Service is unavailable"), openai.InternalServerError, 503,
     "upstream_overloaded", "unavailable"),
    (aws_error(429, "ModelNotReadyException", "Model is not ready"), openai.InternalServerError, 503,
     "upstream_overloaded", "not ready"),
])
def test_upstream_errors(harness: LoopThread, reply: Reply, exc_type: type[Exception], status: int, code: str,
                         words: str) -> None:
    bedrock, gw = setup(harness)
    bedrock.up.default = reply
    with pytest.raises(exc_type) as e:
        client(gw).chat.completions.create(model="bedrock-claude", messages=MSGS)
    err: Any = e.value
    assert err.status_code == status and err.code == code
    assert words in err.message


def test_clock_skew_is_a_clear_502(harness: LoopThread) -> None:
    bedrock, gw = setup(harness, clock_skew=600.0)  # the fake's clock is ten minutes ahead
    with pytest.raises(openai.InternalServerError) as e:
        client(gw).chat.completions.create(model="bedrock-claude", messages=MSGS)
    assert e.value.status_code == 502
    assert e.value.code == "upstream_signature_rejected"
    assert "clock may be skewed" in e.value.message and "Signature expired" in e.value.message
    assert bedrock.verified == []


def test_wrong_secret_is_reported_as_a_signature_problem(harness: LoopThread) -> None:
    bedrock, gw = setup(harness, accounts=[{"id": "aws-1", "aws_access_key_id": KEY_ID,
                                            "aws_secret_access_key": "not-the-secret"}])
    with pytest.raises(openai.InternalServerError) as e:
        client(gw).chat.completions.create(model="bedrock-claude", messages=MSGS)
    assert e.value.code == "upstream_signature_rejected"
    assert "aws_secret_access_key" in e.value.message


def test_bedrock_api_key_account(harness: LoopThread) -> None:
    bedrock, gw = setup(harness, accounts=[{"id": "key-1", "api_key": "test-key-123"}], api_keys=("test-key-123",))
    bedrock.up.push(converse("tool_use"))
    r = client(gw).chat.completions.create(model="bedrock-claude", messages=MSGS, tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"location": "Paris", "unit": "celsius"}
    assert r.usage.prompt_tokens == 1387 and r.usage.prompt_tokens_details.cached_tokens == 1024
    assert bedrock.verified == ["bearer"]
    assert bedrock.up.requests[0].headers["authorization"] == "Bearer test-key-123"


def test_unsupported_parameter_never_reaches_bedrock(harness: LoopThread) -> None:
    bedrock, gw = setup(harness)
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).chat.completions.create(model="bedrock-claude", messages=MSGS, logit_bias={"1": 5})
    assert e.value.code == "unsupported_parameter" and e.value.param == "logit_bias"
    assert bedrock.up.requests == []


def test_anthropic_client_reaches_bedrock(harness: LoopThread) -> None:
    import anthropic

    bedrock, gw = setup(harness)
    bedrock.up.push(eventstream("text"))
    c = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=20)
    with c.messages.stream(model="bedrock-claude", max_tokens=100, messages=MSGS) as s:  # type: ignore[arg-type]
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == "Hello! How can I help you today? 👋"
    assert final.stop_reason == "end_turn"
    assert bedrock.verified == [KEY_ID]


def test_responses_client_reaches_bedrock(harness: LoopThread) -> None:
    bedrock, gw = setup(harness)
    bedrock.up.push(converse("text"))
    r = client(gw).responses.create(model="bedrock-claude", input="Say hello", store=False)
    assert r.output_text == "Hello! How can I help you today? 👋"
    assert bedrock.verified == [KEY_ID]
