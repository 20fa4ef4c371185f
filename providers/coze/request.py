"""Pivot request -> Coze ``POST /v3/chat`` body, with the field policy.

Shapes from Coze's "Create chat" (v3) reference and coze-py ``chat/__init__.py``
(``_create``): ``bot_id``, ``user_id``, ``stream``, ``additional_messages`` (role
``user``/``assistant``, ``type`` ``question``/``answer``, ``content_type`` ``text`` or
``object_string`` for a JSON list of ``text``/``image``/``file`` parts),
``auto_save_history``, ``meta_data``; ``conversation_id`` goes in the query string.

A bot carries its own model, prompt, sampling settings, plugins and knowledge: a
request can only add messages.  So every pivot field is in one of these tables.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import bad_request, unsupported
from ..toolkit import iter_messages, text_of

# Translated into the Coze body (or its query string).
TRANSLATED = frozenset({"model", "messages", "stream", "user", "metadata"})
# Dropped: losing them cannot change what the bot answers (client-side ids and caching
# hints, delivery options).  ``max_tokens`` is the one limit here: the Messages API makes
# it mandatory and the bot's own model settings cap its output (docs/upstreams/coze.md).
DROPPED = frozenset({"stream_options", "store", "prompt_cache_key", "prompt_cache_retention",
                     "prompt_cache_options", "service_tier", "safety_identifier", "parallel_tool_calls",
                     "max_tokens", "max_completion_tokens"})
# Accepted at the value that changes nothing, rejected at any other (the bot's settings
# decide sampling, tools and output format).
NEUTRAL: dict[str, Any] = {"n": 1, "temperature": 1, "top_p": 1, "presence_penalty": 0,
                           "frequency_penalty": 0, "logprobs": False, "logit_bias": {}, "modalities": ["text"],
                           "tools": [], "tool_choice": "none", "response_format": {"type": "text"}}
# Everything else with a value is rejected, naming the field: temperature, stop, tools,
# seed, reasoning, audio, prediction, web search...
WHY = {
    "tools": "a Coze bot's tools are its own plugins, set up on the bot",
    "tool_choice": "a Coze bot's tools are its own plugins, set up on the bot",
    "response_format": "a Coze bot answers in the format its prompt sets",
    "reasoning_effort": "a Coze bot's model and its reasoning are set on the bot",
    "reasoning_level": "a Coze bot's model and its reasoning are set on the bot",
}

# Coze ids are decimal strings; anything of these characters is quoted into a query.
CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_MESSAGES = 100  # Coze: additional_messages holds at most 100 messages
MAX_USER_ID = 256


def check_fields(req: dict[str, Any]) -> None:
    for key, value in req.items():
        if value is None or key in TRANSLATED or key in DROPPED or key.startswith("_"):
            continue
        if key in NEUTRAL and value == NEUTRAL[key]:
            continue
        if key == "tool_choice" and value == "auto" and not req.get("tools"):
            continue
        raise unsupported(key, WHY.get(key, "a Coze bot's settings decide it (the request can only add messages)"))


def conversation_id(value: Any, param: str) -> str:
    if not isinstance(value, str) or not CONVERSATION_ID.fullmatch(value):
        raise bad_request(f"'{param}' must be a Coze conversation id (1 to 64 letters, digits, '_' or '-')", param)
    return value


def chat_url(base_url: str, conv: str | None) -> str:
    url = base_url + "/v3/chat"
    return url + "?conversation_id=" + quote(conv, safe="") if conv else url


def _user_content(content: Any, path: str) -> tuple[str, str]:
    """(content, content_type) of a user message."""
    if isinstance(content, str) or content is None:
        return content or "", "text"
    if not isinstance(content, list):
        raise bad_request(f"'{path}' must be a string or a list of parts", path)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        ppath = f"{path}[{j}]"
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "text":
            parts.append({"type": "text", "text": part.get("text", "")})
        elif ptype == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                raise unsupported(ppath + ".image_url.url",
                                  "Coze takes images by URL (http or https), not as data URIs")
            parts.append({"type": "image", "file_url": url})
        else:
            raise unsupported(ppath + ".type", f"part type '{ptype}' on a Coze bot")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts), "text"
    return jsonutil.dumps(parts), "object_string"


def convert_messages(messages: Any, system_prompt: str | None) -> list[dict[str, Any]]:
    system: list[str] = [system_prompt] if system_prompt else []
    out: list[dict[str, Any]] = []
    for path, m in iter_messages(messages):
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(text_of(m.get("content"), path + ".content"))
        elif role == "user":
            content, ctype = _user_content(m.get("content"), path + ".content")
            out.append({"role": "user", "type": "question", "content": content, "content_type": ctype})
        elif role == "assistant":
            if m.get("tool_calls"):
                raise unsupported(path + ".tool_calls", "a Coze bot calls its own plugins; "
                                  "a conversation cannot carry client tool calls")
            if m.get("audio"):
                raise unsupported(path + ".audio", "Coze has no audio replay")
            text = text_of(m.get("content"), path + ".content")
            if text:
                out.append({"role": "assistant", "type": "answer", "content": text, "content_type": "text"})
        elif role in ("tool", "function"):
            raise unsupported(path + ".role", "a Coze bot calls its own plugins; there are no client tool results")
        else:
            raise bad_request(f"'{path}.role' must be system, developer, user or assistant", path + ".role")
    if not out or out[-1]["role"] != "user":
        raise bad_request("the last message must be the user's: a Coze chat answers the user's query", "messages")
    if system:
        # Coze has no system role: the instructions go first, as a user message
        # (docs/upstreams/coze.md says why and what to prefer).
        out.insert(0, {"role": "user", "type": "question", "content": "\n\n".join(system), "content_type": "text"})
    if len(out) > MAX_MESSAGES:
        raise bad_request(f"Coze takes at most {MAX_MESSAGES} messages in a chat; send fewer "
                          "(or continue a Coze conversation by its id)", "messages")
    return out


def build_body(req: dict[str, Any], model: dict[str, Any], user_default: str, stream: bool,
               auto_save_history: bool) -> tuple[dict[str, Any], str | None]:
    """(the /v3/chat body, the conversation id from ``metadata`` or None)."""
    check_fields(req)
    user = req.get("user")
    if user is None or user == "":
        user = user_default
    elif not isinstance(user, str) or len(user) > MAX_USER_ID:
        raise bad_request(f"'user' must be a string of at most {MAX_USER_ID} characters", "user")
    conv = None
    meta: dict[str, str] = {}
    md = req.get("metadata")
    if md is not None:
        if not isinstance(md, dict):
            raise bad_request("'metadata' must be an object", "metadata")
        for k, v in md.items():
            if k == "conversation_id":
                conv = conversation_id(v, "metadata.conversation_id")
            elif isinstance(v, str):
                meta[k] = v
    body: dict[str, Any] = {
        "bot_id": model["upstream_model"],
        "user_id": user,
        "stream": stream,
        # Non-streaming answers are read back from the conversation: Coze requires it saved.
        "auto_save_history": True if not stream else auto_save_history,
        "additional_messages": convert_messages(req.get("messages"), model.get("system_prompt")),
    }
    if meta:
        body["meta_data"] = meta
    return body, conv


def add_conversation(url: str, conv: str) -> str:
    """``url`` with the conversation id a client header named (when metadata did not)."""
    if "?conversation_id=" in url:
        if url.endswith("=" + quote(conv, safe="")):
            return url
        raise ProxyError(ErrorKind.INVALID_REQUEST, "the conversation id header and metadata.conversation_id "
                         "name different conversations", param="metadata.conversation_id")
    return url + "?conversation_id=" + quote(conv, safe="")
