"""OpenAI Chat Completions: the ``openai`` upstream.

The pivot *is* Chat Completions, so both directions are thin.  The upstream side
removes the pivot's own extensions before sending (an OpenAI-compatible server
would reject ``thinking_blocks`` or ``extra_content`` it does not know) and always
asks for the usage chunk; its stream translator checks that the stream really
finished (``[DONE]`` or a ``finish_reason``) and turns ``{"error": ...}`` frames
into errors.  The client side (``/v1/chat/completions``) is
``tornado_proxy.apis.openai_chat``.
"""
from __future__ import annotations

import re
from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from . import ratelimits
from .base import (Account, Phase, Provider, StreamContext, StreamTranslator, UpstreamRequest,
                   error_message_from_body, stream_cut)
from .toolkit import upstream_json

# Pivot-only fields that are not part of the OpenAI wire format.
_MESSAGE_EXTENSIONS = ("thinking_blocks",)
_TOOL_CALL_EXTENSIONS = ("extra_content",)
# OpenAI models that take max_completion_tokens only (o-series, gpt-5 family).
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)")


def _clean_messages(messages: list[Any], keep_reasoning: bool) -> list[Any]:
    out = []
    for m in messages:
        if not isinstance(m, dict):
            out.append(m)
            continue
        if any(k in m for k in _MESSAGE_EXTENSIONS) or (not keep_reasoning and "reasoning_content" in m) \
                or any(isinstance(tc, dict) and any(k in tc for k in _TOOL_CALL_EXTENSIONS)
                       for tc in m.get("tool_calls") or ()):
            m = {k: v for k, v in m.items() if k not in _MESSAGE_EXTENSIONS
                 and (keep_reasoning or k != "reasoning_content")}
            if m.get("tool_calls"):
                m["tool_calls"] = [{k: v for k, v in tc.items() if k not in _TOOL_CALL_EXTENSIONS}
                                   if isinstance(tc, dict) else tc for tc in m["tool_calls"]]
        out.append(m)
    return out


def with_system_prompt(messages: list[Any], prompt: str | None) -> list[Any]:
    if not prompt:
        return messages
    return [{"role": "system", "content": prompt}, *messages]


class OpenAIChatProvider(Provider):
    """Any OpenAI-compatible ``/chat/completions`` API."""

    type_name = "openai"
    native_format = "openai"
    default_base_url = "https://api.openai.com/v1"
    rate_limit_headers = ratelimits.OPENAI

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        opts = conf.get("options") or {}
        # Some compatible servers (DeepSeek, vLLM reasoning parsers) accept reasoning_content
        # on assistant messages; OpenAI itself does not.
        self.keep_reasoning = bool(opts.get("send_reasoning_content", False))
        self.auth_header = opts.get("auth_header", "Authorization")
        # OpenAI's reasoning models reject max_tokens and want max_completion_tokens;
        # many compatible servers only know max_tokens.  "auto" decides by model name.
        self.max_tokens_field = opts.get("max_tokens_field", "auto")

    def validate(self, models: list[dict[str, Any]]) -> list[str]:
        opts = self.conf.get("options") or {}
        unknown = set(opts) - {"send_reasoning_content", "auth_header", "max_tokens_field"}
        problems = [f"options: unknown option(s) {sorted(unknown)}"] if unknown else []
        if opts.get("max_tokens_field", "auto") not in ("auto", "max_tokens", "max_completion_tokens"):
            problems.append("options.max_tokens_field: expected auto, max_tokens or max_completion_tokens")
        return problems

    def headers(self, account: Account, model: dict[str, Any]) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json", **self.extra_headers}
        if account.api_key:
            h[self.auth_header] = ("Bearer " + account.api_key) if self.auth_header == "Authorization" \
                else account.api_key
        h.update(account.extra.get("headers") or {})
        h.update(model.get("headers") or {})
        return h

    def build_request(self, req: dict[str, Any], model: dict[str, Any], account: Account,
                      stream: bool) -> UpstreamRequest:
        body = dict(req)
        body["model"] = model["upstream_model"]
        body["messages"] = with_system_prompt(_clean_messages(req.get("messages") or [], self.keep_reasoning),
                                              model.get("system_prompt"))
        body.pop("reasoning_level", None)
        if stream:
            body["stream"] = True
            # Always ask for usage: the gateway counts tokens; the client's encoder
            # drops the usage chunk unless the client asked for it.
            body["stream_options"] = {**(req.get("stream_options") or {}), "include_usage": True}
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        if "max_tokens" not in body and model.get("max_tokens") and "max_completion_tokens" not in body:
            body["max_tokens"] = model["max_tokens"]
        if "max_tokens" in body and self._wants_completion_tokens(model["upstream_model"]):
            limit = body.pop("max_tokens")
            body.setdefault("max_completion_tokens", limit)
        return UpstreamRequest("POST", self.base_url + "/chat/completions", self.headers(account, model),
                               jsonutil.dumpb(body), stream)

    def _wants_completion_tokens(self, upstream_model: str) -> bool:
        if self.max_tokens_field != "auto":
            return self.max_tokens_field == "max_completion_tokens"
        name = upstream_model.rsplit("/", 1)[-1]
        return bool(_REASONING_MODEL.match(name))

    def build_native_request(self, body: dict[str, Any], raw: bytes, model: dict[str, Any],
                             account: Account, stream: bool, client_headers: dict[str, str],
                             path: str = "/chat/completions") -> UpstreamRequest:
        if body.get("model") != model["upstream_model"] or model.get("system_prompt"):
            body = dict(body)
            body["model"] = model["upstream_model"]
            if model.get("system_prompt") and isinstance(body.get("messages"), list):
                body["messages"] = with_system_prompt(body["messages"], model["system_prompt"])
            raw = jsonutil.dumpb(body)
        return UpstreamRequest("POST", self.base_url + path, self.headers(account, model), raw, stream)

    def stream_complete_marker(self) -> bytes | None:
        return b"[DONE]"

    def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
        obj = upstream_json(body, "a body", obj=False)
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            if isinstance(obj, dict) and obj.get("error"):
                raise ProxyError(ErrorKind.UPSTREAM_ERROR, error_message_from_body(body))
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream answer has no choices")
        return obj

    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        return OpenAIChatStream()


class OpenAIChatStream(StreamTranslator):
    """OpenAI SSE -> pivot chunks (identity), with end-of-stream and error checks.

    Phases: CONTENT (chunks) -> DONE (``[DONE]`` seen).  A ``finish_reason`` without
    ``[DONE]`` also counts as finished: several compatible servers omit it.
    """

    __slots__ = ("phase", "finished")

    def __init__(self) -> None:
        self.phase = Phase.CONTENT
        self.finished = False

    def feed(self, event: Any) -> list[dict[str, Any]]:
        data = event.data
        if data == "[DONE]":
            self.phase = Phase.DONE
            return []
        if self.phase is Phase.DONE:
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream sent data after [DONE]")
        chunk = upstream_json(data, "a stream event")
        err = chunk.get("error")
        if err:
            msg = err.get("message") if isinstance(err, dict) else str(err)
            raise ProxyError(ErrorKind.UPSTREAM_ERROR, f"upstream error mid-stream: {msg}")
        if not self.finished:
            for c in chunk.get("choices") or ():
                if c.get("finish_reason"):
                    self.finished = True
        return [chunk]

    def finish(self) -> list[dict[str, Any]]:
        if self.phase is not Phase.DONE and not self.finished:
            raise stream_cut("no [DONE] and no finish_reason")
        return []
