"""Anthropic Messages response -> the pivot: ``message_to_pivot``, ``usage_to_pivot``
and the stop-reason tables (``FINISH_FROM_STOP`` one way, ``STOP_FROM_FINISH`` the other,
which ``tornado_proxy.apis.anthropic_messages`` uses for its clients)."""
from __future__ import annotations

from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import StreamContext, unsupported
from ..toolkit import assistant_message, completion, tool_call
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


def blocks_to_message(blocks: list[Any], path: str | None = None) -> JSON:
    """Assistant content blocks (text, thinking, redacted thinking, tool use) -> a pivot
    assistant message, content None when there is no text.  Other blocks (server tools,
    citations' search results) appear only when a request asked for them, which a pivot
    request cannot: skipped in an answer; in a client's turn (``path``) rejected, naming it."""
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[JSON] = []
    tool_calls: list[JSON] = []
    for j, block in enumerate(blocks):
        btype = block.get("type") if isinstance(block, dict) else None
        if btype == "text":
            texts.append(block.get("text") or "")
        elif btype == "thinking":
            reasoning.append(block.get("thinking") or "")
            thinking_blocks.append({"type": "thinking", "thinking": block.get("thinking") or "",
                                    "signature": block.get("signature") or ""})
        elif btype == "redacted_thinking":
            thinking_blocks.append({"type": "redacted_thinking", "data": block.get("data") or ""})
        elif btype == "tool_use":
            tool_calls.append(tool_call(block.get("id"), block.get("name"), jsonutil.dumps(block.get("input") or {})))
        elif path is not None:
            raise unsupported(f"{path}[{j}].type", f"assistant block '{btype}' on this upstream")
    return assistant_message("".join(texts) if texts else None, reasoning="".join(reasoning),
                             thinking_blocks=thinking_blocks, tool_calls=tool_calls)


def message_to_pivot(msg: JSON, ctx: StreamContext) -> JSON:
    """A whole Messages response -> a pivot ``chat.completion``."""
    if not isinstance(msg, dict) or msg.get("type") != "message" or not isinstance(msg.get("content"), list):
        if isinstance(msg, dict) and msg.get("type") == "error":
            raise upstream_error_event(msg)
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream answer is not a Messages response")
    message = blocks_to_message(msg["content"])
    if message["content"] is None and "tool_calls" not in message:
        message["content"] = ""
    usage = usage_to_pivot(msg["usage"]) if isinstance(msg.get("usage"), dict) else None
    return completion(ctx, [{"index": 0, "message": message, "finish_reason": _finish(msg.get("stop_reason"))}],
                      usage)
