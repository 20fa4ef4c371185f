"""Pivot answer (chat.completion) -> Response object, echoing the client's request."""
from __future__ import annotations

from typing import Any

from providers.base import StreamContext

from .custom_input import input_of
from .request import encode_envelope, tool_names

JSON = dict[str, Any]


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
    req: JSON = ctx.client_request or {}
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
        item: JSON = {"id": item_id, "type": "custom_tool_call", "status": status, "call_id": call.get("id"),
                      "name": name, "input": input_of(args) if status == "completed" else ""}
    else:
        item = {"id": item_id, "type": "function_call", "status": status, "arguments": args,
                "call_id": call.get("id"), "name": name}
    if ns is not None:
        item["namespace"] = ns
    return item


def pivot_to_response(pivot: JSON, ctx: StreamContext) -> JSON:
    """Pivot chat.completion -> Response object.  Output order: reasoning, message, calls."""
    req: JSON = ctx.client_request or {}
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
    ctx.result = {"pivot": pivot, "response": resp}
    return resp
