"""A whole Responses ``Response`` object -> pivot chat.completion, and its usage.

A ``reasoning`` output item becomes a pivot ``thinking_blocks`` entry ``{"type":
"thinking", "thinking": <summary text>, "signature": <encrypted_content>, "id": <rs_ id>}``
(``thinking_block``), which ``request`` sends back upstream on the next turn.
"""
from __future__ import annotations

from typing import Any

from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import StreamContext
from ..toolkit import assistant_message, completion, tool_call
from .errors import error_from_responses

JSON = dict[str, Any]


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
            calls.append(tool_call(item.get("call_id") or item.get("id"), item.get("name"), item.get("arguments") or ""))
        # Hosted-tool items (web_search_call...) cannot appear: we never send hosted tools.
    message = assistant_message("".join(texts) if texts else None, refusal="".join(refusals),
                                reasoning="\n\n".join(reasoning), thinking_blocks=blocks, tool_calls=calls)
    return completion(ctx, [{"index": 0, "message": message, "finish_reason": _finish_reason(resp, bool(calls))}],
                      usage_to_pivot(resp.get("usage")))
