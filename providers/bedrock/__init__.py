"""AWS Bedrock through the Converse API: the ``bedrock`` upstream.

Chat Completions (the pivot) goes to ``POST /model/{modelId}/converse`` or
``/converse-stream``.  Requests are signed with SigV4 (service ``bedrock``), or carry
a Bedrock API key as a bearer token.  Streams come back as
``application/vnd.amazon.eventstream``: binary frames, each with a prelude CRC and a
message CRC, whose JSON payloads are ConverseStream events.

Why botocore: SigV4 (canonical request, double URI-encoding of the path, payload
hash, the HMAC key chain) and the event-stream framing (two CRC32s, typed headers)
are easy to get subtly wrong by hand; botocore is AWS's own, well-kept code for both
(``SigV4Auth``, ``EventStreamBuffer``).  Nothing else of botocore is used (no
sessions, no credential chain, no HTTP).

Shapes follow the Bedrock API reference and botocore's service model
``bedrock-runtime/2023-09-30/service-2.json``.  See ``README.md`` for the
mapping table and for the few fields that are documented drops.
"""
from __future__ import annotations

import datetime
import enum
import struct
import time
from typing import Any, Callable
from urllib.parse import quote

from typing import TYPE_CHECKING

from tornado_proxy import fieldpolicy, jsonutil
from tornado_proxy.pipeline.validation import load_schema
from tornado_proxy.errors import ErrorKind, ProxyError, from_status

from ..base import (JSON_MODE_INSTRUCTION, Account, Provider, StreamContext, StreamTranslator, UpstreamRequest,
                   bad_request, error_message_from_body, iter_text_parts, parse_retry_after, stream_cut,
                   system_turn_text, unsupported)

if TYPE_CHECKING:
    from botocore.eventstream import EventStreamMessage

# botocore (about 16 MiB once imported) is imported on first use, so a gateway with no
# Bedrock provider never loads it.

SIGNING_SERVICE = "bedrock"
DEFAULT_BUDGETS = {"minimal": 1024, "low": 4096, "medium": 12288, "high": 24576}
# Anthropic's floor for budget_tokens.
MIN_BUDGET = 1024
# Room for the answer when the client sets no max_tokens but thinking is on: Claude
# counts thinking inside max_tokens and rejects max_tokens <= budget_tokens.
ANSWER_ALLOWANCE = 4096
LEVELS = ("off", "minimal", "low", "medium", "high")
# Chat Completions reasoning_effort -> level; xhigh and max (from Anthropic clients'
# effort scale) get the high budget, the largest there is here.
EFFORTS = {"none": "off", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
           "xhigh": "high", "max": "high"}

# Converse stopReason -> pivot finish_reason.  The malformed_* reasons are errors.
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
MALFORMED_STOPS = ("malformed_model_output", "malformed_tool_use")

# Bedrock error type (x-amzn-ErrorType, or :exception-type with a capital first
# letter) -> our kind.  Types not here fall back to the HTTP status.
ERROR_KINDS: dict[str, ErrorKind] = {
    "ThrottlingException": ErrorKind.UPSTREAM_RATE_LIMITED,
    "ServiceQuotaExceededException": ErrorKind.UPSTREAM_RATE_LIMITED,
    "AccessDeniedException": ErrorKind.UPSTREAM_FORBIDDEN,
    "UnrecognizedClientException": ErrorKind.UPSTREAM_AUTH,
    "ExpiredTokenException": ErrorKind.UPSTREAM_AUTH,
    "InvalidSignatureException": ErrorKind.UPSTREAM_SIGNATURE,
    "IncompleteSignatureException": ErrorKind.UPSTREAM_SIGNATURE,
    "ValidationException": ErrorKind.UPSTREAM_BAD_REQUEST,
    "ConflictException": ErrorKind.UPSTREAM_BAD_REQUEST,
    "ResourceNotFoundException": ErrorKind.UPSTREAM_NOT_FOUND,
    "ModelNotReadyException": ErrorKind.UPSTREAM_OVERLOADED,
    "ServiceUnavailableException": ErrorKind.UPSTREAM_OVERLOADED,
    "ModelTimeoutException": ErrorKind.FIRST_BYTE_TIMEOUT,
    "InternalServerException": ErrorKind.UPSTREAM_ERROR,
    "ModelErrorException": ErrorKind.UPSTREAM_ERROR,
    "ModelStreamErrorException": ErrorKind.UPSTREAM_ERROR,
}

IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}
DOCUMENT_FORMATS = {
    "application/pdf": "pdf", "text/csv": "csv", "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html", "text/plain": "txt", "text/markdown": "md",
}
SERVICE_TIERS = ("default", "flex", "priority")

# Pivot request fields mapped here, or the core's business (stream, stream_options).
_HANDLED = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "stop", "tools", "tool_choice", "parallel_tool_calls",
    "reasoning_effort", "reasoning_level", "response_format", "service_tier", "user", "safety_identifier",
    "metadata",
})
# Fields whose value here changes nothing: accepted at that value, rejected otherwise.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,), "presence_penalty": (0,), "frequency_penalty": (0,), "logprobs": (False,),
    "logit_bias": ({},), "modalities": (["text"],),
}
# Dropped (README.md): OpenAI-side storage and prompt-cache routing hints; the
# answer does not depend on them.  The same list as the other upstreams.
_DROPPED = frozenset({"store", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
                      "verbosity"})


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

def _signature_message(msg: str) -> str:
    low = msg.lower()
    if "expired" in low or "not yet current" in low or "earlier than" in low or "later than" in low:
        return ("Bedrock rejected the request signature as expired or not yet valid; the gateway's "
                f"clock may be skewed (check NTP): {msg}")
    return ("Bedrock rejected the request signature; check the account's aws_secret_access_key, "
            f"or the gateway's clock may be skewed: {msg}")


def error_for(error_type: str, message: str, status: int | None = None,
              headers: dict[str, str] | None = None) -> ProxyError:
    """A Bedrock error (``ThrottlingException`` ...) -> ProxyError."""
    kind = ERROR_KINDS.get(error_type)
    if kind is None and "signature" in message.lower() and ("expired" in message.lower()
                                                            or "does not match" in message.lower()):
        kind = ErrorKind.UPSTREAM_SIGNATURE
    if kind is ErrorKind.UPSTREAM_SIGNATURE:
        text = _signature_message(message)
    else:
        text = f"Bedrock {error_type or 'error'}: {message}"
    retry_after = parse_retry_after(headers) if headers else None
    if kind is None:
        if status is None:
            return ProxyError(ErrorKind.UPSTREAM_ERROR, text)
        return from_status(status, text, retry_after=retry_after, headers=headers)
    return ProxyError(kind, text, retry_after=retry_after, upstream_status=status, headers=headers)


def classify(status: int, headers: dict[str, str], body: bytes) -> ProxyError:
    """A non-2xx Bedrock answer -> ProxyError.

    The error type is in ``x-amzn-ErrorType`` (``ThrottlingException:http://...``)
    and sometimes also in the body's ``__type`` (``...#ThrottlingException``).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    error_type = lower.get("x-amzn-errortype", "").split(":", 1)[0].strip()
    if not error_type:
        try:
            obj = jsonutil.loads(body)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("__type"), str):
            error_type = obj["__type"].rsplit("#", 1)[-1]
    return error_for(error_type, error_message_from_body(body), status, lower)


# ---------------------------------------------------------------------------
# signing
# ---------------------------------------------------------------------------

_SIGNER: Any = None


def _signer_class() -> Any:
    """botocore's SigV4 signer, with the signing time given rather than read.

    ``SigV4Auth.add_auth`` reads the clock itself; the subclass repeats its steps
    with the time passed in, calling botocore's own helpers for each (the canonical
    request, the string to sign, the key chain, the header).  Passing the time in is
    what lets a test check a known vector.
    """
    global _SIGNER
    if _SIGNER is None:
        from botocore.auth import SigV4Auth

        class _SigV4AtTime(SigV4Auth):  # type: ignore[misc]  # botocore ships no type hints
            def __init__(self, credentials: Any, service: str, region: str, timestamp: str) -> None:
                super().__init__(credentials, service, region)
                self._timestamp = timestamp

            def add_auth(self, request: Any) -> None:
                request.context["timestamp"] = self._timestamp
                self._modify_request_before_signing(request)
                canonical = self.canonical_request(request)
                signature = self.signature(self.string_to_sign(request, canonical), request)
                self._inject_signature_to_request(request, signature)

        _SIGNER = _SigV4AtTime
    return _SIGNER


def sigv4_sign(method: str, url: str, headers: dict[str, str], body: bytes, *, access_key: str,
               secret_key: str, session_token: str | None, region: str, when: float,
               service: str = SIGNING_SERVICE) -> dict[str, str]:
    """``headers`` plus ``X-Amz-Date``, ``Authorization`` (and ``X-Amz-Security-Token``).

    Every header passed in is signed, as is the SHA-256 of ``body`` and the host of
    ``url``.  ``when`` is a unix time.
    """
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    stamp = datetime.datetime.fromtimestamp(when, tz=datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    _signer_class()(Credentials(access_key, secret_key, session_token or None), service, region,
                    stamp).add_auth(request)
    return {k: v for k, v in request.headers.items()}


# ---------------------------------------------------------------------------
# the event-stream decoder
# ---------------------------------------------------------------------------

class EventStreamDecoder:
    """Bytes of ``application/vnd.amazon.eventstream`` -> messages, push-fed.

    Same shape as the SSE decoder: ``feed(bytes)`` returns the messages those bytes
    complete (botocore ``EventStreamMessage``: ``.headers`` dict, ``.payload``
    bytes).  Framing and both CRC32 checks are botocore's.  A corrupt frame raises
    ``UPSTREAM_BAD_RESPONSE``; ``finish()`` raises ``UPSTREAM_STREAM_CUT`` if the
    stream stopped inside a frame: a truncated frame is an error, never a silent stop.
    """

    __slots__ = ("_buf", "_pending", "_error")

    def __init__(self) -> None:
        from botocore.eventstream import EventStreamBuffer

        self._buf = EventStreamBuffer()
        self._pending = 0  # bytes fed but not yet part of a whole message
        self._error: ProxyError | None = None

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        if self._error is not None:
            raise self._error
        if not data:
            return []
        from botocore.eventstream import ParserError

        self._buf.add_data(data)
        self._pending += len(data)
        out: list[EventStreamMessage] = []
        try:
            for msg in self._buf:
                self._pending -= msg.prelude.total_length
                out.append(msg)
        except (ParserError, struct.error, KeyError, ValueError, IndexError) as exc:
            # After a bad frame the frame boundaries are lost: nothing after it can be
            # trusted, and every later call fails too.
            self._error = ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                                     f"corrupt event-stream frame from Bedrock ({type(exc).__name__}: {exc})")
            if not out:
                raise self._error from None
            # Good frames before the bad one are delivered first, as they would have
            # been had the bad frame come in a later read: output must not depend on
            # where the reads split.
        return out

    def finish(self) -> list[EventStreamMessage]:
        if self._error is not None:
            raise self._error
        if self._pending:
            raise stream_cut(f"event stream ended inside a frame, {self._pending} bytes left over")
        return []


# ---------------------------------------------------------------------------
# pivot request -> Converse request
# ---------------------------------------------------------------------------

def _data_url(url: str, param: str) -> tuple[str, str]:
    """``data:<mime>;base64,<data>`` -> (mime, base64 data)."""
    if not url.startswith("data:"):
        if url.startswith(("http://", "https://")) and param.endswith("image_url.url"):
            raise unsupported(param, "Bedrock takes inline bytes, not URLs, and this gateway fetches image URLs "
                                     "only where its operator allows it (options.image_urls.fetch of the bedrock "
                                     "provider); send the image as a base64 data: URL")
        raise unsupported(param, "Bedrock takes inline bytes; send the file as a base64 data: URL "
                                 "(the gateway does not fetch URLs)")
    head, sep, data = url[5:].partition(",")
    mime, _, enc = head.partition(";")
    if not sep or enc.lower() != "base64":
        raise bad_request("expected a base64 data: URL (data:<type>;base64,<data>)", param)
    return mime.lower(), data


def _part_image_url(part: Any) -> str | None:
    if not isinstance(part, dict) or part.get("type") != "image_url":
        return None
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    return url if isinstance(url, str) else None


def _image_block(part: dict[str, Any], param: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise bad_request("image_url.url must be a string", param + ".image_url.url")
    mime, data = _data_url(url, param + ".image_url.url")
    fmt = IMAGE_FORMATS.get(mime)
    if fmt is None:
        raise unsupported(param + ".image_url.url", f"image type '{mime}' (Bedrock takes png, jpeg, gif, webp)")
    # image_url.detail has no Converse equivalent: a documented drop.
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _document_block(part: dict[str, Any], param: str, n: int) -> dict[str, Any]:
    f = part.get("file")
    if not isinstance(f, dict) or not isinstance(f.get("file_data"), str):
        raise unsupported(param + ".file", "only inline file_data (a base64 data: URL) is supported")
    mime, data = _data_url(f["file_data"], param + ".file.file_data")
    fmt = DOCUMENT_FORMATS.get(mime)
    if fmt is None:
        raise unsupported(param + ".file.file_data", f"document type '{mime}'")
    # Converse requires a name and only allows letters, digits, spaces, - ( ) [ ].
    raw = str(f.get("filename") or f"document-{n}").rsplit(".", 1)[0]
    name = "".join(c if c.isalnum() or c in " -()[]" else "-" for c in raw).strip() or f"document-{n}"
    return {"document": {"format": fmt, "name": name, "source": {"bytes": data}}}


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request("content must be a string or a list of parts", param)
    out: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        p = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise bad_request("a content part must be an object", p)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request("text must be a string", p + ".text")
            if part["text"]:
                out.append({"text": part["text"]})
        elif kind == "image_url":
            out.append(_image_block(part, p))
        elif kind == "file":
            out.append(_document_block(part, p, i))
        else:
            raise unsupported(p + ".type", f"content part type '{kind}'")
    return out


def _text_only(content: Any, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request("content must be a string or a list of text parts", param)
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise unsupported(f"{param}[{i}]", "only text parts are supported here")
    return "".join(iter_text_parts(content))


def _reasoning_blocks(blocks: Any, param: str) -> list[dict[str, Any]]:
    """Pivot ``thinking_blocks`` -> Converse ``reasoningContent`` blocks.

    Only signed thinking and redacted thinking go back: Claude verifies the
    signature and rejects unsigned reasoning, and a block with an ``id`` came from
    OpenAI Responses (its signature is OpenAI's).  Those are documented drops.
    """
    if blocks is None:
        return []
    if not isinstance(blocks, list):
        raise bad_request("thinking_blocks must be a list", param)
    out: list[dict[str, Any]] = []
    for i, b in enumerate(blocks):
        if not isinstance(b, dict):
            raise bad_request("a thinking block must be an object", f"{param}[{i}]")
        if b.get("id") is not None:
            continue
        if b.get("type") == "thinking":
            if b.get("signature"):
                out.append({"reasoningContent": {"reasoningText": {"text": b.get("thinking") or "",
                                                                   "signature": b["signature"]}}})
        elif b.get("type") == "redacted_thinking":
            if b.get("data"):
                out.append({"reasoningContent": {"redactedContent": b["data"]}})
        else:
            raise bad_request(f"unknown thinking block type {b.get('type')!r}", f"{param}[{i}].type")
    return out


def _tool_use_blocks(calls: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise bad_request("tool_calls must be a list", param)
    out: list[dict[str, Any]] = []
    for i, tc in enumerate(calls):
        p = f"{param}[{i}]"
        if not isinstance(tc, dict) or not isinstance(tc.get("function"), dict):
            raise bad_request("a tool call must be an object with a function", p)
        if tc.get("type", "function") != "function":
            raise unsupported(p + ".type", f"tool call type '{tc.get('type')}'")
        fn = tc["function"]
        args = fn.get("arguments") or "{}"
        try:
            value = jsonutil.loads(args) if isinstance(args, str) else args
        except ValueError:
            raise bad_request("arguments must be a JSON object", p + ".function.arguments") from None
        if not isinstance(value, dict):
            raise bad_request("arguments must be a JSON object", p + ".function.arguments")
        if not tc.get("id") or not fn.get("name"):
            raise bad_request("a tool call needs an id and a function name", p)
        out.append({"toolUse": {"toolUseId": tc["id"], "name": fn["name"], "input": value}})
    return out


def convert_messages(messages: Any, system_prompt: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pivot messages -> (Converse ``system`` blocks, Converse ``messages``).

    Leading system and developer messages become ``system`` (after the model's
    ``system_prompt``); later ones stay in place as a marked user block.  Tool results become ``toolResult`` blocks of a user
    message.  Consecutive messages of one role are merged: Converse wants user and
    assistant turns to alternate.
    """
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    system: list[dict[str, Any]] = [{"text": system_prompt}] if system_prompt else []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request("a message must be an object", p)
        role = m.get("role")
        # ``name`` (a participant name) has no Converse field: a documented drop.
        if role in ("system", "developer"):
            text = _text_only(m.get("content"), p + ".content")
            if text and not out:
                system.append({"text": text})
            elif text:
                # Mid-conversation: Converse has one system, so the turn stays where it
                # was, as a marked user block (docs/field-policy.md).
                add("user", [{"text": system_turn_text(text)}])
        elif role == "user":
            blocks = _user_blocks(m.get("content"), p + ".content")
            if not blocks:
                raise bad_request("a user message needs some content", p + ".content")
            add("user", blocks)
        elif role == "assistant":
            blocks = _reasoning_blocks(m.get("thinking_blocks"), p + ".thinking_blocks")
            # reasoning_content alone carries no signature to verify: a documented drop.
            text = _text_only(m.get("content"), p + ".content")
            if text:
                blocks.append({"text": text})
            if m.get("tool_calls"):
                blocks.extend(_tool_use_blocks(m["tool_calls"], p + ".tool_calls"))
            if not blocks:
                raise bad_request("an assistant message needs content or tool_calls", p + ".content")
            add("assistant", blocks)
        elif role == "tool":
            if not m.get("tool_call_id"):
                raise bad_request("a tool message needs tool_call_id", p + ".tool_call_id")
            text = _text_only(m.get("content"), p + ".content")
            add("user", [{"toolResult": {"toolUseId": m["tool_call_id"], "content": [{"text": text}]}}])
        else:
            raise unsupported(p + ".role", f"role '{role}'")
    if not out:
        raise bad_request("messages must hold at least one user message", "messages")
    return system, out


def convert_tools(tools: Any, choice: Any, has_tool_blocks: bool) -> dict[str, Any] | None:
    """Pivot ``tools`` + ``tool_choice`` -> Converse ``toolConfig`` (or None)."""
    if choice is not None and not tools and choice not in ("none", "auto"):
        raise bad_request("tool_choice needs tools", "tool_choice")
    if not tools:
        return None
    if not isinstance(tools, list):
        raise bad_request("tools must be a list", "tools")
    specs: list[dict[str, Any]] = []
    for i, t in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise unsupported(p + ".type", "only function tools are supported")
        fn = t["function"]
        if not fn.get("name"):
            raise bad_request("a function tool needs a name", p + ".function.name")
        spec: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            spec["description"] = fn["description"]
        spec["inputSchema"] = {"json": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("strict") is not None:
            spec["strict"] = bool(fn["strict"])
        specs.append({"toolSpec": spec})
    conf: dict[str, Any] = {"tools": specs}
    if choice is None or choice == "auto":
        pass  # Converse's default is auto; leave it out for models that reject toolChoice
    elif choice == "required":
        conf["toolChoice"] = {"any": {}}
    elif choice == "none":
        # Converse has no "none".  A model not told about tools cannot call them, so
        # leave the tools out; but Converse rejects toolUse/toolResult blocks without
        # a toolConfig, so with those in the history there is no faithful mapping.
        if has_tool_blocks:
            raise unsupported("tool_choice", "Bedrock has no tool_choice 'none' once the conversation holds "
                                             "tool calls; use 'auto'")
        return None
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict) \
            and choice["function"].get("name"):
        conf["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
    else:
        raise bad_request("tool_choice must be 'none', 'auto', 'required' or a function", "tool_choice")
    return conf


def reasoning_level(req: dict[str, Any], model: dict[str, Any]) -> str:
    """The reasoning level for this request: off, minimal, low, medium or high.

    The order the other upstreams use: a ``reasoning_level`` already resolved by the
    core wins; else a fixed model ``reasoning`` (``off``/``low``/``medium``/``high``)
    is the operator's choice and the client's ``reasoning_effort`` is ignored (a
    documented drop); else (``auto``) the client's ``reasoning_effort`` decides; else
    the ``-thinking`` name suffix means ``high``, as for the ``anthropic`` upstream.
    """
    level = req.get("reasoning_level")
    if level is not None:
        if level not in LEVELS:
            raise bad_request(f"reasoning_level must be one of {list(LEVELS)}", "reasoning_level")
        return str(level)
    conf = model.get("reasoning") or "auto"
    if conf != "auto":
        return str(conf)
    effort = req.get("reasoning_effort")
    if effort is not None:
        if effort not in EFFORTS:
            raise bad_request(f"reasoning_effort must be one of {list(EFFORTS)}", "reasoning_effort")
        return EFFORTS[effort]
    if model.get("_thinking_alias"):
        return "high"
    return "off"


def claude_thinking(model: dict[str, Any]) -> bool:
    """Does this model take Claude's ``thinking`` field?  Option, else by model id."""
    style = (model.get("options") or {}).get("reasoning_style")
    if style is not None:
        return bool(style == "claude")
    return "anthropic.claude" in str(model.get("upstream_model") or model.get("id") or "").lower()


def _budget(level: str, model: dict[str, Any]) -> int:
    budgets = {**DEFAULT_BUDGETS, **(model.get("reasoning_budgets") or {})}
    return int(budgets[level])


def _reject_unsupported(req: dict[str, Any]) -> None:
    why = {"n": "Bedrock returns one choice", "logprobs": "Bedrock returns no log probabilities",
           "presence_penalty": "Bedrock Converse has no penalties",
           "frequency_penalty": "Bedrock Converse has no penalties",
           "logit_bias": "Bedrock Converse has no logit bias", "modalities": "Bedrock Converse answers in text only"}
    for key in sorted(req):
        value = req[key]
        if value is None or key in _HANDLED:
            continue
        if key in _DROPPED:
            fieldpolicy.drop_pivot(key)
            continue
        if key in _NEUTRAL:
            if value not in _NEUTRAL[key]:
                raise unsupported(key, why[key])
            continue
        raise unsupported(key, "Bedrock Converse has no equivalent")
    if req.get("parallel_tool_calls") is False and not _one_forced_tool(req):
        # Named as the client named it (tool_choice.disable_parallel_tool_use on /v1/messages).
        raise unsupported(fieldpolicy.client_name("parallel_tool_calls"),
                          "Bedrock Converse cannot turn parallel tool calls off")


def _one_forced_tool(req: dict[str, Any]) -> bool:
    """The answer must be a call of one given tool (a structured-output idiom: Vercel
    AI SDK's anthropic provider): with parallel calls off or on, the client reads that
    one call, so Converse, which cannot turn them off, gets the request as it is."""
    tools = req.get("tools") or []
    choice = req.get("tool_choice")
    if isinstance(choice, dict):
        return True
    return choice == "required" and isinstance(tools, list) and len(tools) == 1


def converse_request(req: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """Pivot request -> Converse JSON body (``modelId`` goes in the URL)."""
    _reject_unsupported(req)
    system, messages = convert_messages(req.get("messages"), model.get("system_prompt"))
    body: dict[str, Any] = {"messages": messages}
    if system:
        body["system"] = system

    has_tool_blocks = any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])
    tool_conf = convert_tools(req.get("tools"), req.get("tool_choice"), has_tool_blocks)
    if tool_conf:
        body["toolConfig"] = tool_conf

    inference: dict[str, Any] = {}
    max_tokens = req.get("max_completion_tokens")
    max_param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, max_param = req.get("max_tokens"), "max_tokens"
    if max_tokens is None:
        max_tokens = model.get("max_tokens")
    elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise bad_request("must be a positive integer", max_param)

    extra: dict[str, Any] = dict((model.get("options") or {}).get("additional_model_request_fields") or {})
    level = reasoning_level(req, model)
    if level != "off":
        if not claude_thinking(model):
            raise unsupported("reasoning_effort", "this Bedrock model has no thinking budget the gateway "
                                                  "knows (set options.reasoning_style to 'claude' if it does)")
        budget = _budget(level, model)
        if budget > 0:
            if max_tokens is None:
                max_tokens = budget + ANSWER_ALLOWANCE
            elif max_tokens <= budget:
                # Claude counts thinking inside max_tokens; shrink the budget to fit.
                budget = max_tokens - 1
                if budget < MIN_BUDGET:
                    raise bad_request(f"with reasoning on, {max_param} must be above {MIN_BUDGET}", max_param)
            extra["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if max_tokens is not None:
        inference["maxTokens"] = max_tokens
    if req.get("temperature") is not None:
        inference["temperature"] = req["temperature"]
    if req.get("top_p") is not None:
        inference["topP"] = req["top_p"]
    stop = req.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("stop must be a string or a list of strings", "stop")
        if stops:
            inference["stopSequences"] = stops
    if inference:
        body["inferenceConfig"] = inference
    if extra:
        body["additionalModelRequestFields"] = extra

    fmt = req.get("response_format")
    if fmt is not None:
        ftype = fmt.get("type") if isinstance(fmt, dict) else None
        if ftype == "json_schema" and isinstance(fmt.get("json_schema"), dict):
            js = fmt["json_schema"]
            definition: dict[str, Any] = {"schema": jsonutil.dumps(js.get("schema") or {})}
            if js.get("name"):
                definition["name"] = js["name"]
            if js.get("description"):
                definition["description"] = js["description"]
            body["outputConfig"] = {"textFormat": {"type": "json_schema",
                                                   "structure": {"jsonSchema": definition}}}
        elif ftype == "json_object":
            # Converse has no JSON mode without a schema: emulated by instruction.
            body["system"] = [*(body.get("system") or []), {"text": JSON_MODE_INSTRUCTION}]
        elif ftype != "text":
            raise unsupported("response_format", f"type '{ftype}' (Bedrock takes 'text', 'json_object' or "
                              "'json_schema')")

    tier = req.get("service_tier")
    if tier is not None and tier != "auto":
        if tier not in SERVICE_TIERS:
            raise unsupported("service_tier", f"'{tier}' (Bedrock has {', '.join(SERVICE_TIERS)})")
        body["serviceTier"] = {"type": tier}

    # OpenAI's user, safety_identifier and metadata land in Bedrock's requestMetadata
    # (kept with the invocation logs).
    meta: dict[str, Any] = {}
    if req.get("metadata") is not None:
        if not isinstance(req["metadata"], dict):
            raise bad_request("metadata must be an object of strings", "metadata")
        meta.update(req["metadata"])
    for key in ("user", "safety_identifier"):
        if req.get(key) is not None:
            meta[key] = req[key]
    if meta:
        body["requestMetadata"] = meta
    return body


# ---------------------------------------------------------------------------
# Converse answers -> pivot
# ---------------------------------------------------------------------------

def convert_usage(u: Any) -> dict[str, Any] | None:
    """Converse ``usage`` -> pivot usage; prompt_tokens includes cache reads and writes."""
    if not isinstance(u, dict):
        return None
    read = int(u.get("cacheReadInputTokens") or 0)
    write = int(u.get("cacheWriteInputTokens") or 0)
    prompt = int(u.get("inputTokens") or 0) + read + write
    completion = int(u.get("outputTokens") or 0)
    details: dict[str, int] = {"cached_tokens": read}
    if "cacheWriteInputTokens" in u:
        details["cache_creation_tokens"] = write
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": details}


def finish_reason(stop: Any) -> str:
    if stop in MALFORMED_STOPS:
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"Bedrock stopped the answer: {stop}")
    reason = STOP_REASONS.get(stop) if isinstance(stop, str) else None
    if reason is None:
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"Bedrock sent an unknown stopReason {stop!r}")
    return reason


def _bad(what: str) -> ProxyError:
    return ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"Bedrock sent {what}")


def translate_converse(obj: Any, ctx: StreamContext) -> dict[str, Any]:
    """A Converse response object -> pivot chat.completion."""
    if not isinstance(obj, dict):
        raise _bad("a response that is not an object")
    message = (obj.get("output") or {}).get("message") if isinstance(obj.get("output"), dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise _bad("a response without output.message.content")
    texts: list[str] = []
    reasoning: list[str] = []
    thinking: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            raise _bad("a content block that is not an object")
        if "text" in block:
            texts.append(str(block["text"]))
        elif "reasoningContent" in block:
            rc = block["reasoningContent"] or {}
            if "reasoningText" in rc:
                rt = rc["reasoningText"] or {}
                reasoning.append(str(rt.get("text") or ""))
                thinking.append({"type": "thinking", "thinking": str(rt.get("text") or ""),
                                 "signature": str(rt.get("signature") or "")})
            elif "redactedContent" in rc:
                thinking.append({"type": "redacted_thinking", "data": str(rc["redactedContent"])})
            else:
                raise _bad("a reasoningContent block of an unknown kind")
        elif "toolUse" in block:
            tu = block["toolUse"] or {}
            calls.append({"id": tu.get("toolUseId"), "type": "function",
                          "function": {"name": tu.get("name"), "arguments": jsonutil.dumps(tu.get("input") or {})}})
        else:
            raise _bad(f"a content block of an unexpected kind ({', '.join(sorted(block))})")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    if thinking:
        msg["thinking_blocks"] = thinking
    if calls:
        msg["tool_calls"] = calls
    out: dict[str, Any] = {
        "id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
        "choices": [{"index": 0, "message": msg, "finish_reason": finish_reason(obj.get("stopReason"))}],
    }
    usage = convert_usage(obj.get("usage"))
    if usage is not None:
        out["usage"] = usage
    metrics = obj.get("metrics")
    if isinstance(metrics, dict) and "latencyMs" in metrics:
        ctx.extra["upstream_latency_ms"] = metrics["latencyMs"]
    return out


class _Phase(enum.Enum):
    """ConverseStream phases and the events each accepts (exceptions: in any phase).

    START:   messageStart
    CONTENT: contentBlockStart, contentBlockDelta, contentBlockStop, messageStop
    STOPPED: metadata (usage and latency come after messageStop)
    DONE:    nothing
    FAILED:  nothing (an error was raised)
    """

    START = "start"
    CONTENT = "content"
    STOPPED = "stopped"
    DONE = "done"
    FAILED = "failed"


class _Block:
    __slots__ = ("kind", "tool_index", "text", "signature", "redacted", "closed")

    def __init__(self, kind: str, tool_index: int = -1) -> None:
        self.kind = kind              # "text" | "reasoning" | "tool"
        self.tool_index = tool_index
        self.text: list[str] = []
        self.signature = ""
        self.redacted = ""
        self.closed = False


class BedrockStream(StreamTranslator):
    """ConverseStream messages -> pivot chunks.

    Text and reasoning blocks have no ``contentBlockStart``: their first delta opens
    them.  A reasoning block's text streams as ``reasoning_content``; the whole
    block (with its signature, or its redacted bytes) is emitted as one
    ``thinking_blocks`` delta when it stops.  ``metadata`` gives the usage chunk and
    the latency (``ctx.extra["upstream_latency_ms"]``).
    """

    __slots__ = ("ctx", "phase", "blocks", "tools")

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.phase = _Phase.START
        self.blocks: dict[int, _Block] = {}
        self.tools = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.ctx.id, "object": "chat.completion.chunk", "created": self.ctx.created,
                "model": self.ctx.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def _fail(self, err: ProxyError) -> ProxyError:
        self.phase = _Phase.FAILED
        return err

    def feed(self, event: Any) -> list[dict[str, Any]]:
        headers = event.headers
        mtype = headers.get(":message-type")
        if mtype == "exception":
            etype = str(headers.get(":exception-type") or "")
            try:
                body = jsonutil.loads(event.payload)
            except ValueError:
                body = None
            msg = body.get("message") if isinstance(body, dict) else None
            if not isinstance(msg, str):
                msg = event.payload.decode("utf-8", "replace")[:500]
            raise self._fail(error_for(etype[:1].upper() + etype[1:], msg))
        if mtype == "error":
            raise self._fail(ProxyError(ErrorKind.UPSTREAM_ERROR,
                                        f"Bedrock stream error {headers.get(':error-code')}: "
                                        f"{headers.get(':error-message')}"))
        if mtype != "event":
            raise self._fail(_bad(f"an event-stream message of type {mtype!r}"))
        etype = headers.get(":event-type")
        try:
            data = jsonutil.loads(event.payload)
        except ValueError:
            raise self._fail(_bad(f"a {etype} event that is not JSON")) from None
        if not isinstance(data, dict):
            raise self._fail(_bad(f"a {etype} event that is not an object"))
        try:
            return self._event(etype, data)
        except ProxyError as err:
            raise self._fail(err) from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise self._fail(_bad(f"a malformed {etype} event ({type(exc).__name__}: {exc})")) from None

    def _event(self, etype: Any, data: dict[str, Any]) -> list[dict[str, Any]]:
        phase = self.phase
        if etype == "messageStart" and phase is _Phase.START:
            self.phase = _Phase.CONTENT
            return [self._chunk({"role": "assistant", "content": ""})]
        if phase is _Phase.CONTENT:
            if etype == "contentBlockDelta":
                return self._delta(int(data["contentBlockIndex"]), data["delta"])
            if etype == "contentBlockStart":
                return self._start(int(data["contentBlockIndex"]), data["start"])
            if etype == "contentBlockStop":
                return self._stop(int(data["contentBlockIndex"]))
            if etype == "messageStop":
                out: list[dict[str, Any]] = []
                for idx in sorted(self.blocks):
                    out.extend(self._stop(idx))
                out.append(self._chunk({}, finish_reason(data.get("stopReason"))))
                self.phase = _Phase.STOPPED
                return out
        if etype == "metadata" and phase is _Phase.STOPPED:
            self.phase = _Phase.DONE
            metrics = data.get("metrics")
            if isinstance(metrics, dict) and "latencyMs" in metrics:
                self.ctx.extra["upstream_latency_ms"] = metrics["latencyMs"]
            usage = convert_usage(data.get("usage"))
            if usage is None:
                return []
            return [{"id": self.ctx.id, "object": "chat.completion.chunk", "created": self.ctx.created,
                     "model": self.ctx.model, "choices": [], "usage": usage}]
        raise _bad(f"a {etype!r} event in phase {phase.value}")

    def _start(self, idx: int, start: dict[str, Any]) -> list[dict[str, Any]]:
        if idx in self.blocks:
            raise _bad(f"a second contentBlockStart for block {idx}")
        tu = start.get("toolUse")
        if not isinstance(tu, dict):
            raise _bad(f"a contentBlockStart of an unexpected kind ({', '.join(sorted(start))})")
        block = self.blocks[idx] = _Block("tool", self.tools)
        self.tools += 1
        return [self._chunk({"tool_calls": [{"index": block.tool_index, "id": tu["toolUseId"], "type": "function",
                                             "function": {"name": tu["name"], "arguments": ""}}]})]

    def _delta(self, idx: int, delta: dict[str, Any]) -> list[dict[str, Any]]:
        block = self.blocks.get(idx)
        if block is not None and block.closed:
            raise _bad(f"a delta for block {idx} after it stopped")
        if "text" in delta:
            if block is None:
                block = self.blocks[idx] = _Block("text")
            if block.kind != "text":
                raise _bad(f"text in {block.kind} block {idx}")
            text = str(delta["text"])
            return [self._chunk({"content": text})] if text else []
        if "reasoningContent" in delta:
            if block is None:
                block = self.blocks[idx] = _Block("reasoning")
            if block.kind != "reasoning":
                raise _bad(f"reasoning in {block.kind} block {idx}")
            rc = delta["reasoningContent"]
            if "text" in rc:
                text = str(rc["text"])
                block.text.append(text)
                return [self._chunk({"reasoning_content": text})] if text else []
            if "signature" in rc:
                block.signature += str(rc["signature"])
                return []
            if "redactedContent" in rc:
                block.redacted += str(rc["redactedContent"])
                return []
            raise _bad(f"a reasoningContent delta of an unexpected kind ({', '.join(sorted(rc))})")
        if "toolUse" in delta:
            if block is None or block.kind != "tool":
                raise _bad(f"toolUse input for block {idx}, which is not a started tool block")
            fragment = str(delta["toolUse"]["input"])
            if not fragment:
                return []
            return [self._chunk({"tool_calls": [{"index": block.tool_index,
                                                 "function": {"arguments": fragment}}]})]
        raise _bad(f"a contentBlockDelta of an unexpected kind ({', '.join(sorted(delta))})")

    def _stop(self, idx: int) -> list[dict[str, Any]]:
        block = self.blocks.get(idx)
        if block is None:
            # An empty text block may stop without any delta.
            block = self.blocks[idx] = _Block("text")
        if block.closed:
            return []
        block.closed = True
        if block.kind != "reasoning":
            return []
        if block.redacted:
            tb: dict[str, Any] = {"type": "redacted_thinking", "data": block.redacted}
        else:
            tb = {"type": "thinking", "thinking": "".join(block.text), "signature": block.signature}
        return [self._chunk({"thinking_blocks": [tb]})]

    def finish(self) -> list[dict[str, Any]]:
        if self.phase is _Phase.DONE:
            return []
        if self.phase is _Phase.FAILED:
            raise _bad("a stream that already failed")
        what = {_Phase.START: "no messageStart", _Phase.CONTENT: "no messageStop",
                _Phase.STOPPED: "no metadata after messageStop"}[self.phase]
        self.phase = _Phase.FAILED
        raise stream_cut(what)


# ---------------------------------------------------------------------------
# the provider
# ---------------------------------------------------------------------------

_SCHEMA_NAME = "providers/bedrock.options"  # read by tornado_proxy.pipeline.validation.load_schema


class BedrockProvider(Provider):
    """Amazon Bedrock Runtime, Converse API.

    Accounts: ``aws_access_key_id`` + ``aws_secret_access_key`` (+ optional
    ``aws_session_token``) for SigV4, or ``api_key`` as a Bedrock API key (bearer).
    The region comes from the account, else ``options.region``.
    """

    type_name = "bedrock"
    native_format = None
    default_base_url = ""  # per region: https://bedrock-runtime.{region}.amazonaws.com
    stream_decoder = "eventstream"

    def __init__(self, conf: dict[str, Any], clock: Callable[[], float] = time.time) -> None:
        super().__init__(conf)
        self.options: dict[str, Any] = dict(conf.get("options") or {})
        # SigV4 puts the signing time in the signature (and AWS rejects one more than
        # five minutes off), so build_request must read the clock; tests pass one in.
        self.clock = clock
        _signer_class()  # load botocore now, not on the first request
        import botocore.eventstream  # noqa: F401

    # -- remote images (fetched by the core: tornado_proxy/pipeline/images.py) --
    def urls_to_fetch(self, req: dict[str, Any], model: dict[str, Any]) -> list[str]:
        """The http(s) image URLs of the request's messages, when ``options.image_urls.fetch``."""
        if not (self.options.get("image_urls") or {}).get("fetch"):
            return []
        out: list[str] = []
        for msg in req.get("messages") or []:
            content = msg.get("content") if isinstance(msg, dict) else None
            for part in content if isinstance(content, list) else []:
                url = _part_image_url(part)
                if url is not None and url.startswith(("http://", "https://")) and url not in out:
                    out.append(url)
        return out

    def image_fetch_policy(self) -> dict[str, Any]:
        """The limits of ``options.image_urls`` (defaults: tornado_proxy.pipeline.images)."""
        return {k: v for k, v in (self.options.get("image_urls") or {}).items() if k != "fetch"}

    def inline_fetched(self, req: dict[str, Any], fetched: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
        """A copy of ``req`` with each fetched URL replaced by a base64 data: URL."""
        import base64

        messages = []
        for msg in req.get("messages") or []:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):
                parts = []
                for part in content:
                    url = _part_image_url(part)
                    if url is not None and url in fetched:
                        mime, data = fetched[url]
                        image = part["image_url"] if isinstance(part["image_url"], dict) else {}
                        part = {**part, "image_url": {**image, "url": f"data:{mime};base64,"
                                                                     + base64.b64encode(data).decode("ascii")}}
                    parts.append(part)
                msg = {**msg, "content": parts}
            messages.append(msg)
        return {**req, "messages": messages}

    # -- configuration -------------------------------------------------------
    def validate(self, models: list[dict[str, Any]]) -> list[str]:
        import jsonschema

        schema = load_schema(_SCHEMA_NAME)
        problems: list[str] = []
        prov = jsonschema.Draft202012Validator({**schema["$defs"]["provider_options"], "$defs": schema["$defs"]})
        for err in prov.iter_errors(self.options):
            problems.append(f"options{''.join(f'.{p}' for p in err.absolute_path)}: {err.message}")
        for j, a in enumerate(self.conf.get("accounts") or []):
            has_keys = bool(a.get("aws_access_key_id")) and bool(a.get("aws_secret_access_key"))
            if a.get("api_key") and (a.get("aws_access_key_id") or a.get("aws_secret_access_key")):
                problems.append(f"accounts[{j}]: give either api_key (a Bedrock API key) or AWS keys, not both")
            elif not a.get("api_key") and not has_keys:
                problems.append(f"accounts[{j}]: needs aws_access_key_id and aws_secret_access_key, or api_key")
            if not (a.get("region") or self.options.get("region")) and (has_keys or not self.base_url):
                problems.append(f"accounts[{j}]: no region (set the account's region or options.region)")
        model_schema = jsonschema.Draft202012Validator({**schema["$defs"]["model_options"], "$defs": schema["$defs"]})
        for m in models:
            for err in model_schema.iter_errors(m.get("options") or {}):
                where = "".join(f".{p}" for p in err.absolute_path)
                problems.append(f"model {m.get('id')!r}: options{where}: {err.message}")
            # A glob id ("bedrock-*") can serve any model: only a known model id is checked.
            known = m.get("upstream_model") or (None if any(c in str(m.get("id")) for c in "*?[") else m.get("id"))
            style = (m.get("options") or {}).get("reasoning_style")
            if m.get("reasoning") in ("low", "medium", "high") and (
                    style == "none" or (style is None and known and "anthropic.claude" not in str(known).lower())):
                problems.append(f"model {m.get('id')!r}: reasoning '{m['reasoning']}' needs a Claude model "
                                "(or options.reasoning_style 'claude')")
        return problems

    def region(self, account: Account) -> str:
        region = account.extra.get("region") or self.options.get("region")
        if not region:
            raise ProxyError(ErrorKind.INTERNAL, f"Bedrock account '{account.id}' has no region")
        return str(region)

    def new_decoder(self) -> EventStreamDecoder:
        return EventStreamDecoder()

    # -- the four jobs ---------------------------------------------------------
    def build_request(self, req: dict[str, Any], model: dict[str, Any], account: Account,
                      stream: bool) -> UpstreamRequest:
        body = jsonutil.dumpb(converse_request(req, model))
        model_id = str(model.get("upstream_model") or model["id"])
        base = self.base_url
        if not base or not account.api_key:
            region = self.region(account)
            base = base or f"https://bedrock-runtime.{region}.amazonaws.com"
        # The model id is one path segment: ARNs and "...-v1:0" ids are percent-encoded.
        url = f"{base}/model/{quote(model_id, safe='')}/{'converse-stream' if stream else 'converse'}"
        headers = {"Content-Type": "application/json",
                   "Accept": "application/vnd.amazon.eventstream" if stream else "application/json",
                   **self.extra_headers, **(account.extra.get("headers") or {}), **(model.get("headers") or {})}
        if account.api_key:
            headers["Authorization"] = "Bearer " + account.api_key
        else:
            key_id = account.extra.get("aws_access_key_id")
            secret = account.extra.get("aws_secret_access_key")
            if not key_id or not secret:
                raise ProxyError(ErrorKind.INTERNAL, f"Bedrock account '{account.id}' has no AWS keys")
            headers = sigv4_sign("POST", url, headers, body, access_key=str(key_id), secret_key=str(secret),
                                 session_token=account.extra.get("aws_session_token") or None,
                                 region=self.region(account), when=self.clock())
        return UpstreamRequest("POST", url, headers, body, stream)

    def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
        try:
            obj = jsonutil.loads(body)
        except ValueError:
            raise _bad("a body that is not JSON") from None
        return translate_converse(obj, ctx)

    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        return BedrockStream(ctx)

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ProxyError:
        return classify(status, headers, body)
