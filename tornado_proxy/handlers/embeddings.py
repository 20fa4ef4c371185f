"""POST /v1/embeddings: OpenAI's embeddings API.

A model served by a ``gemini`` provider goes to ``batchEmbedContents`` (one
request for all inputs) and its answer comes back in OpenAI's shape; a model of
an ``openai`` provider is forwarded as is, only the model name mapped.  Other
providers have no embeddings here.  Accounts, failover, timeouts and errors are
the chat pipeline's (this handler reuses its non-streaming path).
"""
from __future__ import annotations

import os
import time
from typing import Any, cast

from providers.base import Account, Provider, StreamContext, UpstreamRequest
from providers.gemini import GeminiProvider

from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.handler import LLMHandler


class _EmbeddingsView:
    """A gemini provider as the pipeline's non-stream path sees it for one
    embeddings request: ``translate_response`` answers with the OpenAI
    embeddings object; everything else is the provider's."""

    def __init__(self, provider: Any, req: dict[str, Any]) -> None:
        self._provider = provider
        self._req = req

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)

    def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
        out: dict[str, Any] = self._provider.translate_embeddings(body, self._req)
        return out


class EmbeddingsHandler(LLMHandler):
    schema_name = "embeddings.request.v1"
    route_name = "embeddings"

    async def serve(self, body: dict[str, Any]) -> None:
        self.validate(body)
        name, model, provider = self.route(body["model"])
        ctx = StreamContext(id=os.urandom(12).hex(), created=int(time.time()), model=name, model_entry=model)
        raw = self._raw
        headers = {k.lower(): v for k, v in self.request.headers.get_all()}
        if isinstance(provider, GeminiProvider):
            gemini = provider

            def build(acct: Account) -> UpstreamRequest:
                return gemini.build_embeddings_request(body, model, acct)

            view = cast(Provider, _EmbeddingsView(provider, body))
            await self.with_accounts(view, build, ctx, passthrough=False)
        elif provider.type_name == "openai":
            openai_up: Provider = provider

            def build_openai(acct: Account) -> UpstreamRequest:
                return openai_up.build_native_request(body, raw, model, acct, False, headers, path="/embeddings")

            await self.with_accounts(provider, build_openai, ctx, passthrough=True)
        else:
            raise ProxyError(ErrorKind.UNSUPPORTED,
                             f"the model '{name}' is served by a '{provider.type_name}' provider, "
                             "which has no embeddings here (gemini and openai providers do)", param="model")
