"""A non-streaming Coze answer: create the chat, poll it, read its messages.

As coze-py's ``create_and_poll`` does: ``POST /v3/chat`` (``stream: false``) answers at
once with the Chat (``status: in_progress``); ``GET /v3/chat/retrieve?conversation_id=
&chat_id=`` is polled until the status is final; then ``GET /v3/chat/message/list``
(same query) gives the messages, whose ``type: "answer"`` ones are the reply.  Every
answer is the envelope ``{"code": 0, "msg": "", "data": ...}``; a non-zero code is an
error whatever the HTTP status.  Ids from Coze go into the next URL quoted, after a
check of their shape.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import Exchange, StreamContext, UpstreamRequest
from ..toolkit import assistant_message, upstream_json
from ..toolkit import completion as chat_completion
from .errors import code_of, coded_error
from .request import CONVERSATION_ID

_POLLING = ("created", "in_progress")


def envelope(body: bytes) -> Any:
    """``data`` of a Coze answer; ProxyError for an error code or a body that is not one."""
    obj = upstream_json(body, "a body", obj=False)
    hit = code_of(obj)
    if hit is not None:
        raise coded_error(*hit)
    if not isinstance(obj, dict) or "data" not in obj:
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream answer has no 'data'")
    return obj["data"]


def _id(chat: dict[str, Any], key: str) -> str:
    v = chat.get(key)
    if not isinstance(v, str) or not CONVERSATION_ID.fullmatch(v):
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"upstream chat has no valid '{key}'")
    return v


def usage_of(chat: dict[str, Any]) -> dict[str, int] | None:
    u = chat.get("usage")
    if not isinstance(u, dict):
        return None
    inp, out = int(u.get("input_count") or 0), int(u.get("output_count") or 0)
    return {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": int(u.get("token_count") or inp + out)}


def completion(messages: Any, chat: dict[str, Any], ctx: StreamContext) -> dict[str, Any]:
    """The pivot chat.completion of a finished chat and its message list."""
    if not isinstance(messages, list):
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream message list is not a list")
    text: list[str] = []
    reasoning: list[str] = []
    for m in messages:
        if isinstance(m, dict) and m.get("type") == "answer" and m.get("role", "assistant") == "assistant":
            if isinstance(m.get("content"), str):
                text.append(m["content"])
            if isinstance(m.get("reasoning_content"), str) and m["reasoning_content"]:
                reasoning.append(m["reasoning_content"])
    msg = assistant_message("".join(text), reasoning="".join(reasoning))
    return chat_completion(ctx, [{"index": 0, "message": msg, "finish_reason": "stop"}], usage_of(chat))


class CozeExchange(Exchange):
    """create -> retrieve (every ``interval`` s, until final) -> message/list."""

    def __init__(self, base_url: str, headers: dict[str, str], ctx: StreamContext, interval: float,
                 max_seconds: float) -> None:
        self.base_url = base_url
        # The create request's headers (auth, templates already filled), without its body's type.
        self.headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        self.ctx = ctx
        self.interval = interval
        self.max_seconds = max_seconds
        self.step = "create"
        self.chat: dict[str, Any] = {}
        self.messages: Any = None

    def _get(self, path: str) -> UpstreamRequest:
        q = ("?conversation_id=" + quote(_id(self.chat, "conversation_id"), safe="")
             + "&chat_id=" + quote(_id(self.chat, "id"), safe=""))
        return UpstreamRequest("GET", self.base_url + path + q, dict(self.headers), None, False)

    def next(self, body: bytes) -> tuple[float, UpstreamRequest] | None:
        data = envelope(body)
        if self.step == "list":
            self.messages = data
            return None
        if not isinstance(data, dict):
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream chat is not an object")
        self.chat = data
        status = data.get("status")
        if status in _POLLING:
            self.step = "retrieve"
            return (self.interval, self._get("/v3/chat/retrieve"))
        if status == "completed":
            self.step = "list"
            return (0.0, self._get("/v3/chat/message/list"))
        if status == "failed":
            last = data.get("last_error")
            le: dict[str, Any] = last if isinstance(last, dict) else {}
            raise coded_error(le.get("code"), le.get("msg"), where=" (the chat failed)")
        if status == "requires_action":
            raise ProxyError(ErrorKind.UPSTREAM_BAD_REQUEST, "the Coze bot asked for a local plugin's output "
                             "(requires_action), which this gateway cannot give")
        raise ProxyError(ErrorKind.UPSTREAM_ERROR, f"the Coze chat ended with status {str(status)[:40]!r}")

    def result(self) -> dict[str, Any]:
        return completion(self.messages, self.chat, self.ctx)
