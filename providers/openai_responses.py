"""OpenAI Responses API, both ways.

Upstream (``ResponsesProvider``, type ``openai-responses``): pivot Chat
Completions request -> ``POST {base_url}/responses``; the Response object or its
event stream -> pivot.  Client format (``ResponsesFormat``, ``/v1/responses``):
a Responses request -> pivot; the pivot answer -> a Response object or the
Responses event stream (``event:`` lines, ``sequence_number``), in the shapes
openai-python's ``ResponseStreamState`` accepts.

Reasoning state (README, "Reasoning state"): a Responses ``reasoning`` output
item becomes a pivot ``thinking_blocks`` entry ``{"type": "thinking",
"thinking": <summary text>, "signature": <encrypted_content>, "id": <rs_ id>}``
and goes back upstream as a ``reasoning`` input item on the next turn, so a chat
client keeps OpenAI's reasoning across tool calls without ``store``.  The other
way, pivot thinking blocks from any upstream reach a Responses client as the
``encrypted_content`` of a ``reasoning`` item, in our own envelope
(``ENVELOPE_PREFIX``), and are unpacked again when the client sends it back.

Nothing here does I/O or reads a clock: ids and times come from ``StreamContext``.
"""
from __future__ import annotations

import base64
import binascii
import enum
import functools
import urllib.parse
from typing import Any, Iterable

from providers.base import (
    Account,
    ClientFormat,
    Provider,
    StreamContext,
    StreamEncoder,
    StreamTranslator,
    UpstreamRequest,
    bad_request,
    default_classify,
    fold_chunks,
    stream_cut,
    unsupported,
)
from tornado_proxy import fieldpolicy, jsonutil
from tornado_proxy.pipeline.validation import load_schema
from tornado_proxy.errors import ErrorKind, ProxyError, openai_body

JSON = dict[str, Any]

# Reasoning items we hand to Responses clients carry pivot thinking blocks (from
# Anthropic, Gemini, Bedrock...) in this envelope: "tpr1." + base64url(JSON list).
ENVELOPE_PREFIX = "tpr1."

# Key of StreamContext.extra holding the client's Responses request (a dict): the
# Response objects we render echo its parameters, as OpenAI's do.
CTX_REQUEST = "responses.request"
# Set by the handler when the upstream's own Responses stream is passed through:
# an error then is one ``error`` event continuing the upstream's numbering
# (CTX_FAIL_SEQ, its next sequence_number), not a response of our own.
CTX_PASSTHROUGH = "responses.passthrough"
CTX_FAIL_SEQ = "responses.fail_seq"
# Where render_response / the encoder leave what they answered, for the handler
# to keep in the response store: {"pivot": chat.completion, "response": Response}.
CTX_RESULT = "responses.result"

@functools.lru_cache(maxsize=None)
def _validator(name: str) -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(load_schema(name))


def _json_path(prefix: str, parts: Iterable[Any]) -> str:
    out = prefix
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# ============================================================================
# Errors
# ============================================================================

# Responses ``error.code`` (response.failed, ``error`` events) -> our kind.
_CODE_KINDS: dict[str, ErrorKind] = {
    "rate_limit_exceeded": ErrorKind.UPSTREAM_RATE_LIMITED,
    "insufficient_quota": ErrorKind.UPSTREAM_PAYMENT,
    "server_error": ErrorKind.UPSTREAM_ERROR,
    "server_is_overloaded": ErrorKind.UPSTREAM_OVERLOADED,
    "slow_down": ErrorKind.UPSTREAM_OVERLOADED,
    "context_length_exceeded": ErrorKind.UPSTREAM_BAD_REQUEST,
    "invalid_prompt": ErrorKind.UPSTREAM_BAD_REQUEST,
    "vector_store_timeout": ErrorKind.UPSTREAM_ERROR,
}


def error_from_responses(err: Any, what: str) -> ProxyError:
    """A Responses error object (``{code, message, param?}``) -> ProxyError."""
    code = err.get("code") if isinstance(err, dict) else None
    msg = err.get("message") if isinstance(err, dict) else None
    if not isinstance(msg, str) or not msg:
        msg = "upstream reported an error"
    if isinstance(code, str) and (code.startswith("invalid_") or code.startswith("image_")
                                  or code == "empty_image_file"):
        kind = ErrorKind.UPSTREAM_BAD_REQUEST
    else:
        kind = _CODE_KINDS.get(code, ErrorKind.UPSTREAM_ERROR) if isinstance(code, str) else ErrorKind.UPSTREAM_ERROR
    suffix = f" ({code})" if isinstance(code, str) and code else ""
    return ProxyError(kind, f"{what}: {msg}{suffix}")


# Our kinds -> the ``code`` of a Responses error object.  openai-python types
# ResponseError.code as a closed list; these three are in it.
def responses_error_code(err: ProxyError) -> str:
    if err.kind in (ErrorKind.UPSTREAM_RATE_LIMITED, ErrorKind.RATE_LIMITED):
        return "rate_limit_exceeded"
    if err.status == 400:
        return "invalid_prompt"
    return "server_error"


# ============================================================================
# Pivot (Chat Completions) request -> Responses request
# ============================================================================

# 1:1 fields: pivot name -> Responses name.
_SAME_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "parallel_tool_calls": "parallel_tool_calls",
    "metadata": "metadata",
    "user": "user",
    "safety_identifier": "safety_identifier",
    "prompt_cache_key": "prompt_cache_key",
    "prompt_cache_retention": "prompt_cache_retention",
    "service_tier": "service_tier",
    "store": "store",
}

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

_REASONING_LEVELS = ("low", "medium", "high")


def _options(provider_conf: JSON, model: JSON) -> JSON:
    """Provider options overlaid with the model's: a model may override any of them."""
    return {**(provider_conf.get("options") or {}), **(model.get("options") or {})}


def _text_of(content: Any, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{param}[{i}] must be a text part here", f"{param}[{i}]")
            out.append(part["text"])
        return "".join(out)
    raise bad_request(f"{param} must be a string or a list of text parts", param)


def _user_parts(content: Any, param: str) -> list[JSON]:
    """Chat user content -> Responses input content parts."""
    if isinstance(content, str):
        return [{"type": "input_text", "text": content}]
    if not isinstance(content, list):
        raise bad_request(f"{param} must be a string or a list of content parts", param)
    parts: list[JSON] = []
    for i, part in enumerate(content):
        p = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise bad_request(f"{p} must be an object", p)
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
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    instructions: list[str] = []
    items: list[JSON] = []
    leading = True
    for i, m in enumerate(messages):
        p = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"{p} must be an object", p)
        role = m.get("role")
        if role in ("system", "developer"):
            text = _text_of(m.get("content"), f"{p}.content")
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
            text = _text_of(m.get("content"), f"{p}.content")
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
    conf = model.get("reasoning") or "auto"
    resolved = req.get("reasoning_level")
    effort = req.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise bad_request("'reasoning_effort' must be a string", "reasoning_effort")
    if resolved is not None:
        if resolved not in ("off", "minimal", "low", "medium", "high"):
            raise bad_request("reasoning_level must be off, minimal, low, medium or high", "reasoning_level")
        off = resolved == "off"
        effort = None if off else resolved
    else:
        off = conf == "off"
        if off:
            effort = None
        elif conf in _REASONING_LEVELS:
            effort = conf  # an operator's fixed level wins, as for every other upstream
        elif effort is None and model.get("_thinking_alias"):
            effort = "high"
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
    for src, dst in _SAME_FIELDS.items():
        if req.get(src) is not None:
            body[dst] = req[src]
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


# ============================================================================
# Responses response -> pivot
# ============================================================================

def usage_to_pivot(u: Any) -> JSON | None:
    if not isinstance(u, dict):
        return None
    inp = int(u.get("input_tokens") or 0)
    out = int(u.get("output_tokens") or 0)
    usage: JSON = {"prompt_tokens": inp, "completion_tokens": out,
                   "total_tokens": int(u.get("total_tokens") or inp + out)}
    idet = u.get("input_tokens_details") or {}
    odet = u.get("output_tokens_details") or {}
    usage["prompt_tokens_details"] = {"cached_tokens": int(idet.get("cached_tokens") or 0)}
    usage["completion_tokens_details"] = {"reasoning_tokens": int(odet.get("reasoning_tokens") or 0)}
    return usage


def _finish_reason(resp: JSON, has_tools: bool) -> str:
    status = resp.get("status")
    if status == "incomplete":
        reason = (resp.get("incomplete_details") or {}).get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if has_tools else "stop"


def _reasoning_texts(item: JSON) -> list[str]:
    """The visible text of a reasoning item: its raw reasoning parts, then summary parts."""
    texts = [c.get("text") or "" for c in item.get("content") or [] if isinstance(c, dict)]
    texts += [s.get("text") or "" for s in item.get("summary") or [] if isinstance(s, dict)]
    return [t for t in texts if t]


def thinking_block(item: JSON) -> JSON:
    return {"type": "thinking", "thinking": "\n\n".join(_reasoning_texts(item)),
            "signature": item.get("encrypted_content") or "", "id": item.get("id") or ""}


def responses_to_pivot(resp: Any, ctx: StreamContext) -> JSON:
    """A whole Response object -> pivot chat.completion."""
    if not isinstance(resp, dict) or not isinstance(resp.get("output"), list):
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream Response has no 'output' list")
    if resp.get("status") == "failed" or resp.get("error"):
        raise error_from_responses(resp.get("error"), "upstream response failed")
    texts: list[str] = []
    refusals: list[str] = []
    reasoning: list[str] = []
    blocks: list[JSON] = []
    calls: list[JSON] = []
    for item in resp["output"]:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or []:
                if part.get("type") == "output_text" and part.get("text"):
                    texts.append(part["text"])
                elif part.get("type") == "refusal" and part.get("refusal"):
                    refusals.append(part["refusal"])
        elif kind == "reasoning":
            reasoning.extend(_reasoning_texts(item))
            blocks.append(thinking_block(item))
        elif kind == "function_call":
            calls.append({"id": item.get("call_id") or item.get("id"), "type": "function",
                          "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}})
        # Hosted-tool items (web_search_call...) cannot appear: we never send hosted tools.
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts else None}
    if refusals:
        message["refusal"] = "".join(refusals)
    if reasoning:
        message["reasoning_content"] = "\n\n".join(reasoning)
    if blocks:
        message["thinking_blocks"] = blocks
    if calls:
        message["tool_calls"] = calls
    out: JSON = {"id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
                 "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(resp, bool(calls))}]}
    usage = usage_to_pivot(resp.get("usage"))
    if usage is not None:
        out["usage"] = usage
    return out


# ============================================================================
# Responses event stream -> pivot chunks
# ============================================================================

class StreamPhase(enum.Enum):
    """START: only ``response.created``/``queued`` (or ``error``).  OUTPUT: items and
    their deltas, ``in_progress``; ends with completed/incomplete (-> DONE) or
    failed/``error`` (-> FAILED).  Nothing is accepted after DONE or FAILED."""

    START = "start"
    OUTPUT = "output"
    DONE = "done"
    FAILED = "failed"


# Events that carry nothing the pivot needs (their content also arrives as deltas
# or in output_item.done).  Listed so that the choice is explicit.
_IGNORED_EVENTS = frozenset({
    "response.in_progress", "response.queued", "response.content_part.added", "response.content_part.done",
    "response.reasoning_summary_part.added", "response.reasoning_summary_part.done",
    "response.output_text.annotation.added", "response.refusal.done",
})


class ResponsesToPivot(StreamTranslator):
    """One upstream Responses stream -> pivot chunks (see ``StreamPhase``)."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.phase = StreamPhase.START
        self._tool_index: dict[int, int] = {}        # output_index -> pivot tool call index
        self._args_sent: set[int] = set()            # output_index of calls that got argument text
        self._text_sent: set[tuple[int, int]] = set()  # (output_index, content_index) with text out
        self._reasoning_key: tuple[int, str, int] | None = None
        self._reasoning_any = False

    # -- chunk builders ----------------------------------------------------------
    def _chunk(self, delta: JSON, finish: str | None = None) -> JSON:
        return {"id": self.ctx.id, "object": "chat.completion.chunk", "created": self.ctx.created,
                "model": self.ctx.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def _reasoning_delta(self, key: tuple[int, str, int], text: str) -> list[JSON]:
        if not text:
            return []
        if key != self._reasoning_key and self._reasoning_any:
            # A new summary part: the non-streaming translation joins parts with a
            # blank line, so the stream does too (folded == whole).
            text = "\n\n" + text
        self._reasoning_key = key
        self._reasoning_any = True
        return [self._chunk({"reasoning_content": text})]

    # -- the state machine ---------------------------------------------------------
    def feed(self, event: Any) -> list[JSON]:
        data = getattr(event, "data", None)
        if data is None or data == "" or data == "[DONE]":
            return []
        try:
            ev = jsonutil.loads(data)
        except ValueError:
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream sent an event that is not JSON") from None
        if not isinstance(ev, dict):
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream sent an event that is not an object")
        kind = ev.get("type") or getattr(event, "event", None)
        if kind == "error":
            self.phase = StreamPhase.FAILED
            raise error_from_responses(ev.get("error") if isinstance(ev.get("error"), dict) else ev,
                                       "upstream stream error")
        if self.phase is StreamPhase.START:
            if kind in ("response.created", "response.queued"):
                self.phase = StreamPhase.OUTPUT
                return [self._chunk({"role": "assistant"})]
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"upstream stream began with {kind!r}, "
                             "expected response.created")
        if self.phase is not StreamPhase.OUTPUT:
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"upstream sent {kind!r} after the response ended")
        return self._output(kind, ev)

    def _output(self, kind: Any, ev: JSON) -> list[JSON]:
        oi: int = ev.get("output_index", 0)
        if kind == "response.output_text.delta":
            self._text_sent.add((oi, ev.get("content_index", 0)))
            return [self._chunk({"content": ev.get("delta") or ""})] if ev.get("delta") else []
        if kind == "response.reasoning_summary_text.delta":
            return self._reasoning_delta((oi, "s", ev.get("summary_index", 0)), ev.get("delta") or "")
        if kind == "response.reasoning_text.delta":
            return self._reasoning_delta((oi, "c", ev.get("content_index", 0)), ev.get("delta") or "")
        if kind == "response.function_call_arguments.delta":
            idx = self._tool_index.get(oi)
            if idx is None:
                raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                                 f"function call arguments for output {oi} before its item was added")
            if not ev.get("delta"):
                return []
            self._args_sent.add(oi)
            return [self._chunk({"tool_calls": [{"index": idx, "function": {"arguments": ev["delta"]}}]})]
        if kind == "response.output_item.added":
            item = ev.get("item") or {}
            if item.get("type") != "function_call":
                return []
            idx = len(self._tool_index)
            self._tool_index[oi] = idx
            args = item.get("arguments") or ""
            if args:
                self._args_sent.add(oi)
            return [self._chunk({"tool_calls": [{
                "index": idx, "id": item.get("call_id") or item.get("id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": args}}]})]
        if kind == "response.output_item.done":
            return self._item_done(oi, ev.get("item") or {})
        if kind == "response.output_text.done":
            # A vendor that sends only the final text (no deltas) still gets through.
            if (oi, ev.get("content_index", 0)) not in self._text_sent and ev.get("text"):
                self._text_sent.add((oi, ev.get("content_index", 0)))
                return [self._chunk({"content": ev["text"]})]
            return []
        if kind == "response.refusal.delta":
            return [self._chunk({"refusal": ev.get("delta") or ""})] if ev.get("delta") else []
        if kind in ("response.reasoning_summary_text.done", "response.reasoning_text.done",
                    "response.function_call_arguments.done"):
            return []
        if kind in ("response.completed", "response.incomplete"):
            return self._end(ev.get("response") or {})
        if kind == "response.failed":
            self.phase = StreamPhase.FAILED
            raise error_from_responses((ev.get("response") or {}).get("error"), "upstream response failed")
        if kind == "response.created":
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream sent response.created twice")
        # _IGNORED_EVENTS, and event types OpenAI adds later (hosted tools, audio...):
        # they carry nothing a chat client can receive.
        return []

    def _item_done(self, oi: Any, item: JSON) -> list[JSON]:
        kind = item.get("type")
        if kind == "reasoning":
            return [self._chunk({"thinking_blocks": [thinking_block(item)]})]
        if kind == "function_call":
            idx = self._tool_index.get(oi)
            if idx is None:
                # Announced only when done: emit the whole call now.
                idx = len(self._tool_index)
                self._tool_index[oi] = idx
                self._args_sent.add(oi)
                return [self._chunk({"tool_calls": [{
                    "index": idx, "id": item.get("call_id") or item.get("id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}}]})]
            if oi not in self._args_sent and item.get("arguments"):
                self._args_sent.add(oi)
                return [self._chunk({"tool_calls": [{"index": idx, "function": {"arguments": item["arguments"]}}]})]
        return []

    def _end(self, resp: JSON) -> list[JSON]:
        self.phase = StreamPhase.DONE
        out = [self._chunk({}, _finish_reason(resp, bool(self._tool_index)))]
        usage = usage_to_pivot(resp.get("usage"))
        if usage is not None:
            out.append({"id": self.ctx.id, "object": "chat.completion.chunk", "created": self.ctx.created,
                        "model": self.ctx.model, "choices": [], "usage": usage})
        return out

    def finish(self) -> list[JSON]:
        if self.phase is StreamPhase.DONE:
            return []
        if self.phase is StreamPhase.FAILED:
            raise ProxyError(ErrorKind.UPSTREAM_ERROR, "upstream response failed")
        raise stream_cut("no response.completed")


# ============================================================================
# The upstream
# ============================================================================

class ResponsesProvider(Provider):
    type_name = "openai-responses"
    native_format = "responses"
    default_base_url = "https://api.openai.com/v1"

    def validate(self, models: list[JSON]) -> list[str]:
        problems = []
        v = _validator("providers/openai-responses.options.json")
        for err in v.iter_errors(self.conf.get("options") or {}):
            problems.append(f"{_json_path('options', err.absolute_path)}: {err.message}")
        for m in models:
            for err in v.iter_errors(m.get("options") or {}):
                problems.append(f"model {m.get('id')!r}: {_json_path('options', err.absolute_path)}: {err.message}")
        return problems

    def _headers(self, account: Account, model: JSON, stream: bool) -> dict[str, str]:
        opts = _options(self.conf, model)
        headers = {"content-type": "application/json",
                   "accept": "text/event-stream" if stream else "application/json"}
        if account.api_key:
            if opts.get("auth_header") == "api-key":
                # Azure OpenAI's key header.
                headers["api-key"] = account.api_key
            else:
                headers["authorization"] = "Bearer " + account.api_key
        headers.update(self.extra_headers)
        headers.update(account.extra.get("headers") or {})
        headers.update(model.get("headers") or {})
        return headers

    def _url(self, model: JSON, suffix: str = "") -> str:
        opts = _options(self.conf, model)
        url = self.base_url + (opts.get("path") or "/responses") + suffix
        if opts.get("api_version"):
            url += ("&" if "?" in url else "?") + "api-version=" + str(opts["api_version"])
        return url

    def build_request(self, req: JSON, model: JSON, account: Account, stream: bool) -> UpstreamRequest:
        body = pivot_to_responses(req, model, self.conf, stream)
        return UpstreamRequest("POST", self._url(model), self._headers(account, model, stream),
                               jsonutil.dumpb(body), stream)

    def translate_response(self, body: bytes, ctx: StreamContext) -> JSON:
        try:
            resp = jsonutil.loads(body)
        except ValueError:
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream answer is not JSON") from None
        return responses_to_pivot(resp, ctx)

    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        return ResponsesToPivot(ctx)

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ProxyError:
        err = default_classify(status, headers, body)
        if status == 429 and b"insufficient_quota" in body:
            # OpenAI says "429" for an empty wallet too; waiting will not help.
            return ProxyError(ErrorKind.UPSTREAM_PAYMENT, err.message, upstream_status=status, headers=headers)
        return err

    def build_native_request(self, body: JSON, raw: bytes, model: JSON, account: Account, stream: bool,
                             client_headers: dict[str, str], path: str = "") -> UpstreamRequest:
        upstream_model = model.get("upstream_model")
        prompt = model.get("system_prompt")
        if (upstream_model and body.get("model") != upstream_model) or prompt:
            body = {**body, "model": upstream_model or body.get("model")}
            if prompt:
                body["instructions"] = prompt + ("\n\n" + body["instructions"] if body.get("instructions") else "")
            raw = jsonutil.dumpb(body)
        return UpstreamRequest("POST", self._url(model, path), self._headers(account, model, stream), raw, stream)

    def build_resource_request(self, method: str, segments: list[str], query: str,
                               account: Account) -> UpstreamRequest:
        """``GET/DELETE /responses/{id}``, ``.../cancel``, ``.../input_items``.

        ``segments`` are the path's parts after ``/responses`` (each quoted here, so none
        can add a path level or a query), ``query`` an already encoded query string."""
        url = self._url({}, "".join("/" + urllib.parse.quote(s, safe="") for s in segments))
        if query:
            url += ("&" if "?" in url else "?") + query
        headers = self._headers(account, {}, False)
        if method != "POST":
            headers.pop("content-type", None)
        return UpstreamRequest(method, url, headers, b"" if method == "POST" else None, False)

    def stream_complete_marker(self) -> bytes | None:
        # Both good endings (response.completed and response.incomplete) carry the
        # final usage, at the end of their response object; no other event has
        # "input_tokens" (created/in_progress say "usage":null, items have none).
        return b'"input_tokens"'


# ============================================================================
# Responses request (client) -> pivot
# ============================================================================

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
    if not isinstance(content, list):
        raise bad_request(f"{param} must be a string or a list of content parts", param)
    parts: list[JSON] = []
    for i, part in enumerate(content):
        p = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise bad_request(f"{p} must be an object", p)
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
    errors = sorted(_validator("responses.request.v1.json").iter_errors(body),
                    key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        err = errors[0]
        param = _json_path("", err.absolute_path) or None
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            param = _json_path("", [*err.absolute_path, extra[0]]) if extra else param
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


# ============================================================================
# Pivot answer -> Response object
# ============================================================================

def _wants_summary(req: JSON) -> bool:
    r = req.get("reasoning") or {}
    return (r.get("summary") or r.get("generate_summary")) not in (None, "none")


def _wants_encrypted(req: JSON) -> bool:
    return "reasoning.encrypted_content" in (req.get("include") or [])


def _item_id(ctx: StreamContext, prefix: str, index: int) -> str:
    base = ctx.id[5:] if ctx.id.startswith("resp_") else ctx.id
    return f"{prefix}_{base}_{index}"


def usage_from_pivot(u: Any) -> JSON | None:
    if not isinstance(u, dict):
        return None
    pdet = u.get("prompt_tokens_details") or {}
    # openai-python 3.x types cache_write_tokens as required, so it is always there.
    idet: JSON = {"cached_tokens": int(pdet.get("cached_tokens") or 0),
                  "cache_write_tokens": int(pdet.get("cache_creation_tokens") or 0)}
    inp = int(u.get("prompt_tokens") or 0)
    out = int(u.get("completion_tokens") or 0)
    return {"input_tokens": inp, "input_tokens_details": idet, "output_tokens": out,
            "output_tokens_details": {
                "reasoning_tokens": int((u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)},
            "total_tokens": int(u.get("total_tokens") or inp + out)}


def response_object(ctx: StreamContext, status: str, output: list[JSON], usage: JSON | None,
                    finish_reason: str | None = None, error: JSON | None = None) -> JSON:
    """A Response object echoing the client's request, as OpenAI's do."""
    req: JSON = ctx.extra.get(CTX_REQUEST) or {}
    incomplete = None
    if status == "incomplete":
        incomplete = {"reason": "content_filter" if finish_reason == "content_filter" else "max_output_tokens"}
    reasoning = req.get("reasoning") or {}
    text = {"format": {"type": "text"}, **(req.get("text") or {})}
    return {
        "id": ctx.id, "object": "response", "created_at": ctx.created, "status": status,
        "background": False, "error": error, "incomplete_details": incomplete,
        "instructions": req.get("instructions"), "max_output_tokens": req.get("max_output_tokens"),
        "max_tool_calls": None, "model": ctx.model, "output": output,
        "parallel_tool_calls": req.get("parallel_tool_calls", True),
        "previous_response_id": req.get("previous_response_id"),
        "prompt_cache_key": req.get("prompt_cache_key"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": req.get("safety_identifier"), "service_tier": req.get("service_tier") or "default",
        "store": req.get("store", True), "temperature": req.get("temperature"), "text": text,
        "tool_choice": req.get("tool_choice", "auto"), "tools": req.get("tools") or [],
        "top_logprobs": 0, "top_p": req.get("top_p"), "truncation": req.get("truncation") or "disabled",
        "usage": usage, "user": req.get("user"), "metadata": req.get("metadata") or {},
    }


def _reasoning_item(item_id: str, text: str, blocks: list[JSON], req: JSON) -> JSON:
    item: JSON = {"id": item_id, "type": "reasoning",
                  "summary": [{"type": "summary_text", "text": text}] if text and _wants_summary(req) else []}
    if _wants_encrypted(req):
        item["encrypted_content"] = encode_envelope(blocks) if blocks else None
    return item


def _message_item(item_id: str, parts: list[JSON], status: str = "completed") -> JSON:
    return {"id": item_id, "type": "message", "status": status, "content": parts, "role": "assistant"}


def _text_part(text: str) -> JSON:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _call_item(item_id: str, call: JSON, status: str = "completed",
               names: dict[str, tuple[str | None, str, str]] | None = None) -> JSON:
    """A pivot tool call as the client's item: a flattened namespace function gets its
    name and namespace back, a custom tool's call is a ``custom_tool_call``."""
    fn = call.get("function") or {}
    args = fn.get("arguments") or ""
    ns, name, kind = (names or {}).get(fn.get("name") or "", (None, fn.get("name"), "function"))
    if kind == "custom":
        try:
            value = jsonutil.loads(args) if status == "completed" else {}
        except ValueError:
            value = {}
        inp = value.get(CUSTOM_INPUT) if isinstance(value, dict) else None
        item: JSON = {"id": item_id, "type": "custom_tool_call", "status": status,
                      "call_id": call.get("id"), "name": name, "input": inp if isinstance(inp, str) else ""}
    else:
        item = {"id": item_id, "type": "function_call", "status": status, "arguments": args,
                "call_id": call.get("id"), "name": name}
    if ns is not None:
        item["namespace"] = ns
    return item


def pivot_to_response(pivot: JSON, ctx: StreamContext) -> JSON:
    """Pivot chat.completion -> Response object.  Output order: reasoning, message, calls."""
    req: JSON = ctx.extra.get(CTX_REQUEST) or {}
    choices = pivot.get("choices") or [{}]
    msg = choices[0].get("message") or {}
    finish = choices[0].get("finish_reason")
    output: list[JSON] = []
    reasoning = msg.get("reasoning_content") or ""
    blocks = msg.get("thinking_blocks") or []
    if reasoning or blocks:
        output.append(_reasoning_item(_item_id(ctx, "rs", len(output)), reasoning, blocks, req))
    parts: list[JSON] = []
    if msg.get("content"):
        parts.append(_text_part(msg["content"]))
    if msg.get("refusal"):
        parts.append({"type": "refusal", "refusal": msg["refusal"]})
    if parts:
        output.append(_message_item(_item_id(ctx, "msg", len(output)), parts))
    names = tool_names(req.get("tools"))
    for call in msg.get("tool_calls") or []:
        output.append(_call_item(_item_id(ctx, "fc", len(output)), call, names=names))
    status = "incomplete" if finish in ("length", "content_filter") else "completed"
    resp = response_object(ctx, status, output, usage_from_pivot(pivot.get("usage")), finish)
    ctx.extra[CTX_RESULT] = {"pivot": pivot, "response": resp}
    return resp


# ============================================================================
# Pivot chunks -> Responses event stream
# ============================================================================

class EncoderPhase(enum.Enum):
    """START: nothing sent.  OPEN: response.created sent, items streaming.
    DONE: response.completed/incomplete sent.  FAILED: error + response.failed sent."""

    START = "start"
    OPEN = "open"
    DONE = "done"
    FAILED = "failed"


class _Item:
    """An output item being streamed."""

    __slots__ = ("kind", "index", "id", "text", "blocks", "parts", "call", "part_open", "summary_open")

    def __init__(self, kind: str, index: int, item_id: str) -> None:
        self.kind = kind            # "reasoning" | "message" | "function_call"
        self.index = index
        self.id = item_id
        self.text = ""              # reasoning summary text, or the open message part's text
        self.blocks: list[JSON] = []
        self.parts: list[JSON] = []  # closed message content parts
        self.call: JSON = {}
        self.part_open: str | None = None  # "output_text" | "refusal"
        self.summary_open = False


class ResponsesEncoder(StreamEncoder):
    """Pivot chunks -> Responses SSE events (see ``EncoderPhase``).

    Items open in the order their first delta arrives; a reasoning or message
    item is closed when anything else starts, function calls when something
    other than a function call starts, all of them at the end.
    """

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.req: JSON = ctx.extra.get(CTX_REQUEST) or {}
        self.names = tool_names(self.req.get("tools"))
        self.phase = EncoderPhase.START
        self.seq = 0
        self.output: list[JSON | None] = []   # done items by output_index
        self.current: _Item | None = None     # the open reasoning/message item
        self.calls: dict[int, _Item] = {}     # pivot tool index -> open function call item
        self.finish_reason: str | None = None
        self.usage: JSON | None = None
        self._buf: list[bytes] = []
        self._chunks: list[JSON] = []          # folded at the end for CTX_RESULT

    # -- framing -------------------------------------------------------------------
    def _emit(self, kind: str, payload: JSON) -> None:
        event = {"type": kind, **payload, "sequence_number": self.seq}
        self.seq += 1
        self._buf.append(b"event: " + kind.encode("ascii") + b"\ndata: " + jsonutil.dumpb(event) + b"\n\n")

    def _flush(self) -> bytes:
        out = b"".join(self._buf)
        self._buf.clear()
        return out

    def _start(self) -> None:
        if self.phase is EncoderPhase.START:
            self.phase = EncoderPhase.OPEN
            resp = response_object(self.ctx, "in_progress", [], None)
            self._emit("response.created", {"response": resp})
            self._emit("response.in_progress", {"response": resp})

    # -- items -----------------------------------------------------------------------
    def _open(self, kind: str, prefix: str) -> _Item:
        item = _Item(kind, len(self.output), _item_id(self.ctx, prefix, len(self.output)))
        self.output.append(None)
        return item

    def _close_current(self) -> None:
        item = self.current
        if item is None:
            return
        self.current = None
        if item.kind == "reasoning":
            if item.summary_open:
                self._emit("response.reasoning_summary_text.done", {
                    "item_id": item.id, "output_index": item.index, "summary_index": 0, "text": item.text})
                self._emit("response.reasoning_summary_part.done", {
                    "item_id": item.id, "output_index": item.index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": item.text}})
            done = _reasoning_item(item.id, item.text, item.blocks, self.req)
        else:
            self._close_part(item)
            done = _message_item(item.id, item.parts)
        self.output[item.index] = done
        self._emit("response.output_item.done", {"output_index": item.index, "item": done})

    def _close_part(self, item: _Item) -> None:
        if item.part_open is None:
            return
        base = {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts)}
        if item.part_open == "output_text":
            part = _text_part(item.text)
            self._emit("response.output_text.done", {**base, "text": item.text, "logprobs": []})
        else:
            part = {"type": "refusal", "refusal": item.text}
            self._emit("response.refusal.done", {**base, "refusal": item.text})
        self._emit("response.content_part.done", {**base, "part": part})
        item.parts.append(part)
        item.part_open = None
        item.text = ""

    def _close_calls(self) -> None:
        for item in self.calls.values():
            if self.output[item.index] is not None:
                continue
            args = item.call["function"]["arguments"]
            done = _call_item(item.id, item.call, names=self.names)
            if done["type"] == "custom_tool_call":
                self._emit("response.custom_tool_call_input.done", {
                    "item_id": item.id, "output_index": item.index, "input": done["input"]})
            else:
                self._emit("response.function_call_arguments.done", {
                    "item_id": item.id, "output_index": item.index, "arguments": args, "name": done["name"]})
            self.output[item.index] = done
            self._emit("response.output_item.done", {"output_index": item.index, "item": done})

    def _reasoning(self) -> _Item:
        if self.current is None or self.current.kind != "reasoning":
            self._close_current()
            self._close_calls()
            item = self._open("reasoning", "rs")
            self.current = item
            self._emit("response.output_item.added", {"output_index": item.index,
                                                      "item": {"id": item.id, "type": "reasoning", "summary": []}})
        return self.current

    def _message_part(self, part: str) -> _Item:
        if self.current is None or self.current.kind != "message":
            self._close_current()
            self._close_calls()
            item = self._open("message", "msg")
            self.current = item
            self._emit("response.output_item.added", {"output_index": item.index,
                                                      "item": _message_item(item.id, [], "in_progress")})
        item = self.current
        if item.part_open != part:
            self._close_part(item)
            item.part_open = part
            empty = _text_part("") if part == "output_text" else {"type": "refusal", "refusal": ""}
            self._emit("response.content_part.added", {"item_id": item.id, "output_index": item.index,
                                                       "content_index": len(item.parts), "part": empty})
        return item

    def _tool_call(self, tc: JSON) -> None:
        idx = tc.get("index", 0)
        fn = tc.get("function") or {}
        item = self.calls.get(idx)
        if item is None:
            self._close_current()
            item = self._open("function_call", "fc")
            item.call = {"id": tc.get("id"), "type": "function",
                         "function": {"name": fn.get("name"), "arguments": ""}}
            self.calls[idx] = item
            self._emit("response.output_item.added", {"output_index": item.index, "item": _call_item(
                item.id, item.call, "in_progress", self.names)})
        elif self.output[item.index] is not None:
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                             f"tool call {idx} continued after other output started")
        args = fn.get("arguments")
        if args:
            item.call["function"]["arguments"] += args
            # A custom tool's input is the string inside the arguments: sent whole when done.
            if self.names.get(item.call["function"]["name"] or "", ("", "", "function"))[2] != "custom":
                self._emit("response.function_call_arguments.delta", {
                    "item_id": item.id, "output_index": item.index, "delta": args})

    # -- the StreamEncoder interface ---------------------------------------------------
    def feed(self, chunk: JSON) -> bytes:
        if self.phase in (EncoderPhase.DONE, EncoderPhase.FAILED):
            raise ProxyError(ErrorKind.INTERNAL, "chunk after the end of the Responses stream")
        self._start()
        self._chunks.append(chunk)
        if chunk.get("usage"):
            self.usage = usage_from_pivot(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                item = self._reasoning()
                if _wants_summary(self.req):
                    if not item.summary_open:
                        item.summary_open = True
                        self._emit("response.reasoning_summary_part.added", {
                            "item_id": item.id, "output_index": item.index, "summary_index": 0,
                            "part": {"type": "summary_text", "text": ""}})
                    self._emit("response.reasoning_summary_text.delta", {
                        "item_id": item.id, "output_index": item.index, "summary_index": 0,
                        "delta": delta["reasoning_content"]})
                item.text += delta["reasoning_content"]
            if delta.get("thinking_blocks"):
                self._reasoning().blocks.extend(delta["thinking_blocks"])
            if delta.get("content"):
                item = self._message_part("output_text")
                item.text += delta["content"]
                self._emit("response.output_text.delta", {
                    "item_id": item.id, "output_index": item.index, "content_index": len(item.parts),
                    "delta": delta["content"], "logprobs": []})
            if delta.get("refusal"):
                item = self._message_part("refusal")
                item.text += delta["refusal"]
                self._emit("response.refusal.delta", {
                    "item_id": item.id, "output_index": item.index, "content_index": len(item.parts),
                    "delta": delta["refusal"]})
            for tc in delta.get("tool_calls") or []:
                self._tool_call(tc)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return self._flush()

    def _done_output(self) -> list[JSON]:
        return [o for o in self.output if o is not None]

    def finish(self) -> bytes:
        if self.phase in (EncoderPhase.DONE, EncoderPhase.FAILED):
            return b""
        self._start()
        self._close_current()
        self._close_calls()
        self.phase = EncoderPhase.DONE
        status = "incomplete" if self.finish_reason in ("length", "content_filter") else "completed"
        resp = response_object(self.ctx, status, self._done_output(), self.usage, self.finish_reason)
        self._emit("response.completed" if status == "completed" else "response.incomplete", {"response": resp})
        self.ctx.extra[CTX_RESULT] = {"pivot": fold_chunks(self._chunks), "response": resp}
        return self._flush()

    def fail(self, err: ProxyError) -> bytes:
        if self.phase in (EncoderPhase.DONE, EncoderPhase.FAILED):
            return b""
        code = responses_error_code(err)
        if self.ctx.extra.get(CTX_PASSTHROUGH):
            self.phase = EncoderPhase.FAILED
            event = {"type": "error", "code": code, "message": err.message, "param": err.param,
                     "sequence_number": int(self.ctx.extra.get(CTX_FAIL_SEQ) or 0)}
            return b"event: error\ndata: " + jsonutil.dumpb(event) + b"\n\n"
        self._start()
        self.phase = EncoderPhase.FAILED
        self._emit("error", {"code": code, "message": err.message, "param": err.param})
        resp = response_object(self.ctx, "failed", self._done_output(), self.usage,
                               error={"code": code, "message": err.message})
        self._emit("response.failed", {"response": resp})
        return self._flush()


# ============================================================================
# The client format
# ============================================================================

class ResponsesFormat(ClientFormat):
    """``/v1/responses``: OpenAI Responses requests in, Response objects / events out.

    ``render_response`` and ``new_encoder`` read the client's request from
    ``ctx.extra[CTX_REQUEST]`` (the handler puts it there) to echo its parameters
    and to know whether to include reasoning summaries and encrypted reasoning.
    """

    name = "responses"

    def parse_request(self, body: JSON) -> JSON:
        return responses_to_pivot_request(body)

    def parse_with_history(self, body: JSON, history: list[JSON] | None) -> JSON:
        return responses_to_pivot_request(body, history)

    def render_response(self, pivot: JSON, ctx: StreamContext) -> JSON:
        return pivot_to_response(pivot, ctx)

    def new_encoder(self, ctx: StreamContext) -> StreamEncoder:
        return ResponsesEncoder(ctx)

    def error_body(self, err: ProxyError) -> JSON:
        # The Responses API answers HTTP errors in the same envelope as Chat Completions.
        return openai_body(err)

    def context_id(self, rand_hex: str) -> str:
        return "resp_" + rand_hex
