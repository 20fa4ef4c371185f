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

Pure function, no I/O: the handler parses the form (tornado's
``parse_body_arguments``) and passes plain values.
"""
from __future__ import annotations

import base64
import codecs
from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

# (filename, content_type, body) of one uploaded file
UploadedFile = tuple[str, str, bytes]

PAYLOAD_FIELD = "payload"

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
        payload = jsonutil.loads(raw)
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
    encoding = charset or "utf-8-sig"  # -sig: drop a UTF-8 byte order mark, not send it as text
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ProxyError(ErrorKind.INVALID_REQUEST,
                         f"File '{name}' declares an unknown charset '{charset}'.", param=field) from None
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as e:
        label = "UTF-8" if charset is None else charset
        raise ProxyError(ErrorKind.INVALID_REQUEST,
                         f"File '{name}' is not valid {label} text (bad byte at offset {e.start}); "
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
