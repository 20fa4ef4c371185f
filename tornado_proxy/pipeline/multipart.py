"""Build a Chat Completions request from a ``multipart/form-data`` upload.

Chat front ends and ``curl -F`` post a form: one ``payload`` field holding the
JSON request, plus files.  The files become content parts of the last user
message, after what the message already says:

* a text file -> ``{"type": "text", "text": "<filename>:\\n<content>"}`` (the
  name goes in so the model can tell several files apart);
* a PNG, JPEG, GIF or WebP image -> ``{"type": "image_url", "image_url":
  {"url": "data:<type>;base64,..."}}``, the type taken from the bytes;
* anything else -> ``ProxyError`` naming the file: no upstream gets bytes it
  would misread, and nothing is dropped silently.

Pure functions, no I/O.  :func:`parse_form` reads the form itself, strictly (a
missing boundary or final boundary, a part without a name, too many parts, a control
character in a filename are each a 400 saying which), rather than through Tornado's
parser, which raises a bare exception for some of these (a 500 here) and, in older
releases, logs and keeps whatever it read.
"""
from __future__ import annotations

import base64
import codecs
import re
import urllib.parse
from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError, bad_body_value

# (filename, content_type, body) of one uploaded file
UploadedFile = tuple[str, str, bytes]

PAYLOAD_FIELD = "payload"

# One chat request does not need more; each part costs a header parse and a content part.
MAX_PARTS = 100
MAX_PART_HEADER_BYTES = 8192

# Charsets a text file may declare: the text encodings of the WHATWG Encoding Standard
# (what browsers send) plus the Unicode forms, by Python codec name.  Python's codec
# registry holds much else that is no charset (zlib, rot13, base64, unicode_escape,
# idna, undefined): decoding with those would raise, or turn backslashes into lone
# surrogates.  UTF-7 is left out as the Encoding Standard does.
_CHARSETS = frozenset(codecs.lookup(n).name for n in (
    "utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be",
    "ascii", "latin-1", "iso-8859-2", "iso-8859-3", "iso-8859-4", "iso-8859-5", "iso-8859-6",
    "iso-8859-7", "iso-8859-8", "iso-8859-10", "iso-8859-13", "iso-8859-14", "iso-8859-15",
    "iso-8859-16", "koi8-r", "koi8-u", "mac-roman", "mac-cyrillic", "cp866", "cp874", "cp1250",
    "cp1251", "cp1252", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258", "gbk",
    "gb2312", "gb18030", "big5", "big5hkscs", "euc-jp", "iso-2022-jp", "shift_jis", "cp932",
    "euc-kr", "cp949"))

# Leading bytes of the image formats every image-capable upstream takes
# (OpenAI, Anthropic, Gemini and Bedrock all accept these four).
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".jpe", ".gif", ".webp", ".bmp", ".tif", ".tiff",
                     ".heic", ".heif", ".avif", ".ico"}

_TEXT_TYPES = {
    "application/json", "application/ld+json", "application/x-ndjson", "application/jsonl",
    "application/xml", "application/javascript", "application/x-javascript",
    "application/ecmascript", "application/typescript", "application/x-typescript",
    "application/yaml", "application/x-yaml", "application/toml", "application/x-toml",
    "application/sql", "application/x-sh", "application/x-shellscript", "application/x-python",
    "application/csv", "application/graphql", "application/x-tex", "application/x-latex",
    "application/x-httpd-php", "application/x-perl", "application/x-ruby",
    "image/svg+xml",
}
_TEXT_SUFFIXES = ("+json", "+xml", "+yaml")
# Browsers label many source files application/octet-stream, and .ts as video/mp2t:
# the extension is the better witness for these.
_TEXT_EXTENSIONS = {
    ".txt", ".text", ".md", ".markdown", ".rst", ".adoc", ".org", ".tex", ".bib", ".log",
    ".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".yaml", ".yml", ".toml", ".ini", ".cfg",
    ".conf", ".properties", ".env", ".xml", ".html", ".htm", ".css", ".scss", ".less", ".svg",
    ".js", ".mjs", ".cjs", ".jsx", ".ts", ".tsx", ".vue", ".svelte", ".py", ".pyi", ".rb",
    ".go", ".rs", ".java", ".kt", ".kts", ".scala", ".groovy", ".gradle", ".c", ".h", ".cc",
    ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".fs", ".swift", ".m", ".mm", ".php", ".pl", ".pm",
    ".lua", ".r", ".jl", ".dart", ".ex", ".exs", ".erl", ".hrl", ".hs", ".ml", ".mli", ".clj",
    ".cljs", ".elm", ".zig", ".nim", ".f90", ".asm", ".s", ".sql", ".sh", ".bash", ".zsh",
    ".fish", ".ps1", ".bat", ".cmd", ".mk", ".cmake", ".dockerfile", ".tf", ".hcl", ".nix",
    ".proto", ".graphql", ".gql", ".diff", ".patch", ".srt", ".vtt", ".ipynb",
}
# "I don't know" labels: look at the bytes instead
_GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream", "application/unknown"}


def payload_from_form(content_type: str, body: bytes) -> dict[str, Any]:
    """The chat request of a ``multipart/form-data`` body (see :func:`parse_form`)."""
    fields, files = parse_form(content_type, body)
    return payload_from_multipart(fields, files)


def _bad_form(message: str, param: str | None = None) -> ProxyError:
    return ProxyError(ErrorKind.INVALID_REQUEST, "Invalid multipart/form-data body: " + message, param=param)


_PARAM = re.compile(r';\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """``form-data; name="a"; filename="b"`` -> ``("form-data", {"name": "a", "filename": "b"})``."""
    head, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for m in _PARAM.finditer(";" + rest):
        key, val = m.group(1).lower(), m.group(2).strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        params.setdefault(key, val)
    return head.strip().lower(), params


def _boundary(content_type: str) -> bytes:
    _, params = _header_params(content_type)
    boundary = params.get("boundary", "")
    if not boundary:
        raise _bad_form("the Content-Type header has no boundary parameter "
                        "(multipart/form-data; boundary=...).")
    if len(boundary) > 70 or not boundary.isascii():
        raise _bad_form("the boundary must be 1 to 70 ASCII characters.")
    return boundary.encode("ascii")


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, list[bytes]], dict[str, list[UploadedFile]]]:
    """Fields and files of a ``multipart/form-data`` body (RFC 7578); ``ProxyError`` if malformed."""
    delimiter = b"\r\n--" + _boundary(content_type)
    # The first delimiter may open the body (no CRLF before it); a preamble is ignored.
    segments = (b"\r\n" + body).split(delimiter, MAX_PARTS + 1)
    fields: dict[str, list[bytes]] = {}
    files: dict[str, list[UploadedFile]] = {}
    for n, segment in enumerate(segments[1:], 1):
        if segment.startswith(b"--"):  # the close delimiter: what follows is an epilogue
            return fields, files
        if n > MAX_PARTS:
            raise _bad_form(f"more than {MAX_PARTS} parts; send at most {MAX_PARTS - 1} files with the payload.")
        padding, crlf, part = segment.partition(b"\r\n")  # after the delimiter: blanks, then CRLF
        if not crlf or padding.strip(b" \t"):
            raise _bad_form(f"part {n}: the boundary line is not followed by a line break.")
        _read_part(n, part, fields, files)
    raise _bad_form("no final boundary (--" + delimiter[4:].decode("ascii") + "--): the body is cut short.")


def _read_part(n: int, part: bytes, fields: dict[str, list[bytes]], files: dict[str, list[UploadedFile]]) -> None:
    if part.startswith(b"\r\n"):
        head, content = b"", part[2:]
    else:
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            raise _bad_form(f"part {n} has no blank line between its headers and its content.")
    if len(head) > MAX_PART_HEADER_BYTES:
        raise _bad_form(f"part {n}: headers longer than {MAX_PART_HEADER_BYTES} bytes.")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_form(f"part {n}: its headers are not UTF-8.") from None
    headers: dict[str, str] = {}
    for line in text.split("\r\n") if text else ():
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            # where a filename held a CR LF, its header line broke in two
            field = _header_params(headers.get("content-disposition", ""))[1].get("name") or None
            raise _bad_form(f"part {n}{f' (field {_quote(field)})' if field else ''}: malformed header line "
                            f"{_quote(line)}; a header value (a filename) cannot hold a line break.", field)
        headers.setdefault(name.strip().lower(), value.strip())
    disposition, params = _header_params(headers.get("content-disposition", ""))
    if disposition != "form-data":
        raise _bad_form(f"part {n} has no 'Content-Disposition: form-data' header.")
    name = params.get("name", "")
    if not name:
        raise _bad_form(f"part {n} has no name (Content-Disposition: form-data; name=\"...\").")
    if _has_control(name):
        raise _bad_form(f"part {n}: the field name holds a control character.")
    filename = params.get("filename")
    if "filename*" in params:  # RFC 5987: charset'lang'percent-encoded
        charset, _, rest = params["filename*"].partition("'")
        _, _, encoded = rest.partition("'")
        try:
            filename = urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            raise _bad_form(f"the filename* of field '{name}' is not valid {charset or 'UTF-8'}.", name) from None
    if filename is None:
        fields.setdefault(name, []).append(content)
        return
    if _has_control(filename):
        raise _bad_form(f"the filename of field '{name}' holds a control character (CR, LF, NUL...): "
                        f"{_quote(filename)}.", name)
    ctype = headers.get("content-type", "application/octet-stream")
    files.setdefault(name, []).append((filename, ctype, content))


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in text)


def _quote(text: str, limit: int = 60) -> str:
    """A client string shown in a message: control characters escaped, cut short."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return "'" + (shown if len(shown) <= limit else shown[:limit] + "...") + "'"


def payload_from_multipart(fields: dict[str, list[bytes]],
                           files: dict[str, list[UploadedFile]]) -> dict[str, Any]:
    """The chat request of a form upload: ``payload`` plus the files as parts of the last user message."""
    files = dict(files)
    raw = _payload_bytes(fields, files)
    unknown = [name for name in fields if name != PAYLOAD_FIELD]
    if unknown:
        raise ProxyError(ErrorKind.INVALID_REQUEST,
                         f"Unknown form field '{unknown[0]}': put request parameters in the "
                         f"'{PAYLOAD_FIELD}' JSON field.", param=unknown[0])
    try:
        payload = jsonutil.loads_request(raw)
    except jsonutil.BadRequestJSON as e:  # its path is the request's: the payload is the request
        raise bad_body_value("openai", e.path, e.reason, str(e)) from None
    except ValueError as e:  # ujson's JSONDecodeError, and bad UTF-8
        raise ProxyError(ErrorKind.INVALID_JSON, f"The '{PAYLOAD_FIELD}' form field is not valid JSON: {e}",
                         param=PAYLOAD_FIELD) from None
    if not isinstance(payload, dict):
        raise ProxyError(ErrorKind.INVALID_REQUEST,
                         f"The '{PAYLOAD_FIELD}' form field must be a JSON object.", param=PAYLOAD_FIELD)

    parts = [_part(field, upload) for field, uploads in files.items() for upload in uploads]
    if parts:
        _append_to_last_user_message(payload, parts)
    return payload


def _payload_bytes(fields: dict[str, list[bytes]], files: dict[str, list[UploadedFile]]) -> bytes:
    values = list(fields.get(PAYLOAD_FIELD, []))
    # ``curl -F payload=@request.json`` sends the payload as a file: take it from there
    values += [body for _, _, body in files.pop(PAYLOAD_FIELD, [])]
    if not values:
        raise ProxyError(ErrorKind.INVALID_REQUEST,
                         f"A multipart/form-data request needs a '{PAYLOAD_FIELD}' field holding the "
                         "JSON request; files go in other fields.", param=PAYLOAD_FIELD)
    if len(values) > 1:
        raise ProxyError(ErrorKind.INVALID_REQUEST,
                         f"The '{PAYLOAD_FIELD}' form field was sent {len(values)} times; send it once.",
                         param=PAYLOAD_FIELD)
    return values[0]


def _append_to_last_user_message(payload: dict[str, Any], parts: list[dict[str, Any]]) -> None:
    messages = payload.get("messages")
    if "messages" not in payload:
        raise ProxyError(ErrorKind.INVALID_REQUEST, "Missing required parameter: 'messages'.",
                         param="messages")
    if not isinstance(messages, list):
        raise ProxyError(ErrorKind.INVALID_REQUEST,
                         "Invalid type for 'messages': expected an array of messages to attach the files to.",
                         param="messages")
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                existing: list[Any] = [{"type": "text", "text": content}] if content else []
            elif isinstance(content, list):
                existing = list(content)
            elif content is None:
                existing = []
            else:
                # leave a bad content as it is for the schema to report; do not guess
                raise ProxyError(ErrorKind.INVALID_REQUEST,
                                 f"Invalid type for 'messages[{i}].content': expected a string or an "
                                 "array to attach the files to.", param=f"messages[{i}].content")
            messages[i] = {**msg, "content": existing + parts}
            return
    # no user turn yet: the files are the user's turn
    messages.append({"role": "user", "content": parts})


def _part(field: str, upload: UploadedFile) -> dict[str, Any]:
    filename, content_type, body = upload
    name = filename or field
    media_type, charset = _parse_content_type(content_type)
    ext = _extension(name)

    sniffed = _sniff_image(body)
    if sniffed is not None:
        data = base64.b64encode(body).decode("ascii")
        return {"type": "image_url", "image_url": {"url": f"data:{sniffed};base64,{data}"}}
    if (media_type.startswith("image/") and media_type != "image/svg+xml") or ext in _IMAGE_EXTENSIONS:
        raise ProxyError(ErrorKind.UNSUPPORTED,
                         f"File '{name}' ({media_type or 'no content type'}) is not a PNG, JPEG, GIF or "
                         "WebP image; only those image formats can be attached.", param=field)

    declared_text = (media_type.startswith("text/") or media_type in _TEXT_TYPES
                     or media_type.endswith(_TEXT_SUFFIXES) or ext in _TEXT_EXTENSIONS)
    if declared_text:
        return _text_part(field, name, body, charset)
    if media_type in _GENERIC_TYPES:
        # unlabelled: text if it reads as UTF-8 without NUL bytes (a binary almost never does)
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = None
        if text is not None and "\x00" not in text:
            return {"type": "text", "text": f"{name}:\n{text}"}
    raise ProxyError(ErrorKind.UNSUPPORTED,
                     f"File '{name}' ({media_type or 'no content type'}) is neither a text file nor a "
                     "PNG, JPEG, GIF or WebP image; only those can be attached.", param=field)


def _text_part(field: str, name: str, body: bytes, charset: str | None) -> dict[str, Any]:
    encoding = "utf-8-sig"  # -sig: drop a UTF-8 byte order mark, not send it as text
    if charset is not None:
        try:
            encoding = codecs.lookup(charset).name
        except LookupError:
            encoding = ""
        if encoding not in _CHARSETS:
            raise ProxyError(ErrorKind.INVALID_REQUEST,
                             f"File {_quote(name)} declares charset {_quote(charset)}, which is not a text "
                             "encoding this gateway reads; send text files as UTF-8.", param=field) from None
        if encoding == "utf-8":
            encoding = "utf-8-sig"
    try:
        text = body.decode(encoding)
        text.encode("utf-8")  # a UTF-16 file may hold a lone surrogate no upstream can be sent
    except UnicodeError as e:
        label = "UTF-8" if charset is None else charset
        where = f" (bad byte at offset {e.start})" if isinstance(e, UnicodeDecodeError) else ""
        raise ProxyError(ErrorKind.INVALID_REQUEST,
                         f"File {_quote(name)} is not valid {label} text{where}; "
                         "send text files as UTF-8.", param=field) from None
    return {"type": "text", "text": f"{name}:\n{text}"}


def _sniff_image(body: bytes) -> str | None:
    for magic, media_type in _IMAGE_MAGIC:
        if body.startswith(magic):
            return media_type
    if len(body) >= 12 and body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "image/webp"
    return None


def _parse_content_type(value: str | None) -> tuple[str, str | None]:
    """``"text/plain; charset=latin-1"`` -> ``("text/plain", "latin-1")``."""
    if not value:
        return "", None
    media_type, _, params = value.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip():
            charset = val.strip().strip('"').lower()
    return media_type.strip().lower(), charset


# well-known text files without an extension
_NAMED_TEXT_FILES = {"dockerfile": ".dockerfile", "makefile": ".mk", "gnumakefile": ".mk"}


def _extension(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1].lower()
    if base in _NAMED_TEXT_FILES:
        return _NAMED_TEXT_FILES[base]
    dot = base.rfind(".")
    return base[dot:] if dot > 0 else ""
