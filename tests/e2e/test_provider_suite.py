"""One end-to-end suite over every upstream type: the real gateway against a fake
upstream speaking that upstream's own wire format (recorded fixtures), driven by
the official openai SDK and by raw sockets.

For each of openai, anthropic, openai-responses, gemini and bedrock:

- a client that disconnects mid-stream makes the gateway abort the upstream transfer;
- a 429 on the first account fails over to the second before the first byte;
- an error event mid-stream reaches the client as an error frame after the text;
- a stream that is cut (the body ends early, or the connection drops) is an error,
  never a "stop";
- the provider's ``proxy`` setting sends the request through a loopback forward proxy.

The expected text and error of each stream come from the unit tests' goldens
(``tests/golden/``), so the two levels agree on what a fixture means.  ``echo`` has
no upstream transfer, so none of these apply to it.
"""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

import openai
import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Recorded, Reply, fixture_bytes, simple_config
from tests.e2e.test_proxy import HTTPProxy, start
from tests.replay import GOLDEN

TIMEOUTS = {"connect": 2, "first_byte": 5, "idle": 5}
MSGS = [{"role": "user", "content": "Say hello"}]
STREAMS = json.loads(fixture_bytes("bedrock/streams.json"))["streams"]


def sse_writes(name: str) -> list[bytes]:
    """An SSE fixture as one event per write (Gemini ends its events with CRLF CRLF)."""
    data = fixture_bytes(name)
    sep = b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n"
    return [p + sep for p in data.split(sep) if p]


def eventstream_writes(name: str) -> list[bytes]:
    """A Bedrock event stream in its recorded reads (which split frames)."""
    data, out, pos = fixture_bytes(f"bedrock/{name}.bin"), [], 0
    for n in STREAMS[name]["reads"]:
        if pos < len(data):
            out.append(data[pos:pos + n])
            pos += n
    return out + ([data[pos:]] if pos < len(data) else [])


@dataclass
class Upstream:
    """How one upstream type is configured and which of its fixtures play which part."""

    type: str
    base: Callable[[FakeUpstream], str]
    upstream_model: str
    accounts: list[dict[str, Any]]     # two; each one's public credential is in ``shows``
    shows: list[str]                   # what of each account a request carries (key / key id)
    writes: Callable[[str], list[bytes]]
    content_type: str
    text: str                          # the fixture of a whole answer
    midstream: str                     # one that fails with an error event after some text
    cut: str                           # one that stops before its terminal event
    rate_limited: Reply                # the upstream's own 429
    extra: dict[str, Any]

    def reply(self, fixture: str, **kw: Any) -> Reply:
        return Reply(200, {"Content-Type": self.content_type}, chunks=self.writes(fixture), delay=0.02, **kw)

    def config(self, up: FakeUpstream, accounts: int = 1, **provider: Any) -> dict[str, Any]:
        prov = {"name": "up", "type": self.type, "base_url": self.base(up), "timeouts": TIMEOUTS,
                "accounts": self.accounts[:accounts], **self.extra, **provider}
        return simple_config([prov], [{"id": "m", "provider": "up", "upstream_model": self.upstream_model,
                                       "max_tokens": 1024}])


def _sse(provider: str) -> Callable[[str], list[bytes]]:
    return lambda name: sse_writes(f"{provider}/{name}.sse")


AKID = "AKIDEXAMPLE"
UPSTREAMS = {
    "openai": Upstream(
        "openai", lambda up: up.url + "/v1", "gpt-4o-mini",
        [{"id": "a1", "api_key": "key-a1"}, {"id": "a2", "api_key": "key-a2"}], ["key-a1", "key-a2"],
        _sse("openai"), "text/event-stream", "text", "error_midstream", "cut",
        Reply.json({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                   status=429, headers={"retry-after": "30"}), {}),
    "anthropic": Upstream(
        "anthropic", lambda up: up.url, "claude-sonnet-4-20250514",
        [{"id": "a1", "api_key": "key-ant-a1"}, {"id": "a2", "api_key": "key-ant-a2"}], ["key-ant-a1", "key-ant-a2"],
        _sse("anthropic"), "text/event-stream", "text", "error_midstream", "cut",
        Reply.json({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}},
                   status=429, headers={"retry-after": "30"}), {}),
    "openai-responses": Upstream(
        "openai-responses", lambda up: up.url + "/v1", "gpt-5",
        [{"id": "a1", "api_key": "key-r1"}, {"id": "a2", "api_key": "key-r2"}], ["key-r1", "key-r2"],
        _sse("responses"), "text/event-stream", "text", "failed", "cut",
        Reply.json({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                   status=429, headers={"retry-after": "30"}), {}),
    "gemini": Upstream(
        "gemini", lambda up: up.url, "gemini-2.5-flash",
        [{"id": "g1", "api_key": "key-g1"}, {"id": "g2", "api_key": "key-g2"}], ["key-g1", "key-g2"],
        _sse("gemini"), "text/event-stream", "text", "midstream_error", "cut",
        Reply(429, {"Content-Type": "application/json; charset=UTF-8"}, fixture_bytes("gemini/error_429_plain.json")),
        {}),
    "bedrock": Upstream(
        "bedrock", lambda up: up.url, "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
        [{"id": "aws-1", "aws_access_key_id": AKID, "aws_secret_access_key": "test-secret-123"},
         {"id": "aws-2", "aws_access_key_id": AKID + "2", "aws_secret_access_key": "test-secret-456"}],
        [f"Credential={AKID}/", f"Credential={AKID}2/"],
        eventstream_writes, "application/vnd.amazon.eventstream", "text", "model_stream_error", "cut_at_frame",
        Reply(429, {"Content-Type": "application/json",
                    "x-amzn-ErrorType": "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"},
              b'{"message":"Too many requests, please wait before trying again."}'),
        {"options": {"region": "us-east-1"}}),
}
GOLDEN_DIR = {"openai-responses": "responses"}


def expected(kind: str, fixture: str) -> tuple[str, str | None]:
    """(the text a client gets, the error message it ends with) for a fixture, from its golden."""
    if kind == "openai":  # no unit golden: the fixture README's words
        return {"text": ("Hello! How can I help you today?", None), "error_midstream":
                ("Partial answer", "The server had an error"), "cut": ("Partial answer", "ended before it finished")}[
            fixture]
    folder = GOLDEN / GOLDEN_DIR.get(kind, kind)
    path = folder / f"{fixture}.chunks.json"
    if path.exists():
        value = json.loads(path.read_text("utf-8"))
        chunks, err = (value["chunks"], value.get("error")) if isinstance(value, dict) else \
            ([c for c in value if "error" not in c], next((c["error"] for c in value if "error" in c), None))
    else:
        rows = [json.loads(line) for line in (folder / f"{fixture}.chunks.jsonl").read_text("utf-8").splitlines()]
        chunks = [r for r in rows if "choices" in r]
        err = next((r["error"] for r in rows if "error" in r), None)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    return text, err["message"] if err else None


def client(gw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)


def read_stream(gw: Any) -> tuple[str, list[str | None]]:
    got, finishes = "", []
    for ch in client(gw).chat.completions.create(model="m", messages=MSGS, stream=True):
        if ch.choices:
            got += ch.choices[0].delta.content or ""
            finishes.append(ch.choices[0].finish_reason)
    return got, finishes


def account_of(u: Upstream, rec: Recorded) -> int:
    seen = json.dumps(rec.headers) + rec.query
    which = [i for i, s in enumerate(u.shows) if s in seen]
    assert len(which) == 1, (u.shows, rec.headers)
    return which[0]


KINDS = list(UPSTREAMS)


@pytest.mark.parametrize("kind", KINDS)
def test_client_disconnect_mid_stream_aborts_the_upstream(harness: LoopThread, kind: str) -> None:
    u = UPSTREAMS[kind]
    # All the upstream will send, in one write, then nothing: only the client going away
    # can end this transfer (a later upstream write would also find the client gone).
    up = harness.upstream().push(Reply(200, {"Content-Type": u.content_type}, chunks=[b"".join(u.writes(u.cut))],
                                       hang=True))
    # An idle timeout far off, so that it cannot be what ends the transfer.
    gw = harness.gateway(u.config(up, timeouts={**TIMEOUTS, "idle": 60}))
    body = json.dumps({"model": "m", "messages": MSGS, "stream": True}).encode()
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    s.settimeout(10)
    got = b""
    while b"data: " not in got:
        got += s.recv(65536)
    assert got.startswith(b"HTTP/1.1 200 ")
    s.close()
    deadline = time.time() + 3
    while up.closed_early == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert up.closed_early == 1 and up.finished == 0
    assert harness.call(lambda: len(gw.gw.upstream.active)) == 0
    assert 'status="499"' in gw.metrics_text()


@pytest.mark.parametrize("kind", KINDS)
def test_429_fails_over_to_the_second_account(harness: LoopThread, kind: str) -> None:
    u = UPSTREAMS[kind]
    up = harness.upstream().push(u.rate_limited, u.reply(u.text))
    gw = harness.gateway(u.config(up, accounts=2))
    text, finishes = read_stream(gw)
    assert text == expected(kind, u.text)[0]
    assert [f for f in finishes if f] == ["stop"]
    assert [account_of(u, r) for r in up.requests] == [0, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_midstream_error_is_an_error_frame_after_the_text(harness: LoopThread, kind: str) -> None:
    u = UPSTREAMS[kind]
    up = harness.upstream().push(u.reply(u.midstream))
    gw = harness.gateway(u.config(up))
    want_text, want_error = expected(kind, u.midstream)
    assert want_text and want_error
    got = ""
    with pytest.raises(openai.APIError) as e:
        for ch in client(gw).chat.completions.create(model="m", messages=MSGS, stream=True):
            if ch.choices:
                got += ch.choices[0].delta.content or ""
            assert not ch.choices or ch.choices[0].finish_reason is None
    assert got == want_text
    assert want_error in e.value.message
    assert len(up.requests) == 1


@pytest.mark.parametrize("drop", [False, True], ids=["body-ends", "connection-drops"])
@pytest.mark.parametrize("kind", KINDS)
def test_cut_stream_is_an_error_not_a_stop(harness: LoopThread, kind: str, drop: bool) -> None:
    u = UPSTREAMS[kind]
    up = harness.upstream().push(u.reply(u.cut, cut=drop))
    gw = harness.gateway(u.config(up))
    want_text, want_error = expected(kind, u.cut)
    got = ""
    with pytest.raises(openai.APIError) as e:
        for ch in client(gw).chat.completions.create(model="m", messages=MSGS, stream=True):
            if ch.choices:
                got += ch.choices[0].delta.content or ""
            assert not ch.choices or ch.choices[0].finish_reason is None, "a cut stream must not finish"
    assert got == want_text
    assert (want_error in e.value.message) if not drop else \
        ("ended before it finished" in e.value.message or "mid-response" in e.value.message)


@pytest.mark.parametrize("kind", KINDS)
def test_outbound_proxy_carries_the_stream(harness: LoopThread, kind: str) -> None:
    u = UPSTREAMS[kind]
    proxy = start(harness, HTTPProxy())
    up = harness.upstream().push(u.reply(u.text))
    gw = harness.gateway(u.config(up, proxy=f"http://127.0.0.1:{proxy.port}"))
    text, _ = read_stream(gw)
    assert text == expected(kind, u.text)[0]
    assert len(proxy.seen) == 1 and proxy.seen[0].startswith(f"POST {up.url}/")
    assert len(up.requests) == 1
