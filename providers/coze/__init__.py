"""The ``coze`` upstream: Coze's Open API v3 chat with a published bot.

A model's ``upstream_model`` is the bot id; the account's ``api_key`` is a personal
access token (sent as ``Authorization: Bearer``).  ``request`` builds ``POST /v3/chat``
from the pivot (with the field policy), ``stream`` translates the chat's SSE,
``response`` runs the create/poll/list exchange of a non-streaming answer, ``errors``
maps Coze's codes (mostly sent with HTTP 200) to our kinds.  docs/upstreams/coze.md.
"""
from __future__ import annotations

from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ProxyError

from ..base import Account, Provider, RequestInfo, StreamContext, StreamTranslator, UpstreamRequest
from . import request as req_mod
from .errors import classify
from .response import CozeExchange
from .stream import CozeDecoder, CozeStream

OPTIONS = {"user_id", "conversation_header", "poll_interval", "poll_timeout", "auto_save_history"}


class CozeProvider(Provider):
    type_name = "coze"
    native_format = None
    default_base_url = "https://api.coze.com"
    # Our own decoder: Coze may answer a stream request with a JSON error body.
    stream_decoder = "coze"

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        opts = conf.get("options") or {}
        self.user_id = str(opts.get("user_id") or "tornado-proxy")
        self.conversation_header = str(opts.get("conversation_header") or "x-coze-conversation-id").lower()
        self.poll_interval = float(opts.get("poll_interval", 1.0))
        self.poll_timeout = float(opts.get("poll_timeout", 300.0))
        self.auto_save_history = bool(opts.get("auto_save_history", True))

    def validate(self, models: list[dict[str, Any]]) -> list[str]:
        opts = self.conf.get("options") or {}
        problems = []
        unknown = set(opts) - OPTIONS
        if unknown:
            problems.append(f"options: unknown option(s) {sorted(unknown)}")
        for key in ("poll_interval", "poll_timeout"):
            v = opts.get(key)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0):
                problems.append(f"options.{key}: expected a positive number of seconds")
        if "auto_save_history" in opts and not isinstance(opts["auto_save_history"], bool):
            problems.append("options.auto_save_history: expected true or false")
        for i, m in enumerate(models):
            if any(c in m["id"] for c in "*?[") and not m.get("upstream_model"):
                problems.append(f"models[{m['id']}]: a coze model needs upstream_model (the bot id)")
        return problems

    def headers(self, account: Account, model: dict[str, Any], stream: bool) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json",
             **self.extra_headers}
        if account.api_key:
            h["Authorization"] = "Bearer " + account.api_key
        h.update(account.extra.get("headers") or {})
        h.update(model.get("headers") or {})
        return h

    def build_request(self, req: dict[str, Any], model: dict[str, Any], account: Account,
                      stream: bool) -> UpstreamRequest:
        user = str(account.extra.get("user_id") or self.user_id)
        body, conv = req_mod.build_body(req, model, user, stream, self.auto_save_history)
        return UpstreamRequest("POST", req_mod.chat_url(self.base_url, conv), self.headers(account, model, stream),
                               jsonutil.dumpb(body), stream)

    def finish_request(self, up: UpstreamRequest, info: RequestInfo, model: dict[str, Any],
                       account: Account) -> UpstreamRequest:
        raw = info.client_headers.get(self.conversation_header)
        if raw:
            conv = req_mod.conversation_id(raw, self.conversation_header)
            up.url = req_mod.add_conversation(up.url, conv)
        return super().finish_request(up, info, model, account)

    def new_decoder(self) -> CozeDecoder:
        return CozeDecoder()

    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        return CozeStream(ctx)

    def new_exchange(self, up: UpstreamRequest, ctx: StreamContext) -> CozeExchange:
        return CozeExchange(self.base_url, up.headers, ctx, self.poll_interval, self.poll_timeout)

    def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
        raise NotImplementedError("a Coze answer takes several requests: see new_exchange")

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ProxyError:
        return classify(status, headers, body)
