"""Pivot request (Chat Completions) -> Converse request body: messages and content
blocks, tools, the reasoning level and budget, the field policy."""
from __future__ import annotations

from typing import Any

from tornado_proxy import fieldpolicy, jsonutil

from ..base import JSON_MODE_INSTRUCTION, bad_request, system_turn_text, unsupported
from ..toolkit import add_turn, iter_messages, iter_parts, parse_data_uri, reasoning_budget, resolve_reasoning, text_of

# Anthropic's floor for budget_tokens.
MIN_BUDGET = 1024
# Room for the answer when the client sets no max_tokens but thinking is on: Claude
# counts thinking inside max_tokens and rejects max_tokens <= budget_tokens.
ANSWER_ALLOWANCE = 4096

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


def _data_url(url: str, param: str) -> tuple[str, str]:
    """``data:<mime>;base64,<data>`` -> (mime, base64 data)."""
    if not url.startswith("data:"):
        if url.startswith(("http://", "https://")) and param.endswith("image_url.url"):
            raise unsupported(param, "Bedrock takes inline bytes, not URLs, and this gateway fetches image URLs "
                                     "only where its operator allows it (options.image_urls.fetch of the bedrock "
                                     "provider); send the image as a base64 data: URL")
        raise unsupported(param, "Bedrock takes inline bytes; send the file as a base64 data: URL "
                                 "(the gateway does not fetch URLs)")
    return parse_data_uri(url, param)


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
    out: list[dict[str, Any]] = []
    for i, (p, part) in enumerate(iter_parts(content, param)):
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
    system: list[dict[str, Any]] = [{"text": system_prompt}] if system_prompt else []
    out: list[dict[str, Any]] = []

    for p, m in iter_messages(messages):
        role = m.get("role")
        # ``name`` (a participant name) has no Converse field: a documented drop.
        if role in ("system", "developer"):
            text = text_of(m.get("content"), p + ".content")
            if text and not out:
                system.append({"text": text})
            elif text:
                # Mid-conversation: Converse has one system, so the turn stays where it
                # was, as a marked user block (docs/field-policy.md).
                add_turn(out, "user", [{"text": system_turn_text(text)}])
        elif role == "user":
            blocks = _user_blocks(m.get("content"), p + ".content")
            if not blocks:
                raise bad_request("a user message needs some content", p + ".content")
            add_turn(out, "user", blocks)
        elif role == "assistant":
            blocks = _reasoning_blocks(m.get("thinking_blocks"), p + ".thinking_blocks")
            # reasoning_content alone carries no signature to verify: a documented drop.
            text = text_of(m.get("content"), p + ".content")
            if text:
                blocks.append({"text": text})
            if m.get("tool_calls"):
                blocks.extend(_tool_use_blocks(m["tool_calls"], p + ".tool_calls"))
            if not blocks:
                raise bad_request("an assistant message needs content or tool_calls", p + ".content")
            add_turn(out, "assistant", blocks)
        elif role == "tool":
            if not m.get("tool_call_id"):
                raise bad_request("a tool message needs tool_call_id", p + ".tool_call_id")
            text = text_of(m.get("content"), p + ".content")
            add_turn(out, "user", [{"toolResult": {"toolUseId": m["tool_call_id"], "content": [{"text": text}]}}])
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
    """The reasoning level for this request: off, minimal, low, medium or high, by
    ``toolkit.resolve_reasoning``'s precedence (a fixed model level makes the client's
    ``reasoning_effort`` a documented drop; xhigh and max get the high budget, the largest
    there is here); nothing asked is off."""
    return resolve_reasoning(req, model).level or "off"


def claude_thinking(model: dict[str, Any]) -> bool:
    """Does this model take Claude's ``thinking`` field?  Option, else by model id."""
    style = (model.get("options") or {}).get("reasoning_style")
    if style is not None:
        return bool(style == "claude")
    return "anthropic.claude" in str(model.get("upstream_model") or model.get("id") or "").lower()


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
        budget = reasoning_budget(level, model)
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
