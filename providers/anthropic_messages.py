"""Anthropic Messages, both ways.

* ``AnthropicProvider`` (type ``anthropic``): the pivot (Chat Completions) request
  -> a Messages request; a Messages response or event stream -> the pivot.
* ``AnthropicMessagesFormat`` (client format ``anthropic``, route ``/v1/messages``):
  a Messages request -> the pivot; the pivot answer -> a Messages response or an
  Anthropic event stream that the official SDK's accumulator accepts.

What is mapped, what is dropped and why is in ``README.md``; every drop
made here is listed there.  Shapes follow Anthropic's API reference and the
``anthropic`` Python SDK (``types/message_create_params.py``,
``lib/streaming/_messages.py``).
"""
from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from tornado_proxy import fieldpolicy, jsonutil
from tornado_proxy.pipeline.validation import load_schema
from tornado_proxy.errors import ErrorKind, ProxyError, anthropic_body, from_status

from .base import (JSON_MODE_INSTRUCTION, Account, ClientFormat, Phase, Provider, StreamContext,
                   StreamEncoder, StreamTranslator, TextLane, UpstreamRequest, bad_request,
                   error_message_from_body, parse_retry_after, stream_cut, text_chunk, unsupported)

JSON = dict[str, Any]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_BUDGETS = {"low": 4096, "medium": 12288, "high": 24576}
DEFAULT_MAX_TOKENS = 4096
# Thinking with a token budget needs this beta to think between tool calls;
# adaptive thinking interleaves without it.
BETA_INTERLEAVED = "interleaved-thinking-2025-05-14"
# Structured outputs went GA as ``output_config.format``; vendors still on the
# beta take ``output_format`` plus this header (model option structured_outputs: "beta").
BETA_STRUCTURED = "structured-outputs-2025-11-13"
# Anthropic takes OAuth access tokens (Claude subscriptions) only with this beta.
BETA_OAUTH = "oauth-2025-04-20"
OAUTH_TOKEN_PREFIX = "sk-ant-oat"

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
LEVELS = ("low", "medium", "high")
# OpenAI reasoning_effort -> our level (budget).  "none" means no thinking.
EFFORT_TO_LEVEL = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                   "xhigh": "high", "max": "high"}
# ... and -> Anthropic output_config.effort for adaptive thinking, which has its own scale.
EFFORT_TO_ADAPTIVE = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                      "xhigh": "xhigh", "max": "max"}

FINISH_FROM_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
STOP_FROM_FINISH = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# Anthropic error.type -> our kind (the HTTP status decides when the type is unknown).
ERROR_KINDS = {
    "invalid_request_error": ErrorKind.UPSTREAM_BAD_REQUEST,
    "authentication_error": ErrorKind.UPSTREAM_AUTH,
    "billing_error": ErrorKind.UPSTREAM_PAYMENT,
    "permission_error": ErrorKind.UPSTREAM_FORBIDDEN,
    "not_found_error": ErrorKind.UPSTREAM_NOT_FOUND,
    "request_too_large": ErrorKind.BODY_TOO_LARGE,
    "rate_limit_error": ErrorKind.UPSTREAM_RATE_LIMITED,
    "overloaded_error": ErrorKind.UPSTREAM_OVERLOADED,
    "api_error": ErrorKind.UPSTREAM_ERROR,
    "timeout_error": ErrorKind.UPSTREAM_ERROR,
}

# -- pivot request fields -------------------------------------------------------
# 1:1 renames (pivot -> Anthropic); converted fields get functions below.
SIMPLE_FIELDS = {"temperature": "temperature", "top_p": "top_p"}
# Fields with a value that changes nothing: accepted when equal to it, rejected otherwise.
NEUTRAL_VALUES: dict[str, Any] = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0,
                                  "logprobs": False, "logit_bias": {}, "modalities": ["text"]}
# Dropped: they steer OpenAI-side features that have no Anthropic counterpart and
# no effect on the answer (documented in README.md).
DROPPED_FIELDS = ("store", "metadata", "prompt_cache_key", "prompt_cache_retention",
                  "prompt_cache_options", "service_tier", "stream_options", "verbosity")
HANDLED_FIELDS = ("model", "messages", "stream", "max_tokens", "max_completion_tokens", "stop",
                  "tools", "tool_choice", "parallel_tool_calls", "response_format",
                  "reasoning_effort", "reasoning_level", "user", "safety_identifier")
# drop_params names (Chat Completions) -> the Messages field each one is.
NATIVE_DROP_FIELDS = {"temperature": "temperature", "top_p": "top_p", "stop": "stop_sequences", "user": "metadata"}


def _given(d: JSON, key: str) -> Any:
    """The value of an optional parameter; ``None`` means not given (as in OpenAI's API)."""
    return d.get(key)


# ---------------------------------------------------------------------------
# Reasoning
# ---------------------------------------------------------------------------

@dataclass
class Reasoning:
    level: str | None           # None: no thinking
    adaptive_effort: str | None = None


def resolve_reasoning(req: JSON, model: JSON) -> Reasoning:
    """Which thinking level a request gets.

    Precedence (as for the other upstreams): a ``reasoning_level`` the core already
    resolved; the model's fixed level (``off``/``low``/``medium``/``high``); the
    client's ``reasoning_effort`` (model ``auto``); a ``-thinking`` alias (high);
    else no thinking.
    """
    resolved = _given(req, "reasoning_level")
    if resolved is not None:
        if resolved == "off":
            return Reasoning(None)
        if resolved not in EFFORT_TO_LEVEL:
            raise bad_request(f"reasoning_level '{resolved}' is not one of off, minimal, low, medium, high",
                              "reasoning_level")
        return Reasoning(EFFORT_TO_LEVEL[resolved], EFFORT_TO_ADAPTIVE[resolved])
    conf = model.get("reasoning") or "auto"
    if conf == "off":
        return Reasoning(None)
    if conf in LEVELS:
        return Reasoning(conf, conf)
    effort = _given(req, "reasoning_effort")
    if effort is not None:
        if effort == "none":
            return Reasoning(None)
        level = EFFORT_TO_LEVEL.get(effort)
        if level is None:
            raise bad_request(f"reasoning_effort '{effort}' is not one of none, minimal, low, medium, "
                              "high, xhigh, max", "reasoning_effort")
        return Reasoning(level, EFFORT_TO_ADAPTIVE[effort])
    if model.get("_thinking_alias") or str(req.get("model") or "").endswith("-thinking"):
        return Reasoning("high", "high")
    return Reasoning(None)


def budget_for(level: str, model: JSON) -> int:
    budgets = {**DEFAULT_BUDGETS, **(model.get("reasoning_budgets") or {})}
    return int(budgets[level])


# ---------------------------------------------------------------------------
# Pivot request -> Messages request
# ---------------------------------------------------------------------------

def _cache_control(part: JSON) -> JSON | None:
    """A part's prompt-cache marker: Anthropic's own ``cache_control`` (pivot
    extension) or OpenAI's ``prompt_cache_breakpoint``."""
    cc = part.get("cache_control")
    if isinstance(cc, dict):
        return cc
    bp = part.get("prompt_cache_breakpoint")
    if isinstance(bp, dict):
        # Anthropic's TTLs are 5m (default) and 1h; 12h asks for the longest there is.
        return {"type": "ephemeral", "ttl": "1h"} if bp.get("ttl") == "12h" else {"type": "ephemeral"}
    return None


def _with_cache(block: JSON, part: JSON) -> JSON:
    cc = _cache_control(part)
    if cc is not None:
        block["cache_control"] = cc
    return block


def _split_data_uri(uri: str, path: str) -> tuple[str, str]:
    header, sep, data = uri.partition(",")
    if not sep or not header.startswith("data:") or not header.endswith(";base64"):
        raise bad_request("expected a base64 data: URI ('data:<type>;base64,<data>')", path)
    return header[5:-7].split(";")[0].lower(), data


def image_block(part: JSON, path: str) -> JSON:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise bad_request("image_url.url is required", path + ".image_url.url")
    if url.startswith("data:"):
        media, data = _split_data_uri(url, path + ".image_url.url")
        if media not in IMAGE_MEDIA_TYPES:
            raise unsupported(path + ".image_url.url",
                              f"image type '{media}' (Anthropic takes {', '.join(IMAGE_MEDIA_TYPES)})")
        source: JSON = {"type": "base64", "media_type": media, "data": data}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise bad_request("image_url.url must be an http(s) URL or a data: URI", path + ".image_url.url")
    return _with_cache({"type": "image", "source": source}, part)


def file_block(part: JSON, path: str) -> JSON:
    f = part.get("file") or {}
    if f.get("file_id"):
        raise unsupported(path + ".file.file_id", "OpenAI file ids mean nothing to Anthropic; send file_data")
    data_uri = f.get("file_data")
    if not isinstance(data_uri, str):
        raise bad_request("file.file_data is required", path + ".file.file_data")
    media, data = _split_data_uri(data_uri, path + ".file.file_data")
    if media == "application/pdf":
        source: JSON = {"type": "base64", "media_type": media, "data": data}
    elif media == "text/plain":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise bad_request("file_data is not base64 UTF-8 text", path + ".file.file_data") from None
        source = {"type": "text", "media_type": media, "data": text}
    else:
        raise unsupported(path + ".file.file_data", f"file type '{media}' (Anthropic takes PDF and plain text)")
    block: JSON = {"type": "document", "source": source}
    if f.get("filename"):
        block["title"] = f["filename"]
    return _with_cache(block, part)


def _content_blocks(content: Any, path: str, allowed: tuple[str, ...]) -> list[JSON]:
    """Chat Completions ``content`` (string or parts) -> Anthropic blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise bad_request("content must be a string or a list of parts", path)
    out: list[JSON] = []
    for j, part in enumerate(content):
        ppath = f"{path}[{j}]"
        if not isinstance(part, dict):
            raise bad_request("a content part must be an object", ppath)
        ptype = part.get("type")
        if ptype not in allowed:
            raise unsupported(ppath + ".type", f"part type '{ptype}' here")
        if ptype in ("text", "refusal"):
            text = part.get(ptype)
            if not isinstance(text, str):
                raise bad_request(f"'{ptype}' must be a string", f"{ppath}.{ptype}")
            if text:  # Anthropic rejects empty text blocks; an empty part says nothing
                out.append(_with_cache({"type": "text", "text": text}, part))
        elif ptype == "image_url":
            out.append(image_block(part, ppath))
        elif ptype == "file":
            out.append(file_block(part, ppath))
    return out


def _tool_arguments(args: Any, path: str) -> JSON:
    if args is None or args == "":
        return {}
    if isinstance(args, dict):
        return args
    try:
        parsed = jsonutil.loads(args)
    except (ValueError, TypeError):
        raise bad_request("tool call arguments are not valid JSON", path) from None
    if not isinstance(parsed, dict):
        raise bad_request("tool call arguments must be a JSON object", path)
    return parsed


def _assistant_blocks(m: JSON, path: str) -> list[JSON]:
    blocks: list[JSON] = []
    # Thinking goes first: Anthropic wants a turn's thinking before its text and tool use.
    for k, tb in enumerate(m.get("thinking_blocks") or ()):
        tpath = f"{path}.thinking_blocks[{k}]"
        if not isinstance(tb, dict):
            raise bad_request("a thinking block must be an object", tpath)
        if tb.get("id") is not None:
            # An OpenAI Responses reasoning item: its "signature" is OpenAI's encrypted
            # content, which Anthropic would reject.
            continue
        if tb.get("type") == "thinking":
            if not tb.get("signature"):
                # Reasoning from an upstream that signs nothing cannot be verified by
                # Anthropic; the text alone is not accepted as thinking.
                continue
            blocks.append({"type": "thinking", "thinking": tb.get("thinking") or "", "signature": tb["signature"]})
        elif tb.get("type") == "redacted_thinking":
            if not isinstance(tb.get("data"), str):
                raise bad_request("redacted_thinking needs 'data'", tpath + ".data")
            blocks.append({"type": "redacted_thinking", "data": tb["data"]})
        else:
            raise bad_request(f"unknown thinking block type '{tb.get('type')}'", tpath + ".type")
    if m.get("function_call"):
        raise unsupported(path + ".function_call", "use tool_calls")
    if m.get("audio"):
        raise unsupported(path + ".audio", "Anthropic has no audio output")
    blocks.extend(_content_blocks(m.get("content"), path + ".content", ("text", "refusal")))
    if isinstance(m.get("refusal"), str) and m["refusal"]:
        blocks.append({"type": "text", "text": m["refusal"]})  # what the assistant said, as text
    for k, tc in enumerate(m.get("tool_calls") or ()):
        cpath = f"{path}.tool_calls[{k}]"
        if not isinstance(tc, dict) or tc.get("type", "function") != "function":
            raise unsupported(cpath + ".type", "only function tool calls map to Anthropic tool_use")
        fn = tc.get("function") or {}
        if not tc.get("id") or not fn.get("name"):
            raise bad_request("a tool call needs an id and function.name", cpath)
        blocks.append({"type": "tool_use", "id": tc["id"], "name": fn["name"],
                       "input": _tool_arguments(fn.get("arguments"), cpath + ".function.arguments")})
    return blocks


def _tool_result(m: JSON, path: str) -> JSON:
    if not m.get("tool_call_id"):
        raise bad_request("a tool message needs tool_call_id", path + ".tool_call_id")
    content = m.get("content")
    block: JSON = {"type": "tool_result", "tool_use_id": m["tool_call_id"]}
    if isinstance(content, str) or content is None:
        block["content"] = content or ""
    else:
        block["content"] = _content_blocks(content, path + ".content", ("text", "image_url"))
    return block


def convert_messages(messages: Any) -> tuple[list[JSON], list[JSON]]:
    """Chat messages -> (system blocks, Anthropic turns), same-role turns merged."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    system: list[JSON] = []
    turns: list[JSON] = []

    def push(role: str, blocks: list[JSON]) -> None:
        # Anthropic wants user/assistant alternating: consecutive same-role messages
        # (tool results followed by a user message, for one) become one turn.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for i, m in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request("a message must be an object", path)
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(_content_blocks(m.get("content"), path + ".content", ("text",)))
        elif role == "user":
            push("user", _content_blocks(m.get("content"), path + ".content", ("text", "image_url", "file")))
        elif role == "assistant":
            blocks = _assistant_blocks(m, path)
            if blocks:
                push("assistant", blocks)
        elif role == "tool":
            push("user", [_tool_result(m, path)])
        elif role == "function":
            raise unsupported(path + ".role", "'function' messages are deprecated; use tool messages")
        else:
            raise bad_request(f"unknown role '{role}'", path + ".role")
    return system, turns


def convert_tools(req: JSON) -> tuple[list[JSON] | None, JSON | None, bool]:
    """tools / tool_choice / parallel_tool_calls -> (tools, tool_choice, strict used)."""
    tools = _given(req, "tools") or []
    choice = _given(req, "tool_choice")
    parallel = _given(req, "parallel_tool_calls")
    if _given(req, "functions") is not None or _given(req, "function_call") is not None:
        raise unsupported("functions", "the deprecated functions API; use tools")
    out: list[JSON] = []
    strict = False
    for i, t in enumerate(tools):
        path = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function":
            raise unsupported(path + ".type", "only function tools map to Anthropic tools")
        fn = t.get("function") or {}
        if not fn.get("name"):
            raise bad_request("a tool needs function.name", path + ".function.name")
        tool: JSON = {"name": fn["name"]}
        if fn.get("description"):
            tool["description"] = fn["description"]
        tool["input_schema"] = fn.get("parameters") or {"type": "object", "properties": {}}
        if fn.get("strict"):
            tool["strict"] = True
            strict = True
        cc = t.get("cache_control")
        if isinstance(cc, dict):
            tool["cache_control"] = cc
        out.append(tool)

    tc: JSON | None = None
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = {(a.get("function") or {}).get("name") for a in allowed.get("tools") or ()
                 if isinstance(a, dict)}
        missing = names - {t["name"] for t in out}
        if missing:
            raise bad_request(f"allowed_tools names unknown tools {sorted(n for n in missing if n)}",
                              "tool_choice.allowed_tools.tools")
        # Anthropic has no allow-list: sending only the allowed tools has the same effect.
        out = [t for t in out if t["name"] in names]
        choice = "required" if allowed.get("mode") == "required" else "auto"
    if choice is None or choice == "auto":
        tc = {"type": "auto"} if out and parallel is False else None
    elif choice == "none":
        tc = {"type": "none"} if out else None
    elif choice == "required":
        tc = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in {t["name"] for t in out}:
            raise bad_request(f"tool_choice names '{name}', which is not in tools", "tool_choice.function.name")
        tc = {"type": "tool", "name": name}
    else:
        raise unsupported("tool_choice", f"{jsonutil.dumps(choice)}")
    if tc is not None and tc["type"] in ("any", "tool") and not out:
        raise bad_request("tool_choice requires tools", "tool_choice")
    if tc is not None and parallel is False and tc["type"] != "none":
        tc["disable_parallel_tool_use"] = True
    return (out or None), tc, strict


def _check_unsupported(req: JSON) -> None:
    for key, value in req.items():
        if value is None or key in HANDLED_FIELDS or key in SIMPLE_FIELDS:
            continue
        if key in DROPPED_FIELDS:
            fieldpolicy.drop_pivot(key)
            continue
        if key.startswith("_"):
            continue  # gateway-internal annotations
        if key in NEUTRAL_VALUES:
            if value == NEUTRAL_VALUES[key]:
                continue
            raise unsupported(key, f"Anthropic only supports the default ({jsonutil.dumps(NEUTRAL_VALUES[key])})")
        if key in ("functions", "function_call"):
            continue  # convert_tools names them
        raise unsupported(key, "Anthropic has no equivalent")


def _system_blocks(model: JSON, system: list[JSON]) -> list[JSON]:
    prompt = model.get("system_prompt")
    return ([{"type": "text", "text": prompt}] if prompt else []) + system


def _merge_betas(*groups: Iterable[str]) -> list[str]:
    out: list[str] = []
    for g in groups:
        for b in g:
            for part in b.split(","):
                part = part.strip()
                if part and part not in out:
                    out.append(part)
    return out


def pivot_to_messages(req: JSON, model: JSON, stream: bool) -> tuple[JSON, list[str]]:
    """Pivot request -> (Messages request body, ``anthropic-beta`` values it needs)."""
    opts = model.get("options") or {}
    _check_unsupported(req)
    drop = set(opts.get("drop_params") or ())
    system, turns = convert_messages(req.get("messages"))
    tools, tool_choice, strict = convert_tools(req)
    betas: list[str] = list(opts.get("betas") or ())

    max_tokens = _given(req, "max_completion_tokens") or _given(req, "max_tokens") \
        or model.get("max_tokens") or DEFAULT_MAX_TOKENS
    body: JSON = {"model": model["upstream_model"], "max_tokens": int(max_tokens)}
    system = _system_blocks(model, system)
    if system:
        body["system"] = system
    body["messages"] = turns
    if tools:
        body["tools"] = tools
    if tool_choice:
        body["tool_choice"] = tool_choice

    reasoning = resolve_reasoning(req, model)
    if reasoning.level is not None and tool_choice and tool_choice["type"] in ("any", "tool"):
        # Anthropic rejects thinking together with forced tool use; the forced tool
        # is what the client asked for explicitly, so this turn goes without thinking.
        reasoning = Reasoning(None)
    output_config: JSON = {}
    if reasoning.level is not None:
        if opts.get("adaptive_thinking"):
            body["thinking"] = {"type": "adaptive"}
            output_config["effort"] = reasoning.adaptive_effort or reasoning.level
        else:
            budget = budget_for(reasoning.level, model)
            body["thinking"] = {"type": "enabled", "budget_tokens": budget}
            if body["max_tokens"] <= budget:
                # max_tokens counts thinking too: keep the asked-for room for the answer.
                body["max_tokens"] = budget + body["max_tokens"]
            if tools and opts.get("interleaved_thinking", True):
                betas.append(BETA_INTERLEAVED)

    rf = _given(req, "response_format")
    if rf is not None:
        rtype = rf.get("type") if isinstance(rf, dict) else None
        if rtype == "json_schema":
            js = rf.get("json_schema") or {}
            if not isinstance(js.get("schema"), dict):
                raise bad_request("response_format.json_schema.schema is required", "response_format.json_schema.schema")
            fmt = {"type": "json_schema", "schema": js["schema"]}
            mode = opts.get("structured_outputs", "ga")
            if mode == "none":
                raise unsupported("response_format", "this model has no structured outputs")
            if mode == "beta":
                body["output_format"] = fmt
                betas.append(BETA_STRUCTURED)
            else:
                output_config["format"] = fmt
        elif rtype == "json_object":
            # Anthropic has no JSON mode without a schema: emulated by instruction.
            body["system"] = [*(body.get("system") or []), {"type": "text", "text": JSON_MODE_INSTRUCTION}]
        elif rtype != "text":
            raise bad_request(f"unknown response_format type '{rtype}'", "response_format.type")
    if strict and opts.get("structured_outputs") == "beta":
        betas.append(BETA_STRUCTURED)
    if output_config:
        body["output_config"] = output_config

    stop = _given(req, "stop")
    if stop is not None and "stop" not in drop:
        seqs = [stop] if isinstance(stop, str) else list(stop)
        if seqs:
            body["stop_sequences"] = seqs
    thinking_on = "thinking" in body
    for src, dst in SIMPLE_FIELDS.items():
        value = _given(req, src)
        if value is None or src in drop:
            continue
        if src == "temperature" and value > 1:
            raise unsupported("temperature", f"{value} is above Anthropic's maximum of 1")
        if thinking_on and src == "temperature":
            continue  # Anthropic requires the default temperature with thinking (documented drop)
        if thinking_on and src == "top_p" and value < 0.95:
            continue  # ... and top_p >= 0.95 (documented drop)
        body[dst] = value
    user = _given(req, "safety_identifier") or _given(req, "user")
    md = _given(req, "metadata")
    if not user and isinstance(md, dict):
        user = md.get("user_id") or md.get("user")
    if user and "user" not in drop:
        body["metadata"] = {"user_id": str(user)}
    if stream:
        body["stream"] = True
    return body, _merge_betas(betas)


# ---------------------------------------------------------------------------
# Messages response -> pivot
# ---------------------------------------------------------------------------

def usage_to_pivot(usage: JSON) -> JSON:
    """Anthropic usage -> pivot usage.  prompt_tokens includes cache reads and writes."""
    inp = int(usage.get("input_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    write = int(usage.get("cache_creation_input_tokens") or 0)
    out = int(usage.get("output_tokens") or 0)
    pivot: JSON = {
        "prompt_tokens": inp + read + write,
        "completion_tokens": out,
        "total_tokens": inp + read + write + out,
        "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": write},
    }
    details = usage.get("output_tokens_details")
    if isinstance(details, dict) and details.get("thinking_tokens") is not None:
        pivot["completion_tokens_details"] = {"reasoning_tokens": int(details["thinking_tokens"])}
    return pivot


def _finish(stop_reason: Any) -> str:
    return FINISH_FROM_STOP.get(stop_reason or "end_turn", "stop")


def message_to_pivot(msg: JSON, ctx: StreamContext) -> JSON:
    """A whole Messages response -> a pivot ``chat.completion``."""
    if not isinstance(msg, dict) or msg.get("type") != "message" or not isinstance(msg.get("content"), list):
        if isinstance(msg, dict) and msg.get("type") == "error":
            raise upstream_error_event(msg)
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream answer is not a Messages response")
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[JSON] = []
    tool_calls: list[JSON] = []
    for block in msg["content"]:
        btype = block.get("type")
        if btype == "text":
            texts.append(block.get("text") or "")
        elif btype == "thinking":
            reasoning.append(block.get("thinking") or "")
            thinking_blocks.append({"type": "thinking", "thinking": block.get("thinking") or "",
                                    "signature": block.get("signature") or ""})
        elif btype == "redacted_thinking":
            thinking_blocks.append({"type": "redacted_thinking", "data": block.get("data") or ""})
        elif btype == "tool_use":
            tool_calls.append({"id": block.get("id"), "type": "function",
                               "function": {"name": block.get("name"),
                                            "arguments": jsonutil.dumps(block.get("input") or {})}})
        # Other block types (server tools, citations' search results) only appear when
        # the request asked for them, which a pivot request cannot.
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if thinking_blocks:
        message["thinking_blocks"] = thinking_blocks
    if tool_calls:
        message["tool_calls"] = tool_calls
    out: JSON = {
        "id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(msg.get("stop_reason"))}],
    }
    if isinstance(msg.get("usage"), dict):
        out["usage"] = usage_to_pivot(msg["usage"])
    return out


def upstream_error_event(obj: JSON, status: int | None = None, headers: dict[str, str] | None = None,
                         retry_after: float | None = None) -> ProxyError:
    raw = obj.get("error")
    err: JSON = raw if isinstance(raw, dict) else {}
    etype = err.get("type")
    message = err.get("message") or etype or "upstream error"
    prefix = f"upstream returned {status}" if status else "upstream error"
    kind = ERROR_KINDS.get(etype) if isinstance(etype, str) else None
    if kind is None:
        if status is not None:
            return from_status(status, f"{prefix}: {message}", retry_after=retry_after, headers=headers)
        kind = ErrorKind.UPSTREAM_ERROR
    return ProxyError(kind, f"{prefix} ({etype}): {message}" if etype else f"{prefix}: {message}",
                      retry_after=retry_after, upstream_status=status, headers=headers)


# ---------------------------------------------------------------------------
# Messages event stream -> pivot chunks
# ---------------------------------------------------------------------------

@dataclass
class _Block:
    kind: str                     # "text" | "tool_use" | "thinking" | "redacted_thinking" | "other"
    tool_index: int = -1
    thinking: list[str] = field(default_factory=list)
    signature: str = ""
    data: str = ""
    start_input: Any = None       # a tool_use start that already carries its input
    sent_args: bool = False


class AnthropicStream(StreamTranslator):
    """Anthropic SSE events -> pivot chunks.  Keyed by content-block index.

    Phases and the events each accepts (``ping`` and unknown event types are
    ignored in every phase but DONE; ``error`` raises in any):

    * START: ``message_start`` -> CONTENT (role chunk).
    * CONTENT: ``content_block_start/delta/stop``, ``message_delta``;
      ``message_stop`` -> DONE (finish chunk, usage chunk).
    * DONE: nothing.
    """

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.phase = Phase.START
        self.blocks: dict[int, _Block] = {}
        self.n_tools = 0
        self.usage: JSON = {}
        self.stop_reason: str | None = None
        # The fused text lane while a text block is open (None otherwise).
        self._lane: TextLane | None = None

    def text_lane(self) -> TextLane | None:
        return self._lane

    def _chunk(self, delta: JSON, finish: str | None = None) -> JSON:
        return {"id": self.ctx.id, "object": "chat.completion.chunk", "created": self.ctx.created,
                "model": self.ctx.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def _bad(self, what: str) -> ProxyError:
        self.phase = Phase.FAILED
        self._lane = None
        return ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"unexpected upstream stream event: {what}")

    def feed(self, event: Any) -> list[JSON]:
        try:
            obj = event.json()
        except ValueError:
            raise self._bad("data that is not JSON") from None
        if type(obj) is not dict:
            raise self._bad("data that is not an object")
        etype = obj.get("type") or event.event
        if etype == "content_block_delta" and self.phase is Phase.CONTENT:
            # Nearly every event, and nearly always text into an open text block.
            delta = obj.get("delta")
            if type(delta) is dict and delta.get("type") == "text_delta":
                b = self.blocks.get(obj.get("index"))  # type: ignore[arg-type]
                if b is not None and b.kind == "text":
                    text = delta.get("text")
                    return [text_chunk(self.ctx, text)] if text else []
            return self._block_delta(obj)
        if etype == "error":
            self.phase = Phase.FAILED
            self._lane = None
            raise upstream_error_event(obj)
        if self.phase is Phase.DONE or self.phase is Phase.FAILED:
            raise self._bad(f"'{etype}' after the stream ended")
        if etype == "ping":
            return []
        if self.phase is Phase.START:
            if etype != "message_start":
                raise self._bad(f"'{etype}' before message_start")
            self.phase = Phase.CONTENT
            usage = (obj.get("message") or {}).get("usage")
            if isinstance(usage, dict):
                self.usage.update({k: v for k, v in usage.items() if v is not None})
            return [self._chunk({"role": "assistant", "content": ""})]
        if etype == "content_block_start":
            return self._block_start(obj)
        if etype == "content_block_delta":
            return self._block_delta(obj)
        if etype == "content_block_stop":
            return self._block_stop(obj)
        if etype == "message_delta":
            delta = obj.get("delta") or {}
            if delta.get("stop_reason"):
                self.stop_reason = delta["stop_reason"]
            usage = obj.get("usage")
            if isinstance(usage, dict):
                # Cumulative totals: set, don't add; absent fields keep message_start's values.
                self.usage.update({k: v for k, v in usage.items() if v is not None})
            return []
        if etype == "message_stop":
            if self.blocks:
                raise self._bad(f"message_stop with block {min(self.blocks)} still open")
            self.phase = Phase.DONE
            out = [self._chunk({}, _finish(self.stop_reason))]
            if self.usage:
                out.append({"id": self.ctx.id, "object": "chat.completion.chunk", "created": self.ctx.created,
                            "model": self.ctx.model, "choices": [], "usage": usage_to_pivot(self.usage)})
            return out
        if etype == "message_start":
            raise self._bad("a second message_start")
        return []  # Anthropic may add event types; unknown ones carry nothing we map

    def _index(self, obj: JSON) -> int:
        index = obj.get("index")
        if not isinstance(index, int):
            raise self._bad(f"'{obj.get('type')}' without an index")
        return index

    def _block_start(self, obj: JSON) -> list[JSON]:
        index = self._index(obj)
        if index in self.blocks:
            raise self._bad(f"content_block_start for open block {index}")
        cb = obj.get("content_block") or {}
        kind = cb.get("type")
        if kind == "text":
            self.blocks[index] = _Block("text")
            # Deltas into this block, as Anthropic writes them (its SDK's wire format).
            self._lane = TextLane.of(b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                                     b'"delta":{"type":"text_delta","text":"' % index, b'"}}')
            return [text_chunk(self.ctx, cb["text"])] if cb.get("text") else []
        if kind == "tool_use":
            # The pivot's tool index counts tool calls only, whatever blocks came first.
            b = _Block("tool_use", tool_index=self.n_tools, start_input=cb.get("input"))
            self.n_tools += 1
            self.blocks[index] = b
            return [self._chunk({"tool_calls": [{"index": b.tool_index, "id": cb.get("id"), "type": "function",
                                                 "function": {"name": cb.get("name"), "arguments": ""}}]})]
        if kind == "thinking":
            b = _Block("thinking")
            self.blocks[index] = b
            if cb.get("thinking"):
                b.thinking.append(cb["thinking"])
                return [self._chunk({"reasoning_content": cb["thinking"]})]
            return []
        if kind == "redacted_thinking":
            self.blocks[index] = _Block("redacted_thinking", data=cb.get("data") or "")
            return []
        self.blocks[index] = _Block("other")  # server tool blocks etc.: never asked for by a pivot request
        return []

    def _block_delta(self, obj: JSON) -> list[JSON]:
        index = self._index(obj)
        b = self.blocks.get(index)
        if b is None:
            raise self._bad(f"content_block_delta for block {index}, which is not open")
        delta = obj.get("delta") or {}
        dtype = delta.get("type")
        if dtype == "text_delta" and b.kind == "text":
            text = delta.get("text") or ""
            return [text_chunk(self.ctx, text)] if text else []
        if dtype == "input_json_delta" and b.kind == "tool_use":
            part = delta.get("partial_json") or ""
            if not part:
                return []
            b.sent_args = True
            return [self._chunk({"tool_calls": [{"index": b.tool_index, "function": {"arguments": part}}]})]
        if dtype == "thinking_delta" and b.kind == "thinking":
            text = delta.get("thinking") or ""
            if not text:
                return []
            b.thinking.append(text)
            return [self._chunk({"reasoning_content": text})]
        if dtype == "signature_delta" and b.kind == "thinking":
            b.signature += delta.get("signature") or ""
            return []
        if dtype == "citations_delta" or b.kind == "other":
            return []  # citations have no Chat Completions field (documented)
        raise self._bad(f"'{dtype}' in a {b.kind} block")

    def _block_stop(self, obj: JSON) -> list[JSON]:
        index = self._index(obj)
        b = self.blocks.pop(index, None)
        if b is None:
            raise self._bad(f"content_block_stop for block {index}, which is not open")
        if b.kind == "text":
            self._lane = None
        if b.kind == "thinking":
            # The signature must survive: the complete block travels in the pivot so an
            # OpenAI-format client can send it back on its next turn.
            return [self._chunk({"thinking_blocks": [{"type": "thinking", "thinking": "".join(b.thinking),
                                                      "signature": b.signature}]})]
        if b.kind == "redacted_thinking":
            return [self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": b.data}]})]
        if b.kind == "tool_use" and not b.sent_args:
            # A call with no argument deltas: send its start input (usually {}), so the
            # client always gets parseable JSON arguments.
            args = jsonutil.dumps(b.start_input if isinstance(b.start_input, dict) else {})
            return [self._chunk({"tool_calls": [{"index": b.tool_index, "function": {"arguments": args}}]})]
        return []

    def finish(self) -> list[JSON]:
        if self.phase is not Phase.DONE:
            raise stream_cut("no message_stop" if self.phase is not Phase.START else "no message_start")
        return []

    def fail(self, err: ProxyError) -> list[JSON]:
        self.phase = Phase.FAILED
        self._lane = None
        return []


# ---------------------------------------------------------------------------
# The provider
# ---------------------------------------------------------------------------

SCHEMA_NAME = "providers/anthropic.options"  # read by tornado_proxy.pipeline.validation.load_schema
# Native /v1/messages/count_tokens takes these fields of a Messages request only.
COUNT_TOKENS_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers",
                       "output_config", "output_format", "context_management")


class AnthropicProvider(Provider):
    """Anthropic's Messages API, or any vendor serving it behind its own endpoint."""

    type_name = "anthropic"
    native_format = "anthropic"
    default_base_url = "https://api.anthropic.com"
    stream_decoder = "sse"

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        opts = conf.get("options") or {}
        self.auth: str = opts.get("auth", "x-api-key")
        self.version: str = opts.get("anthropic_version", ANTHROPIC_VERSION)
        self.messages_path: str = opts.get("messages_path", "/v1/messages")
        self.count_tokens_path: str = opts.get("count_tokens_path", "/v1/messages/count_tokens")
        self.betas: list[str] = list(opts.get("betas") or ())

    # -- configuration -------------------------------------------------------
    def validate(self, models: list[dict[str, Any]]) -> list[str]:
        import jsonschema

        schema = load_schema(SCHEMA_NAME)
        defs = schema["$defs"]
        problems: list[str] = []
        for err in jsonschema.Draft202012Validator({**defs["provider_options"], "$defs": defs}).iter_errors(
                self.conf.get("options") or {}):
            where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
            problems.append(f"options{where}: {err.message}")
        model_validator = jsonschema.Draft202012Validator({**defs["model_options"], "$defs": defs})
        for m in models:
            for err in model_validator.iter_errors(m.get("options") or {}):
                where = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
                problems.append(f"model '{m.get('id')}': options{where}: {err.message}")
        return problems

    def headers(self, account: Account, model: dict[str, Any], betas: Iterable[str],
                client_headers: dict[str, str] | None = None) -> dict[str, str]:
        h = {"content-type": "application/json", "anthropic-version": self.version}
        client_version = (client_headers or {}).get("anthropic-version")
        if client_version:
            h["anthropic-version"] = client_version
        key = account.api_key or ""
        credential = account.extra.get("credential")
        # OAuth access tokens go as Bearer.  Anthropic's own (Claude subscriptions,
        # sk-ant-oat..., from an OAuth account or a client passing one through) also need
        # the OAuth beta; a vendor's OAuth token (WorkOS...) is a plain Bearer token.
        claude_oauth = credential in ("oauth", "client") and key.startswith(OAUTH_TOKEN_PREFIX)
        if key:
            if self.auth == "bearer" or credential == "oauth" or claude_oauth:
                h["authorization"] = "Bearer " + key
            else:
                h["x-api-key"] = key
        configured: list[str] = [BETA_OAUTH] if claude_oauth else []
        for extra in (self.extra_headers, account.extra.get("headers") or {}, model.get("headers") or {}):
            for k, v in extra.items():
                if k.lower() == "anthropic-beta":
                    configured.append(v)
                else:
                    h[k.lower()] = v
        merged = _merge_betas(self.betas, configured, betas)
        if merged:
            h["anthropic-beta"] = ",".join(merged)
        return h

    # -- the four jobs -------------------------------------------------------
    def build_request(self, req: dict[str, Any], model: dict[str, Any], account: Account,
                      stream: bool) -> UpstreamRequest:
        body, betas = pivot_to_messages(req, model, stream)
        return UpstreamRequest("POST", self.base_url + self.messages_path, self.headers(account, model, betas),
                               jsonutil.dumpb(body), stream)

    def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
        try:
            obj = jsonutil.loads(body)
        except ValueError:
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream sent a body that is not JSON") from None
        return message_to_pivot(obj, ctx)

    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        return AnthropicStream(ctx)

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ProxyError:
        retry_after = parse_retry_after(headers)
        try:
            obj = jsonutil.loads(body)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
            err = upstream_error_event(obj, status, headers, retry_after)
        else:
            err = from_status(status, f"upstream returned {status}: {error_message_from_body(body)}",
                              retry_after=retry_after, headers=headers)
        if status == 529:
            # 529 is Anthropic's "overloaded", whatever the body says.
            err.kind = ErrorKind.UPSTREAM_OVERLOADED
        return err

    # -- native pass-through -------------------------------------------------
    def build_native_request(self, body: dict[str, Any], raw: bytes, model: dict[str, Any],
                             account: Account, stream: bool, client_headers: dict[str, str],
                             path: str = "") -> UpstreamRequest:
        """``/v1/messages`` (path "") or ``/v1/messages/count_tokens`` (path "/count_tokens")."""
        count = path.rstrip("/").endswith("count_tokens")
        body, betas = native_body(body, model, count)
        client_betas = (client_headers or {}).get("anthropic-beta")
        headers = self.headers(account, model, _merge_betas([client_betas] if client_betas else [], betas),
                               client_headers)
        url = self.base_url + (self.count_tokens_path if count else self.messages_path)
        return UpstreamRequest("POST", url, headers, jsonutil.dumpb(body), stream and not count)

    def stream_complete_marker(self) -> bytes | None:
        return b"message_stop"


def native_body(body: JSON, model: JSON, count_tokens: bool = False) -> tuple[JSON, list[str]]:
    """A client's Messages body for an ``anthropic`` upstream: model mapped, the
    model's system prompt prepended, its fixed reasoning level (or a ``-thinking``
    alias) applied when the client sent no ``thinking``; everything else as sent."""
    out = dict(body)
    opts = model.get("options") or {}
    betas: list[str] = list(opts.get("betas") or ())
    out["model"] = model["upstream_model"]
    # Parameters the operator declared this model rejects (model option drop_params).
    for param in opts.get("drop_params") or ():
        out.pop(NATIVE_DROP_FIELDS[param], None)
    prompt = model.get("system_prompt")
    if prompt:
        system = out.get("system")
        blocks: list[Any] = [{"type": "text", "text": prompt}]
        if isinstance(system, str) and system:
            blocks.append({"type": "text", "text": system})
        elif isinstance(system, list):
            blocks.extend(system)
        out["system"] = blocks
    if "thinking" not in out:
        conf = model.get("reasoning") or "auto"
        level = conf if conf in LEVELS else (
            "high" if conf == "auto" and (model.get("_thinking_alias") or str(body.get("model") or "").endswith("-thinking"))
            else None)
        if level is not None:
            if opts.get("adaptive_thinking"):
                out["thinking"] = {"type": "adaptive"}
                if not isinstance(out.get("output_config"), dict) or "effort" not in out["output_config"]:
                    out["output_config"] = {**(out.get("output_config") or {}), "effort": level}
            else:
                budget = budget_for(level, model)
                out["thinking"] = {"type": "enabled", "budget_tokens": budget}
                mt = out.get("max_tokens")
                if not count_tokens and isinstance(mt, int) and mt <= budget:
                    out["max_tokens"] = budget + mt
                if out.get("tools") and opts.get("interleaved_thinking", True):
                    betas.append(BETA_INTERLEAVED)
    elif isinstance(out["thinking"], dict) and out["thinking"].get("type") == "enabled" and out.get("tools") \
            and opts.get("interleaved_thinking", True) and not count_tokens:
        betas.append(BETA_INTERLEAVED)
    if "max_tokens" not in out and not count_tokens:
        out["max_tokens"] = model.get("max_tokens") or DEFAULT_MAX_TOKENS
    if count_tokens:
        out = {k: v for k, v in out.items() if k in COUNT_TOKENS_FIELDS}
    return out, betas


# ---------------------------------------------------------------------------
# Client side: Messages request -> pivot
# ---------------------------------------------------------------------------

# A client's thinking budget -> the pivot's reasoning_effort (by the default budgets).
def _effort_for_budget(budget: int) -> str:
    if budget <= DEFAULT_BUDGETS["low"]:
        return "low"
    if budget <= DEFAULT_BUDGETS["medium"]:
        return "medium"
    return "high"


# Anthropic output_config.effort -> pivot reasoning_effort (Chat Completions' scale).
ADAPTIVE_TO_EFFORT = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
MESSAGES_SIMPLE = {"temperature": "temperature", "top_p": "top_p", "stop_sequences": "stop"}
# The route whose field table (tornado_proxy.fieldpolicy) this client format follows.
ROUTE = "messages"


def _data_uri(media: str, data: str) -> str:
    return f"data:{media};base64,{data}"


def _anthropic_image(block: JSON, path: str) -> JSON:
    src = block.get("source") or {}
    stype = src.get("type")
    if stype == "base64":
        url = _data_uri(src.get("media_type") or "", src.get("data") or "")
    elif stype == "url":
        url = src.get("url") or ""
    else:
        raise unsupported(path + ".source.type", f"image source '{stype}' on this upstream")
    return {"type": "image_url", "image_url": {"url": url}}


def _anthropic_document(block: JSON, path: str) -> JSON:
    src = block.get("source") or {}
    stype = src.get("type")
    if stype == "base64" and src.get("media_type") == "application/pdf":
        f: JSON = {"file_data": _data_uri("application/pdf", src.get("data") or "")}
    elif stype == "text":
        f = {"file_data": _data_uri("text/plain", base64.b64encode(
            (src.get("data") or "").encode("utf-8")).decode("ascii"))}
    else:
        raise unsupported(path + ".source", f"document source '{stype}' on this upstream")
    if block.get("title"):
        f["filename"] = block["title"]
    return {"type": "file", "file": f}


def _user_parts(blocks: list[Any], path: str, allowed: tuple[str, ...]) -> list[JSON]:
    parts: list[JSON] = []
    for j, b in enumerate(blocks):
        bpath = f"{path}[{j}]"
        btype = b.get("type") if isinstance(b, dict) else None
        if btype not in allowed:
            raise unsupported(bpath + ".type", f"content block '{btype}' on this upstream")
        if btype == "text":
            parts.append({"type": "text", "text": b.get("text") or ""})
        elif btype == "image":
            parts.append(_anthropic_image(b, bpath))
        elif btype == "document":
            parts.append(_anthropic_document(b, bpath))
    return parts


def _collapse(parts: list[JSON]) -> str | list[JSON]:
    """Text-only content as one string: the form every OpenAI-compatible server takes."""
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts) if len(parts) <= 1 else "\n\n".join(p["text"] for p in parts)
    return parts


# The context edits that change nothing: clearing thinking but keeping all of it.
def _context_edits_noop(cm: Any) -> bool:
    if not isinstance(cm, dict) or set(cm) - {"edits"}:
        return False
    edits = cm.get("edits") or []
    return isinstance(edits, list) and all(
        isinstance(e, dict) and e.get("type") == "clear_thinking_20251015" and e.get("keep") == "all"
        and set(e) <= {"type", "keep"} for e in edits)


def _check_fields(body: JSON) -> None:
    """Every top-level field by the field policy (``tornado_proxy.fieldpolicy.MESSAGES``)."""
    for key, value in body.items():
        if value is None:
            continue
        decision = fieldpolicy.MESSAGES.get(key)
        if decision == fieldpolicy.TRANSLATED:
            continue
        if decision == fieldpolicy.DROPPABLE:
            if key == "context_management" and not _context_edits_noop(value):
                raise unsupported(key, "only Anthropic upstreams clear context; of its edits only "
                                  "clear_thinking_20251015 with keep 'all' (a no-op) can be dropped")
            fieldpolicy.drop(ROUTE, key)
            continue
        if key == "top_k":
            raise unsupported("top_k", "Chat Completions upstreams have no top_k")
        raise unsupported(key, "only Anthropic upstreams take it")
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("display") is not None:
        fieldpolicy.drop(ROUTE, "thinking.display")


def messages_to_pivot(body: JSON) -> JSON:
    """A Messages request (for a non-Anthropic upstream) -> the pivot request."""
    _check_fields(body)
    pivot: JSON = {"model": body.get("model")}
    messages: list[JSON] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list) and system:
        messages.append({"role": "system", "content": _collapse(_user_parts(system, "system", ("text",)))})
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list", "messages")
    for i, m in enumerate(raw):
        path = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request("a message must be an object", path)
        role = m.get("role")
        content = m.get("content")
        if role not in ("user", "assistant", "system"):
            # Anthropic's own words for this fault: clients' fallbacks match on them.
            raise bad_request(f"{_dotted(path)}.role: Input should be 'user', 'assistant' or 'system'",
                              path + ".role")
        if role == "system":
            if i == 0:
                raise bad_request("messages.0: use the top-level 'system' parameter for the initial system "
                                  "prompt; role 'system' must follow a user or assistant turn", path + ".role")
            # A mid-conversation system turn (Claude Code): a system message at this
            # position of the pivot; each upstream puts it where it can (docs/field-policy.md).
            if isinstance(content, list):
                content = _collapse(_user_parts(content, path + ".content", ("text",)))
            if not isinstance(content, str):
                raise bad_request(f"{_dotted(path)}.content: text-only role 'system' messages require "
                                  "a string or text blocks", path + ".content")
            messages.append({"role": "system", "content": content})
            continue
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise bad_request("content must be a string or a list of blocks", path + ".content")
        if role == "user":
            messages.extend(_user_turn(content, path + ".content"))
        else:
            messages.append(_assistant_turn(content, path + ".content"))
    pivot["messages"] = messages
    if body.get("max_tokens") is not None:
        pivot["max_tokens"] = body["max_tokens"]
    for src, dst in MESSAGES_SIMPLE.items():
        if body.get(src) is not None:
            pivot[dst] = body[src]
    tools = body.get("tools")
    if tools:
        pivot["tools"] = []
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or t.get("type") not in (None, "custom") or "input_schema" not in t:
                raise unsupported(f"tools[{i}]", f"server tool '{t.get('type') if isinstance(t, dict) else t}' "
                                  "only runs on Anthropic upstreams")
            fn: JSON = {"name": t.get("name"), "parameters": t["input_schema"]}
            if t.get("description"):
                fn["description"] = t["description"]
            if t.get("strict"):
                fn["strict"] = True
            pivot["tools"].append({"type": "function", "function": fn})
    tc = body.get("tool_choice")
    if isinstance(tc, dict):
        ttype = tc.get("type")
        if ttype == "auto":
            pivot["tool_choice"] = "auto"
        elif ttype == "any":
            pivot["tool_choice"] = "required"
        elif ttype == "none":
            pivot["tool_choice"] = "none"
        elif ttype == "tool":
            pivot["tool_choice"] = {"type": "function", "function": {"name": tc.get("name")}}
        else:
            raise bad_request(f"unknown tool_choice type '{ttype}'", "tool_choice.type")
        if tc.get("disable_parallel_tool_use"):
            pivot["parallel_tool_calls"] = False
    effort = _client_effort(body)
    if effort:
        pivot["reasoning_effort"] = effort
    fmt = body.get("output_format") or (body.get("output_config") or {}).get("format")
    if isinstance(fmt, dict):
        if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
            raise bad_request("output format must be {type: json_schema, schema: {...}}", "output_config.format")
        pivot["response_format"] = {"type": "json_schema",
                                    "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}
    if body.get("stream"):
        pivot["stream"] = True
        # The encoder needs usage for message_delta; the upstream is asked for it anyway.
        pivot["stream_options"] = {"include_usage": True}
    return pivot


def _dotted(path: str) -> str:
    """``messages[1]`` -> ``messages.1``: how Anthropic's API names a place in the body."""
    return path.replace("[", ".").replace("]", "")


def _client_effort(body: JSON) -> str | None:
    thinking = body.get("thinking")
    raw = body.get("output_config")
    oc: JSON = raw if isinstance(raw, dict) else {}
    effort = oc.get("effort")
    if effort is not None and effort not in ADAPTIVE_TO_EFFORT:
        raise bad_request(f"unknown effort '{effort}'", "output_config.effort")
    if isinstance(thinking, dict):
        ttype = thinking.get("type")
        if ttype == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int):
                raise bad_request("thinking.budget_tokens must be an integer", "thinking.budget_tokens")
            return ADAPTIVE_TO_EFFORT[effort] if effort else _effort_for_budget(budget)
        if ttype == "disabled":
            return None
        if ttype not in ("adaptive", "between_tools"):
            raise bad_request(f"unknown thinking type '{ttype}'", "thinking.type")
        # Adaptive thinking is on; with no effort Anthropic thinks at "high", its default.
        return ADAPTIVE_TO_EFFORT[effort or "high"]
    return ADAPTIVE_TO_EFFORT[effort] if effort else None


def _user_turn(content: list[Any], path: str) -> list[JSON]:
    """One Anthropic user turn -> tool messages (its tool_result blocks) then a user message."""
    out: list[JSON] = []
    rest: list[Any] = []
    moved_images: list[JSON] = []
    for j, b in enumerate(content):
        bpath = f"{path}[{j}]"
        if not isinstance(b, dict):
            raise bad_request("a content block must be an object", bpath)
        if b.get("type") != "tool_result":
            rest.append((j, b))
            continue
        if not b.get("tool_use_id"):
            raise bad_request("tool_result needs tool_use_id", bpath + ".tool_use_id")
        rc = b.get("content")
        if rc is None or isinstance(rc, str):
            text: Any = rc or ""
        else:
            parts = _user_parts(rc, bpath + ".content", ("text", "image"))
            texts = [p for p in parts if p["type"] == "text"]
            # Chat Completions tool messages take text only; images from a tool
            # (a screenshot, a read image file) follow in a user message.
            moved_images.extend(p for p in parts if p["type"] != "text")
            text = _collapse(texts) if texts else ""
        out.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": text})
    parts = moved_images + [p for j, b in rest
                            for p in _user_parts([b], f"{path}[{j}]", ("text", "image", "document"))]
    if parts:
        out.append({"role": "user", "content": _collapse(parts)})
    return out


def _assistant_turn(content: list[Any], path: str) -> JSON:
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[JSON] = []
    tool_calls: list[JSON] = []
    for j, b in enumerate(content):
        bpath = f"{path}[{j}]"
        btype = b.get("type") if isinstance(b, dict) else None
        if btype == "text":
            texts.append(b.get("text") or "")
        elif btype == "tool_use":
            tool_calls.append({"id": b.get("id"), "type": "function",
                               "function": {"name": b.get("name"), "arguments": jsonutil.dumps(b.get("input") or {})}})
        elif btype == "thinking":
            reasoning.append(b.get("thinking") or "")
            thinking_blocks.append({"type": "thinking", "thinking": b.get("thinking") or "",
                                    "signature": b.get("signature") or ""})
        elif btype == "redacted_thinking":
            thinking_blocks.append({"type": "redacted_thinking", "data": b.get("data") or ""})
        else:
            raise unsupported(bpath + ".type", f"assistant block '{btype}' on this upstream")
    msg: JSON = {"role": "assistant", "content": "".join(texts) if texts else None}
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    if thinking_blocks:
        msg["thinking_blocks"] = thinking_blocks
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return msg


# ---------------------------------------------------------------------------
# Client side: pivot answer -> Messages response / event stream
# ---------------------------------------------------------------------------

def usage_from_pivot(usage: JSON | None) -> JSON:
    """Pivot usage -> Anthropic usage (input_tokens excludes cache reads and writes)."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details") or {}
    read = int(details.get("cached_tokens") or 0)
    write = int(details.get("cache_creation_tokens") or 0)
    out: JSON = {"input_tokens": max(0, int(usage.get("prompt_tokens") or 0) - read - write),
                 "output_tokens": int(usage.get("completion_tokens") or 0),
                 "cache_creation_input_tokens": write, "cache_read_input_tokens": read}
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if reasoning:
        out["output_tokens_details"] = {"thinking_tokens": int(reasoning)}
    return out


def _tool_input(args: Any) -> JSON:
    if isinstance(args, dict):
        return args
    if not args:
        return {}
    try:
        obj = jsonutil.loads(args)
    except ValueError:
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream tool call arguments are not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream tool call arguments are not a JSON object")
    return obj


def _thinking_out(tb: JSON) -> JSON:
    if tb.get("type") == "redacted_thinking":
        return {"type": "redacted_thinking", "data": tb.get("data") or ""}
    return {"type": "thinking", "thinking": tb.get("thinking") or "", "signature": tb.get("signature") or ""}


def pivot_to_message(pivot: JSON, ctx: StreamContext) -> JSON:
    choices = pivot.get("choices") or [{}]
    choice = choices[0]
    msg = choice.get("message") or {}
    content: list[JSON] = []
    if msg.get("thinking_blocks"):
        content.extend(_thinking_out(tb) for tb in msg["thinking_blocks"])
    elif msg.get("reasoning_content"):
        # Reasoning from an upstream that signs nothing: shown as thinking, unsigned.
        content.append({"type": "thinking", "thinking": msg["reasoning_content"], "signature": ""})
    text = msg.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text") or p.get("refusal") or "" for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    elif msg.get("refusal"):
        content.append({"type": "text", "text": msg["refusal"]})
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        content.append({"type": "tool_use", "id": tc.get("id"), "name": fn.get("name"),
                        "input": _tool_input(fn.get("arguments"))})
    return {"id": ctx.id, "type": "message", "role": "assistant", "model": ctx.model, "content": content,
            "stop_reason": STOP_FROM_FINISH.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None, "usage": usage_from_pivot(pivot.get("usage"))}


def _event(name: str, obj: JSON) -> bytes:
    return b"event: " + name.encode("ascii") + b"\ndata: " + jsonutil.dumpb(obj) + b"\n\n"


class MessagesEncoder(StreamEncoder):
    """Pivot chunks -> Anthropic events, one content block open at a time.

    Phases: START (nothing sent) -> CONTENT (message_start sent; blocks open and
    close as the delta kind changes: reasoning -> ``thinking``, content -> ``text``,
    each tool call -> ``tool_use``) -> DONE (message_delta + message_stop) or
    FAILED (``event: error``).  A delta for a tool call whose block was already
    closed cannot be expressed in Anthropic's format and fails the stream.
    """

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.phase = Phase.START
        self.index = -1               # index of the last block started
        self.open: str | None = None  # type of the open block
        self.open_tool = -1           # pivot tool index of the open tool_use block
        self.open_tool_id = ""
        self.closed_tools: set[int] = set()
        self.thinking_text: list[str] = []
        self.finish_reason: str | None = None
        self.usage: JSON | None = None

    def _start(self) -> bytes:
        if self.phase is not Phase.START:
            return b""
        self.phase = Phase.CONTENT
        return _event("message_start", {"type": "message_start", "message": {
            "id": self.ctx.id, "type": "message", "role": "assistant", "model": self.ctx.model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            # Chat Completions upstreams report usage at the end; message_delta carries it.
            "usage": {"input_tokens": 0, "output_tokens": 0}}})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        if self.open == "tool_use":
            self.closed_tools.add(self.open_tool)
        self.open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _open(self, block: JSON) -> bytes:
        out = self._close()
        self.index += 1
        self.open = block["type"]
        if self.open == "thinking":
            self.thinking_text = []
        return out + _event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                    "content_block": block})

    def _delta(self, delta: JSON) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def feed(self, chunk: JSON) -> bytes:
        if self.phase is Phase.DONE or self.phase is Phase.FAILED:
            return b""
        out = self._start()
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            out += self._feed_delta(choice.get("delta") or {})
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                out += self._close()
        return out

    def _feed_delta(self, delta: JSON) -> bytes:
        out = b""
        reasoning = delta.get("reasoning_content")
        if reasoning:
            if self.open != "thinking":
                out += self._open({"type": "thinking", "thinking": "", "signature": ""})
            self.thinking_text.append(reasoning)
            out += self._delta({"type": "thinking_delta", "thinking": reasoning})
        for tb in delta.get("thinking_blocks") or ():
            out += self._thinking_block(tb)
        text = delta.get("content")
        if text:
            if self.open != "text":
                out += self._open({"type": "text", "text": ""})
            out += self._delta({"type": "text_delta", "text": text})
        refusal = delta.get("refusal")
        if refusal:
            if self.open != "text":
                out += self._open({"type": "text", "text": ""})
            out += self._delta({"type": "text_delta", "text": refusal})
        for tc in delta.get("tool_calls") or ():
            out += self._tool_call(tc)
        return out

    def _thinking_block(self, tb: JSON) -> bytes:
        out = b""
        if tb.get("type") == "redacted_thinking":
            out += self._open({"type": "redacted_thinking", "data": tb.get("data") or ""})
            return out + self._close()
        if self.open != "thinking":
            # A complete block that was not streamed as reasoning_content first.
            out += self._open({"type": "thinking", "thinking": "", "signature": ""})
            if tb.get("thinking"):
                out += self._delta({"type": "thinking_delta", "thinking": tb["thinking"]})
        if tb.get("signature"):
            out += self._delta({"type": "signature_delta", "signature": tb["signature"]})
        return out + self._close()

    def _tool_call(self, tc: JSON) -> bytes:
        index = tc.get("index", 0)
        call_id = tc.get("id")
        fn = tc.get("function") or {}
        out = b""
        # A new id starts a new call even at the same index: some servers omit the index.
        if self.open != "tool_use" or self.open_tool != index or (call_id and call_id != self.open_tool_id):
            if not call_id and index in self.closed_tools:
                self.phase = Phase.FAILED
                raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                                 f"upstream resumed tool call {index} after another block started")
            out += self._open({"type": "tool_use", "id": call_id or "", "name": fn.get("name") or "",
                               "input": {}})
            self.open_tool = index
            self.open_tool_id = call_id or ""
        args = fn.get("arguments")
        if args:
            out += self._delta({"type": "input_json_delta", "partial_json": args})
        return out

    def finish(self) -> bytes:
        if self.phase is Phase.DONE or self.phase is Phase.FAILED:
            return b""
        out = self._start() + self._close()
        self.phase = Phase.DONE
        usage = usage_from_pivot(self.usage)
        out += _event("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": STOP_FROM_FINISH.get(self.finish_reason or "stop", "end_turn"), "stop_sequence": None},
            "usage": usage})
        return out + _event("message_stop", {"type": "message_stop"})

    def fail(self, err: ProxyError) -> bytes:
        self.phase = Phase.FAILED
        # The SDK raises on an error event wherever it comes; open blocks stay open,
        # as in Anthropic's own streams.
        return _event("error", anthropic_body(err))


class AnthropicMessagesFormat(ClientFormat):
    """``/v1/messages`` as the anthropic SDK and Claude Code speak it."""

    name = "anthropic"

    def parse_request(self, body: dict[str, Any]) -> dict[str, Any]:
        return messages_to_pivot(body)

    def render_response(self, pivot: dict[str, Any], ctx: StreamContext) -> dict[str, Any]:
        return pivot_to_message(pivot, ctx)

    def new_encoder(self, ctx: StreamContext) -> StreamEncoder:
        return MessagesEncoder(ctx)

    def error_body(self, err: ProxyError) -> dict[str, Any]:
        return anthropic_body(err)

    def context_id(self, rand_hex: str) -> str:
        return "msg_" + rand_hex


# ---------------------------------------------------------------------------
# count_tokens, estimated locally for upstreams that cannot count
# ---------------------------------------------------------------------------

# Characters per token of typical English and code for Claude's tokenizer (~3.5);
# an image costs about (width*height)/750 tokens, unknown size -> Anthropic's
# documented cap of about 1600.
CHARS_PER_TOKEN = 3.5
IMAGE_TOKENS = 1600
PER_MESSAGE_TOKENS = 4
PER_TOOL_TOKENS = 8


def _text_of(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _text_of(item)
    elif isinstance(value, dict):
        btype = value.get("type")
        if btype in ("image", "document") and isinstance(value.get("source"), dict) \
                and value["source"].get("type") in ("base64", "url"):
            return  # counted as a flat image/document cost below
        for k, v in value.items():
            if k in ("role", "type", "cache_control", "signature", "id", "tool_use_id", "source"):
                continue
            yield from _text_of(v)


def _count_media(value: Any) -> int:
    if isinstance(value, list):
        return sum(_count_media(v) for v in value)
    if isinstance(value, dict):
        if value.get("type") in ("image", "document") and isinstance(value.get("source"), dict) \
                and value["source"].get("type") in ("base64", "url"):
            return 1
        return sum(_count_media(v) for v in value.values() if isinstance(v, (list, dict)))
    return 0


def estimate_input_tokens(body: JSON) -> int:
    """A local estimate for ``/v1/messages/count_tokens`` on non-Anthropic upstreams."""
    chars = 0
    media = 0
    for key in ("system", "messages"):
        for text in _text_of(body.get(key)):
            chars += len(text)
        media += _count_media(body.get(key))
    tools = body.get("tools") or []
    for t in tools:
        chars += len(jsonutil.dumps(t))
    n_messages = len(body.get("messages") or [])
    return int(math.ceil(chars / CHARS_PER_TOKEN)) + media * IMAGE_TOKENS \
        + n_messages * PER_MESSAGE_TOKENS + len(tools) * PER_TOOL_TOKENS
