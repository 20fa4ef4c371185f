"""Bedrock errors: HTTP error answers, exception frames, and stream protocol violations."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from providers.base import StreamContext
from providers.bedrock import BedrockProvider, BedrockStream, EventStreamDecoder
from tornado_proxy import jsonutil
from tornado_proxy.errors import ERROR_TABLE, Action, ErrorKind, ProxyError

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "bedrock"
_spec = importlib.util.spec_from_file_location("bedrock_make_fixtures", FIXTURES / "make_fixtures.py")
assert _spec and _spec.loader
make = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make)

PROVIDER = BedrockProvider({"name": "bedrock", "type": "bedrock", "options": {"region": "us-east-1"}})


def etype(name: str) -> dict[str, str]:
    return {"x-amzn-errortype": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "content-type": "application/json"}


# (name, status, headers, body, kind, words in the message, retry_after)
CLASSIFY = [
    ("throttled", 429, etype("ThrottlingException"), b'{"message":"Too many requests, please wait before trying again."}',
     ErrorKind.UPSTREAM_RATE_LIMITED, ["ThrottlingException", "Too many requests"], None),
    ("throttled with retry-after", 429, {**etype("ThrottlingException"), "retry-after": "7"},
     b'{"message":"Too many requests"}', ErrorKind.UPSTREAM_RATE_LIMITED, ["Too many requests"], 7.0),
    ("quota", 400, etype("ServiceQuotaExceededException"), b'{"message":"Too many tokens per day"}',
     ErrorKind.UPSTREAM_RATE_LIMITED, ["tokens per day"], None),
    ("access denied", 403, etype("AccessDeniedException"),
     b'{"message":"You don\'t have access to the model with the specified model ID."}',
     ErrorKind.UPSTREAM_FORBIDDEN, ["AccessDeniedException", "access to the model"], None),
    ("unknown key id", 403, etype("UnrecognizedClientException"),
     b'{"message":"The security token included in the request is invalid."}',
     ErrorKind.UPSTREAM_AUTH, ["security token"], None),
    ("expired session token", 403, etype("ExpiredTokenException"),
     b'{"message":"The security token included in the request is expired"}', ErrorKind.UPSTREAM_AUTH, ["expired"], None),
    ("validation", 400, etype("ValidationException"),
     b'{"message":"The model returned the following errors: messages: roles must alternate"}',
     ErrorKind.UPSTREAM_BAD_REQUEST, ["roles must alternate"], None),
    ("model not ready", 429, etype("ModelNotReadyException"), b'{"message":"Model is not ready"}',
     ErrorKind.UPSTREAM_OVERLOADED, ["not ready"], None),
    ("service unavailable", 503, etype("ServiceUnavailableException"), b'{"message":"Service unavailable"}',
     ErrorKind.UPSTREAM_OVERLOADED, ["Service unavailable"], None),
    ("model timeout", 408, etype("ModelTimeoutException"), b'{"message":"Model has timed out"}',
     ErrorKind.FIRST_BYTE_TIMEOUT, ["timed out"], None),
    ("internal", 500, etype("InternalServerException"), b'{"message":"Internal server error"}',
     ErrorKind.UPSTREAM_ERROR, ["Internal"], None),
    ("not found", 404, etype("ResourceNotFoundException"), b'{"message":"Model not found"}',
     ErrorKind.UPSTREAM_NOT_FOUND, ["not found"], None),
    ("signature expired", 403, etype("InvalidSignatureException"),
     b'{"message":"Signature expired: 20150830T123600Z is now earlier than 20150830T124600Z (20150830T125100Z - 5 min.)"}',
     ErrorKind.UPSTREAM_SIGNATURE, ["clock may be skewed", "Signature expired"], None),
    ("signature mismatch", 403, etype("InvalidSignatureException"),
     b'{"message":"The request signature we calculated does not match the signature you provided."}',
     ErrorKind.UPSTREAM_SIGNATURE, ["aws_secret_access_key", "clock may be skewed"], None),
    ("type only in the body", 400, {"content-type": "application/json"},
     b'{"__type":"com.amazon.coral.validate#ValidationException","message":"bad input"}',
     ErrorKind.UPSTREAM_BAD_REQUEST, ["ValidationException", "bad input"], None),
    ("header names in any case", 429, {"X-Amzn-ErrorType": "ThrottlingException:http://x/"}, b'{"Message":"slow down"}',
     ErrorKind.UPSTREAM_RATE_LIMITED, ["slow down"], None),
    ("no type: status decides", 502, {}, b"<html>Bad Gateway</html>", ErrorKind.UPSTREAM_ERROR, ["Bad Gateway"], None),
    ("unknown type: status decides", 429, etype("SomethingNewException"), b'{"message":"new"}',
     ErrorKind.UPSTREAM_RATE_LIMITED, ["SomethingNewException"], None),
]


@pytest.mark.parametrize("name,status,headers,body,kind,words,retry_after", CLASSIFY)
def test_classify_error(name: str, status: int, headers: dict[str, str], body: bytes, kind: ErrorKind,
                        words: list[str], retry_after: float | None) -> None:
    err = PROVIDER.classify_error(status, headers, body)
    assert err.kind is kind
    for w in words:
        assert w in err.message
    assert err.retry_after == retry_after
    assert err.upstream_status == status


def test_error_kinds_map_to_the_issue_statuses() -> None:
    """The statuses and scheduler actions the issue asks for, through the error table."""
    got = {name: (ERROR_TABLE[PROVIDER.classify_error(s, etype(name), b'{"message":"m"}').kind].status,
                  ERROR_TABLE[PROVIDER.classify_error(s, etype(name), b'{"message":"m"}').kind].action)
           for name, s in [("ThrottlingException", 429), ("AccessDeniedException", 403),
                           ("ValidationException", 400), ("ModelNotReadyException", 429),
                           ("ServiceUnavailableException", 503), ("InvalidSignatureException", 403)]}
    assert got == {
        "ThrottlingException": (429, Action.COOLDOWN),
        "AccessDeniedException": (502, Action.AUTH),
        "ValidationException": (400, Action.NONE),
        "ModelNotReadyException": (503, Action.COOLDOWN),
        "ServiceUnavailableException": (503, Action.COOLDOWN),
        "InvalidSignatureException": (502, Action.AUTH),
    }


# --- stream protocol ------------------------------------------------------------

def ev(event: str, payload: Any) -> bytes:
    raw = payload if isinstance(payload, bytes) else jsonutil.dumpb(payload)
    return make.encode_frame([(":event-type", event), (":content-type", "application/json"),
                              (":message-type", "event")], raw)


def exc(name: str, payload: Any) -> bytes:
    raw = payload if isinstance(payload, bytes) else jsonutil.dumpb(payload)
    return make.encode_frame([(":exception-type", name), (":content-type", "application/json"),
                              (":message-type", "exception")], raw)


START = ev("messageStart", {"role": "assistant"})
TEXT = ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}})
STOP = ev("messageStop", {"stopReason": "end_turn"})
META = ev("metadata", {"usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}, "metrics": {"latencyMs": 5}})
TOOL = ev("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}})


def run(frames: list[bytes]) -> tuple[list[dict[str, Any]], ProxyError | None]:
    decoder, translator = EventStreamDecoder(), BedrockStream(StreamContext(id="c", created=1, model="m"))
    out: list[dict[str, Any]] = []
    try:
        for msg in decoder.feed(b"".join(frames)) + decoder.finish():
            out.extend(translator.feed(msg))
        out.extend(translator.finish())
    except ProxyError as err:
        # a failed translator stays failed
        with pytest.raises(ProxyError):
            translator.feed(EventStreamDecoder().feed(META)[0])
        return out, err
    return out, None


# (name, frames, kind of the error (None: finishes), words in its message)
PROTOCOL = [
    ("complete", [START, TEXT, STOP, META], None, []),
    ("delta before messageStart", [TEXT], ErrorKind.UPSTREAM_BAD_RESPONSE, ["contentBlockDelta", "start"]),
    ("two messageStarts", [START, START], ErrorKind.UPSTREAM_BAD_RESPONSE, ["messageStart"]),
    ("metadata before messageStop", [START, TEXT, META], ErrorKind.UPSTREAM_BAD_RESPONSE, ["metadata"]),
    ("event after metadata", [START, STOP, META, TEXT], ErrorKind.UPSTREAM_BAD_RESPONSE, ["done"]),
    ("unknown event type", [START, ev("somethingNew", {})], ErrorKind.UPSTREAM_BAD_RESPONSE, ["somethingNew"]),
    ("unknown delta kind", [START, ev("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"citation": {}}})],
     ErrorKind.UPSTREAM_BAD_RESPONSE, ["citation"]),
    ("tool input for a text block", [START, TEXT, ev("contentBlockDelta", {"contentBlockIndex": 0,
                                                                           "delta": {"toolUse": {"input": "{"}}})],
     ErrorKind.UPSTREAM_BAD_RESPONSE, ["toolUse"]),
    ("text in a tool block", [START, TOOL, ev("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "x"}})],
     ErrorKind.UPSTREAM_BAD_RESPONSE, ["text in tool block"]),
    ("delta after its block stopped", [START, TEXT, ev("contentBlockStop", {"contentBlockIndex": 0}), TEXT],
     ErrorKind.UPSTREAM_BAD_RESPONSE, ["after it stopped"]),
    ("image block start", [START, ev("contentBlockStart", {"contentBlockIndex": 0, "start": {"image": {"format": "png"}}})],
     ErrorKind.UPSTREAM_BAD_RESPONSE, ["image"]),
    ("payload not JSON", [START, ev("contentBlockDelta", b"{not json")], ErrorKind.UPSTREAM_BAD_RESPONSE, ["not JSON"]),
    ("field missing", [START, ev("contentBlockDelta", {"delta": {"text": "x"}})], ErrorKind.UPSTREAM_BAD_RESPONSE,
     ["malformed contentBlockDelta"]),
    ("malformed tool use", [START, TOOL, ev("messageStop", {"stopReason": "malformed_tool_use"})],
     ErrorKind.UPSTREAM_BAD_RESPONSE, ["malformed_tool_use"]),
    ("unknown stop reason", [START, ev("messageStop", {"stopReason": "bored"})], ErrorKind.UPSTREAM_BAD_RESPONSE,
     ["bored"]),
    ("ends before messageStart", [], ErrorKind.UPSTREAM_STREAM_CUT, ["no messageStart"]),
    ("ends before messageStop", [START, TEXT], ErrorKind.UPSTREAM_STREAM_CUT, ["no messageStop"]),
    ("ends before metadata", [START, TEXT, STOP], ErrorKind.UPSTREAM_STREAM_CUT, ["no metadata"]),
    ("error message type", [START, make.encode_frame([(":message-type", "error"), (":error-code", "InternalFailure"),
                                                      (":error-message", "boom")], b"")],
     ErrorKind.UPSTREAM_ERROR, ["InternalFailure", "boom"]),
    ("throttlingException", [START, exc("throttlingException", {"message": "slow down"})],
     ErrorKind.UPSTREAM_RATE_LIMITED, ["slow down"]),
    ("validationException", [START, exc("validationException", {"message": "bad"})],
     ErrorKind.UPSTREAM_BAD_REQUEST, ["bad"]),
    ("serviceUnavailableException", [START, exc("serviceUnavailableException", {"message": "busy"})],
     ErrorKind.UPSTREAM_OVERLOADED, ["busy"]),
    ("internalServerException", [START, TEXT, exc("internalServerException", {"message": "oops"})],
     ErrorKind.UPSTREAM_ERROR, ["oops"]),
    ("modelStreamErrorException", [exc("modelStreamErrorException", {"message": "model broke", "originalStatusCode": 500})],
     ErrorKind.UPSTREAM_ERROR, ["model broke"]),
    ("exception with a plain-text body", [exc("throttlingException", b"rate exceeded")],
     ErrorKind.UPSTREAM_RATE_LIMITED, ["rate exceeded"]),
]


@pytest.mark.parametrize("name,frames,kind,words", PROTOCOL)
def test_stream_protocol(name: str, frames: list[bytes], kind: ErrorKind | None, words: list[str]) -> None:
    out, err = run(frames)
    if kind is None:
        assert err is None
        assert [c["choices"][0]["finish_reason"] for c in out if c["choices"]][-1] == "stop"
        return
    assert err is not None
    assert err.kind is kind
    for w in words:
        assert w in err.message


def test_exception_frame_after_content_keeps_the_content() -> None:
    out, err = run([START, TEXT, exc("throttlingException", {"message": "slow down"})])
    assert [c["choices"][0]["delta"] for c in out] == [{"role": "assistant", "content": ""}, {"content": "hi"}]
    assert err is not None and err.kind is ErrorKind.UPSTREAM_RATE_LIMITED
