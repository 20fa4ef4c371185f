"""Google Gemini (Generative Language API, ``v1beta``): the ``gemini`` upstream.

Pivot (OpenAI Chat Completions) requests become ``models/{m}:generateContent``
or ``models/{m}:streamGenerateContent?alt=sse`` bodies; Gemini responses and SSE
streams become pivot responses and chunks.  The key goes in ``x-goog-api-key``.
``base_url`` is the host (default ``https://generativelanguage.googleapis.com``,
as the google-genai SDK and ``GEMINI_BASE_URL`` have it); the option
``api_version`` (default ``v1beta``) is appended unless ``base_url`` already ends
in a version.

Beyond the four jobs of :class:`providers.base.Provider`, this module offers:

* :meth:`GeminiProvider.build_embeddings_request` ``(req, model, account) ->
  UpstreamRequest`` and :meth:`GeminiProvider.translate_embeddings` ``(body, req)
  -> dict``: an OpenAI ``POST /v1/embeddings`` request to ``batchEmbedContents``
  and its answer back to an OpenAI embeddings response.
* :meth:`GeminiProvider.build_native_request`: a Gemini-native client request
  (``generateContent``, ``streamGenerateContent``, ``countTokens``,
  ``embedContent``, ``batchEmbedContents``) forwarded with the model mapped.
* :func:`clean_schema`: JSON Schema -> the OpenAPI subset Gemini's ``Schema`` takes.
* :func:`classify_gemini_error`: Google RPC error bodies -> ProxyError, with
  ``RetryInfo.retryDelay`` and per-day ``QuotaFailure`` turned into ``retry_after``.

Choices made here (README: README.md):

* Tool call ids: Gemini usually sends none, so ids are ``call_{ctx.id}_{i}``
  (``call_{ctx.id}_c{c}_{i}`` for candidates after the first): stable between a
  stream and the same answer non-streamed.  Ids are not sent upstream; a tool
  result is matched to its call by ``tool_call_id`` and sent as a
  ``functionResponse`` with that call's name, in the calls' order.
* ``thoughtSignature`` of a ``functionCall`` part travels in the tool call's
  ``extra_content.google.thought_signature`` and is restored on the next turn.
  Signatures on text parts are not carried (Gemini does not require them back).
* Thought parts (``thought: true``) become ``reasoning_content``; reasoning sent
  back by clients (``reasoning_content``, ``thinking_blocks``) is dropped: Gemini
  takes no thoughts as input.
* ``finish_reason`` chunks are held until the upstream stream ends, because
  grounding metadata (for ``show_search_links``) may come with the last chunk.
"""
from __future__ import annotations

import base64
import math
import mimetypes
import re
import struct
import time
import urllib.parse
from datetime import datetime, timedelta
from typing import Any

from tornado_proxy import fieldpolicy, jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError, from_status

from ..base import (
    Account,
    ClientFormat,
    Phase,
    Provider,
    StreamContext,
    StreamEncoder,
    StreamTranslator,
    UpstreamRequest,
    bad_request,
    error_message_from_body,
    parse_retry_after,
    stream_cut,
    system_turn_text,
    unsupported,
)

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_API_VERSION = "v1beta"

_VERSION_SEGMENT = re.compile(r"v\d+(?:alpha|beta)?\d*")

# Gemini 3 validates that the first functionCall of each step carries its
# signature; Google documents this value for history it did not produce.
SKIP_SIGNATURE = "skip_thought_signature_validator"

NATIVE_METHODS = ("generateContent", "streamGenerateContent", "countTokens", "embedContent",
                  "batchEmbedContents")

DEFAULT_BUDGETS = {"minimal": 1024, "low": 4096, "medium": 12288, "high": 24576}

# Pivot request keys and what happens to them.  Everything else is rejected.
_MAPPED_KEYS = frozenset({
    "model", "messages", "stream", "temperature", "top_p", "top_k", "max_tokens",
    "max_completion_tokens", "stop", "n", "response_format", "tools", "tool_choice",
    "reasoning_effort", "reasoning_level", "thinking", "presence_penalty", "frequency_penalty", "seed",
    "logprobs", "top_logprobs", "web_search_options", "modalities", "logit_bias",
})
# Dropped on purpose (README.md lists them): Gemini has no such field and
# the answer does not depend on it.  stream_options is the core's business.
_DROPPED_KEYS = frozenset({
    "stream_options", "user", "metadata", "store", "service_tier", "safety_identifier",
    "prompt_cache_key", "parallel_tool_calls", "verbosity",
})

_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "LANGUAGE": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",
}

_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

_EFFORTS = {"none": "off", "minimal": "minimal", "low": "low", "medium": "medium",
            "high": "high", "xhigh": "high", "max": "high"}
_LEVELS = ("off", "minimal", "low", "medium", "high")


# ---------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------

def merged_options(provider_conf: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Provider ``options`` overlaid with the model's ``options`` (the model wins)."""
    out = dict(provider_conf.get("options") or {})
    out.update(model.get("options") or {})
    return out


def safety_settings(value: Any) -> list[dict[str, str]]:
    """``safety_settings`` option (a list of {category, threshold} or a category->threshold map)."""
    if isinstance(value, dict):
        return [{"category": k, "threshold": v} for k, v in value.items()]
    return [dict(s) for s in value or []]


# ---------------------------------------------------------------------------
# JSON Schema cleaning
# ---------------------------------------------------------------------------

# Formats Gemini's Schema (an OpenAPI 3.0 subset) accepts per type; others are a 400.
_FORMATS = {"STRING": {"enum", "date-time"}, "NUMBER": {"float", "double"},
            "INTEGER": {"int32", "int64"}}
_TYPES = {"string": "STRING", "number": "NUMBER", "integer": "INTEGER", "boolean": "BOOLEAN",
          "array": "ARRAY", "object": "OBJECT", "null": "NULL"}


def clean_schema(schema: Any, param: str = "schema") -> dict[str, Any]:
    """A JSON Schema -> what Gemini's ``Schema`` accepts.

    ``$ref`` is inlined from ``$defs``/``definitions`` (a recursive schema is
    rejected: Gemini's Schema cannot express it); ``const`` becomes a one-value
    ``enum``; a type list or ``anyOf`` with ``null`` becomes ``nullable``;
    ``oneOf`` becomes ``anyOf``; ``allOf`` of objects is merged; ``examples``
    gives its first item to ``example``; enums become strings (Gemini's enums
    are string-only); ``required`` keeps only declared properties; formats
    Gemini rejects and keys it does not know (``additionalProperties``,
    ``$schema``, ``exclusiveMinimum``...) are removed.
    """
    if not isinstance(schema, dict):
        raise bad_request(f"'{param}' must be a JSON Schema object", param)
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update({f"#/{key}/{k}": v for k, v in schema[key].items()})
    return _clean(schema, defs, (), param, 0, [MAX_SCHEMA_NODES])


# A tool schema deeper or bigger than this is no tool a model can fill in.  Both limits
# bound the walk whatever the client sends: nesting cannot reach Python's recursion
# limit, and ``$ref``s that each use the next twice (2**n inlined nodes) stop early.
MAX_SCHEMA_DEPTH = 48
MAX_SCHEMA_NODES = 5000


def _clean(node: Any, defs: dict[str, Any], seen: tuple[str, ...], param: str,
           depth: int, budget: list[int]) -> dict[str, Any]:
    if depth > MAX_SCHEMA_DEPTH:
        raise bad_request(f"'{param}' nests more than {MAX_SCHEMA_DEPTH} levels deep; Gemini's Schema "
                          "cannot take it", param)
    budget[0] -= 1
    if budget[0] < 0:
        raise bad_request(f"'{param}': the schema expands to more than {MAX_SCHEMA_NODES} subschemas "
                          "(with its $refs inlined); Gemini's Schema cannot take it", param)
    if not isinstance(node, dict):
        if node is True or node == {}:
            return {}
        raise bad_request(f"'{param}' must be a JSON Schema object", param)
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            raise unsupported(param, f"recursive schema ({ref}) cannot be expressed in Gemini's Schema")
        if ref not in defs:
            raise bad_request(f"'{param}' refers to unknown definition {ref}", param)
        merged = {**defs[ref], **{k: v for k, v in node.items() if k != "$ref"}}
        return _clean(merged, defs, seen + (ref,), param, depth + 1, budget)
    node = dict(node)
    if "allOf" in node:
        for i, sub in enumerate(node.pop("allOf") or []):
            part = _clean(sub, defs, seen, f"{param}.allOf[{i}]", depth + 1, budget)
            for k, v in part.items():
                if k == "properties":
                    node.setdefault("properties", {}).update(v)
                elif k == "required":
                    node["required"] = list(node.get("required") or []) + [r for r in v if r not in (node.get("required") or [])]
                else:
                    node.setdefault(k, v)
    if "oneOf" in node and "anyOf" not in node:
        node["anyOf"] = node.pop("oneOf")
    if "const" in node and "enum" not in node:
        node["enum"] = [node.pop("const")]
    if "examples" in node and "example" not in node:
        examples = node.get("examples")
        if isinstance(examples, list) and examples:
            node["example"] = examples[0]

    out: dict[str, Any] = {}
    nullable = bool(node.get("nullable"))
    typ = node.get("type")
    if isinstance(typ, list):
        kinds = [t for t in typ if t != "null"]
        nullable = nullable or len(kinds) < len(typ)
        if len(kinds) == 1:
            typ = kinds[0]
        elif kinds:
            # Several non-null types: Gemini needs anyOf for that.
            node["anyOf"] = [{"type": t} for t in kinds] + list(node.get("anyOf") or [])
            typ = None
        else:
            typ = "null"
    if "anyOf" in node:
        subs = []
        for i, sub in enumerate(node.get("anyOf") or []):
            if isinstance(sub, dict) and sub.get("type") == "null" and len(sub) == 1:
                nullable = True
                continue
            subs.append(_clean(sub, defs, seen, f"{param}.anyOf[{i}]", depth + 1, budget))
        if len(subs) == 1 and typ is None:
            # anyOf [X, null] is just a nullable X.
            out.update(subs[0])
        elif subs:
            out["anyOf"] = subs
    if isinstance(typ, str):
        gtype = _TYPES.get(typ.lower())
        if gtype is None:
            raise bad_request(f"'{param}.type' has unknown type {typ!r}", f"{param}.type")
        out["type"] = gtype
    for key in ("title", "description", "example", "default", "pattern", "minItems", "maxItems",
                "minLength", "maxLength", "minProperties", "maxProperties", "minimum", "maximum",
                "propertyOrdering"):
        if key in node:
            out[key] = node[key]
    fmt = node.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS.get(out.get("type", ""), set()):
        out["format"] = fmt
    if "enum" in node and isinstance(node["enum"], list):
        values = [v for v in node["enum"] if v is not None]
        if len(values) < len(node["enum"]):
            nullable = True
        out["enum"] = [v if isinstance(v, str) else jsonutil.dumps(v) for v in values]
        # Gemini only has string enums; a number enum is sent as strings.
        out["type"] = "STRING"
        out.pop("format", None)
    if isinstance(node.get("properties"), dict):
        props = {k: _clean(v, defs, seen, f"{param}.properties.{k}", depth + 1, budget)
                 for k, v in node["properties"].items()}
        out["properties"] = props
        if isinstance(node.get("required"), list):
            req = [r for r in node["required"] if r in props]
            if req:
                out["required"] = req
        if "type" not in out:
            out["type"] = "OBJECT"
    if "items" in node:
        items = node["items"]
        if isinstance(items, list):  # tuple form: Gemini has one item schema
            items = {"anyOf": items} if len(items) > 1 else (items[0] if items else {})
        out["items"] = _clean(items, defs, seen, f"{param}.items", depth + 1, budget)
        if "type" not in out:
            out["type"] = "ARRAY"
    if nullable:
        out["nullable"] = True
    if out.get("type") == "NULL":
        # {"type": "null"} alone: Gemini has no null-only type; a nullable
        # string that must be null is the closest it can say.
        out["type"] = "STRING"
        out["nullable"] = True
    return out


# ---------------------------------------------------------------------------
# request: messages
# ---------------------------------------------------------------------------

def parse_data_uri(uri: str, param: str) -> tuple[str, str]:
    """``data:<mime>[;base64],<data>`` -> (mime, base64 data)."""
    head, sep, data = uri.partition(",")
    if not sep or not head.startswith("data:"):
        raise bad_request(f"'{param}' is not a valid data URI", param)
    meta = head[5:].split(";")
    mime = meta[0] or "text/plain"
    if "base64" in meta[1:]:
        return mime, data.strip()
    raw = urllib.parse.unquote_to_bytes(data)
    return mime, base64.b64encode(raw).decode("ascii")


def guess_mime(url: str) -> str | None:
    path = urllib.parse.urlsplit(url).path
    mime, _ = mimetypes.guess_type(path)
    return mime


def _image_part(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        mime, data = parse_data_uri(url, param)
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("http://", "https://", "gs://")):
        file_data: dict[str, Any] = {"fileUri": url}
        guessed = guess_mime(url)
        if guessed:
            file_data["mimeType"] = guessed
        return {"fileData": file_data}
    raise bad_request(f"'{param}' must be a data URI or an http(s)/gs URL", param)


_AUDIO_MIME = {"wav": "audio/wav", "mp3": "audio/mp3", "flac": "audio/flac", "aac": "audio/aac",
               "ogg": "audio/ogg", "aiff": "audio/aiff", "pcm16": "audio/pcm"}


def content_parts(content: Any, param: str) -> list[dict[str, Any]]:
    """A user/system ``content`` (string or list of parts) -> Gemini parts (no empty text)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request(f"'{param}' must be a string or a list of content parts", param)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        p = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise bad_request(f"'{p}' must be an object", p)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"'{p}.text' must be a string", f"{p}.text")
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise bad_request(f"'{p}.image_url.url' must be a string", f"{p}.image_url.url")
            # "detail" has no per-part equivalent in the v1beta API: dropped (documented).
            parts.append(_image_part(url, f"{p}.image_url.url"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            fmt = audio.get("format")
            if fmt not in _AUDIO_MIME or not isinstance(audio.get("data"), str):
                raise bad_request(f"'{p}.input_audio' needs base64 'data' and a known 'format'", f"{p}.input_audio")
            parts.append({"inlineData": {"mimeType": _AUDIO_MIME[fmt], "data": audio["data"]}})
        elif kind == "file":
            file = part.get("file") or {}
            if isinstance(file.get("file_data"), str):
                mime, data = parse_data_uri(file["file_data"], f"{p}.file.file_data")
                parts.append({"inlineData": {"mimeType": mime, "data": data}})
            elif "file_id" in file:
                raise unsupported(f"{p}.file.file_id", "OpenAI file ids mean nothing to Gemini; send file_data")
            else:
                raise bad_request(f"'{p}.file' needs 'file_data'", f"{p}.file")
        else:
            raise unsupported(f"{p}.type", f"content part type {kind!r} cannot be sent to Gemini")
    return parts


def _text_of(content: Any, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                raise unsupported(f"{param}[{i}]", "only text parts are allowed here")
            out.append(part.get("text") or part.get("refusal") or "")
        return "".join(out)
    raise bad_request(f"'{param}' must be a string or a list of text parts", param)


def _tool_response(content: Any, param: str) -> dict[str, Any]:
    """A tool message's content -> functionResponse.response (a JSON object).

    A JSON object is sent as is; anything else under ``output``, the key Gemini
    documents for a function's output.
    """
    text = _text_of(content, param)
    try:
        value = jsonutil.loads(text)
    except (ValueError, jsonutil.JSONDecodeError):
        return {"output": text}
    if isinstance(value, dict):
        return value
    return {"output": value}


def convert_messages(messages: Any, *, fill_signatures: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pivot messages -> (systemInstruction parts, contents).

    Leading system and developer messages join the one ``systemInstruction``;
    later ones stay in place as a marked user part (``system_turn_text``).  Consecutive turns of one role are merged, since
    Gemini expects user and model turns to alternate; consecutive tool
    messages become one user turn of ``functionResponse`` parts in the order of
    the calls they answer.
    """
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    # tool_call_id -> (function name, position of the call in its assistant message)
    calls: dict[str, tuple[str, int]] = {}
    pending: list[tuple[int, dict[str, Any]]] = []  # functionResponse parts awaiting flush

    def push(role: str, parts: list[dict[str, Any]]) -> None:
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    def flush_tools() -> None:
        if pending:
            push("user", [part for _, part in sorted(pending, key=lambda x: x[0])])
            pending.clear()

    for i, msg in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"'{p}' must be an object", p)
        role = msg.get("role")
        if role != "tool":
            flush_tools()
        if role in ("system", "developer"):
            text = _text_of(msg.get("content"), f"{p}.content")
            if not contents:
                system.extend({"text": t} for t in [text] if t)
            elif text:
                # Mid-conversation: Gemini has one systemInstruction, so the turn stays
                # where it was, as a marked user part (docs/field-policy.md).
                push("user", [{"text": system_turn_text(text)}])
        elif role == "user":
            parts = content_parts(msg.get("content"), f"{p}.content")
            if not parts:
                raise bad_request(f"'{p}.content' must not be empty", f"{p}.content")
            push("user", parts)
        elif role == "assistant":
            if msg.get("audio"):
                raise unsupported(f"{p}.audio", "Gemini takes no audio references")
            parts = []
            text = _text_of(msg.get("content"), f"{p}.content")
            if text:
                parts.append({"text": text})
            tool_calls = msg.get("tool_calls") or []
            if not isinstance(tool_calls, list):
                raise bad_request(f"'{p}.tool_calls' must be a list", f"{p}.tool_calls")
            for j, call in enumerate(tool_calls):
                parts.append(_function_call_part(call, f"{p}.tool_calls[{j}]", first=(j == 0),
                                                 fill_signature=fill_signatures))
                calls[call["id"]] = (call["function"]["name"], j)
            if parts:
                push("model", parts)
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in calls:
                raise bad_request(f"'{p}.tool_call_id' does not match a tool call of an earlier assistant message",
                                  f"{p}.tool_call_id")
            name, order = calls[call_id]
            pending.append((order, {"functionResponse": {"name": name,
                                                          "response": _tool_response(msg.get("content"), f"{p}.content")}}))
        elif role == "function":
            raise unsupported(f"{p}.role", "legacy 'function' messages; use tool messages")
        else:
            raise bad_request(f"'{p}.role' must be system, developer, user, assistant or tool", f"{p}.role")
    flush_tools()
    if not contents:
        raise bad_request("'messages' needs at least one user or assistant message", "messages")
    return system, contents


def _function_call_part(call: Any, param: str, *, first: bool, fill_signature: bool) -> dict[str, Any]:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise unsupported(f"{param}.type", "only function tool calls can be sent to Gemini")
    fn = call.get("function") or {}
    name = fn.get("name")
    if not isinstance(call.get("id"), str) or not isinstance(name, str) or not name:
        raise bad_request(f"'{param}' needs an 'id' and a 'function.name'", param)
    raw = fn.get("arguments") or "{}"
    try:
        args = jsonutil.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, jsonutil.JSONDecodeError):
        raise bad_request(f"'{param}.function.arguments' is not valid JSON", f"{param}.function.arguments")
    if not isinstance(args, dict):
        raise bad_request(f"'{param}.function.arguments' must be a JSON object", f"{param}.function.arguments")
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    extra = call.get("extra_content")
    sig = None
    if isinstance(extra, dict) and isinstance(extra.get("google"), dict):
        sig = extra["google"].get("thought_signature")
    if isinstance(sig, str) and sig:
        part["thoughtSignature"] = sig
    elif first and fill_signature:
        part["thoughtSignature"] = SKIP_SIGNATURE
    return part


# ---------------------------------------------------------------------------
# request: tools, reasoning, generation config
# ---------------------------------------------------------------------------

def convert_tools(tools: Any, json_schema: bool) -> list[dict[str, Any]]:
    """OpenAI ``tools`` -> Gemini ``functionDeclarations``.

    ``json_schema`` sends the schema untouched as ``parametersJsonSchema``
    (newer models accept full JSON Schema); otherwise it is cleaned into
    ``parameters``.
    """
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list", "tools")
    decls = []
    for i, tool in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise unsupported(f"{p}.type", "only function tools can be sent to Gemini")
        fn = tool.get("function") or {}
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request(f"'{p}.function.name' is required", f"{p}.function.name")
        decl: dict[str, Any] = {"name": name}
        if fn.get("description"):
            decl["description"] = fn["description"]
        params = fn.get("parameters")
        if params is not None:
            if json_schema:
                decl["parametersJsonSchema"] = params
            else:
                cleaned = clean_schema(params, f"{p}.function.parameters")
                # Gemini rejects an OBJECT with no properties as a function's
                # parameters; a function without arguments simply has none.
                if cleaned.get("properties") or cleaned.get("type", "OBJECT") != "OBJECT":
                    decl["parameters"] = cleaned
        # "strict" has no Gemini equivalent; declarations are always followed.
        decls.append(decl)
    return decls


def convert_tool_choice(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE_MODES:
            raise bad_request("'tool_choice' must be auto, none, required or a function", "tool_choice")
        return {"functionCallingConfig": {"mode": _TOOL_CHOICE_MODES[choice]}}
    if isinstance(choice, dict):
        if choice.get("type") == "function":
            name = (choice.get("function") or {}).get("name")
            if not isinstance(name, str):
                raise bad_request("'tool_choice.function.name' is required", "tool_choice.function.name")
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
        if choice.get("type") == "allowed_tools":
            allowed = choice.get("allowed_tools") or {}
            names = [(t.get("function") or {}).get("name") for t in allowed.get("tools") or []]
            if not names or not all(isinstance(n, str) for n in names):
                raise bad_request("'tool_choice.allowed_tools.tools' must list functions", "tool_choice.allowed_tools.tools")
            # allowedFunctionNames goes with ANY (must call) or VALIDATED (may call).
            mode = {"required": "ANY", "auto": "VALIDATED"}.get(allowed.get("mode", "auto"))
            if mode is None:
                raise bad_request("'tool_choice.allowed_tools.mode' must be auto or required", "tool_choice.allowed_tools.mode")
            return {"functionCallingConfig": {"mode": mode, "allowedFunctionNames": names}}
    raise bad_request("'tool_choice' must be auto, none, required or a function", "tool_choice")


def resolve_reasoning(req: dict[str, Any], model: dict[str, Any]) -> tuple[str | None, int | None]:
    """(level, explicit budget) for a request; level ``None`` leaves Gemini's default alone.

    Precedence: a ``reasoning_level`` the core already resolved; then the
    model's fixed ``reasoning`` (``off``/``low``/``medium``/``high``: the
    operator's choice wins, and the client's ``reasoning_effort`` is then
    ignored, as documented); then the client's ``reasoning_effort`` (or an
    Anthropic-style ``thinking``); then the name the client used
    (``...-thinking`` turns thinking on at Gemini's dynamic default,
    ``...-nothinking`` off).
    """
    resolved = req.get("reasoning_level")
    if resolved is not None:
        if resolved not in _LEVELS:
            raise bad_request(f"'reasoning_level' must be one of {', '.join(_LEVELS)}", "reasoning_level")
        return str(resolved), None
    conf = model.get("reasoning") or "auto"
    if conf != "auto":
        return str(conf), None
    thinking = req.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled", "adaptive"):
            raise bad_request("'thinking.type' must be enabled, disabled or adaptive", "thinking.type")
        if thinking["type"] == "disabled":
            return "off", None
        if thinking["type"] == "adaptive":
            return "dynamic", None
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 0:
            raise bad_request("'thinking.budget_tokens' must be a non-negative integer", "thinking.budget_tokens")
        return "budget", budget
    effort = req.get("reasoning_effort")
    if effort is not None:
        if effort not in _EFFORTS:
            raise bad_request(f"'reasoning_effort' must be one of {', '.join(_EFFORTS)}", "reasoning_effort")
        return _EFFORTS[effort], None
    name = str(req.get("model") or "")
    upstream = str(model.get("upstream_model") or "")
    if name.endswith(("-nothinking", "-non-thinking")) and not upstream.endswith(("-nothinking", "-non-thinking")):
        return "off", None
    if model.get("_thinking_alias") or (name.endswith("-thinking") and not upstream.endswith("-thinking")):
        return "dynamic", None
    return None, None


_ALIAS_SUFFIXES = ("-non-thinking", "-nothinking", "-thinking")


def strip_alias_suffix(model: dict[str, Any]) -> dict[str, Any]:
    """The model with a ``-thinking``/``-nothinking`` suffix removed from ``upstream_model``.

    A glob model (``gemini-*``) takes the requested name as the upstream name,
    suffix included; no Gemini model is called that, so the suffix is the
    alias (read from the requested name by :func:`resolve_reasoning`).
    """
    upstream = str(model.get("upstream_model") or "")
    for suffix in _ALIAS_SUFFIXES:
        if upstream.endswith(suffix):
            return {**model, "upstream_model": upstream[: -len(suffix)]}
    return model


def thinking_config(level: str | None, budget: int | None, model: dict[str, Any],
                    opts: dict[str, Any]) -> dict[str, Any] | None:
    """The ``thinkingConfig`` for a resolved reasoning level.

    Gemini 2.5 takes a token budget (``0`` off, ``-1`` dynamic); Gemini 3 takes
    a level (``minimal`` is as close to off as it gets).  ``thinking_style``
    ``auto`` picks the level form for ``gemini-3*`` models.
    """
    if level is None:
        return None
    budgets = {**DEFAULT_BUDGETS, **(model.get("reasoning_budgets") or {})}
    off = level == "off" or (level == "budget" and budget == 0)
    style = opts.get("thinking_style", "auto")
    if style == "auto":
        style = "level" if "gemini-3" in str(model.get("upstream_model") or "") else "budget"
    cfg: dict[str, Any] = {}
    if style == "budget":
        if level == "off":
            cfg["thinkingBudget"] = 0
        elif level == "dynamic":
            cfg["thinkingBudget"] = -1
        elif level == "budget":
            cfg["thinkingBudget"] = budget
        else:
            cfg["thinkingBudget"] = int(budgets[level])
    else:
        if level == "budget":
            b = budget or 0
            level = ("minimal" if b == 0 else "low" if b <= budgets["low"]
                     else "medium" if b <= budgets["medium"] else "high")
        if level == "off":
            level = "minimal"
        if level != "dynamic":
            cfg["thinkingLevel"] = level
    if not off and opts.get("include_thoughts", True):
        cfg["includeThoughts"] = True
    return cfg


def build_generate_body(req: dict[str, Any], model: dict[str, Any], opts: dict[str, Any]) -> dict[str, Any]:
    """Pivot request -> a ``generateContent`` body (the same for the stream call)."""
    if not isinstance(req, dict):
        raise bad_request("request body must be a JSON object")
    for key in req:
        if key in _DROPPED_KEYS:
            if req[key] is not None and key != "stream_options":
                fieldpolicy.drop_pivot(key)
        elif key not in _MAPPED_KEYS:
            raise unsupported(key, "Gemini has no equivalent")
    fill = opts.get("thought_signature_fallback", "auto")
    if fill == "auto":
        fill = "gemini-3" in str(model.get("upstream_model") or "")
    system, contents = convert_messages(req.get("messages"), fill_signatures=bool(fill))
    body: dict[str, Any] = {"contents": contents}
    if model.get("system_prompt"):
        system = [{"text": model["system_prompt"]}] + system
    if system:
        body["systemInstruction"] = {"parts": system}

    tools: list[dict[str, Any]] = []
    json_schema = opts.get("tool_schema", "clean") == "json_schema"
    if req.get("tools"):
        tools.append({"functionDeclarations": convert_tools(req["tools"], json_schema)})
    if req.get("tool_choice") is not None:
        if not req.get("tools") and req["tool_choice"] != "none":
            raise bad_request("'tool_choice' needs 'tools'", "tool_choice")
        if req.get("tools"):
            body["toolConfig"] = convert_tool_choice(req["tool_choice"])
    if opts.get("google_search") or req.get("web_search_options") is not None:
        # web_search_options' fields (context size, location) have no Gemini
        # equivalent; asking for web search is what it means.
        tools.append({"googleSearch": {}})
    if opts.get("code_execution"):
        tools.append({"codeExecution": {}})
    if opts.get("url_context"):
        tools.append({"urlContext": {}})
    if tools:
        body["tools"] = tools
    if opts.get("safety_settings"):
        body["safetySettings"] = safety_settings(opts["safety_settings"])

    gen: dict[str, Any] = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"),
                     ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"),
                     ("seed", "seed")):
        if req.get(src) is not None:
            gen[dst] = req[src]
    max_tokens = req.get("max_completion_tokens", req.get("max_tokens"))
    if max_tokens is None:
        max_tokens = model.get("max_tokens")
    if max_tokens is not None:
        gen["maxOutputTokens"] = max_tokens
    stop = req.get("stop")
    if stop is not None:
        gen["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    n = req.get("n")
    if n is not None and n != 1:
        gen["candidateCount"] = n
    if req.get("logprobs") or req.get("top_logprobs"):
        raise unsupported("logprobs", "log probabilities are not translated from Gemini")
    if req.get("logit_bias"):
        raise unsupported("logit_bias", "Gemini has no logit bias")
    modalities = req.get("modalities")
    if modalities is not None and any(m != "text" for m in modalities):
        raise unsupported("modalities", "only text output is translated")
    rf = req.get("response_format")
    if rf is not None:
        kind = rf.get("type") if isinstance(rf, dict) else None
        if kind == "json_object":
            gen["responseMimeType"] = "application/json"
        elif kind == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema")
            gen["responseMimeType"] = "application/json"
            if schema is not None:
                if json_schema:
                    gen["responseJsonSchema"] = schema
                else:
                    gen["responseSchema"] = clean_schema(schema, "response_format.json_schema.schema")
        elif kind != "text":
            raise bad_request("'response_format.type' must be text, json_object or json_schema",
                              "response_format.type")
    level, budget = resolve_reasoning(req, model)
    tc = thinking_config(level, budget, model, opts)
    if tc is not None:
        gen["thinkingConfig"] = tc
    gen.update(opts.get("generation_config") or {})
    if gen:
        body["generationConfig"] = gen
    return body


# ---------------------------------------------------------------------------
# response
# ---------------------------------------------------------------------------

def map_finish_reason(reason: str, has_tool_calls: bool) -> str:
    """Gemini finishReason -> pivot finish_reason.

    Gemini says STOP when it called functions; OpenAI clients expect
    ``tool_calls`` then.  Reasons with no OpenAI counterpart (OTHER,
    MALFORMED_FUNCTION_CALL...) become ``stop``.
    """
    mapped = _FINISH_REASONS.get(reason, "stop")
    if mapped == "stop" and has_tool_calls:
        return "tool_calls"
    return mapped


def render_part(part: dict[str, Any]) -> tuple[str, Any] | None:
    """One Gemini part -> ("text" | "reasoning", str) or ("call", part), None to skip.

    Code execution parts are rendered as markdown code blocks and generated
    images as markdown data-URI images, since Chat Completions has no place for
    them.  An empty text part (Gemini sends one to carry a signature) is skipped.
    """
    if "functionCall" in part:
        return ("call", part)
    if "text" in part:
        text = part.get("text") or ""
        if not text:
            return None
        return ("reasoning" if part.get("thought") else "text", text)
    if "executableCode" in part:
        code = part["executableCode"]
        lang = str(code.get("language") or "").lower()
        if lang == "language_unspecified":
            lang = ""
        return ("text", f"\n```{lang}\n{str(code.get('code', '')).rstrip(chr(10))}\n```\n")
    if "codeExecutionResult" in part:
        res = part["codeExecutionResult"]
        outcome = res.get("outcome", "OUTCOME_OK")
        head = "" if outcome == "OUTCOME_OK" else f"{outcome}\n"
        return ("text", f"\n```output\n{head}{str(res.get('output', '')).rstrip(chr(10))}\n```\n")
    if "inlineData" in part and not part.get("thought"):
        blob = part["inlineData"]
        return ("text", f"![image](data:{blob.get('mimeType', 'image/png')};base64,{blob.get('data', '')})")
    return None


def grounding_links(metadata: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not isinstance(metadata, dict):
        return out
    for chunk in metadata.get("groundingChunks") or []:
        web = chunk.get("web") if isinstance(chunk, dict) else None
        if isinstance(web, dict) and web.get("uri"):
            link = (str(web.get("title") or web["uri"]), str(web["uri"]))
            if link not in out:  # chunks repeat when several supports cite one page
                out.append(link)
    return out


def links_text(links: list[tuple[str, str]]) -> str:
    """The search links appended to a grounded answer (``show_search_links``)."""
    if not links:
        return ""
    lines = "".join(f"\n{i}. [{title}]({uri})" for i, (title, uri) in enumerate(links, 1))
    return "\n\n---\n**Sources:**" + lines


def convert_usage(meta: Any) -> dict[str, Any] | None:
    """usageMetadata -> pivot usage.

    Gemini counts thoughts apart from candidates; OpenAI's completion_tokens
    include reasoning tokens, so both are added.  Tool-use prompt tokens (search
    results, fetched URLs) are prompt tokens.  promptTokenCount already
    includes cached tokens, as OpenAI's prompt_tokens does.
    """
    if not isinstance(meta, dict):
        return None
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(meta.get("totalTokenCount") or prompt + completion),
        "prompt_tokens_details": {"cached_tokens": int(meta.get("cachedContentTokenCount") or 0)},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }
    return usage


def tool_call_id(ctx: StreamContext, candidate: int, index: int) -> str:
    if candidate == 0:
        return f"call_{ctx.id}_{index}"
    return f"call_{ctx.id}_c{candidate}_{index}"


def tool_call_from_part(part: dict[str, Any], ctx: StreamContext, candidate: int, index: int) -> dict[str, Any]:
    fc = part["functionCall"]
    call: dict[str, Any] = {
        "id": fc.get("id") or tool_call_id(ctx, candidate, index),
        "type": "function",
        "function": {"name": fc.get("name", ""), "arguments": jsonutil.dumps(fc.get("args") or {})},
    }
    if part.get("thoughtSignature"):
        call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return call


def _check_prompt_block(obj: dict[str, Any]) -> None:
    feedback = obj.get("promptFeedback")
    if not obj.get("candidates") and isinstance(feedback, dict) and feedback.get("blockReason"):
        raise ProxyError(ErrorKind.CONTENT_FILTER,
                         f"Gemini blocked the prompt ({feedback['blockReason']})")


def _stream_error(obj: dict[str, Any], data: str) -> ProxyError:
    err = obj.get("error") or {}
    code = err.get("code") if isinstance(err, dict) else None
    return classify_gemini_error(int(code) if isinstance(code, int) else 500, {}, data.encode("utf-8"))


def translate_generate_response(obj: Any, ctx: StreamContext, show_links: bool) -> dict[str, Any]:
    """A whole ``generateContent`` answer -> a pivot ``chat.completion``."""
    if not isinstance(obj, dict):
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini answer is not a JSON object")
    if "error" in obj:
        raise _stream_error(obj, jsonutil.dumps(obj))
    _check_prompt_block(obj)
    choices = []
    for pos, cand in enumerate(obj.get("candidates") or []):
        c = int(cand.get("index", pos) or 0)
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in (cand.get("content") or {}).get("parts") or []:
            rendered = render_part(part)
            if rendered is None:
                continue
            kind, value = rendered
            if kind == "call":
                calls.append(tool_call_from_part(value, ctx, c, len(calls)))
            elif kind == "reasoning":
                reasoning.append(value)
            else:
                text.append(value)
        if show_links:
            text.append(links_text(grounding_links(cand.get("groundingMetadata"))))
        content = "".join(text)
        message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if calls:
            message["tool_calls"] = calls
        reason = cand.get("finishReason")
        if not reason:
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini answer has a candidate without finishReason")
        choices.append({"index": c, "message": message, "finish_reason": map_finish_reason(reason, bool(calls))})
    if not choices:
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini answer has no candidates")
    out: dict[str, Any] = {"id": ctx.id, "object": "chat.completion", "created": ctx.created,
                           "model": ctx.model, "choices": choices}
    usage = convert_usage(obj.get("usageMetadata"))
    if usage is not None:
        out["usage"] = usage
    return out


class _Candidate:
    __slots__ = ("index", "started", "calls", "finish", "links")

    def __init__(self, index: int) -> None:
        self.index = index
        self.started = False       # role sent
        self.calls = 0             # tool calls emitted so far (next tool call index)
        self.finish: str | None = None   # Gemini finishReason, once seen
        self.links: list[tuple[str, str]] = []


class GeminiStreamTranslator(StreamTranslator):
    """``streamGenerateContent?alt=sse`` events -> pivot chunks.

    Each event is a whole ``GenerateContentResponse`` holding new parts only.
    Phases and the events each accepts:

    * START: a response chunk (candidates and/or usageMetadata), a prompt block
      (raises CONTENT_FILTER) or an error object (raises).
    * CONTENT (a candidate has started): the same.
    * DONE (every candidate seen has its finishReason): chunks without new
      parts (usageMetadata, groundingMetadata); new parts are an error.
    * FAILED: nothing; ``feed`` raises.

    ``finish()`` in DONE emits the held search links, one ``finish_reason``
    chunk per candidate and the usage chunk; anywhere else it raises stream_cut.
    """

    def __init__(self, ctx: StreamContext, show_links: bool = False) -> None:
        self.ctx = ctx
        self.show_links = show_links
        self.phase = Phase.START
        self.cands: dict[int, _Candidate] = {}
        self.usage: dict[str, Any] | None = None

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.ctx.id, "object": "chat.completion.chunk", "created": self.ctx.created,
                "model": self.ctx.model, "choices": choices}

    def _delta(self, cand: _Candidate, delta: dict[str, Any]) -> dict[str, Any]:
        if not cand.started:
            cand.started = True
            delta = {"role": "assistant", **delta}
        return self._chunk([{"index": cand.index, "delta": delta, "finish_reason": None}])

    def feed(self, event: Any) -> list[dict[str, Any]]:
        if self.phase is Phase.FAILED:
            raise ProxyError(ErrorKind.INTERNAL, "stream translator fed after it failed")
        data = getattr(event, "data", event)
        if not isinstance(data, str):
            data = bytes(data).decode("utf-8", "replace")
        if not data.strip():
            return []
        try:
            obj = jsonutil.loads(data)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            if "error" in obj:
                raise _stream_error(obj, data)
            _check_prompt_block(obj)
            return self._response(obj)
        except ProxyError:
            self.phase = Phase.FAILED
            raise
        except (ValueError, TypeError, AttributeError, KeyError, jsonutil.JSONDecodeError) as exc:
            self.phase = Phase.FAILED
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"bad Gemini stream event: {exc}")

    def _response(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if obj.get("usageMetadata") is not None:
            # Every chunk carries the running totals: set, don't add.
            self.usage = convert_usage(obj["usageMetadata"])
        for pos, raw in enumerate(obj.get("candidates") or []):
            c = int(raw.get("index", pos) or 0)
            cand = self.cands.get(c)
            if cand is None:
                cand = self.cands[c] = _Candidate(c)
            rendered_parts = [r for r in map(render_part, (raw.get("content") or {}).get("parts") or [])
                              if r is not None]
            if cand.finish is not None and rendered_parts:
                raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                                 f"Gemini sent content for candidate {c} after its finishReason")
            for kind, value in rendered_parts:
                if kind == "call":
                    call = tool_call_from_part(value, self.ctx, c, cand.calls)
                    out.append(self._delta(cand, {"tool_calls": [{"index": cand.calls, **call}]}))
                    cand.calls += 1
                elif kind == "reasoning":
                    out.append(self._delta(cand, {"reasoning_content": value}))
                else:
                    out.append(self._delta(cand, {"content": value}))
            for link in grounding_links(raw.get("groundingMetadata")):
                if link not in cand.links:
                    cand.links.append(link)
            if raw.get("finishReason") and cand.finish is None:
                cand.finish = raw["finishReason"]
        if self.cands:
            done = all(c.finish is not None for c in self.cands.values())
            self.phase = Phase.DONE if done else Phase.CONTENT
        return out

    def finish(self) -> list[dict[str, Any]]:
        if self.phase is Phase.FAILED:
            return []
        if self.phase is not Phase.DONE:
            raise stream_cut("no finishReason from Gemini")
        out: list[dict[str, Any]] = []
        for c in sorted(self.cands):
            cand = self.cands[c]
            if self.show_links and cand.links:
                out.append(self._delta(cand, {"content": links_text(cand.links)}))
            delta: dict[str, Any] = {} if cand.started else {"role": "assistant", "content": ""}
            cand.started = True
            out.append(self._chunk([{"index": c, "delta": delta,
                                     "finish_reason": map_finish_reason(cand.finish or "", cand.calls > 0)}]))
        if self.usage is not None:
            out.append({**self._chunk([]), "usage": self.usage})
        return out

    def fail(self, err: ProxyError) -> list[dict[str, Any]]:
        self.phase = Phase.FAILED
        return []


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

def parse_duration(value: Any) -> float | None:
    """A protobuf Duration in JSON (``"17s"``, ``"21.94s"``) -> seconds."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    try:
        seconds = float(value[:-1])
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def seconds_until_pacific_midnight(now: float) -> float:
    """Seconds from ``now`` (unix time) to the next midnight in America/Los_Angeles.

    Gemini's per-day quotas reset at midnight Pacific time.
    """
    try:
        from zoneinfo import ZoneInfo
        tz: Any = ZoneInfo("America/Los_Angeles")
    except Exception:  # no tz database: PST is close enough for a cooldown
        from datetime import timezone
        tz = timezone(timedelta(hours=-8))
    local = datetime.fromtimestamp(now, tz)
    midnight = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(0.0, midnight.timestamp() - now)


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        obj = jsonutil.loads(body)
    except (ValueError, jsonutil.JSONDecodeError):
        return {}
    # The non-SSE stream endpoint wraps everything in a JSON array.
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            return err
    return {}


def classify_gemini_error(status: int, headers: dict[str, str], body: bytes,
                          now: float | None = None) -> ProxyError:
    """A Gemini error (Google RPC status JSON) -> ProxyError.

    ``RESOURCE_EXHAUSTED`` takes ``retry_after`` from ``RetryInfo.retryDelay``;
    when a ``QuotaFailure`` violation is a per-day quota (``quotaId`` containing
    ``PerDay``) and ``now`` is given, the account is done until the quota resets
    at midnight Pacific, so ``retry_after`` runs until then.  A 400 whose
    ``ErrorInfo.reason`` is ``API_KEY_INVALID`` is the key's fault, not the
    request's.  ``FAILED_PRECONDITION`` (billing or region not enabled for the
    key's project) is the account's problem too.
    """
    err = _error_object(body)
    gstatus = str(err.get("status") or "")
    message = err.get("message") if isinstance(err.get("message"), str) else error_message_from_body(body)
    reasons: set[str] = set()
    retry_after = parse_retry_after(headers)
    per_day = False
    for detail in err.get("details") or []:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type") or "")
        if kind.endswith("google.rpc.ErrorInfo"):
            reasons.add(str(detail.get("reason") or ""))
        elif kind.endswith("google.rpc.RetryInfo"):
            delay = parse_duration(detail.get("retryDelay"))
            if delay is not None:
                retry_after = delay
        elif kind.endswith("google.rpc.QuotaFailure"):
            for v in detail.get("violations") or []:
                if isinstance(v, dict) and "PerDay" in str(v.get("quotaId") or ""):
                    per_day = True
    if per_day and now is not None:
        retry_after = max(retry_after or 0.0, seconds_until_pacific_midnight(now))
    text = f"upstream returned {status}{' ' + gstatus if gstatus else ''}: {message}"
    if reasons & {"API_KEY_INVALID", "API_KEY_EXPIRED"} or gstatus == "UNAUTHENTICATED":
        kind_ = ErrorKind.UPSTREAM_AUTH
    elif gstatus == "PERMISSION_DENIED" or reasons & {"API_KEY_SERVICE_BLOCKED", "CONSUMER_SUSPENDED"}:
        kind_ = ErrorKind.UPSTREAM_FORBIDDEN
    elif gstatus == "FAILED_PRECONDITION":
        kind_ = ErrorKind.UPSTREAM_FORBIDDEN
    elif gstatus == "RESOURCE_EXHAUSTED":
        kind_ = ErrorKind.UPSTREAM_RATE_LIMITED
    elif gstatus == "UNAVAILABLE":
        kind_ = ErrorKind.UPSTREAM_OVERLOADED
    elif gstatus == "INVALID_ARGUMENT":
        kind_ = ErrorKind.UPSTREAM_BAD_REQUEST
    elif gstatus == "NOT_FOUND":
        kind_ = ErrorKind.UPSTREAM_NOT_FOUND
    elif gstatus == "INTERNAL":
        kind_ = ErrorKind.UPSTREAM_ERROR
    else:
        return from_status(status, text, retry_after=retry_after, headers=headers)
    return ProxyError(kind_, text, retry_after=retry_after, upstream_status=status, headers=headers)


# ---------------------------------------------------------------------------
# embeddings
# ---------------------------------------------------------------------------

_EMBED_KEYS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def embedding_inputs(req: dict[str, Any]) -> list[str]:
    """The texts of an OpenAI embeddings request (token arrays are rejected)."""
    value = req.get("input")
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        texts = list(value)
    elif isinstance(value, list) and value:
        raise unsupported("input", "token arrays cannot be sent to Gemini; send text")
    else:
        raise bad_request("'input' must be a non-empty string or list of strings", "input")
    for i, text in enumerate(texts):
        if not text:
            raise bad_request(f"'input[{i}]' must not be empty", f"input[{i}]" if isinstance(value, list) else "input")
    return texts


def build_embeddings_body(req: dict[str, Any], upstream_model: str, opts: dict[str, Any]) -> dict[str, Any]:
    """OpenAI embeddings request -> ``batchEmbedContents`` body (``user`` is dropped)."""
    for key in req:
        if key not in _EMBED_KEYS:
            raise unsupported(key, "Gemini embeddings have no equivalent")
    fmt = req.get("encoding_format", "float")
    if fmt not in ("float", "base64", None):
        raise bad_request("'encoding_format' must be float or base64", "encoding_format")
    dims = req.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise bad_request("'dimensions' must be a positive integer", "dimensions")
    name = "models/" + upstream_model.removeprefix("models/")
    requests = []
    for text in embedding_inputs(req):
        item: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
        if opts.get("embedding_task_type"):
            item["taskType"] = opts["embedding_task_type"]
        if dims is not None:
            item["outputDimensionality"] = dims
        requests.append(item)
    return {"requests": requests}


# "A token is equivalent to about 4 characters" for Gemini models (Google's
# token-counting guide): the estimate when an embeddings answer has no usage.
EMBED_CHARS_PER_TOKEN = 4


def translate_embeddings(body: bytes, req: dict[str, Any]) -> dict[str, Any]:
    """``batchEmbedContents`` answer -> OpenAI embeddings response.

    base64 is the little-endian float32 array OpenAI sends.  Usage is Gemini's
    ``usageMetadata.promptTokenCount`` when the answer has it; the Gemini API's
    ``batchEmbedContents`` answers without one, and then the count is estimated
    the way Google documents Gemini tokens, about four characters each
    (``EMBED_CHARS_PER_TOKEN``, at least one token per input), never 0.
    """
    try:
        obj = jsonutil.loads(body)
    except (ValueError, jsonutil.JSONDecodeError):
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini embeddings answer is not JSON")
    embeddings = obj.get("embeddings") if isinstance(obj, dict) else None
    if not isinstance(embeddings, list) or len(embeddings) != len(embedding_inputs(req)):
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini embeddings answer does not match the input")
    b64 = req.get("encoding_format") == "base64"
    data = []
    for i, emb in enumerate(embeddings):
        values = [float(v) for v in (emb or {}).get("values") or []]
        vector: Any = values
        if b64:
            vector = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": vector})
    meta = obj.get("usageMetadata")
    tokens = meta.get("promptTokenCount") if isinstance(meta, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens <= 0:
        tokens = sum(max(1, math.ceil(len(t) / EMBED_CHARS_PER_TOKEN)) for t in embedding_inputs(req))
    return {"object": "list", "data": data, "model": req.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# ---------------------------------------------------------------------------
# the provider
# ---------------------------------------------------------------------------

class GeminiProvider(Provider):
    type_name = "gemini"
    native_format = "gemini"
    default_base_url = DEFAULT_BASE_URL
    stream_decoder = "sse"

    def validate(self, models: list[dict[str, Any]]) -> list[str]:
        # validation finds schemas in a checkout and in the installed layout alike.
        from tornado_proxy.pipeline.validation import validator

        check = validator("providers/gemini.options")
        problems = []
        entries = [(f"provider '{self.name}' options", self.conf.get("options") or {})]
        entries += [(f"model '{m.get('id')}' options", m.get("options") or {}) for m in models]
        for where, opts in entries:
            for e in sorted(check.iter_errors(opts), key=lambda e: list(e.path)):
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{where}{'.' + path if path else ''}: {e.message}")
        return problems

    def options(self, model: dict[str, Any]) -> dict[str, Any]:
        return merged_options(self.conf, model)

    def api_root(self) -> str:
        """``base_url`` with the API version (``base_url`` may already end in one)."""
        last = self.base_url.rsplit("/", 1)[-1]
        if _VERSION_SEGMENT.fullmatch(last):
            return self.base_url
        return f"{self.base_url}/{(self.conf.get('options') or {}).get('api_version', DEFAULT_API_VERSION)}"

    def _url(self, model_name: str, method: str, query: str = "") -> str:
        name = urllib.parse.quote(model_name.removeprefix("models/"), safe="-._~")
        return f"{self.api_root()}/models/{name}:{method}" + (f"?{query}" if query else "")

    def _headers(self, model: dict[str, Any], account: Account) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        headers.update(self.extra_headers)
        headers.update(account.extra.get("headers") or {})
        headers.update(model.get("headers") or {})
        if account.api_key:
            headers["x-goog-api-key"] = account.api_key
        return headers

    # -- the four jobs -----------------------------------------------------
    def build_request(self, req: dict[str, Any], model: dict[str, Any], account: Account,
                      stream: bool) -> UpstreamRequest:
        model = strip_alias_suffix(model)
        body = build_generate_body(req, model, self.options(model))
        upstream = str(model["upstream_model"])
        url = self._url(upstream, "streamGenerateContent", "alt=sse") if stream else self._url(upstream, "generateContent")
        return UpstreamRequest("POST", url, self._headers(model, account), jsonutil.dumpb(body), stream)

    def _show_links(self, ctx: StreamContext) -> bool:
        # The translator only sees ctx: the model's options come through ctx.extra.
        model = ctx.extra.get("model")
        opts = self.options(model) if isinstance(model, dict) else dict(self.conf.get("options") or {})
        return bool(opts.get("show_search_links"))

    def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
        try:
            obj = jsonutil.loads(body)
        except (ValueError, jsonutil.JSONDecodeError):
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini answer is not JSON")
        return translate_generate_response(obj, ctx, self._show_links(ctx))

    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        return GeminiStreamTranslator(ctx, self._show_links(ctx))

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ProxyError:
        # The error path may read the clock: per-day quotas reset at a wall-clock time.
        return classify_gemini_error(status, headers, body, now=time.time())

    # -- embeddings --------------------------------------------------------
    def build_embeddings_request(self, req: dict[str, Any], model: dict[str, Any],
                                 account: Account) -> UpstreamRequest:
        upstream = str(model["upstream_model"])
        body = build_embeddings_body(req, upstream, self.options(model))
        return UpstreamRequest("POST", self._url(upstream, "batchEmbedContents"),
                               self._headers(model, account), jsonutil.dumpb(body), False)

    def translate_embeddings(self, body: bytes, req: dict[str, Any]) -> dict[str, Any]:
        return translate_embeddings(body, req)

    # -- native pass-through -----------------------------------------------
    def build_native_request(self, body: dict[str, Any], raw: bytes, model: dict[str, Any],
                             account: Account, stream: bool, client_headers: dict[str, str],
                             path: str = "") -> UpstreamRequest:
        """A Gemini-native request forwarded with the model mapped.

        ``path`` is the method (``generateContent``, ``countTokens``...);
        ``stream`` (an SSE ``streamGenerateContent``) asks for ``alt=sse``.
        The client's headers are not forwarded.  Model names inside the body
        (``batchEmbedContents`` requests, ``countTokens``'
        ``generateContentRequest``) are rewritten to the upstream model.
        """
        method = path or ("streamGenerateContent" if stream else "generateContent")
        if method not in NATIVE_METHODS:
            raise ProxyError(ErrorKind.NOT_FOUND, f"unknown Gemini method '{method}'")
        model = strip_alias_suffix(model)
        upstream = str(model["upstream_model"])
        name = "models/" + upstream.removeprefix("models/")
        new_body, changed = _rewrite_models(body, name)
        data = jsonutil.dumpb(new_body) if changed else raw
        # Without alt=sse, streamGenerateContent answers one JSON array: the core
        # then forwards it whole (stream=False) with its content type.
        query = "alt=sse" if stream and method == "streamGenerateContent" else ""
        return UpstreamRequest("POST", self._url(upstream, method, query),
                               self._headers(model, account), data, bool(query))

    def stream_complete_marker(self) -> bytes | None:
        return b'"finishReason"'


def _rewrite_models(body: dict[str, Any], name: str) -> tuple[dict[str, Any], bool]:
    changed = False
    out = dict(body)
    if isinstance(out.get("model"), str) and out["model"] != name:
        out["model"] = name
        changed = True
    if isinstance(out.get("requests"), list):
        reqs = []
        for r in out["requests"]:
            if isinstance(r, dict) and "model" in r and r["model"] != name:
                r = {**r, "model": name}
                changed = True
            reqs.append(r)
        out["requests"] = reqs
    gcr = out.get("generateContentRequest")
    if isinstance(gcr, dict) and gcr.get("model") != name:
        out["generateContentRequest"] = {**gcr, "model": name}
        changed = True
    return out, changed


# ---------------------------------------------------------------------------
# Gemini-native clients (the /v1beta routes): errors in Google's shape
# ---------------------------------------------------------------------------

_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  405: "INVALID_ARGUMENT", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                  502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def google_error_body(err: ProxyError) -> dict[str, Any]:
    """A ProxyError as a ``google.rpc.Status`` (what google-genai's APIError parses)."""
    status = err.status
    out: dict[str, Any] = {"code": status, "message": err.message,
                           "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}
    if err.retry_after is not None:
        out["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                           "retryDelay": f"{max(0, int(err.retry_after + 0.999))}s"}]
    return {"error": out}


class GeminiNativeEncoder(StreamEncoder):
    """Only for the error frame of a passed-through Gemini SSE stream."""

    def feed(self, chunk: dict[str, Any]) -> bytes:
        raise ProxyError(ErrorKind.INTERNAL, "pivot chunks are not rendered as Gemini events")

    def finish(self) -> bytes:
        return b""

    def fail(self, err: ProxyError) -> bytes:
        # Gemini itself reports a failed stream as a data frame holding the Status.
        return b"data: " + jsonutil.dumpb(google_error_body(err)) + b"\r\n\r\n"


class GeminiNativeFormat(ClientFormat):
    """Gemini-native clients (google-genai) on ``/v1beta``: served by gemini upstreams only,
    bytes passed through; this format gives their errors Google's shape."""

    name = "gemini"

    def parse_request(self, body: dict[str, Any]) -> dict[str, Any]:
        raise ProxyError(ErrorKind.UNSUPPORTED, "Gemini-native requests are served by gemini providers only")

    def render_response(self, pivot: dict[str, Any], ctx: StreamContext) -> dict[str, Any]:
        raise ProxyError(ErrorKind.INTERNAL, "pivot answers are not rendered as Gemini responses")

    def new_encoder(self, ctx: StreamContext) -> StreamEncoder:
        return GeminiNativeEncoder()

    def error_body(self, err: ProxyError) -> dict[str, Any]:
        return google_error_body(err)

    def context_id(self, rand_hex: str) -> str:
        return rand_hex
