"""The built-in ``echo`` model: no keys, no network, deterministic.

It answers with the text of the last user message; streamed, a few words per
chunk, then a usage chunk.  Token counts are the local estimate (see
``estimate_tokens``) so usage is always present and repeatable.
"""
from __future__ import annotations

from typing import Any

from .base import LocalProvider, StreamContext, estimate_tokens, iter_text_parts

WORDS_PER_CHUNK = 3


def _prompt_text(req: dict[str, Any]) -> str:
    return "\n".join("".join(iter_text_parts(m.get("content"))) for m in req.get("messages") or []
                     if isinstance(m, dict))


def echo_text(req: dict[str, Any]) -> str:
    for m in reversed(req.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return "".join(iter_text_parts(m.get("content")))
    return ""


def _usage(req: dict[str, Any], text: str) -> dict[str, Any]:
    p, c = estimate_tokens(_prompt_text(req)), estimate_tokens(text)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0}}


class EchoProvider(LocalProvider):
    type_name = "echo"

    def respond(self, req: dict[str, Any], ctx: StreamContext) -> dict[str, Any]:
        text = echo_text(req)
        return {
            "id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": _usage(req, text),
        }

    def stream_chunks(self, req: dict[str, Any], ctx: StreamContext) -> list[dict[str, Any]]:
        text = echo_text(req)
        base = {"id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created, "model": ctx.model}
        out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "logprobs": None, "finish_reason": None}]}]
        words = text.split(" ")
        for i in range(0, len(words), WORDS_PER_CHUNK):
            piece = " ".join(words[i:i + WORDS_PER_CHUNK])
            if i + WORDS_PER_CHUNK < len(words):
                piece += " "
            if piece:
                out.append({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                 "logprobs": None, "finish_reason": None}]})
        out.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
        out.append({**base, "choices": [], "usage": _usage(req, text)})
        return out
