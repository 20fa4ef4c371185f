"""End to end: request validation, multipart uploads and /openapi.json on the real gateway.

What the gateway answers is checked against the schemas it publishes: a client
validating with them must never reject a real answer.
"""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Reply, fixture_bytes, openai_provider, simple_config
from tornado_proxy.pipeline.validation import is_valid

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
KEY = "test-proxy-key-1"


def config(up: FakeUpstream, **server: Any) -> dict[str, Any]:
    return simple_config(
        [openai_provider(up, timeouts={"connect": 2, "first_byte": 5, "idle": 5}), {"name": "echo", "type": "echo"}],
        [{"id": "my-model", "provider": "up", "upstream_model": "gpt-4o-mini"},
         {"id": "echo", "provider": "echo", "upstream_model": "echo"}], **server)


def post(url: str, body: bytes, ctype: str, key: str | None = KEY) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": ctype}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def form(parts: list[tuple[str, str | None, str | None, bytes]]) -> tuple[str, bytes]:
    boundary = "tornado-proxy-test-boundary"
    out = b""
    for name, filename, ctype, body in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + body + b"\r\n"
    return f"multipart/form-data; boundary={boundary}", out + f"--{boundary}--\r\n".encode()


# (name, request body, param the 400 names)
VIOLATIONS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown_role", {"model": "my-model", "messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role"),
    ("bad_part_type", {"model": "my-model", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "messages[0].content[0].type"),
    ("temperature", {"model": "my-model", "messages": [{"role": "user", "content": "hi"}], "temperature": 9},
     "temperature"),
    ("tool_arguments", {"model": "my-model", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "c", "content": "x"}]}, "messages[1].tool_calls[0].function.arguments"),
]


@pytest.mark.parametrize("name,body,param", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_schema_violation_is_a_400_naming_the_field(harness: LoopThread, name: str, body: dict[str, Any],
                                                   param: str) -> None:
    up = harness.upstream()
    gw = harness.gateway(config(up, access_keys=[KEY]))
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, timeout=20)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(**body)
    assert info.value.status_code == 400 and info.value.param == param
    assert param in info.value.message
    assert is_valid("error.v1", info.value.response.json())
    assert up.requests == []  # never forwarded


def test_multipart_upload_reaches_the_upstream_as_parts(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json")))
    gw = harness.gateway(config(up, access_keys=[KEY]))
    payload = {"model": "my-model", "messages": [{"role": "user", "content": "What are these?"}]}
    ctype, raw = form([("payload", None, "application/json", json.dumps(payload).encode()),
                       ("file", "notes.md", "text/markdown", "# Notes\nCafé".encode()),
                       ("file", "dot.png", "image/png", PNG)])
    status, _, body = post(gw.url + "/v1/chat/completions", raw, ctype)
    assert status == 200, body
    assert is_valid("chat_completions.response.v1", json.loads(body))
    sent = up.requests[0].json()
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What are these?"},
        {"type": "text", "text": "notes.md:\n# Notes\nCafé"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}}]}]


@pytest.mark.parametrize("name,parts,param", [
    ("no_payload", [("file", "a.txt", "text/plain", b"A")], "payload"),
    ("binary_file", [("payload", None, None, b'{"model": "my-model", "messages": [{"role": "user", "content": "x"}]}'),
                     ("file", "a.pdf", "application/pdf", b"%PDF-1.7\n\x00\x01")], "file"),
    ("payload_violates_schema", [("payload", None, None, b'{"model": "my-model", "messages": []}')], "messages"),
])
def test_bad_multipart_upload_is_a_400(harness: LoopThread, name: str, parts: list[Any], param: str) -> None:
    up = harness.upstream()
    gw = harness.gateway(config(up))
    ctype, raw = form(parts)
    status, _, body = post(gw.url + "/v1/chat/completions", raw, ctype)
    err = json.loads(body)
    assert status == 400 and err["error"]["param"] == param
    assert is_valid("error.v1", err)
    assert up.requests == []


def test_answers_match_the_published_schemas(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway(config(up))
    msgs = [{"role": "user", "content": "one two three"}]
    status, _, body = post(gw.url + "/v1/chat/completions", json.dumps({"model": "echo", "messages": msgs}).encode(),
                           "application/json", key=None)
    assert status == 200 and is_valid("chat_completions.response.v1", json.loads(body))

    stream = {"model": "echo", "messages": msgs, "stream": True, "stream_options": {"include_usage": True}}
    status, headers, body = post(gw.url + "/v1/chat/completions", json.dumps(stream).encode(), "application/json",
                                 key=None)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [line[len(b"data: "):] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]" and len(events) > 2
    for data in events[:-1]:
        assert is_valid("chat_completions.chunk.v1", json.loads(data)), data

    status, listing = get(gw.url + "/v1/models")
    assert status == 200 and is_valid("models.list.v1", json.loads(listing))


def test_openapi_document_is_served_without_a_key(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway(config(up, access_keys=[KEY]))
    status, body = get(gw.url + "/openapi.json")
    assert status == 200
    doc = json.loads(body)
    assert doc["openapi"] == "3.1.0"
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionsRequestV1"}
    assert "multipart/form-data" in chat["requestBody"]["content"]
    # the served document is the builder's output for the real route table (whose output
    # tests/unit/test_openapi.py checks with openapi-spec-validator); its references all resolve
    from tornado_proxy.app import ROUTES
    from tornado_proxy.pipeline.openapi import build_openapi

    assert doc == json.loads(json.dumps(build_openapi([(r.openapi_path, m, meta) for r in ROUTES
                                                       for m, meta in r.methods.items()])))
    for ref in _refs(doc):
        node: Any = doc
        for token in ref[2:].split("/"):
            node = node[token]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []
