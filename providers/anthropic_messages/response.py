"""Anthropic Messages response -> the pivot: ``message_to_pivot``, ``usage_to_pivot``
and the stop-reason tables (``FINISH_FROM_STOP`` one way, ``STOP_FROM_FINISH`` the other,
which ``tornado_proxy.apis.anthropic_messages`` uses for its clients)."""
from __future__ import annotations

from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import StreamContext
from .errors import upstream_error_event

JSON = dict[str, Any]

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
