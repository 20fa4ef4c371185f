"""A Responses request (``/v1/responses``) -> pivot request.

Reasoning state (README, "Reasoning state"): pivot thinking blocks from any upstream
reach a Responses client as the ``encrypted_content`` of a ``reasoning`` item, in our
own envelope (``ENVELOPE_PREFIX``, ``encode_envelope``), and are unpacked again here
when the client sends it back; OpenAI's own reasoning items (``rs_`` ids) become a
block that only an OpenAI upstream can use.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

from providers.base import bad_request, unsupported
from providers.openai_responses import ENVELOPE_PREFIX, thinking_block
from providers.toolkit import iter_parts, json_path
from tornado_proxy import fieldpolicy, jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.validation import validator

JSON = dict[str, Any]

# The pivot's name for the output token limit.  ``max_tokens`` is the one every
# upstream translator reads; the OpenAI chat upstream renames it where needed.
PIVOT_MAX_TOKENS = "max_tokens"

# Responses fields with the same name and meaning in the pivot.
_TO_PIVOT_SAME = ("temperature", "top_p", "parallel_tool_calls", "metadata", "user", "safety_identifier",
                  "prompt_cache_key", "service_tier")

# The route whose field table (tornado_proxy.fieldpolicy) this client format follows.
ROUTE = "responses"
# Droppable fields with no pivot counterpart: dropped here, on every translated route.
_DROPPED_HERE = ("client_metadata", "prompt_cache_options", "prompt_cache_retention", "stream_options")

# Known Responses parameters we cannot serve on a non-Responses upstream, with why.
_CLIENT_UNSUPPORTED = {
    "background": "background responses need the upstream to keep running them",
    "conversation": "conversations live on OpenAI's servers; use previous_response_id",
    "prompt": "stored prompts live on OpenAI's servers",
    "max_tool_calls": "hosted tools are not available on this model",
    "context_management": "server-side compaction is not available on this model",
    "moderation": "not available on this model",
    "image": "not available on this model",
    "access_programs": "not available on this model",
}


def _pivot_user_content(content: Any, param: str) -> Any:
    if isinstance(content, str):
        return content
    parts: list[JSON] = []
    for p, part in iter_parts(content, param):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text") or ""})
        elif kind == "input_image":
            if not isinstance(part.get("image_url"), str):
                raise unsupported(f"{p}.file_id", "images by file id live on OpenAI's servers; send image_url")
            img: JSON = {"url": part["image_url"]}
            if part.get("detail"):
                img["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": img})
        elif kind == "input_file":
            if part.get("file_url") is not None:
                raise unsupported(f"{p}.file_url", "send the file as file_data")
            f = {k: part[k] for k in ("file_id", "file_data", "filename") if part.get(k) is not None}
            parts.append({"type": "file", "file": f})
        elif kind == "input_audio":
            parts.append({"type": "input_audio", "input_audio": part.get("input_audio")})
        else:
            raise unsupported(f"{p}.type", f"content part type {kind!r} is not supported on this model")
    return parts


def _assistant_text(content: Any, param: str) -> tuple[str | None, str | None]:
    """Assistant message content -> (text, refusal)."""
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        raise bad_request(f"{param} must be a string or a list of content parts", param)
    texts: list[str] = []
    refusals: list[str] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("output_text", "input_text", "text"):
            texts.append(part.get("text") or "")
        elif kind == "refusal":
            refusals.append(part.get("refusal") or "")
        else:
            raise bad_request(f"{param}[{i}].type must be output_text or refusal", f"{param}[{i}].type")
    return ("".join(texts) if texts else None), ("".join(refusals) if refusals else None)


def encode_envelope(blocks: list[JSON]) -> str:
    return ENVELOPE_PREFIX + base64.urlsafe_b64encode(jsonutil.dumpb(blocks)).decode("ascii")


def decode_envelope(value: str, param: str) -> list[JSON]:
    try:
        blocks = jsonutil.loads(base64.urlsafe_b64decode(value[len(ENVELOPE_PREFIX):].encode("ascii")))
    except (ValueError, binascii.Error):
        raise bad_request(f"{param} is not an encrypted_content this gateway issued", param) from None
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise bad_request(f"{param} is not an encrypted_content this gateway issued", param)
    return blocks


def _blocks_of_reasoning(item: JSON, param: str) -> list[JSON]:
    """A Responses ``reasoning`` input item -> pivot thinking blocks.

    Ours (the envelope) unpack to the blocks they carried.  OpenAI's own become a
    block with the ``rs_`` id, which only an OpenAI upstream can use.  Items with
    no encrypted_content carry nothing to restore and are skipped (README).
    """
    enc = item.get("encrypted_content")
    if not isinstance(enc, str) or not enc:
        return []
    if enc.startswith(ENVELOPE_PREFIX):
        return decode_envelope(enc, f"{param}.encrypted_content")
    return [thinking_block(item)]


def input_to_messages(inp: Any, tools: Any = None) -> list[JSON]:
    """Responses ``input`` -> pivot messages (without instructions).  ``tools``: the
    request's, to find the flattened name of a namespaced call."""
    flat_names = {(ns, name): flat for flat, (ns, name, _) in tool_names(tools).items() if ns}
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    if not isinstance(inp, list):
        raise bad_request("'input' must be a string or a list of items", "input")
    messages: list[JSON] = []
    pending: list[JSON] = []       # thinking blocks waiting for their assistant message
    open_assistant: JSON | None = None  # the assistant message function calls of this turn join

    def assistant() -> JSON:
        nonlocal open_assistant
        if open_assistant is None:
            open_assistant = {"role": "assistant", "content": None}
            messages.append(open_assistant)
        if pending:
            open_assistant.setdefault("thinking_blocks", []).extend(pending)
            pending.clear()
        return open_assistant

    for i, item in enumerate(inp):
        p = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{p} must be an object", p)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role == "assistant":
                text, refusal = _assistant_text(item.get("content"), f"{p}.content")
                msg = assistant()
                if msg.get("content") is not None or msg.get("tool_calls"):
                    # A second message in one turn: start a new assistant message.
                    open_assistant = None
                    msg = assistant()
                msg["content"] = text
                if refusal is not None:
                    msg["refusal"] = refusal
                continue
            open_assistant = None
            if role == "user":
                messages.append({"role": "user", "content": _pivot_user_content(item.get("content"), f"{p}.content")})
            elif role in ("system", "developer"):
                content = item.get("content")
                text = content if isinstance(content, str) else \
                    "".join(str(c.get("text") or "") for c in content or [] if isinstance(c, dict))
                messages.append({"role": role, "content": text})
            else:
                raise bad_request(f"{p}.role must be user, assistant, system or developer", f"{p}.role")
        elif kind == "reasoning":
            pending.extend(_blocks_of_reasoning(item, p))
        elif kind in ("function_call", "custom_tool_call"):
            if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
                raise bad_request(f"{p} needs 'call_id' and 'name'", p)
            msg = assistant()
            if kind == "custom_tool_call":
                inp = item.get("input")
                args: Any = jsonutil.dumps({CUSTOM_INPUT: inp if isinstance(inp, str) else ""})
            else:
                args = item.get("arguments")
            name = item["name"]
            ns = item.get("namespace")
            if isinstance(ns, str) and ns:
                name = flat_names.get((ns, name), name)
            msg.setdefault("tool_calls", []).append({
                "id": item["call_id"], "type": "function",
                "function": {"name": name, "arguments": args if isinstance(args, str) else ""}})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            open_assistant = None
            if not isinstance(item.get("call_id"), str):
                raise bad_request(f"{p}.call_id is required", f"{p}.call_id")
            out = item.get("output")
            content = out if isinstance(out, str) else _pivot_user_content(out, f"{p}.output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})
        elif kind == "item_reference":
            raise unsupported(f"{p}.type", "item references need OpenAI's stored items; send the item itself")
        else:
            raise unsupported(f"{p}.type", f"input item type {kind!r} is not supported on this model")
    if pending:
        # Reasoning with nothing after it: keep it on an empty assistant turn.
        assistant()
    return messages


# Hosted tools an upstream other than OpenAI cannot run, which a model may leave
# unused: dropped unless tool_choice forces them (docs/field-policy.md).
_OFFERED_HOSTED = ("web_search", "web_search_preview")
# A custom (free-form) tool becomes a function of one string argument of this name.
CUSTOM_INPUT = "input"


def tool_names(tools: Any) -> dict[str, tuple[str | None, str, str]]:
    """The pivot function name of each client tool -> (namespace, name, kind), kind
    ``function`` or ``custom``: how a call of it goes back to the client.  Functions
    of a ``namespace`` tool are flattened under their own name, or ``<ns>__<name>``
    when that name is taken."""
    out: dict[str, tuple[str | None, str, str]] = {}
    if not isinstance(tools, list):
        return out
    nested: list[tuple[str, JSON]] = []
    for t in tools:
        if not isinstance(t, dict):
            continue
        if t.get("type") in ("function", "custom") and isinstance(t.get("name"), str):
            out[t["name"]] = (None, t["name"], t["type"])
        elif t.get("type") == "namespace" and isinstance(t.get("name"), str):
            nested += [(t["name"], f) for f in t.get("tools") or [] if isinstance(f, dict)]
    for ns, f in nested:
        name = f.get("name")
        if isinstance(name, str):
            flat = name if name not in out else f"{ns}__{name}"
            out[flat] = (ns, name, "custom" if f.get("type") == "custom" else "function")
    return out


def _pivot_function(t: JSON, p: str, name: str) -> JSON:
    if t.get("type") == "custom":
        # Free-form input (apply_patch's grammar, say): a function of one string, and
        # the call goes back as a custom_tool_call with that string (docs).
        fmt = t.get("format")
        hint = ""
        if isinstance(fmt, dict) and fmt.get("type") == "grammar" and isinstance(fmt.get("definition"), str):
            hint = f" The input must follow this {fmt.get('syntax') or 'grammar'} grammar:\n{fmt['definition']}"
        params = {"type": "object", "properties": {CUSTOM_INPUT: {"type": "string", "description":
                  "The raw input of the tool." + hint}}, "required": [CUSTOM_INPUT], "additionalProperties": False}
        fn: JSON = {"name": name, "parameters": params}
        if t.get("description") is not None:
            fn["description"] = t["description"]
        return {"type": "function", "function": fn}
    if t.get("type") != "function":
        raise unsupported(f"{p}.type", f"tool type {t.get('type')!r} (a hosted tool) is not available on this model")
    fn = {"name": name, "parameters": t.get("parameters") or {"type": "object", "properties": {}}}
    if t.get("description") is not None:
        fn["description"] = t["description"]
    # Responses tools are strict unless they say otherwise.
    fn["strict"] = t.get("strict") if t.get("strict") is not None else True
    return {"type": "function", "function": fn}


def _pivot_tools(tools: Any, forced: Any = None) -> list[JSON]:
    out: list[JSON] = []
    names = {v: k for k, v in tool_names(tools).items()}     # (ns, name, kind) -> pivot name
    forced_type = forced.get("type") if isinstance(forced, dict) else None
    for i, t in enumerate(tools):
        p = f"tools[{i}]"
        kind = t.get("type") if isinstance(t, dict) else None
        if kind in ("function", "custom"):
            if not isinstance(t.get("name"), str):
                raise bad_request(f"{p}.name is required", f"{p}.name")
            out.append(_pivot_function(t, p, t["name"]))
        elif kind == "namespace":
            if not isinstance(t.get("name"), str) or not isinstance(t.get("tools"), list):
                raise bad_request(f"{p} needs 'name' and 'tools'", p)
            for j, f in enumerate(t["tools"]):
                fp = f"{p}.tools[{j}]"
                if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                    raise bad_request(f"{fp}.name is required", f"{fp}.name")
                kind_f = "custom" if f.get("type") == "custom" else "function"
                out.append(_pivot_function(f, fp, names[(t["name"], f["name"], kind_f)]))
        elif kind == "tool_search" and t.get("execution") == "client":
            # The client searches its own deferred tools: every tool is sent to this
            # upstream anyway (deferred or not), so there is nothing left to find.
            fieldpolicy.drop(ROUTE, "tools.tool_search")
        elif kind in _OFFERED_HOSTED and forced_type != kind:
            fieldpolicy.drop(ROUTE, "tools.web_search")
        else:
            raise unsupported(f"{p}.type", f"tool type {kind!r} (a hosted tool) is not available on this model")
    return out


def _pivot_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    kind = choice.get("type") if isinstance(choice, dict) else None
    raise unsupported("tool_choice.type", f"tool_choice {kind!r} is not available on this model")


def _pivot_response_format(fmt: JSON) -> JSON:
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    js: JSON = {"name": fmt.get("name"), "schema": fmt.get("schema") or {}}
    for key in ("description", "strict"):
        if key in fmt:
            js[key] = fmt[key]
    return {"type": "json_schema", "json_schema": js}


def check_request(body: Any) -> None:
    """Schema check of a Responses request (shape only; values are checked when mapped)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    errors = sorted(validator("responses.request.v1.json").iter_errors(body),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        err = errors[0]
        param = json_path("", err.absolute_path) or None
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            param = json_path("", [*err.absolute_path, extra[0]]) if extra else param
            raise ProxyError(ErrorKind.UNSUPPORTED, f"unknown parameter '{param}'", param=param)
        raise bad_request(f"'{param or 'body'}': {err.message}", param)


def responses_to_pivot_request(body: JSON, history: list[JSON] | None = None) -> JSON:
    """A Responses request -> pivot request.  ``history``: the stored conversation
    ``previous_response_id`` points at (pivot messages), put before the new input."""
    check_request(body)
    for key in _DROPPED_HERE:
        if body.get(key) is not None:
            fieldpolicy.drop(ROUTE, key)
    for key, why in _CLIENT_UNSUPPORTED.items():
        if body.get(key) not in (None, False, [], {}):
            raise unsupported(key, why)
    if body.get("truncation") not in (None, "disabled"):
        raise unsupported("truncation", "only 'disabled' is available on this model")
    if body.get("top_logprobs") not in (None, 0):
        raise unsupported("top_logprobs", "log probabilities are not available on this model")
    for i, inc in enumerate(body.get("include") or []):
        if inc != "reasoning.encrypted_content":
            raise unsupported(f"include[{i}]", f"{inc!r} is not available on this model")
    if body.get("previous_response_id") is not None and history is None:
        raise bad_request(f"Previous response with id '{body['previous_response_id']}' not found.",
                          "previous_response_id")
    messages: list[JSON] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    messages.extend(history or [])
    messages.extend(input_to_messages(body.get("input", []), body.get("tools")))
    if not any(m.get("role") != "system" for m in messages):
        raise bad_request("'input' must hold at least one item", "input")
    pivot: JSON = {"model": body["model"], "messages": messages}
    for key in _TO_PIVOT_SAME:
        if body.get(key) is not None:
            pivot[key] = body[key]
    if body.get("max_output_tokens") is not None:
        pivot[PIVOT_MAX_TOKENS] = body["max_output_tokens"]
    if body.get("tools"):
        pivot["tools"] = _pivot_tools(body["tools"], body.get("tool_choice"))
    if body.get("tool_choice") is not None:
        pivot["tool_choice"] = _pivot_tool_choice(body["tool_choice"])
    text = body.get("text") or {}
    if text.get("format") is not None:
        pivot["response_format"] = _pivot_response_format(text["format"])
    if text.get("verbosity") is not None:
        pivot["verbosity"] = text["verbosity"]
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None:
        pivot["reasoning_effort"] = effort
    if body.get("stream"):
        pivot["stream"] = True
    return pivot
