"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic Messages API.

To an ``anthropic`` upstream the body passes through (model mapped, headers
managed); to any other upstream it is translated through the pivot and the answer
comes back as Anthropic's response or event stream.  Errors on these routes use
Anthropic's error shape.  Inbound auth takes ``x-api-key`` and
``Authorization: Bearer`` (the base handler accepts both).
"""
from __future__ import annotations

import os
import time
from typing import Any

from providers.base import Account, Provider, StreamContext, UpstreamRequest

from tornado_proxy import jsonutil
from tornado_proxy.apis.anthropic_messages import AnthropicMessagesFormat, estimate_input_tokens
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.handler import LLMHandler

MESSAGES_FORMAT = AnthropicMessagesFormat()


class PassThroughMessagesFormat(AnthropicMessagesFormat):
    """For requests going to an ``anthropic`` upstream: the body passes through, so
    nothing is translated (and nothing Anthropic-only is rejected); the pipeline
    only reads the model and the stream flag of this pivot."""

    def parse_request(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"model": body.get("model"), "stream": bool(body.get("stream"))}


PASSTHROUGH_FORMAT = PassThroughMessagesFormat()


class MessagesHandler(LLMHandler):
    client_format = MESSAGES_FORMAT
    schema_name = "messages.request.v1"
    route_name = "messages"

    async def serve(self, body: dict[str, Any]) -> None:
        name = body.get("model")
        hit = self.gw.router.resolve(name) if isinstance(name, str) and name else None
        if hit is not None and hit[1].native_format == MESSAGES_FORMAT.name:
            self.client_format = PASSTHROUGH_FORMAT
        await super().serve(body)


class CountTokensHandler(LLMHandler):
    """Forwarded to Anthropic upstreams; estimated locally for the others (see
    ``estimate_input_tokens``)."""

    client_format = MESSAGES_FORMAT
    schema_name = "messages.request.v1"
    route_name = "count_tokens"

    def validate(self, body: dict[str, Any]) -> None:
        # The Messages schema with max_tokens, which count_tokens does not take.
        super().validate({**body, "max_tokens": body.get("max_tokens", 0)})

    async def serve(self, body: dict[str, Any]) -> None:
        self.validate(body)
        name = body.get("model")
        hit = self.gw.router.resolve(name) if isinstance(name, str) and name else None
        if not isinstance(name, str) or hit is None:
            raise ProxyError(ErrorKind.MODEL_NOT_FOUND, f"the model '{name}' does not exist", param="model")
        model, provider = hit
        self.model_id = model["id"]
        self.provider_name = provider.name
        if provider.native_format == MESSAGES_FORMAT.name and not provider.local:
            raw = self._raw
            native: Provider = provider

            def build(acct: Account) -> UpstreamRequest:
                return native.build_native_request(body, raw, model, acct, False,
                                                   self.request.headers,  # type: ignore[arg-type]  # a str -> str mapping
                                                   path="/count_tokens")

            ctx = StreamContext(id=MESSAGES_FORMAT.context_id(os.urandom(12).hex()), created=int(time.time()),
                                model=name, model_entry=model)
            await self.with_accounts(provider, build, ctx, passthrough=True)
            return
        # Other upstreams cannot count Claude-style: a local estimate, after checking
        # the body translates at all (so a request the real call would reject fails here too).
        MESSAGES_FORMAT.parse_request({**body, "max_tokens": body.get("max_tokens") or 1})
        self.set_header("Content-Type", "application/json")
        self._mark_first()
        self.finish(jsonutil.dumpb({"input_tokens": estimate_input_tokens(body)}))
