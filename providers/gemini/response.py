"""A whole ``generateContent`` answer -> a pivot ``chat.completion``.

Also the pieces the stream shares: finish reasons, a part rendered as text,
reasoning or a tool call (with its stable id), grounding links and usage.
"""
from __future__ import annotations

from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import StreamContext
from ..toolkit import assistant_message, completion, tool_call
from .errors import classify_gemini_error

_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "LANGUAGE": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",
}


def map_finish_reason(reason: str, has_tool_calls: bool) -> str:
    """Gemini finishReason -> pivot finish_reason.

    Gemini says STOP when it called functions; OpenAI clients expect
    ``tool_calls`` then.  Reasons with no OpenAI counterpart (OTHER,
    MALFORMED_FUNCTION_CALL...) become ``stop``.
    """
    mapped = _FINISH_REASONS.get(reason, "stop")
    if mapped == "stop" and has_tool_calls:
        return "tool_calls"
    return mapped


def render_part(part: dict[str, Any]) -> tuple[str, Any] | None:
    """One Gemini part -> ("text" | "reasoning", str) or ("call", part), None to skip.

    Code execution parts are rendered as markdown code blocks and generated
    images as markdown data-URI images, since Chat Completions has no place for
    them.  An empty text part (Gemini sends one to carry a signature) is skipped.
    """
    if "functionCall" in part:
        return ("call", part)
    if "text" in part:
        text = part.get("text") or ""
        if not text:
            return None
        return ("reasoning" if part.get("thought") else "text", text)
    if "executableCode" in part:
        code = part["executableCode"]
        lang = str(code.get("language") or "").lower()
        if lang == "language_unspecified":
            lang = ""
        return ("text", f"\n```{lang}\n{str(code.get('code', '')).rstrip(chr(10))}\n```\n")
    if "codeExecutionResult" in part:
        res = part["codeExecutionResult"]
        outcome = res.get("outcome", "OUTCOME_OK")
        head = "" if outcome == "OUTCOME_OK" else f"{outcome}\n"
        return ("text", f"\n```output\n{head}{str(res.get('output', '')).rstrip(chr(10))}\n```\n")
    if "inlineData" in part and not part.get("thought"):
        blob = part["inlineData"]
        return ("text", f"![image](data:{blob.get('mimeType', 'image/png')};base64,{blob.get('data', '')})")
    return None


def grounding_links(metadata: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if not isinstance(metadata, dict):
        return out
    for chunk in metadata.get("groundingChunks") or []:
        web = chunk.get("web") if isinstance(chunk, dict) else None
        if isinstance(web, dict) and web.get("uri"):
            link = (str(web.get("title") or web["uri"]), str(web["uri"]))
            if link not in out:  # chunks repeat when several supports cite one page
                out.append(link)
    return out


def links_text(links: list[tuple[str, str]]) -> str:
    """The search links appended to a grounded answer (``show_search_links``)."""
    if not links:
        return ""
    lines = "".join(f"\n{i}. [{title}]({uri})" for i, (title, uri) in enumerate(links, 1))
    return "\n\n---\n**Sources:**" + lines


def convert_usage(meta: Any) -> dict[str, Any] | None:
    """usageMetadata -> pivot usage.

    Gemini counts thoughts apart from candidates; OpenAI's completion_tokens
    include reasoning tokens, so both are added.  Tool-use prompt tokens (search
    results, fetched URLs) are prompt tokens.  promptTokenCount already
    includes cached tokens, as OpenAI's prompt_tokens does.
    """
    if not isinstance(meta, dict):
        return None
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(meta.get("totalTokenCount") or prompt + completion),
        "prompt_tokens_details": {"cached_tokens": int(meta.get("cachedContentTokenCount") or 0)},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }
    return usage


def tool_call_id(ctx: StreamContext, candidate: int, index: int) -> str:
    if candidate == 0:
        return f"call_{ctx.id}_{index}"
    return f"call_{ctx.id}_c{candidate}_{index}"


def tool_call_from_part(part: dict[str, Any], ctx: StreamContext, candidate: int, index: int) -> dict[str, Any]:
    fc = part["functionCall"]
    call = tool_call(fc.get("id") or tool_call_id(ctx, candidate, index), fc.get("name", ""),
                     jsonutil.dumps(fc.get("args") or {}))
    if part.get("thoughtSignature"):
        call["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return call


def _check_prompt_block(obj: dict[str, Any]) -> None:
    feedback = obj.get("promptFeedback")
    if not obj.get("candidates") and isinstance(feedback, dict) and feedback.get("blockReason"):
        raise ProxyError(ErrorKind.CONTENT_FILTER,
                         f"Gemini blocked the prompt ({feedback['blockReason']})")


def _stream_error(obj: dict[str, Any], data: str) -> ProxyError:
    err = obj.get("error") or {}
    code = err.get("code") if isinstance(err, dict) else None
    return classify_gemini_error(int(code) if isinstance(code, int) else 500, {}, data.encode("utf-8"))


def translate_generate_response(obj: Any, ctx: StreamContext, show_links: bool) -> dict[str, Any]:
    """A whole ``generateContent`` answer -> a pivot ``chat.completion``."""
    if not isinstance(obj, dict):
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini answer is not a JSON object")
    if "error" in obj:
        raise _stream_error(obj, jsonutil.dumps(obj))
    _check_prompt_block(obj)
    choices = []
    for pos, cand in enumerate(obj.get("candidates") or []):
        c = int(cand.get("index", pos) or 0)
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in (cand.get("content") or {}).get("parts") or []:
            rendered = render_part(part)
            if rendered is None:
                continue
            kind, value = rendered
            if kind == "call":
                calls.append(tool_call_from_part(value, ctx, c, len(calls)))
            elif kind == "reasoning":
                reasoning.append(value)
            else:
                text.append(value)
        if show_links:
            text.append(links_text(grounding_links(cand.get("groundingMetadata"))))
        content = "".join(text)
        message = assistant_message(content if content or not calls else None, reasoning="".join(reasoning),
                                    tool_calls=calls)
        reason = cand.get("finishReason")
        if not reason:
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini answer has a candidate without finishReason")
        choices.append({"index": c, "message": message, "finish_reason": map_finish_reason(reason, bool(calls))})
    if not choices:
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini answer has no candidates")
    return completion(ctx, choices, convert_usage(obj.get("usageMetadata")))
