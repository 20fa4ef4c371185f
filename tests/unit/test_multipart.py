"""multipart/form-data uploads: a `payload` JSON field plus files become one chat request."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from tornado.httputil import parse_body_arguments

from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.multipart import payload_from_multipart
from tornado_proxy.pipeline.validation import validate_body

# A 1x1 PNG; the other images only need their signature bytes to be recognised.
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04"
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00"
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"


def payload(**extra: Any) -> bytes:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Summarise these."}]}
    body.update(extra)
    return json.dumps(body).encode()


def data_uri(media_type: str, raw: bytes) -> str:
    return f"data:{media_type};base64," + base64.b64encode(raw).decode()


def text(s: str) -> dict[str, Any]:
    return {"type": "text", "text": s}


def image(media_type: str, raw: bytes) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": data_uri(media_type, raw)}}


# (name, fields, files, expected messages of the built request)
CASES: list[tuple[str, dict[str, list[bytes]], dict[str, Any], list[dict[str, Any]]]] = [
    ("payload_only", {"payload": [payload()]}, {},
     [{"role": "user", "content": "Summarise these."}]),
    ("text_file", {"payload": [payload()]}, {"file": [("notes.txt", "text/plain", b"buy milk\n")]},
     [{"role": "user", "content": [text("Summarise these."), text("notes.txt:\nbuy milk\n")]}]),
    ("image_and_text_in_order", {"payload": [payload()]},
     {"file": [("a.png", "image/png", PNG), ("b.md", "text/markdown", b"# B")]},
     [{"role": "user", "content": [text("Summarise these."), image("image/png", PNG), text("b.md:\n# B")]}]),
    ("several_fields", {"payload": [payload()]},
     {"image": [("photo.jpg", "image/jpeg", JPEG)], "doc": [("a.json", "application/json", b'{"a": 1}')]},
     [{"role": "user", "content": [text("Summarise these."), image("image/jpeg", JPEG), text('a.json:\n{"a": 1}')]}]),
    ("image_type_from_the_bytes", {"payload": [payload()]}, {"file": [("photo.png", "image/png", JPEG)]},
     [{"role": "user", "content": [text("Summarise these."), image("image/jpeg", JPEG)]}]),
    ("unlabelled_image", {"payload": [payload()]}, {"file": [("blob", "application/octet-stream", GIF)]},
     [{"role": "user", "content": [text("Summarise these."), image("image/gif", GIF)]}]),
    ("webp", {"payload": [payload()]}, {"file": [("x.webp", "image/webp", WEBP)]},
     [{"role": "user", "content": [text("Summarise these."), image("image/webp", WEBP)]}]),
    ("source_file_labelled_octet_stream", {"payload": [payload()]},
     {"file": [("main.py", "application/octet-stream", b"print('hi')\n")]},
     [{"role": "user", "content": [text("Summarise these."), text("main.py:\nprint('hi')\n")]}]),
    ("typescript_labelled_video", {"payload": [payload()]}, {"file": [("app.ts", "video/mp2t", b"let x = 1;")]},
     [{"role": "user", "content": [text("Summarise these."), text("app.ts:\nlet x = 1;")]}]),
    ("unlabelled_utf8_text", {"payload": [payload()]}, {"file": [("LICENSE", "", "Café ©".encode())]},
     [{"role": "user", "content": [text("Summarise these."), text("LICENSE:\nCafé ©")]}]),
    ("declared_charset", {"payload": [payload()]},
     {"file": [("old.txt", "text/plain; charset=ISO-8859-1", "déjà".encode("latin-1"))]},
     [{"role": "user", "content": [text("Summarise these."), text("old.txt:\ndéjà")]}]),
    ("utf8_bom_dropped", {"payload": [payload()]}, {"file": [("bom.csv", "text/csv", b"\xef\xbb\xbfa,b\n")]},
     [{"role": "user", "content": [text("Summarise these."), text("bom.csv:\na,b\n")]}]),
    ("parts_list_is_extended", {"payload": [payload(messages=[{"role": "user", "content": [text("Look:")]}])]},
     {"file": [("a.txt", "text/plain", b"A")]},
     [{"role": "user", "content": [text("Look:"), text("a.txt:\nA")]}]),
    ("last_user_message_not_the_assistant_prefill",
     {"payload": [payload(messages=[{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                                    {"role": "user", "content": "second"}, {"role": "assistant", "content": "Sure:"}])]},
     {"file": [("a.txt", "text/plain", b"A")]},
     [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
      {"role": "user", "content": [text("second"), text("a.txt:\nA")]}, {"role": "assistant", "content": "Sure:"}]),
    ("no_user_message_yet", {"payload": [payload(messages=[{"role": "system", "content": "Be brief."}])]},
     {"file": [("a.txt", "text/plain", b"A")]},
     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [text("a.txt:\nA")]}]),
    ("payload_sent_as_a_file", {}, {"payload": [("request.json", "application/json", payload())],
                                    "file": [("a.txt", "text/plain", b"A")]},
     [{"role": "user", "content": [text("Summarise these."), text("a.txt:\nA")]}]),
]


@pytest.mark.parametrize("name,fields,files,messages", CASES, ids=[c[0] for c in CASES])
def test_payload_and_files_become_one_request(name: str, fields: dict[str, list[bytes]], files: dict[str, Any],
                                              messages: list[dict[str, Any]]) -> None:
    body = payload_from_multipart(fields, files)
    assert body == {"model": "gpt-4o", "messages": messages}
    validate_body("chat_completions.request.v1", body)


def test_other_payload_parameters_are_kept() -> None:
    body = payload_from_multipart({"payload": [payload(stream=True, temperature=0.2)]},
                                  {"f": [("a.txt", "text/plain", b"A")]})
    assert body["stream"] is True and body["temperature"] == 0.2


# (name, fields, files, kind, param, words the message must contain)
ERRORS: list[tuple[str, dict[str, list[bytes]], dict[str, Any], ErrorKind, str, list[str]]] = [
    ("missing_payload", {}, {"file": [("a.txt", "text/plain", b"A")]}, ErrorKind.INVALID_REQUEST, "payload",
     ["'payload' field"]),
    ("payload_twice", {"payload": [payload(), payload()]}, {}, ErrorKind.INVALID_REQUEST, "payload", ["2 times"]),
    ("payload_field_and_file", {"payload": [payload()]}, {"payload": [("r.json", "application/json", payload())]},
     ErrorKind.INVALID_REQUEST, "payload", ["2 times"]),
    ("invalid_json", {"payload": [b'{"model": "m", "messages": [}']}, {}, ErrorKind.INVALID_JSON, "payload",
     ["not valid JSON"]),
    ("payload_not_utf8", {"payload": [b'{"model": "\xff"}']}, {}, ErrorKind.INVALID_JSON, "payload", ["not valid JSON"]),
    ("payload_not_object", {"payload": [b"[1, 2]"]}, {}, ErrorKind.INVALID_REQUEST, "payload", ["JSON object"]),
    ("unknown_form_field", {"payload": [payload()], "model": [b"gpt-4o"]}, {}, ErrorKind.INVALID_REQUEST, "model",
     ["Unknown form field 'model'"]),
    ("text_file_not_utf8", {"payload": [payload()]}, {"file": [("notes.txt", "text/plain", b"caf\xe9 au lait")]},
     ErrorKind.INVALID_REQUEST, "file", ["'notes.txt'", "not valid UTF-8", "offset 3"]),
    ("unknown_charset", {"payload": [payload()]}, {"file": [("a.txt", "text/plain; charset=klingon", b"A")]},
     ErrorKind.INVALID_REQUEST, "file", ["'a.txt'", "klingon"]),
    ("pdf", {"payload": [payload()]}, {"doc": [("report.pdf", "application/pdf", PDF)]}, ErrorKind.UNSUPPORTED, "doc",
     ["'report.pdf'", "application/pdf", "text file"]),
    ("unlabelled_binary", {"payload": [payload()]}, {"file": [("blob.bin", "application/octet-stream", b"\x00\x01\x02")]},
     ErrorKind.UNSUPPORTED, "file", ["'blob.bin'"]),
    ("fake_png", {"payload": [payload()]}, {"file": [("x.png", "image/png", b"not really a png")]},
     ErrorKind.UNSUPPORTED, "file", ["'x.png'", "PNG, JPEG, GIF or WebP"]),
    ("bmp", {"payload": [payload()]}, {"file": [("x.bmp", "image/bmp", b"BM\x1e\x00\x00\x00")]},
     ErrorKind.UNSUPPORTED, "file", ["'x.bmp'", "image/bmp"]),
    ("files_without_messages", {"payload": [b'{"model": "m"}']}, {"file": [("a.txt", "text/plain", b"A")]},
     ErrorKind.INVALID_REQUEST, "messages", ["'messages'"]),
    ("messages_not_a_list", {"payload": [b'{"model": "m", "messages": "hi"}']}, {"file": [("a.txt", "text/plain", b"A")]},
     ErrorKind.INVALID_REQUEST, "messages", ["expected an array"]),
    ("user_content_of_bad_type", {"payload": [b'{"model": "m", "messages": [{"role": "user", "content": 5}]}']},
     {"file": [("a.txt", "text/plain", b"A")]}, ErrorKind.INVALID_REQUEST, "messages[0].content", ["string or an array"]),
]


@pytest.mark.parametrize("name,fields,files,kind,param,words", ERRORS, ids=[c[0] for c in ERRORS])
def test_bad_uploads_are_refused_naming_the_problem(name: str, fields: dict[str, list[bytes]], files: dict[str, Any],
                                                    kind: ErrorKind, param: str, words: list[str]) -> None:
    with pytest.raises(ProxyError) as info:
        payload_from_multipart(fields, files)
    assert info.value.kind is kind and info.value.param == param
    assert info.value.status == 400
    for w in words:
        assert w in info.value.message


def test_inputs_are_not_modified() -> None:
    files = {"payload": [("r.json", "application/json", payload())], "f": [("a.txt", "text/plain", b"A")]}
    before = repr(files)
    payload_from_multipart({}, files)
    assert repr(files) == before


def _form(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = "XyZzY") -> tuple[str, bytes]:
    out = b""
    for name, filename, ctype, body in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + body + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", out


def test_a_form_parsed_by_tornado() -> None:
    # What the chat handler does: tornado parses the form, the files go in as (filename, type, body).
    ctype, raw = _form([("payload", None, None, payload()),
                        ("files", "notes.txt", "text/plain", b"line 1\r\nline 2"),
                        ("files", "dot.png", "image/png", PNG)])
    args: dict[str, list[bytes]] = {}
    files: dict[str, Any] = {}
    parse_body_arguments(ctype, raw, args, files)
    flat = {k: [(f.filename, f.content_type, f.body) for f in v] for k, v in files.items()}
    body = payload_from_multipart(args, flat)
    assert body["messages"] == [{"role": "user", "content": [
        text("Summarise these."), text("notes.txt:\nline 1\r\nline 2"), image("image/png", PNG)]}]
    validate_body("chat_completions.request.v1", body)
