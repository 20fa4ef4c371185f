"""Bad input on every client route: a 4xx in that route's own error shape, naming the field.

One table: (name, method, path, headers, body, status, error type, field).  Each case
is sent over a raw socket (http.client) to the real gateway in front of fake OpenAI,
Anthropic and Gemini upstreams.  The answer must have the status, the client API's
shape (OpenAI ``{"error": {type, param}}``, Anthropic ``{"type": "error", "error":
{type}}``, Google ``{"error": {code, status}}``) and an error type, and its message
must name the field; a 405 carries ``Allow``; no upstream sees the request; and no
ERROR is logged (the suite's autouse check).
"""
from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import pytest

from tests.e2e.harness import GatewayHandle, LoopThread, Reply, fixture_bytes

KEY = "gw-access-key"
ADMIN = "gw-admin-token"
LIMIT = 1 << 20  # server.max_body_bytes
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT, MESSAGES, COUNT = "/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"
RESPONSES, EMBEDDINGS, GEMINI = "/v1/responses", "/v1/embeddings", "/v1beta/models/m-g:generateContent"
SUR = "\\ud800"  # a lone surrogate, as a JSON escape


def api_of(path: str) -> str:
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1beta"):
        return "gemini"
    return "openai"


def deep(levels: int, leaf: str = "1") -> str:
    return '{"a":' * levels + leaf + "}" * levels


def deep_schema(levels: int) -> str:
    """A JSON Schema ``levels`` objects deep, as JSON text (json.dumps would recurse too)."""
    return '{"type": "object", "properties": {"a": ' * levels + '{"type": "string"}' + "}}" * levels


def exploding_schema(n: int = 20) -> dict[str, Any]:
    """Each definition uses the next twice: 2**n subschemas once the $refs are inlined."""
    defs: dict[str, Any] = {f"d{n}": {"type": "string"}}
    for i in range(n):
        ref = {"$ref": f"#/$defs/d{i + 1}"}
        defs[f"d{i}"] = {"type": "object", "properties": {"x": ref, "y": ref}}
    return {"$ref": "#/$defs/d0", "$defs": defs}


def chat(model: str = "m-o", **extra: Any) -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def with_tool(model: str, parameters: str) -> str:
    """A chat request to ``model`` with one tool whose parameters are the JSON text given."""
    return chat(model)[:-1] + ', "tools": [{"type": "function", "function": {"name": "f", "parameters": ' \
        + parameters + "}}]}"


B = "b0undary"
PAYLOAD = b'Content-Disposition: form-data; name="payload"\r\n\r\n' + chat("echo").encode()


def form(*parts: bytes, final: bool = True) -> bytes:
    out = b"".join(b"--" + B.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    return out + (b"--" + B.encode() + b"--\r\n" if final else b"")


def text_file(disposition: bytes, ctype: bytes = b"text/plain", body: bytes = b"abc") -> bytes:
    return b"Content-Disposition: form-data; name=\"f\"; " + disposition + b"\r\nContent-Type: " + ctype \
        + b"\r\n\r\n" + body


FORM = {"Content-Type": f"multipart/form-data; boundary={B}"}

# (name, method, path, extra headers, body, status, error type, field the message names)
CASES: list[tuple[str, str, str, dict[str, str], bytes | str, int, str, str | None]] = [
    # -- bodies that are not JSON, on every JSON route
    *[(f"not_json{path}", "POST", path, {}, "{bad", 400,
       "INVALID_ARGUMENT" if api_of(path) == "gemini" else "invalid_request_error", None)
      for path in (CHAT, "/chat/completions", MESSAGES, COUNT, RESPONSES, EMBEDDINGS, GEMINI)],
    *[(f"empty{path}", "POST", path, {}, "", 400,
       "INVALID_ARGUMENT" if api_of(path) == "gemini" else "invalid_request_error", None)
      for path in (CHAT, MESSAGES, COUNT, RESPONSES, EMBEDDINGS, GEMINI)],
    # -- a lone surrogate: a str no upstream can be sent (was a 500 on every route)
    ("surrogate_chat_openai_up", "POST", CHAT, {}, chat(messages=None).replace(
        '"messages": null', f'"messages": [{{"role": "user", "content": "{SUR}"}}]'),
     400, "invalid_request_error", "messages[0].content"),
    ("surrogate_chat_anthropic_up", "POST", CHAT, {},
     f'{{"model": "m-a", "messages": [{{"role": "user", "content": "x{SUR}y"}}]}}',
     400, "invalid_request_error", "messages[0].content"),
    ("surrogate_chat_echo", "POST", CHAT, {},
     f'{{"model": "echo", "messages": [{{"role": "user", "content": "{SUR}"}}]}}',
     400, "invalid_request_error", "messages[0].content"),
    ("surrogate_in_a_key", "POST", CHAT, {},
     f'{{"model": "m-o", "messages": [{{"role": "user", "content": "hi"}}], "metadata": {{"{SUR}": "v"}}}}',
     400, "invalid_request_error", "metadata"),
    ("surrogate_messages_anthropic_up", "POST", MESSAGES, {},
     f'{{"model": "m-a", "max_tokens": 8, "messages": [{{"role": "user", "content": "{SUR}"}}]}}',
     400, "invalid_request_error", "messages[0].content"),
    ("surrogate_messages_gemini_up", "POST", MESSAGES, {},
     f'{{"model": "m-g", "max_tokens": 8, "system": "{SUR}", "messages": [{{"role": "user", "content": "hi"}}]}}',
     400, "invalid_request_error", "system"),
    ("surrogate_count_tokens", "POST", COUNT, {},
     f'{{"model": "m-o", "messages": [{{"role": "user", "content": [{{"type": "text", "text": "{SUR}"}}]}}]}}',
     400, "invalid_request_error", "messages[0].content[0].text"),
    ("surrogate_responses", "POST", RESPONSES, {}, f'{{"model": "m-g", "input": "{SUR}"}}',
     400, "invalid_request_error", "input"),
    ("surrogate_embeddings", "POST", EMBEDDINGS, {}, f'{{"model": "m-g", "input": ["ok", "{SUR}"]}}',
     400, "invalid_request_error", "input[1]"),
    ("surrogate_gemini_native", "POST", GEMINI, {},
     f'{{"contents": [{{"role": "user", "parts": [{{"text": "{SUR}"}}]}}]}}',
     400, "INVALID_ARGUMENT", "contents[0].parts[0].text"),
    # -- nesting: a 400 at parse time, before any walker recurses
    ("metadata_1000_deep_chat", "POST", CHAT, {},
     chat()[:-1] + ', "metadata": ' + deep(1000) + "}", 400, "invalid_request_error", "metadata.a.a"),
    ("metadata_1000_deep_messages", "POST", MESSAGES, {},
     '{"model": "m-a", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "metadata": '
     + deep(1000) + "}", 400, "invalid_request_error", "metadata.a.a"),
    ("metadata_1000_deep_count_tokens", "POST", COUNT, {},
     '{"model": "m-g", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + deep(1000) + "}",
     400, "invalid_request_error", "metadata.a.a"),
    ("nested_2000_arrays_responses", "POST", RESPONSES, {},
     '{"model": "m-o", "input": ' + "[" * 2000 + "]" * 2000 + "}", 400, "invalid_request_error", None),
    ("deep_gemini_native", "POST", GEMINI, {},
     '{"contents": [], "generationConfig": ' + deep(300) + "}", 400, "INVALID_ARGUMENT", "generationConfig.a"),
    ("schema_500_levels_to_gemini", "POST", CHAT, {}, with_tool("m-g", deep_schema(500)),
     400, "invalid_request_error", "tools[0].function.parameters"),
    ("schema_500_levels_messages_to_gemini", "POST", MESSAGES, {},
     '{"model": "m-g", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], '
     '"tools": [{"name": "f", "input_schema": ' + deep_schema(500) + "}]}",
     400, "invalid_request_error", "tools[0].input_schema"),
    # within the parse limit, deeper than Gemini's Schema cleaner goes
    ("schema_55_levels_to_gemini", "POST", CHAT, {}, with_tool("m-g", deep_schema(55)),
     400, "invalid_request_error", "tools[0].function.parameters.properties.a"),
    ("schema_refs_expanding_2_to_the_20", "POST", CHAT, {}, with_tool("m-g", json.dumps(exploding_schema())),
     400, "invalid_request_error", "tools[0].function.parameters"),
    # -- malformed multipart/form-data
    ("multipart_no_boundary", "POST", CHAT, {"Content-Type": "multipart/form-data"}, form(PAYLOAD),
     400, "invalid_request_error", "boundary"),
    ("multipart_no_final_boundary", "POST", CHAT, FORM, form(PAYLOAD, final=False),
     400, "invalid_request_error", "final boundary"),
    ("multipart_part_without_name", "POST", CHAT, FORM,
     form(PAYLOAD, b"Content-Disposition: form-data\r\n\r\nabc"), 400, "invalid_request_error", "no name"),
    ("multipart_2000_files", "POST", CHAT, FORM,
     form(PAYLOAD, *[text_file(b'filename="a%d.txt"' % i) for i in range(2000)]),
     400, "invalid_request_error", "more than 100 parts"),
    ("multipart_crlf_in_quoted_filename", "POST", CHAT, FORM, form(PAYLOAD, text_file(b'filename="a\r\nb.txt"')),
     400, "invalid_request_error", "'f'"),
    ("multipart_crlf_in_rfc5987_filename", "POST", CHAT, FORM,
     form(PAYLOAD, text_file(b"filename*=UTF-8''a%0D%0Ab.txt")), 400, "invalid_request_error", "'f'"),
    *[(f"multipart_charset_{cs}", "POST", CHAT, FORM,
       form(PAYLOAD, text_file(b'filename="a.txt"', b"text/plain; charset=" + cs.encode())),
       400, "invalid_request_error", cs)
      for cs in ("zlib", "rot13", "undefined", "base64", "unicode_escape", "idna", "utf-7")],
    ("multipart_payload_with_surrogate", "POST", CHAT, FORM,
     form(b'Content-Disposition: form-data; name="payload"\r\n\r\n'
          + f'{{"model": "echo", "messages": [{{"role": "user", "content": "{SUR}"}}]}}'.encode()),
     400, "invalid_request_error", "messages[0].content"),
    ("multipart_on_messages_is_anthropic_shaped", "POST", MESSAGES, {"Content-Type": "multipart/form-data"},
     form(PAYLOAD), 400, "invalid_request_error", "boundary"),
    # -- unknown paths: 404 in the shape of the API the prefix belongs to
    ("unknown_path_openai", "POST", "/v1/chat/completions/x", {}, "{}", 404, "invalid_request_error",
     "/v1/chat/completions/x"),
    ("unknown_path_under_messages", "POST", "/v1/messages/batches", {}, "{}", 404, "not_found_error",
     "/v1/messages/batches"),
    ("unknown_path_under_v1beta", "GET", "/v1beta/files", {}, "", 404, "NOT_FOUND", "/v1beta/files"),
    # -- too large: 413 in the route's shape and words
    ("too_large_chat", "POST", CHAT, {}, " " * (LIMIT + 1), 413, "invalid_request_error", None),
    ("too_large_messages", "POST", MESSAGES, {}, " " * (LIMIT + 1), 413, "request_too_large",
     "Request exceeds the maximum allowed number of bytes."),
    ("too_large_count_tokens", "POST", COUNT, {}, " " * (LIMIT + 1), 413, "request_too_large",
     "Request exceeds the maximum allowed number of bytes."),
    ("too_large_gemini", "POST", GEMINI, {}, " " * (LIMIT + 1), 413, "INVALID_ARGUMENT", None),
]

# (path, a method it does not take, the Allow it must send)
METHODS: list[tuple[str, str, str]] = [
    (CHAT, "GET", "POST, OPTIONS"), ("/chat/completions", "PUT", "POST, OPTIONS"),
    (MESSAGES, "GET", "POST, OPTIONS"), (COUNT, "GET", "POST, OPTIONS"), (RESPONSES, "GET", "POST, OPTIONS"),
    ("/v1/responses/resp_1", "POST", "GET, DELETE, OPTIONS"), (EMBEDDINGS, "GET", "POST, OPTIONS"),
    (GEMINI, "GET", "POST, OPTIONS"), ("/v1beta/models", "POST", "GET, OPTIONS"),
    ("/v1/models", "POST", "GET, OPTIONS"), ("/health", "POST", "GET, HEAD, OPTIONS"),
    ("/health/ready", "DELETE", "GET, HEAD, OPTIONS"), ("/metrics", "POST", "GET, OPTIONS"),
    ("/openapi.json", "PATCH", "GET, OPTIONS"), ("/admin/accounts", "DELETE", "GET, OPTIONS"),
    ("/admin/accounts/o1/enable", "GET", "POST, OPTIONS"),
]
CASES += [(f"405_{method}{path}", method, path, {"Authorization": f"Bearer {ADMIN}"} if path.startswith("/admin")
           else {}, "{}" if method in ("POST", "PUT", "PATCH") else "", 405,
           "INVALID_ARGUMENT" if api_of(path) == "gemini" else "invalid_request_error", method)
          for path, method, _ in METHODS]
ALLOW = {f"405_{m}{p}": allow for p, m, allow in METHODS}

# access keys, in each API's own words
CASES += [
    ("no_key_messages", "POST", MESSAGES, {"Authorization": ""}, "{}", 401, "authentication_error", "x-api-key"),
    ("bad_key_messages", "POST", MESSAGES, {"Authorization": "", "x-api-key": "wrong"}, "{}", 401,
     "authentication_error", "invalid x-api-key"),
    ("bad_key_count_tokens", "POST", COUNT, {"Authorization": "Bearer wrong"}, "{}", 401,
     "authentication_error", "invalid x-api-key"),
    ("no_key_chat", "POST", CHAT, {"Authorization": ""}, "{}", 401, "invalid_request_error", "access key"),
    ("bad_key_gemini", "POST", GEMINI, {"Authorization": "", "x-goog-api-key": "wrong"}, "{}", 401,
     "UNAUTHENTICATED", "API key not valid"),
]


@pytest.fixture
def gateway(harness: LoopThread) -> tuple[GatewayHandle, list[Any]]:
    ups = [harness.upstream() for _ in range(3)]
    ups[0].default = Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json"))
    ups[1].default = Reply(200, {"Content-Type": "application/json"}, fixture_bytes("anthropic/message.json"))
    ups[2].default = Reply(200, {"Content-Type": "application/json"}, fixture_bytes("gemini/text.json"))
    raw = {"server": {"access_keys": [KEY], "admin_token": ADMIN, "max_body_bytes": LIMIT},
           "providers": [
               {"name": "o", "type": "openai", "base_url": ups[0].url + "/v1", "accounts": [{"id": "o1", "api_key": "k1"}]},
               {"name": "a", "type": "anthropic", "base_url": ups[1].url, "accounts": [{"id": "a1", "api_key": "k2"}]},
               {"name": "g", "type": "gemini", "base_url": ups[2].url, "accounts": [{"id": "g1", "api_key": "k3"}]},
               {"name": "echo", "type": "echo"}],
           "models": [{"id": "m-o", "provider": "o"}, {"id": "m-a", "provider": "a"},
                      {"id": "m-g", "provider": "g"}, {"id": "echo", "provider": "echo"}]}
    return harness.gateway(raw), ups


def send(gw: GatewayHandle, method: str, path: str, headers: dict[str, str], body: bytes | str
         ) -> tuple[int, dict[str, str], Any]:
    data = body.encode() if isinstance(body, str) else body
    h = {"Content-Type": "application/json", **AUTH, **headers}
    h = {k: v for k, v in h.items() if v}
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n" \
            + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        # Past the limit the gateway answers from the headers and stops reading: send only
        # the start, as a client whose upload is refused gets no further either.
        sock.sendall(head.encode("latin-1") + (data if len(data) <= LIMIT else data[:65536]))
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        status, hdrs, raw = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        sock.close()
    return status, hdrs, json.loads(raw)


@pytest.mark.parametrize("name,method,path,headers,body,status,etype,field", CASES, ids=[c[0] for c in CASES])
def test_bad_input(gateway: tuple[GatewayHandle, list[Any]], name: str, method: str, path: str,
                   headers: dict[str, str], body: bytes | str, status: int, etype: str, field: str | None) -> None:
    gw, ups = gateway
    got, hdrs, doc = send(gw, method, path, headers, body)
    assert got == status, doc
    assert hdrs["content-type"] == "application/json"
    api = api_of(path)
    if api == "anthropic":
        assert set(doc) == {"type", "error"} and doc["type"] == "error", doc
        assert doc["error"]["type"] == etype, doc
        message = doc["error"]["message"]
    elif api == "gemini":
        assert set(doc) == {"error"} and doc["error"]["code"] == status, doc
        assert doc["error"]["status"] == etype, doc
        message = doc["error"]["message"]
    else:
        assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}, doc
        assert doc["error"]["type"] == etype, doc
        message = doc["error"]["message"]
        if field is not None and status == 400 and not name.startswith("multipart_") or name in (
                "multipart_payload_with_surrogate", "multipart_crlf_in_quoted_filename",
                "multipart_crlf_in_rfc5987_filename"):
            # the JSON path (or the form field) is the param, as OpenAI's 400s carry it
            assert doc["error"]["param"] and (doc["error"]["param"].startswith(field.strip("'"))
                                              or field.strip("'").startswith(doc["error"]["param"])), doc
    if field is not None:
        assert field in message, message
    if status == 405:
        assert hdrs["allow"] == ALLOW[name]
    assert "Traceback" not in message and "internal error" not in message
    assert all(not up.requests for up in ups), "bad input reached an upstream"


# -- the strict form parser still takes what real clients send -------------------

def echo_gateway(harness: LoopThread) -> GatewayHandle:
    return harness.gateway({"providers": [{"name": "echo", "type": "echo"}],
                            "models": [{"id": "echo", "provider": "echo"}]})


def test_forms_from_requests_are_read(harness: LoopThread) -> None:
    import requests

    gw = echo_gateway(harness)
    r = requests.post(gw.url + "/v1/chat/completions", timeout=20,
                      data={"payload": chat("echo")},
                      files=[("file", ("notes.txt", "déjà vu".encode("latin-1"), "text/plain; charset=iso-8859-1")),
                             ("file", ("résumé.md", "# CV".encode(), "text/markdown"))])
    assert r.status_code == 200, r.text
    text = r.json()["choices"][0]["message"]["content"]
    assert "notes.txt:\ndéjà vu" in text and "résumé.md:\n# CV" in text


def test_forms_from_curl_are_read(harness: LoopThread, tmp_path: Any) -> None:
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("no curl")
    gw = echo_gateway(harness)
    (tmp_path / "request.json").write_text(chat("echo"))
    (tmp_path / "a b.txt").write_text("from curl\n")
    out = subprocess.run(["curl", "-sS", "--max-time", "20", gw.url + "/v1/chat/completions",
                          "-F", f"payload=@{tmp_path / 'request.json'};type=application/json",
                          "-F", f"file=@{tmp_path / 'a b.txt'}"], capture_output=True, timeout=30, check=True)
    text = json.loads(out.stdout)["choices"][0]["message"]["content"]
    assert "a b.txt:\nfrom curl\n" in text
