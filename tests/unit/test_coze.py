"""The coze upstream: stream fixtures replayed at every split point against goldens, the
request table (field policy), the error-code table and the create/poll/list exchange.

Fixtures: tests/fixtures/coze/ (sources in its README).  UPDATE_GOLDEN=1 rewrites the
goldens (then read the diff).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from providers.base import Account, StreamContext, fold_chunks
from providers.coze import CozeProvider
from providers.coze.stream import CozeDecoder
from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "coze"
GOLDEN = ROOT / "golden" / "coze"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
PROVIDER = CozeProvider({"name": "coze", "type": "coze", "base_url": "http://127.0.0.1:1",
                         "options": {"poll_interval": 0.5, "poll_timeout": 30}})
ACCT = Account(id="c1", api_key="pat-test-1")
MODEL = {"id": "helper", "provider": "coze", "upstream_model": "7379462189365198898"}
MSG = [{"role": "user", "content": "What day is 1 October 2024?"}]


def ctx() -> StreamContext:
    return StreamContext(id="chatcmpl-test123", created=1700000000, model="helper")


# -- the stream ---------------------------------------------------------------------
STREAMS = [
    ("text.sse", None),
    ("reasoning.sse", None),
    ("cut.sse", ErrorKind.UPSTREAM_STREAM_CUT),
    ("failed.sse", ErrorKind.UPSTREAM_ERROR),
    ("failed_midstream.sse", ErrorKind.UPSTREAM_ERROR),
    ("error.sse", ErrorKind.UPSTREAM_ERROR),
    ("error_midstream.sse", ErrorKind.UPSTREAM_RATE_LIMITED),
    ("unknown_event.sse", ErrorKind.UPSTREAM_STREAM_CUT),
    ("auth_error.json", ErrorKind.UPSTREAM_AUTH),       # HTTP 200 + code instead of a stream
    ("rate_limited.json", ErrorKind.UPSTREAM_RATE_LIMITED),
]


def splits(data: bytes, mode: str) -> list[bytes]:
    if mode == "whole":
        return [data]
    if mode == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    rng = random.Random(mode)
    cuts = sorted(rng.sample(range(1, len(data)), min(40, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def replay(name: str, mode: str) -> dict[str, Any]:
    data = (FIXTURES / name).read_bytes()
    dec = PROVIDER.new_decoder()
    tr = PROVIDER.new_stream(ctx())
    chunks: list[dict[str, Any]] = []
    try:
        for piece in splits(data, mode):
            for ev in dec.feed(piece):
                chunks.extend(tr.feed(ev))
        for ev in dec.finish():
            chunks.extend(tr.feed(ev))
        chunks.extend(tr.finish())
    except ProxyError as err:
        chunks.extend(tr.fail(err))
        return {"chunks": chunks, "error": {"kind": err.kind.value, "message": err.message}}
    return {"chunks": chunks}


@pytest.mark.parametrize("mode", ["whole", "bytes", "seed-1", "seed-2", "seed-3"])
@pytest.mark.parametrize("name,kind", STREAMS, ids=[s[0] for s in STREAMS])
def test_stream_replay_matches_golden(name: str, kind: ErrorKind | None, mode: str) -> None:
    got = replay(name, mode)
    path = GOLDEN / (name.rsplit(".", 1)[0] + ".chunks.json")
    if UPDATE and mode == "whole":
        path.write_text(jsonutil.dumps(got) + "\n")
    assert got == jsonutil.loads(path.read_bytes())
    assert (got.get("error") or {}).get("kind") == (kind.value if kind else None)


def test_stream_folds_to_the_completed_message() -> None:
    """Folding the deltas gives what Coze's own message.completed event says the message is."""
    from tornado_proxy.pipeline.sse import SSEDecoder

    data = (FIXTURES / "reasoning.sse").read_bytes()
    completed = next(ev.json() for ev in SSEDecoder().feed(data) if ev.event == "conversation.message.completed")
    msg = fold_chunks(replay("reasoning.sse", "whole")["chunks"])["choices"][0]["message"]
    assert (msg["content"], msg["reasoning_content"]) == (completed["content"], completed["reasoning_content"])


def test_decoder_tells_a_json_body_from_a_stream_after_leading_blank_bytes() -> None:
    dec = CozeDecoder()
    assert dec.feed(b"\r\n") == [] and dec.feed(b' {"code":4100,') == [] and dec.feed(b'"msg":"x"}') == []
    (ev,) = dec.finish()
    assert ev.event == "coze.body" and jsonutil.loads(ev.raw) == {"code": 4100, "msg": "x"}


# -- the request ----------------------------------------------------------------------
def body_of(req: dict[str, Any], stream: bool = False, model: dict[str, Any] | None = None,
            account: Account = ACCT) -> tuple[str, dict[str, Any]]:
    up = PROVIDER.build_request({"model": "helper", **req}, model or MODEL, account, stream)
    assert up.headers["Authorization"] == "Bearer pat-test-1"
    return up.url, jsonutil.loads(up.body)


BUILD = [
    ("plain", {"messages": MSG}, {"additional_messages": [
        {"role": "user", "type": "question", "content": MSG[0]["content"], "content_type": "text"}]}),
    ("user id from the client", {"messages": MSG, "user": "u-42"}, {"user_id": "u-42"}),
    ("droppable fields dropped", {"messages": MSG, "max_tokens": 50, "store": True, "stream_options": {},
                                  "prompt_cache_key": "k", "parallel_tool_calls": True}, {"user_id": "tornado-proxy"}),
    ("neutral values accepted", {"messages": MSG, "n": 1, "temperature": 1, "tools": []}, {"stream": False}),
    ("system text goes first as a user message", {"messages": [{"role": "system", "content": "Be brief."}, *MSG]},
     {"additional_messages": [
         {"role": "user", "type": "question", "content": "Be brief.", "content_type": "text"},
         {"role": "user", "type": "question", "content": MSG[0]["content"], "content_type": "text"}]}),
    ("history: assistant turns are answers", {"messages": [*MSG, {"role": "assistant", "content": "Wednesday."},
                                                           {"role": "user", "content": "And the 2nd?"}]},
     {"additional_messages": [
         {"role": "user", "type": "question", "content": MSG[0]["content"], "content_type": "text"},
         {"role": "assistant", "type": "answer", "content": "Wednesday.", "content_type": "text"},
         {"role": "user", "type": "question", "content": "And the 2nd?", "content_type": "text"}]}),
    ("image by URL is an object_string", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}]},
     {"additional_messages": [{"role": "user", "type": "question", "content_type": "object_string",
                               "content": '[{"type":"text","text":"What is this?"},'
                                          '{"type":"image","file_url":"https://x.test/a.png"}]'}]}),
    ("metadata: conversation id to the query, the rest to meta_data",
     {"messages": MSG, "metadata": {"conversation_id": "7381473525342978089", "ticket": "T-1"}},
     {"meta_data": {"ticket": "T-1"}}),
]


@pytest.mark.parametrize("name,req,expected", BUILD, ids=[b[0] for b in BUILD])
def test_build_request(name: str, req: dict[str, Any], expected: dict[str, Any]) -> None:
    url, body = body_of(req)
    assert body["bot_id"] == "7379462189365198898"
    for k, v in expected.items():
        assert body[k] == v, k
    if "conversation id" in name:
        assert url == "http://127.0.0.1:1/v3/chat?conversation_id=7381473525342978089"
    else:
        assert url == "http://127.0.0.1:1/v3/chat"


def test_stream_flag_and_per_account_user_id() -> None:
    _, body = body_of({"messages": MSG, "stream": True}, stream=True,
                      account=Account(id="c2", api_key="pat-test-1", extra={"user_id": "acct-user"}))
    assert body["stream"] is True and body["user_id"] == "acct-user" and body["auto_save_history"] is True


REJECT = [
    ("temperature", {"temperature": 0.2}, "temperature"),
    ("stop", {"stop": ["\n"]}, "stop"),
    ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("response_format", {"response_format": {"type": "json_object"}}, "response_format"),
    ("reasoning", {"reasoning_effort": "high"}, "reasoning_effort"),
    ("seed", {"seed": 7}, "seed"),
    ("data uri image", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     "messages[0].content[0].image_url.url"),
    ("tool calls in history", {"messages": [*MSG, {"role": "assistant", "tool_calls": [{"id": "c"}]},
                                            {"role": "tool", "content": "x"}]}, "messages[1].tool_calls"),
    ("last message not the user's", {"messages": [*MSG, {"role": "assistant", "content": "a"}]}, "messages"),
    ("conversation id with a slash", {"metadata": {"conversation_id": "1/../x"}}, "metadata.conversation_id"),
]


@pytest.mark.parametrize("name,extra,param", REJECT, ids=[r[0] for r in REJECT])
def test_answer_changing_fields_are_rejected_naming_the_field(name: str, extra: dict[str, Any], param: str) -> None:
    with pytest.raises(ProxyError) as ei:
        body_of({"messages": MSG, **extra})
    assert ei.value.param == param
    assert ei.value.kind in (ErrorKind.UNSUPPORTED, ErrorKind.INVALID_REQUEST)


# -- errors ------------------------------------------------------------------------------
CODES = [
    (4100, ErrorKind.UPSTREAM_AUTH), (4101, ErrorKind.UPSTREAM_FORBIDDEN), (4013, ErrorKind.UPSTREAM_RATE_LIMITED),
    (4000, ErrorKind.UPSTREAM_BAD_REQUEST), (4200, ErrorKind.UPSTREAM_NOT_FOUND), (4028, ErrorKind.UPSTREAM_PAYMENT),
    (4999, ErrorKind.UPSTREAM_BAD_REQUEST), (5000, ErrorKind.UPSTREAM_ERROR), (700012006, ErrorKind.UPSTREAM_ERROR),
]


@pytest.mark.parametrize("code,kind", CODES)
def test_error_codes(code: int, kind: ErrorKind) -> None:
    body = jsonutil.dumpb({"code": code, "msg": "m"})
    err = PROVIDER.classify_error(500, {"x-tt-logid": "LOG1"}, body)
    assert err.kind is kind and "LOG1" in err.message and err.upstream_status == 500


def test_http_error_without_a_code_goes_by_status() -> None:
    assert PROVIDER.classify_error(429, {"retry-after": "3"}, b"busy").kind is ErrorKind.UPSTREAM_RATE_LIMITED


# -- the non-streaming exchange ------------------------------------------------------------
def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def exchange_result(retrieves: tuple[str, ...] = ("retrieve_in_progress.json", "retrieve_completed.json")
                    ) -> dict[str, Any]:
    up = PROVIDER.build_request({"model": "helper", "messages": MSG}, MODEL, ACCT, False)
    ex = PROVIDER.new_exchange(up, ctx())
    step = ex.next(fixture("create.json"))
    sent = []
    for name in (*retrieves, "message_list.json"):
        assert step is not None
        sent.append(step)
        step = ex.next(fixture(name))
    assert step is None
    assert [(s[0], s[1].method, s[1].url.split("?")[0].rsplit("/v3", 1)[1]) for s in sent] == \
        [(0.5, "GET", "/chat/retrieve")] * len(retrieves) + [(0.0, "GET", "/chat/message/list")]
    assert sent[0][1].url.endswith("?conversation_id=7381473525342978089&chat_id=7382159487131697202")
    assert sent[0][1].headers["Authorization"] == "Bearer pat-test-1"
    return ex.result()


def test_exchange_polls_then_lists_and_keeps_only_the_answer() -> None:
    out = exchange_result()
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "2024 年 10 月 1 日是星期三。"}
    assert out["usage"] == {"prompt_tokens": 614, "completion_tokens": 19, "total_tokens": 633}
    assert out["model"] == "helper" and out["id"] == "chatcmpl-test123"


@pytest.mark.parametrize("name,kind", [("retrieve_failed.json", ErrorKind.UPSTREAM_RATE_LIMITED),
                                       ("auth_error.json", ErrorKind.UPSTREAM_AUTH)])
def test_exchange_errors(name: str, kind: ErrorKind) -> None:
    up = PROVIDER.build_request({"model": "helper", "messages": MSG}, MODEL, ACCT, False)
    ex = PROVIDER.new_exchange(up, ctx())
    ex.next(fixture("create.json"))
    with pytest.raises(ProxyError) as ei:
        ex.next(fixture(name))
    assert ei.value.kind is kind


def test_exchange_refuses_ids_it_would_put_in_a_url_unchecked() -> None:
    up = PROVIDER.build_request({"model": "helper", "messages": MSG}, MODEL, ACCT, False)
    ex = PROVIDER.new_exchange(up, ctx())
    with pytest.raises(ProxyError) as ei:
        ex.next(jsonutil.dumpb({"code": 0, "data": {"id": "1&x=2", "conversation_id": "7", "status": "in_progress"}}))
    assert ei.value.kind is ErrorKind.UPSTREAM_BAD_RESPONSE


def test_options_are_checked() -> None:
    bad = CozeProvider({"name": "c", "type": "coze", "options": {"poll_interval": 0, "colour": "x"}})
    problems = bad.validate([])
    assert any("colour" in p for p in problems) and any("poll_interval" in p for p in problems)
