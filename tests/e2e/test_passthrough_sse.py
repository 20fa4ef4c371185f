"""Pass-through streams (client and upstream speak the same format): the upstream's
bytes reach the client as they came, whole events only, and an event that is not
JSON ends the stream with an error frame in the client's format (counted in
metrics, logged), on every pass-through route: OpenAI chat, Anthropic Messages,
OpenAI Responses and Gemini native.  Fixtures: tests/fixtures/<format>/text.sse."""
from __future__ import annotations

import json
import re
import logging
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Reply, fixture_bytes, simple_config
from tornado_proxy.pipeline.sse import SSEDecoder

TIMEOUTS = {"connect": 2, "first_byte": 5, "idle": 5}
MSGS = [{"role": "user", "content": "Say hello"}]


@dataclass
class Route:
    name: str
    type: str
    path: str
    body: dict[str, Any]
    fixture: str
    sep: bytes
    malformed: bytes  # an event cut off inside its JSON

    def provider(self, up: FakeUpstream) -> dict[str, Any]:
        base = up.url + "/v1" if self.type in ("openai", "openai-responses") else up.url
        return {"name": "up", "type": self.type, "base_url": base, "timeouts": TIMEOUTS,
                "accounts": [{"id": "a1", "api_key": "test-key-a1"}]}

    def events(self) -> list[bytes]:
        return [p + self.sep for p in fixture_bytes(self.fixture).split(self.sep) if p.strip()]


ROUTES = [
    Route("openai", "openai", "/v1/chat/completions", {"model": "m", "messages": MSGS, "stream": True},
          "openai/text.sse", b"\n\n", b'data: {"malformed": tru'),
    Route("anthropic", "anthropic", "/v1/messages",
          {"model": "m", "max_tokens": 64, "messages": MSGS, "stream": True},
          "anthropic/text.sse", b"\n\n", b'event: content_block_delta\ndata: {"malformed": tru'),
    Route("responses", "openai-responses", "/v1/responses", {"model": "m", "input": "x", "stream": True},
          "responses/text.sse", b"\n\n", b'event: response.output_text.delta\ndata: {"malformed": tru'),
    Route("gemini", "gemini", "/v1beta/models/m:streamGenerateContent?alt=sse",
          {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
          "gemini/text.sse", b"\r\n\r\n", b'data: {"malformed": tru'),
]
IDS = [r.name for r in ROUTES]


def gateway(harness: LoopThread, route: Route, *replies: Reply) -> tuple[FakeUpstream, Any]:
    up = harness.upstream().push(*replies)
    model = {"id": "m", "provider": "up", "upstream_model": "upstream-model"}
    return up, harness.gateway(simple_config([route.provider(up)], [model]))


def as_client_sees(data: bytes) -> bytes:
    """The upstream's bytes with its model name replaced by the id the client asked for
    ("m"): every route returns that, pass-through included; nothing else changes."""
    m = re.search(rb'"(model|modelVersion)"\s*:\s*("[^"]*")', data)
    if m is None:
        return data
    return data.replace(m.group(0), m.group(0)[:m.start(2) - m.start(0)] + b'"m"')


def post(gw: Any, route: Route) -> tuple[int, bytes]:
    req = urllib.request.Request(gw.url + route.path, data=json.dumps(route.body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def chunks(data: bytes, split: int | None, sep: bytes) -> list[bytes]:
    if split:
        return [data[i:i + split] for i in range(0, len(data), split)]
    return [p + sep for p in data.split(sep) if p]


def metric(gw: Any, line_start: str) -> float:
    for line in gw.metrics_text().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def check_error_frame(route: Route, tail: bytes) -> None:
    """``tail`` is exactly one event: the client format's stream error."""
    dec = SSEDecoder()
    evs = [*dec.feed(tail), *dec.finish()]
    assert len(evs) == 1, tail
    ev, obj = evs[0], evs[0].json()
    if route.name == "openai":
        assert ev.event is None and obj["error"]["code"] == "upstream_bad_response"
    elif route.name == "anthropic":
        assert ev.event == "error" and obj["type"] == "error" and obj["error"]["type"] == "api_error"
    elif route.name == "responses":
        assert ev.event == "error" and obj["type"] == "error" and obj["code"]
    else:
        assert obj["error"]["code"] == 502 and tail.endswith(b"\r\n\r\n")
    assert "not JSON" in json.dumps(obj)


@pytest.mark.parametrize("split", [None, 1, 5])
@pytest.mark.parametrize("route", ROUTES, ids=IDS)
def test_a_malformed_event_ends_the_stream_with_an_error_frame(harness: LoopThread, route: Route, split: int | None,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    events = route.events()
    good = as_client_sees(b"".join(events[:2]))
    # One good event first (the client has its first byte), then the second and the bad
    # one in one write (None: the good one still goes out) or split up around the
    # boundary between them.
    bad = events[1] + route.malformed + route.sep
    writes = [events[0], *([bad[:-60], *chunks(bad[-60:], split, route.sep)] if split else [bad]),
              b"".join(events[2:])]
    up, gw = gateway(harness, route, Reply(200, {"Content-Type": "text/event-stream"}, chunks=writes, delay=0.01))
    status, body = post(gw, route)
    assert status == 200
    assert body.startswith(good)  # what came before, byte for byte
    assert b"malformed" not in body and events[2] not in body  # nothing of it or after it
    check_error_frame(route, body[len(good):])
    assert metric(gw, f'tornado_proxy_upstream_errors_total{{kind="upstream_bad_response",provider="up"}}') == 1.0
    warned = [r for r in caplog.records if "malformed upstream stream event" in r.getMessage()]
    assert warned and warned[0].levelno == logging.WARNING


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
def test_a_malformed_first_event_is_an_error_answer(harness: LoopThread, route: Route) -> None:
    up, gw = gateway(harness, route, Reply.sse(route.malformed + route.sep + b"".join(route.events())))
    status, body = post(gw, route)
    assert status == 502
    err = json.loads(body)["error"]
    assert "not JSON" in err["message"]
    if route.name == "anthropic":
        assert json.loads(body)["type"] == "error" and err["type"] == "api_error"
    elif route.name == "gemini":
        assert err["code"] == 502
    else:
        assert err["code"] == "upstream_bad_response"


@pytest.mark.parametrize("split", [None, 1, 7])
@pytest.mark.parametrize("route", ROUTES, ids=IDS)
def test_good_streams_pass_byte_for_byte_however_they_are_split(harness: LoopThread, route: Route,
                                                                split: int | None) -> None:
    data = b"".join(route.events())
    up, gw = gateway(harness, route, Reply(200, {"Content-Type": "text/event-stream"},
                                           chunks=chunks(data, split, route.sep)))
    status, body = post(gw, route)
    assert status == 200 and body == as_client_sees(data)


def test_the_sdks_raise_on_the_error_frame(harness: LoopThread) -> None:
    oa, an = ROUTES[0], ROUTES[1]
    bad_openai = b"".join(oa.events()[:2]) + oa.malformed + b"\n\n"
    up, gw = gateway(harness, oa, Reply.sse(bad_openai, delay=0.02))
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)
    got: list[str] = []
    with pytest.raises(openai.APIError) as e:
        for ch in c.chat.completions.create(model="m", messages=MSGS, stream=True):
            got.append(ch.choices[0].delta.content or "")
    assert "not JSON" in e.value.message and got == ["", "Hello"]

    bad_anthropic = b"".join(an.events()[:4]) + an.malformed + b"\n\n"
    up2, gw2 = gateway(harness, an, Reply.sse(bad_anthropic, delay=0.02))
    a = anthropic.Anthropic(base_url=gw2.url, api_key="k", max_retries=0, timeout=20)
    with pytest.raises(anthropic.APIStatusError) as e2:
        with a.messages.stream(model="m", max_tokens=64, messages=MSGS) as s:
            for _ in s:
                pass
    assert "not JSON" in str(e2.value)


# An error event as each upstream sends it mid-stream (shapes from the providers' API
# references: OpenAI's error chunk, Anthropic's `error` event, Responses' `response.failed`,
# Gemini's google.rpc.Status), and the kind our own error table gives it.
ERROR_EVENTS = {
    "openai": (b'data: {"error":{"message":"The server had an error","type":"server_error","code":null}}\n\n',
               "upstream_error"),
    "anthropic": (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
                  b'\n\n', "upstream_overloaded"),
    "responses": (b'event: response.failed\ndata: {"type":"response.failed","sequence_number":9,"response":'
                  b'{"id":"resp_1","object":"response","status":"failed","error":{"code":"server_error",'
                  b'"message":"The server had an error"},"output":[]}}\n\n', "upstream_error"),
    "gemini": (b'data: {"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}\r\n\r\n',
               "upstream_overloaded"),
}


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
def test_an_error_event_reaches_the_client_as_sent_and_is_counted(harness: LoopThread, route: Route,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The upstream's own error event, in the client's format already, goes out as it
    came (nothing added after it); the gateway counts the stream as failed upstream:
    the metric of upstream errors, the request's error kind, the log."""
    event, kind = ERROR_EVENTS[route.name]
    events = route.events()
    writes = [events[0], events[1], event]
    up, gw = gateway(harness, route, Reply(200, {"Content-Type": "text/event-stream"}, chunks=writes, delay=0.01))
    caplog.set_level(logging.INFO)
    status, body = post(gw, route)
    assert status == 200
    assert body == as_client_sees(events[0] + events[1]) + event
    assert metric(gw, f'tornado_proxy_upstream_errors_total{{kind="{kind}",provider="up"}}') == 1.0
    assert metric(gw, 'tornado_proxy_upstream_errors_total{kind="upstream_stream_cut"') == 0.0
    logged = [r.getMessage() for r in caplog.records if "stream failed after the first byte" in r.getMessage()]
    assert len(logged) == 1 and kind in logged[0]


@pytest.mark.parametrize("route", ROUTES, ids=IDS)
def test_an_error_as_the_first_event_fails_over(harness: LoopThread, route: Route) -> None:
    """Before the client has a byte, an error event is what an error answer would be:
    the next account serves the stream, as on a translated route."""
    event, kind = ERROR_EVENTS[route.name]
    data = b"".join(route.events())
    up = harness.upstream().push(Reply(200, {"Content-Type": "text/event-stream"}, chunks=[event]),
                                 Reply(200, {"Content-Type": "text/event-stream"}, chunks=chunks(data, None, route.sep)))
    prov = route.provider(up)
    prov["accounts"] = [{"id": "a1", "api_key": "test-key-a1"}, {"id": "a2", "api_key": "test-key-a2"}]
    gw = harness.gateway(simple_config([prov], [{"id": "m", "provider": "up", "upstream_model": "upstream-model"}]))
    status, body = post(gw, route)
    assert status == 200 and body == as_client_sees(data)
    assert len(up.requests) == 2
    assert metric(gw, f'tornado_proxy_upstream_errors_total{{kind="{kind}",provider="up"}}') == 1.0


def served(gw: Any, status: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in gw.metrics_text().splitlines()
               if line.startswith("tornado_proxy_requests_total{") and 'route="chat_completions"' in line
               and f'status="{status}"' in line)


def wait_for(check: Any) -> None:
    for _ in range(100):  # the gateway hears of the hang-up a moment after the client left
        if check():
            return
        time.sleep(0.02)
    assert check()


def test_a_client_that_hangs_up_after_done_was_served_whole(harness: LoopThread) -> None:
    """The openai SDK closes the connection as soon as it reads ``[DONE]``, and an
    upstream's chunked body ends with bytes after that event (its terminator; here never
    sent): a stream whose end marker the client had is a success, counted as a 200
    with its tokens and the account's success, not a 499."""
    route = ROUTES[0]
    data = fixture_bytes(route.fixture)
    up, gw = gateway(harness, route, Reply.sse(data, hang=True))
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)
    text = "".join(ch.choices[0].delta.content or "" for ch in
                   c.chat.completions.create(model="m", messages=MSGS, stream=True) if ch.choices)
    assert text == "Hello! How can I help you today?"
    wait_for(lambda: served(gw, "200") == 1.0)
    assert served(gw, "499") == 0.0
    assert metric(gw, 'tornado_proxy_account_requests_total{account="a1",outcome="success",provider="up"}') == 1.0
    assert metric(gw, 'tornado_proxy_tokens_total{direction="in",model="m",provider="up"}') == 19.0

    # One that leaves before the end is still a 499, and no success of the account's.
    up.push(Reply.sse(data, delay=0.05, hang=True))
    stream = c.chat.completions.create(model="m", messages=MSGS, stream=True)
    next(iter(stream))
    stream.close()
    wait_for(lambda: served(gw, "499") == 1.0)
    assert served(gw, "200") == 1.0
    assert metric(gw, 'tornado_proxy_account_requests_total{account="a1",outcome="success",provider="up"}') == 1.0
