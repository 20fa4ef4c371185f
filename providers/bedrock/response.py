"""A Converse answer -> pivot chat.completion: content blocks, usage, finish reason."""
from __future__ import annotations

from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import StreamContext
from ..toolkit import assistant_message, completion, tool_call

# Converse stopReason -> pivot finish_reason.  The malformed_* reasons are errors.
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
MALFORMED_STOPS = ("malformed_model_output", "malformed_tool_use")


def convert_usage(u: Any) -> dict[str, Any] | None:
    """Converse ``usage`` -> pivot usage; prompt_tokens includes cache reads and writes."""
    if not isinstance(u, dict):
        return None
    read = int(u.get("cacheReadInputTokens") or 0)
    write = int(u.get("cacheWriteInputTokens") or 0)
    prompt = int(u.get("inputTokens") or 0) + read + write
    completion = int(u.get("outputTokens") or 0)
    details: dict[str, int] = {"cached_tokens": read}
    if "cacheWriteInputTokens" in u:
        details["cache_creation_tokens"] = write
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": details}


def finish_reason(stop: Any) -> str:
    if stop in MALFORMED_STOPS:
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"Bedrock stopped the answer: {stop}")
    reason = STOP_REASONS.get(stop) if isinstance(stop, str) else None
    if reason is None:
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"Bedrock sent an unknown stopReason {stop!r}")
    return reason


def _bad(what: str) -> ProxyError:
    return ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"Bedrock sent {what}")


def translate_converse(obj: Any, ctx: StreamContext) -> dict[str, Any]:
    """A Converse response object -> pivot chat.completion."""
    if not isinstance(obj, dict):
        raise _bad("a response that is not an object")
    message = (obj.get("output") or {}).get("message") if isinstance(obj.get("output"), dict) else None
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise _bad("a response without output.message.content")
    texts: list[str] = []
    reasoning: list[str] = []
    thinking: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            raise _bad("a content block that is not an object")
        if "text" in block:
            texts.append(str(block["text"]))
        elif "reasoningContent" in block:
            rc = block["reasoningContent"] or {}
            if "reasoningText" in rc:
                rt = rc["reasoningText"] or {}
                reasoning.append(str(rt.get("text") or ""))
                thinking.append({"type": "thinking", "thinking": str(rt.get("text") or ""),
                                 "signature": str(rt.get("signature") or "")})
            elif "redactedContent" in rc:
                thinking.append({"type": "redacted_thinking", "data": str(rc["redactedContent"])})
            else:
                raise _bad("a reasoningContent block of an unknown kind")
        elif "toolUse" in block:
            tu = block["toolUse"] or {}
            calls.append(tool_call(tu.get("toolUseId"), tu.get("name"), jsonutil.dumps(tu.get("input") or {})))
        else:
            raise _bad(f"a content block of an unexpected kind ({', '.join(sorted(block))})")
    msg = assistant_message("".join(texts) or None, reasoning="".join(reasoning), thinking_blocks=thinking,
                            tool_calls=calls)
    out = completion(ctx, [{"index": 0, "message": msg, "finish_reason": finish_reason(obj.get("stopReason"))}],
                     convert_usage(obj.get("usage")))
    metrics = obj.get("metrics")
    if isinstance(metrics, dict) and "latencyMs" in metrics:
        ctx.upstream_latency_ms = metrics["latencyMs"]
    return out
