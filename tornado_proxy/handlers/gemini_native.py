"""The Gemini-native API on ``/v1beta``, for the google-genai SDK and other Gemini clients.

    POST /v1beta/models/{model}:generateContent | streamGenerateContent | countTokens
                                | embedContent | batchEmbedContents
    GET  /v1beta/models, /v1beta/models/{model}

The client's key (``x-goog-api-key`` or ``?key=``, as Google's clients send it;
``Authorization: Bearer`` works too) is checked as the gateway's access key and
never forwarded.  The request goes to a ``gemini`` provider with an account from
the scheduler (failover, cooldowns and timeouts as on every route), bytes passed
through with only the model name mapped.  Errors come back as ``google.rpc.Status``
JSON, which google-genai turns into its ``APIError``.
"""
from __future__ import annotations

import os
import time
import urllib.parse
from typing import Any

from providers.base import Account, Provider, StreamContext, UpstreamRequest
from providers.gemini import NATIVE_METHODS

from tornado_proxy import jsonutil
from tornado_proxy.apis.gemini_native import GeminiNativeFormat
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.handler import LLMHandler
from tornado_proxy.handlers.base import BaseHandler

GEMINI_FORMAT = GeminiNativeFormat()


def _google_key(handler: BaseHandler) -> str | None:
    """The key as Google's clients present it: ``x-goog-api-key`` or ``?key=``."""
    key = handler.request.headers.get("x-goog-api-key")
    if key:
        return key
    values = handler.request.query_arguments.get("key")
    if values:
        return values[-1].decode("utf-8", "replace")
    return None


def _gemini_models(handler: BaseHandler) -> list[tuple[str, dict[str, Any]]]:
    """Model names (ids and aliases) served by gemini providers."""
    router = handler.gw.router
    return [(n, m) for n, m in router.exact.items()
            if getattr(router.providers.get(m["provider"]), "native_format", None) == "gemini"]


def _model_entry(name: str, model: dict[str, Any]) -> dict[str, Any]:
    return {"name": f"models/{name}", "displayName": name,
            "description": f"served by the gateway's '{model['provider']}' provider",
            "supportedGenerationMethods": list(NATIVE_METHODS)}


class GeminiNativeHandler(LLMHandler):
    client_format = GEMINI_FORMAT
    schema_name = None
    route_name = "gemini_native"

    def presented_key(self) -> str | None:
        return _google_key(self) or super().presented_key()

    async def post(self, *args: Any) -> None:
        try:
            body = self.read_body()
            await self.serve_native(body, urllib.parse.unquote(args[0]), args[1])
        finally:
            self._done()

    async def serve_native(self, body: dict[str, Any], name: str, method: str) -> None:
        if method not in NATIVE_METHODS:
            raise ProxyError(ErrorKind.NOT_FOUND, f"unknown method '{method}'; this gateway serves "
                                                  + ", ".join(NATIVE_METHODS))
        name = name.removeprefix("models/")
        hit = self.gw.router.resolve(name)
        if hit is None:
            raise ProxyError(ErrorKind.MODEL_NOT_FOUND, f"models/{name} is not found", param="model")
        model = hit[0]
        provider: Provider = hit[1]
        if provider.native_format != "gemini":
            raise ProxyError(ErrorKind.UNSUPPORTED,
                             f"models/{name} is not served by a gemini provider; use /v1/chat/completions",
                             param="model")
        self.model_id = model["id"]
        self.provider_name = provider.name
        stream = method == "streamGenerateContent" and self.get_query_argument("alt", "") == "sse"
        ctx = StreamContext(id=os.urandom(12).hex(), created=int(time.time()), model=name, model_entry=model)
        headers = {k.lower(): v for k, v in self.request.headers.get_all()}

        def build(acct: Account) -> UpstreamRequest:
            return provider.build_native_request(body, self._raw, model, acct, stream, headers, method)

        self._held = [body]  # let go of at the first byte (LLMHandler._release)
        await self.with_accounts(provider, build, ctx, passthrough=True)


class GeminiModelsHandler(BaseHandler):
    """GET /v1beta/models[/{model}]: the gateway's gemini-served models in Gemini's shape."""

    client_format = GEMINI_FORMAT
    route_name = "gemini_models"

    def presented_key(self) -> str | None:
        return _google_key(self) or super().presented_key()

    def get(self, name: str | None = None) -> None:
        self.set_header("Content-Type", "application/json")
        models = _gemini_models(self)
        if name is None:
            self.finish(jsonutil.dumpb({"models": [_model_entry(n, m) for n, m in models]}))
            return
        name = urllib.parse.unquote(name).removeprefix("models/")
        for n, m in models:
            if n == name:
                self.finish(jsonutil.dumpb(_model_entry(n, m)))
                return
        raise ProxyError(ErrorKind.MODEL_NOT_FOUND, f"models/{name} is not found", param="model")
