"""Anthropic Messages, the client API: ``/v1/messages`` (and ``/v1/messages/count_tokens``).

``AnthropicMessagesFormat`` (client format ``anthropic``): a Messages request -> the
pivot; the pivot answer -> a Messages response or an Anthropic event stream that the
official SDK's accumulator accepts; ``estimate_input_tokens`` counts a request for
upstreams that cannot.  The ``anthropic`` upstream is ``providers.anthropic_messages``.

What is mapped, what is dropped and why is in ``README.md``; every drop
made here is listed there.  Shapes follow Anthropic's API reference and the
``anthropic`` Python SDK (``types/message_create_params.py``,
``lib/streaming/_messages.py``).
"""
from __future__ import annotations

import base64
import math
from typing import Any, Iterable

from providers.anthropic_messages import STOP_FROM_FINISH, blocks_to_message
from providers.base import ClientFormat, Phase, StreamContext, StreamEncoder, bad_request, unsupported
from providers.toolkit import REASONING_BUDGETS
from tornado_proxy import fieldpolicy, jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError, anthropic_body

JSON = dict[str, Any]


# ---------------------------------------------------------------------------
# Client side: Messages request -> pivot
# ---------------------------------------------------------------------------

# A client's thinking budget -> the pivot's reasoning_effort (by the default budgets).
def _effort_for_budget(budget: int) -> str:
    if budget <= REASONING_BUDGETS["low"]:
        return "low"
    if budget <= REASONING_BUDGETS["medium"]:
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
            messages.append(blocks_to_message(content, path + ".content"))
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


def _counted_text(value: Any) -> Iterable[str]:
    """Every text of a Messages body that the estimate counts: a walk over any block,
    skipping ids, signatures and media (counted flat), unlike the pivot's ``text_of``."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _counted_text(item)
    elif isinstance(value, dict):
        btype = value.get("type")
        if btype in ("image", "document") and isinstance(value.get("source"), dict) \
                and value["source"].get("type") in ("base64", "url"):
            return  # counted as a flat image/document cost below
        for k, v in value.items():
            if k in ("role", "type", "cache_control", "signature", "id", "tool_use_id", "source"):
                continue
            yield from _counted_text(v)


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
        for text in _counted_text(body.get(key)):
            chars += len(text)
        media += _count_media(body.get(key))
    tools = body.get("tools") or []
    for t in tools:
        chars += len(jsonutil.dumps(t))
    n_messages = len(body.get("messages") or [])
    return int(math.ceil(chars / CHARS_PER_TOKEN)) + media * IMAGE_TOKENS \
        + n_messages * PER_MESSAGE_TOKENS + len(tools) * PER_TOOL_TOKENS
