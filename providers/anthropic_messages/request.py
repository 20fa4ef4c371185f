"""Pivot (Chat Completions) request -> Anthropic Messages request.

``pivot_to_messages`` builds the body of ``POST /v1/messages`` from the pivot with the
field policy (what is mapped, what is dropped and why is in ``README.md``);
``resolve_reasoning`` decides the thinking level; ``native_body`` adjusts a client's own
Messages body for an ``anthropic`` upstream (model mapped, system prompt, fixed
reasoning).  The constants both halves of Anthropic Messages need (budgets, betas) live
here; ``tornado_proxy.apis.anthropic_messages`` imports them.  Shapes follow Anthropic's
API reference and the ``anthropic`` Python SDK (``types/message_create_params.py``).
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Iterable

from tornado_proxy import fieldpolicy, jsonutil

from ..base import JSON_MODE_INSTRUCTION, bad_request, unsupported
from ..toolkit import add_turn, iter_messages, iter_parts, parse_data_uri, reasoning_budget
from ..toolkit import resolve_reasoning as resolve_ask

JSON = dict[str, Any]

ANTHROPIC_VERSION = "2023-06-01"
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
# A resolved level or OpenAI reasoning_effort -> the level of our budget ("minimal" is
# Anthropic's "low"); off and "none" mean no thinking.
EFFORT_TO_LEVEL = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                   "xhigh": "high", "max": "high"}
# ... and -> Anthropic output_config.effort for adaptive thinking, which has its own scale.
EFFORT_TO_ADAPTIVE = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                      "xhigh": "xhigh", "max": "max"}

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
    """Which thinking level a request gets: ``toolkit.resolve_reasoning``'s precedence (the
    core's ``reasoning_level``, the model's fixed level, the client's ``reasoning_effort``,
    the router's alias), then a ``-thinking`` name (a glob model) means high; else none.
    """
    ask = resolve_ask(req, model)
    if ask.by is None and str(req.get("model") or "").endswith("-thinking"):
        return Reasoning("high", "high")
    if ask.level is None or ask.level == "off":
        return Reasoning(None)
    asked = ask.effort or ask.level  # the client's own effort keeps its adaptive scale (xhigh, max)
    return Reasoning(EFFORT_TO_LEVEL[asked], EFFORT_TO_ADAPTIVE[asked])



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


def image_block(part: JSON, path: str) -> JSON:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise bad_request("image_url.url is required", path + ".image_url.url")
    if url.startswith("data:"):
        media, data = parse_data_uri(url, path + ".image_url.url")
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
    media, data = parse_data_uri(data_uri, path + ".file.file_data")
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
    out: list[JSON] = []
    for ppath, part in iter_parts(content, path):
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
    system: list[JSON] = []
    turns: list[JSON] = []

    for path, m in iter_messages(messages):
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend(_content_blocks(m.get("content"), path + ".content", ("text",)))
        elif role == "user":
            add_turn(turns, "user", _content_blocks(m.get("content"), path + ".content", ("text", "image_url", "file")))
        elif role == "assistant":
            blocks = _assistant_blocks(m, path)
            if blocks:
                add_turn(turns, "assistant", blocks)
        elif role == "tool":
            add_turn(turns, "user", [_tool_result(m, path)])
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
            budget = reasoning_budget(reasoning.level, model)
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
# Native pass-through: a client's Messages body for an anthropic upstream
# ---------------------------------------------------------------------------

# Native /v1/messages/count_tokens takes these fields of a Messages request only.
COUNT_TOKENS_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers",
                       "output_config", "output_format", "context_management")


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
        # The model's fixed level or the alias: a Messages body has no reasoning_effort.
        level = resolve_reasoning({"model": body.get("model")}, model).level
        if level is not None:
            if opts.get("adaptive_thinking"):
                out["thinking"] = {"type": "adaptive"}
                if not isinstance(out.get("output_config"), dict) or "effort" not in out["output_config"]:
                    out["output_config"] = {**(out.get("output_config") or {}), "effort": level}
            else:
                budget = reasoning_budget(level, model)
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
