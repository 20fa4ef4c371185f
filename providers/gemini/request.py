"""Pivot (OpenAI Chat Completions) request -> a ``generateContent`` body.

The field table (``_MAPPED_KEYS`` translated, ``_DROPPED_KEYS`` dropped, anything
else rejected naming the field), the provider and model ``options``, messages to
``contents`` (content parts, data URIs, tool results as ``functionResponse``, the
``thoughtSignature`` restored on ``functionCall`` parts), tools and ``tool_choice``,
and reasoning to ``thinkingConfig``.  Tool schemas go through :mod:`.schema`.
"""
from __future__ import annotations

import mimetypes
import urllib.parse
from typing import Any

from tornado_proxy import fieldpolicy, jsonutil

from ..base import bad_request, system_turn_text, unsupported
from ..toolkit import REASONING_BUDGETS, add_turn, iter_messages, iter_parts, parse_data_uri, text_of
from ..toolkit import resolve_reasoning as resolve_ask
from .schema import clean_schema


# Gemini 3 validates that the first functionCall of each step carries its
# signature; Google documents this value for history it did not produce.
SKIP_SIGNATURE = "skip_thought_signature_validator"

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

_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}



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
# request: messages
# ---------------------------------------------------------------------------

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
    parts: list[dict[str, Any]] = []
    for p, part in iter_parts(content, param):
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


# Text-only content here may hold an assistant's refusal parts too: Gemini gets them as text.
_TEXT_KINDS = ("text", "refusal")


def _tool_response(content: Any, param: str) -> dict[str, Any]:
    """A tool message's content -> functionResponse.response (a JSON object).

    A JSON object is sent as is; anything else under ``output``, the key Gemini
    documents for a function's output.
    """
    text = text_of(content, param, _TEXT_KINDS)
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
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    # tool_call_id -> (function name, position of the call in its assistant message)
    calls: dict[str, tuple[str, int]] = {}
    pending: list[tuple[int, dict[str, Any]]] = []  # functionResponse parts awaiting flush

    def push(role: str, parts: list[dict[str, Any]]) -> None:
        add_turn(contents, role, parts, "parts")

    def flush_tools() -> None:
        if pending:
            push("user", [part for _, part in sorted(pending, key=lambda x: x[0])])
            pending.clear()

    for p, msg in iter_messages(messages):
        role = msg.get("role")
        if role != "tool":
            flush_tools()
        if role in ("system", "developer"):
            text = text_of(msg.get("content"), f"{p}.content", _TEXT_KINDS)
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
            text = text_of(msg.get("content"), f"{p}.content", _TEXT_KINDS)
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
    ask = resolve_ask(req, model)
    if ask.by in ("level", "model"):
        return ask.level, None
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
    if ask.by == "client":
        return ask.level, None
    name = str(req.get("model") or "")
    upstream = str(model.get("upstream_model") or "")
    if name.endswith(("-nothinking", "-non-thinking")) and not upstream.endswith(("-nothinking", "-non-thinking")):
        return "off", None
    if ask.by == "alias" or (name.endswith("-thinking") and not upstream.endswith("-thinking")):
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
    budgets = {**REASONING_BUDGETS, **(model.get("reasoning_budgets") or {})}
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
