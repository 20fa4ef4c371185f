"""Pivot (Chat Completions) request -> Responses request (``POST {base_url}/responses``).

Reasoning state (README, "Reasoning state"): pivot ``thinking_blocks`` that came from a
Responses upstream (``rs_`` ids) go back as ``reasoning`` input items on the next turn,
so a chat client keeps OpenAI's reasoning across tool calls without ``store``.
"""
from __future__ import annotations

from typing import Any

from tornado_proxy import jsonutil

from ..base import bad_request, unsupported
from ..toolkit import iter_messages, iter_parts, resolve_reasoning, text_of

JSON = dict[str, Any]


# Fields Responses takes under the same name and with the same meaning.
_SAME_FIELDS = ("temperature", "top_p", "parallel_tool_calls", "metadata", "user", "safety_identifier",
                "prompt_cache_key", "prompt_cache_retention", "service_tier", "store")

# Fields with no Responses equivalent that are harmless at their neutral value
# (clients often send them explicitly); any other value is rejected.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (False,),
    "stop": ([],),
    "logit_bias": ({},),
}

# Handled by name in the translation below (or by the client side, e.g.
# stream_options.include_usage is read by the OpenAI client encoder).
_HANDLED = {
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "tools", "tool_choice", "response_format", "reasoning_effort", "reasoning_level", "verbosity",
}


def _options(provider_conf: JSON, model: JSON) -> JSON:
    """Provider options overlaid with the model's: a model may override any of them."""
    return {**(provider_conf.get("options") or {}), **(model.get("options") or {})}


def _user_parts(content: Any, param: str) -> list[JSON]:
    """Chat user content -> Responses input content parts."""
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    parts: list[JSON] = []
    for p, part in iter_parts(content, param):
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "input_text", "text": part.get("text", "")})
        elif kind == "image_url":
            img = part.get("image_url")
            url = img.get("url") if isinstance(img, dict) else img
            if not isinstance(url, str):
                raise bad_request(f"{p}.image_url.url must be a string", f"{p}.image_url.url")
            out: JSON = {"type": "input_image", "image_url": url,
                         "detail": (img.get("detail") if isinstance(img, dict) else None) or "auto"}
            parts.append(out)
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict):
                raise bad_request(f"{p}.input_audio must be an object", f"{p}.input_audio")
            parts.append({"type": "input_audio", "input_audio": {"data": audio.get("data"),
                                                                 "format": audio.get("format")}})
        elif kind == "file":
            f = part.get("file")
            if not isinstance(f, dict):
                raise bad_request(f"{p}.file must be an object", f"{p}.file")
            out = {"type": "input_file"}
            for key in ("file_id", "file_data", "filename"):
                if f.get(key) is not None:
                    out[key] = f[key]
            parts.append(out)
        else:
            raise unsupported(f"{p}.type", f"content part type {kind!r} has no Responses equivalent")
    return parts


def _tool_output(content: Any, param: str) -> Any:
    """A ``role: tool`` message's content -> function_call_output ``output``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(p.get("text", "") for p in content)
    # Mixed text and images: Responses takes a list of input parts as the output.
    return _user_parts(content, param)


def _reasoning_items(blocks: Any, param: str, store: bool) -> list[JSON]:
    """Pivot thinking blocks -> Responses ``reasoning`` input items.

    Only blocks that came from a Responses upstream (they carry the ``rs_`` id)
    can go back: another vendor's signature means nothing to OpenAI.  Without
    ``store`` the item must bring its ``encrypted_content``; a bare id would make
    OpenAI look it up and fail.  Both skips are documented in the README.
    """
    if blocks is None:
        return []
    if not isinstance(blocks, list):
        raise bad_request(f"{param} must be a list", param)
    items: list[JSON] = []
    for i, b in enumerate(blocks):
        if not isinstance(b, dict):
            raise bad_request(f"{param}[{i}] must be an object", f"{param}[{i}]")
        rid = b.get("id")
        if b.get("type") != "thinking" or not isinstance(rid, str) or not rid.startswith("rs_"):
            continue
        sig = b.get("signature") or ""
        if not sig and not store:
            continue
        text = b.get("thinking") or ""
        item: JSON = {"type": "reasoning", "id": rid,
                      "summary": [{"type": "summary_text", "text": text}] if text else []}
        if sig:
            item["encrypted_content"] = sig
        items.append(item)
    return items


def messages_to_input(messages: Any, store: bool) -> tuple[list[str], list[JSON]]:
    """Chat ``messages`` -> (instructions parts, Responses ``input`` items).

    Leading system/developer messages become ``instructions``; later ones stay in
    place as developer/system input messages, so their position is kept.
    """
    instructions: list[str] = []
    items: list[JSON] = []
    leading = True
    for p, m in iter_messages(messages):
        role = m.get("role")
        if role in ("system", "developer"):
            text = text_of(m.get("content"), f"{p}.content")
            if leading:
                instructions.append(text)
            else:
                items.append({"type": "message", "role": role,
                              "content": [{"type": "input_text", "text": text}]})
            continue
        leading = False
        if role == "user":
            items.append({"type": "message", "role": "user", "content": _user_parts(m.get("content"), f"{p}.content")})
        elif role == "assistant":
            items.extend(_reasoning_items(m.get("thinking_blocks"), f"{p}.thinking_blocks", store))
            content: list[JSON] = []
            text = text_of(m.get("content"), f"{p}.content")
            if text:
                content.append({"type": "output_text", "text": text, "annotations": []})
            if isinstance(m.get("refusal"), str) and m["refusal"]:
                content.append({"type": "refusal", "refusal": m["refusal"]})
            if content:
                items.append({"type": "message", "role": "assistant", "content": content})
            calls = m.get("tool_calls") or []
            if not isinstance(calls, list):
                raise bad_request(f"{p}.tool_calls must be a list", f"{p}.tool_calls")
            for j, c in enumerate(calls):
                cp = f"{p}.tool_calls[{j}]"
                if not isinstance(c, dict) or not isinstance(c.get("function"), dict):
                    raise bad_request(f"{cp} must be a function tool call", cp)
                if c.get("type", "function") != "function":
                    raise unsupported(f"{cp}.type", "only function tool calls map to Responses")
                fn = c["function"]
                if not isinstance(c.get("id"), str) or not isinstance(fn.get("name"), str):
                    raise bad_request(f"{cp} needs 'id' and 'function.name'", cp)
                args = fn.get("arguments")
                items.append({"type": "function_call", "call_id": c["id"], "name": fn["name"],
                              "arguments": args if isinstance(args, str) else jsonutil.dumps(args or {})})
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str):
                raise bad_request(f"{p}.tool_call_id is required for role 'tool'", f"{p}.tool_call_id")
            items.append({"type": "function_call_output", "call_id": call_id,
                          "output": _tool_output(m.get("content"), f"{p}.content")})
        elif role == "function":
            raise unsupported(f"{p}.role", "the legacy 'function' role; use 'tool'")
        else:
            raise bad_request(f"{p}.role must be system, developer, user, assistant or tool", f"{p}.role")
    return instructions, items


def _tools(tools: Any) -> list[JSON]:
    if not isinstance(tools, list):
        raise bad_request("'tools' must be a list", "tools")
    out: list[JSON] = []
    for i, t in enumerate(tools):
        p = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise unsupported(f"{p}.type", "only function tools map to Responses")
        fn = t["function"]
        if not isinstance(fn.get("name"), str):
            raise bad_request(f"{p}.function.name is required", f"{p}.function.name")
        tool: JSON = {"type": "function", "name": fn["name"],
                      "parameters": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description") is not None:
            tool["description"] = fn["description"]
        # Responses defaults ``strict`` to true, Chat Completions to false: say it.
        tool["strict"] = bool(fn.get("strict", False))
        out.append(tool)
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict) \
            and isinstance(choice["function"].get("name"), str):
        return {"type": "function", "name": choice["function"]["name"]}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        raise unsupported("tool_choice.type", "allowed_tools is not mapped")
    raise bad_request("'tool_choice' must be auto, none, required or a function choice", "tool_choice")


def _text_format(fmt: Any) -> JSON:
    if not isinstance(fmt, dict):
        raise bad_request("'response_format' must be an object", "response_format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        js = fmt.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("name"), str):
            raise bad_request("response_format.json_schema.name is required", "response_format.json_schema.name")
        out: JSON = {"type": "json_schema", "name": js["name"], "schema": js.get("schema") or {}}
        for key in ("description", "strict"):
            if key in js:
                out[key] = js[key]
        return out
    raise bad_request("response_format.type must be text, json_object or json_schema", "response_format.type")


def _reasoning(req: JSON, model: JSON, opts: JSON) -> tuple[JSON | None, bool]:
    """The ``reasoning`` object to send, and whether to ask for encrypted reasoning.

    The same order as the other upstreams: a ``reasoning_level`` resolved by the
    core wins; else the model's ``reasoning: off`` turns reasoning off whatever the
    client asks (a documented drop of ``reasoning_effort``); else a fixed model
    level; else the client's ``reasoning_effort``; else ``<model>-thinking`` means
    ``high``; else nothing is sent and the upstream's default applies.  Off also
    stops us asking for encrypted reasoning: models that do not reason may reject
    the include.  ``off_effort`` (e.g. ``none``) is sent for off if configured.
    """
    effort = req.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise bad_request("'reasoning_effort' must be a string", "reasoning_effort")
    # The client's effort goes on as sent: OpenAI knows its own scale.
    ask = resolve_reasoning(req, model, any_effort=True)
    off = ask.by in ("level", "model") and ask.level == "off"
    effort = None if off else ask.effort if ask.effort is not None else ask.level
    if off and opts.get("off_effort"):
        effort = opts["off_effort"]
    encrypted = bool(opts.get("encrypted_reasoning", True)) and not off and effort != "none"
    if effort is None:
        return None, encrypted
    out: JSON = {"effort": effort}
    summary = opts.get("reasoning_summary", "auto")
    if summary and summary != "off" and effort != "none":
        out["summary"] = summary
    return out, encrypted


def pivot_to_responses(req: JSON, model: JSON, provider_conf: JSON, stream: bool) -> JSON:
    """The whole request translation: pivot request -> Responses request body."""
    opts = _options(provider_conf, model)
    for key in req:
        if key in _HANDLED or key in _SAME_FIELDS:
            continue
        if key in _NEUTRAL:
            if req[key] is None or req[key] in _NEUTRAL[key]:
                continue
            raise unsupported(key, "the Responses API has no equivalent")
        if key in ("seed", "top_logprobs", "prediction", "audio", "modalities", "web_search_options",
                   "function_call", "functions"):
            if req[key] is None:
                continue
            raise unsupported(key, "the Responses API upstream does not take it")
        raise unsupported(key, "unknown parameter")
    store_opt = bool(opts.get("store", False))
    store = bool(req["store"]) if req.get("store") is not None else store_opt
    instructions, items = messages_to_input(req.get("messages"), store)
    if model.get("system_prompt"):
        instructions.insert(0, model["system_prompt"])
    body: JSON = {"model": model.get("upstream_model") or req.get("model"), "input": items}
    if instructions:
        body["instructions"] = "\n\n".join(instructions)
    for name in _SAME_FIELDS:
        if req.get(name) is not None:
            body[name] = req[name]
    body["store"] = store
    max_out = req.get("max_completion_tokens")
    if max_out is None:
        max_out = req.get("max_tokens")
    if max_out is None:
        max_out = model.get("max_tokens")
    if max_out is not None:
        if not isinstance(max_out, int) or isinstance(max_out, bool) or max_out < 1:
            raise bad_request("'max_tokens' must be a positive integer", "max_tokens")
        body["max_output_tokens"] = max_out
    if req.get("tools"):
        body["tools"] = _tools(req["tools"])
    if req.get("tool_choice") is not None:
        body["tool_choice"] = _tool_choice(req["tool_choice"])
    text: JSON = {}
    if req.get("response_format") is not None:
        text["format"] = _text_format(req["response_format"])
    if req.get("verbosity") is not None:
        text["verbosity"] = req["verbosity"]
    if text:
        body["text"] = text
    reasoning, encrypted = _reasoning(req, model, opts)
    if reasoning is not None:
        body["reasoning"] = reasoning
    if encrypted and not store:
        # Stateless multi-turn: OpenAI hands the reasoning back encrypted, the
        # client returns it in thinking_blocks, we replay it next turn.
        body["include"] = ["reasoning.encrypted_content"]
    if stream:
        body["stream"] = True
    return body
