"""The ``anthropic`` upstream: Anthropic's Messages API, or any vendor serving it.

``AnthropicProvider`` (type ``anthropic``) turns the pivot (Chat Completions) request
into a Messages request (``request``) and a Messages response (``response``) or event
stream (``stream``) into the pivot; ``errors`` maps Anthropic's error types to our kinds.
A client's own Messages body passes through with ``request.native_body``.  The
``/v1/messages`` client format is ``tornado_proxy.apis.anthropic_messages``.

What is mapped, what is dropped and why is in ``README.md``; every drop
made here is listed there.  Shapes follow Anthropic's API reference and the
``anthropic`` Python SDK (``types/message_create_params.py``,
``lib/streaming/_messages.py``).  docs/upstreams/anthropic.md.
"""
from __future__ import annotations

from typing import Any, Iterable

from tornado_proxy import jsonutil
from tornado_proxy.errors import ProxyError

from .. import ratelimits
from ..base import Account, Provider, StreamContext, StreamTranslator, UpstreamRequest
from ..toolkit import options_problems, upstream_json, usage_in
from .errors import ERROR_KINDS, classify, upstream_error_event
from .request import (ANTHROPIC_VERSION, BETA_INTERLEAVED, BETA_OAUTH, BETA_STRUCTURED, COUNT_TOKENS_FIELDS,
                      DEFAULT_MAX_TOKENS, EFFORT_TO_ADAPTIVE, EFFORT_TO_LEVEL,
                      IMAGE_MEDIA_TYPES, OAUTH_TOKEN_PREFIX, Reasoning, _merge_betas,
                      convert_messages, convert_tools, file_block, image_block, native_body,
                      pivot_to_messages, resolve_reasoning)
from .response import FINISH_FROM_STOP, STOP_FROM_FINISH, blocks_to_message, message_to_pivot, usage_to_pivot
from .stream import AnthropicStream

__all__ = ["ANTHROPIC_VERSION", "BETA_INTERLEAVED", "BETA_OAUTH", "BETA_STRUCTURED", "COUNT_TOKENS_FIELDS",
           "DEFAULT_MAX_TOKENS", "EFFORT_TO_ADAPTIVE", "EFFORT_TO_LEVEL", "ERROR_KINDS",
           "FINISH_FROM_STOP", "IMAGE_MEDIA_TYPES", "OAUTH_TOKEN_PREFIX", "STOP_FROM_FINISH",
           "AnthropicProvider", "AnthropicStream", "Reasoning", "blocks_to_message", "classify", "convert_messages",
           "convert_tools", "file_block", "image_block", "message_to_pivot", "native_body",
           "pivot_to_messages", "resolve_reasoning", "upstream_error_event", "usage_to_pivot"]

SCHEMA_NAME = "providers/anthropic.options"  # checked by toolkit.options_problems


class AnthropicProvider(Provider):
    """Anthropic's Messages API, or any vendor serving it behind its own endpoint."""

    type_name = "anthropic"
    native_format = "anthropic"
    default_base_url = "https://api.anthropic.com"
    # API keys' counted limits, and the unified windows of subscription (OAuth) accounts
    rate_limit_headers = ratelimits.ANTHROPIC
    stream_decoder = "sse"

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        opts = conf.get("options") or {}
        self.auth: str = opts.get("auth", "x-api-key")
        self.version: str = opts.get("anthropic_version", ANTHROPIC_VERSION)
        self.messages_path: str = opts.get("messages_path", "/v1/messages")
        self.count_tokens_path: str = opts.get("count_tokens_path", "/v1/messages/count_tokens")
        self.betas: list[str] = list(opts.get("betas") or ())

    # -- configuration -------------------------------------------------------
    def validate(self, models: list[dict[str, Any]]) -> list[str]:
        problems = options_problems(SCHEMA_NAME, self.conf.get("options") or {}, "options", "provider_options")
        for m in models:
            problems += options_problems(SCHEMA_NAME, m.get("options") or {}, f"model '{m.get('id')}': options",
                                         "model_options")
        return problems

    def headers(self, account: Account, model: dict[str, Any], betas: Iterable[str],
                client_headers: dict[str, str] | None = None) -> dict[str, str]:
        h = {"content-type": "application/json", "anthropic-version": self.version}
        client_version = (client_headers or {}).get("anthropic-version")
        if client_version:
            h["anthropic-version"] = client_version
        key = account.api_key or ""
        credential = account.extra.get("credential")
        # OAuth access tokens go as Bearer.  Anthropic's own (Claude subscriptions,
        # sk-ant-oat..., from an OAuth account or a client passing one through) also need
        # the OAuth beta; a vendor's OAuth token (WorkOS...) is a plain Bearer token.
        claude_oauth = credential in ("oauth", "client") and key.startswith(OAUTH_TOKEN_PREFIX)
        if key:
            if self.auth == "bearer" or credential == "oauth" or claude_oauth:
                h["authorization"] = "Bearer " + key
            else:
                h["x-api-key"] = key
        configured: list[str] = [BETA_OAUTH] if claude_oauth else []
        for extra in (self.extra_headers, account.extra.get("headers") or {}, model.get("headers") or {}):
            for k, v in extra.items():
                if k.lower() == "anthropic-beta":
                    configured.append(v)
                else:
                    h[k.lower()] = v
        merged = _merge_betas(self.betas, configured, betas)
        if merged:
            h["anthropic-beta"] = ",".join(merged)
        return h

    # -- the four jobs -------------------------------------------------------
    def build_request(self, req: dict[str, Any], model: dict[str, Any], account: Account,
                      stream: bool) -> UpstreamRequest:
        body, betas = pivot_to_messages(req, model, stream)
        return UpstreamRequest("POST", self.base_url + self.messages_path, self.headers(account, model, betas),
                               jsonutil.dumpb(body), stream)

    def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
        return message_to_pivot(upstream_json(body, "a body", obj=False), ctx)

    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        return AnthropicStream(ctx)

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ProxyError:
        return classify(status, headers, body)

    # -- native pass-through -------------------------------------------------
    def build_native_request(self, body: dict[str, Any], raw: bytes, model: dict[str, Any],
                             account: Account, stream: bool, client_headers: dict[str, str],
                             path: str = "") -> UpstreamRequest:
        """``/v1/messages`` (path "") or ``/v1/messages/count_tokens`` (path "/count_tokens")."""
        count = path.rstrip("/").endswith("count_tokens")
        body, betas = native_body(body, model, count)
        client_betas = (client_headers or {}).get("anthropic-beta")
        headers = self.headers(account, model, _merge_betas([client_betas] if client_betas else [], betas),
                               client_headers)
        url = self.base_url + (self.count_tokens_path if count else self.messages_path)
        return UpstreamRequest("POST", url, headers, jsonutil.dumpb(body), stream and not count)

    def stream_complete_marker(self) -> bytes | None:
        return b"message_stop"

    usage_in_first_event = True  # message_start's input tokens (message_delta may give only the output)

    def usage_of(self, obj: Any) -> dict[str, Any] | None:
        # A Message's ``usage``, message_start's ``message.usage``, message_delta's ``usage``.
        u = usage_in(obj, "message")
        if u is not None and ("input_tokens" in u or "output_tokens" in u):
            return usage_to_pivot(u)
        return None
