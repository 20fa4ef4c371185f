"""The one route table, and the Tornado application built on it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import tornado.routing
import tornado.web

from tornado_proxy.gateway import Gateway
from tornado_proxy.handlers.admin import ADMIN_ROUTES
from tornado_proxy.handlers.base import NotFoundHandler
from tornado_proxy.handlers.chat_completions import ChatCompletionsHandler
from tornado_proxy.handlers.embeddings import EmbeddingsHandler
from tornado_proxy.handlers.gemini_native import GeminiModelsHandler, GeminiNativeHandler
from tornado_proxy.handlers.health import (HealthHandler, MetricsHandler, ModelsHandler, OpenAPIHandler,
                              ReadyHandler, RootHandler)
from tornado_proxy.handlers.messages import CountTokensHandler, MessagesHandler
from tornado_proxy.handlers.responses import ResponseResourceHandler, ResponsesHandler
from tornado_proxy.handlers.responses_ws import ResponsesSocketHandler
from tornado_proxy.handlers.status import STATUS_ROUTES


@dataclass
class Route:
    pattern: str                      # Tornado URL regex
    handler: type[tornado.web.RequestHandler]
    openapi_path: str                 # the same path in OpenAPI template form
    # method -> {"summary", "request_schema", "response_schema", "stream_schema", "tags"}
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Only WebSocket upgrade requests take this route; the path's other requests go on
    # to the next route that matches.
    upgrade: bool = False


class WebSocketUpgrade(tornado.routing.PathMatches):
    """A path, for WebSocket upgrade requests only."""

    upgrade_only = True  # (http1.exact_routes: no plain request is routed here)

    def match(self, request: Any) -> dict[str, Any] | None:
        headers = getattr(request, "headers", None)
        if headers is None or headers.get("Upgrade", "").lower() != "websocket":
            return None
        return super().match(request)


CHAT = {"summary": "Create a chat completion (OpenAI Chat Completions)", "tags": ["openai"],
        "request_schema": "chat_completions.request.v1", "response_schema": "chat_completions.response.v1",
        "stream_schema": "chat_completions.chunk.v1"}

# The one route table.  Order matters only for overlapping patterns.
ROUTES: list[Route] = [
    Route(r"/v1/chat/completions", ChatCompletionsHandler, "/v1/chat/completions", {"post": CHAT}),
    Route(r"/chat/completions", ChatCompletionsHandler, "/chat/completions", {"post": CHAT}),
    Route(r"/v1/messages", MessagesHandler, "/v1/messages",
          {"post": {"summary": "Create a message (Anthropic Messages)", "tags": ["anthropic"],
                    "request_schema": "messages.request.v1"}}),
    Route(r"/v1/messages/count_tokens", CountTokensHandler, "/v1/messages/count_tokens",
          {"post": {"summary": "Count input tokens (forwarded to Anthropic upstreams, estimated otherwise)",
                    "tags": ["anthropic"], "request_schema": "messages.request.v1"}}),
    Route(r"/v1/responses", ResponsesSocketHandler, "/v1/responses",
          {"get": {"summary": "The Responses WebSocket transport (Codex CLI): response.create frames in, "
                              "Responses events out, on any upstream (docs/clients/codex.md)", "tags": ["openai"]}},
          upgrade=True),
    Route(r"/v1/responses", ResponsesHandler, "/v1/responses",
          {"post": {"summary": "Create a response (OpenAI Responses), on any upstream", "tags": ["openai"],
                    "request_schema": "responses.request.v1"}}),
    Route(r"/v1/responses/([^/]+)", ResponseResourceHandler, "/v1/responses/{response_id}",
          {"get": {"summary": "Retrieve a response", "tags": ["openai"]},
           "delete": {"summary": "Delete a response", "tags": ["openai"]}}),
    Route(r"/v1/responses/([^/]+)/(cancel|input_items)", ResponseResourceHandler,
          "/v1/responses/{response_id}/{action}",
          {"get": {"summary": "List a response's input items (action: input_items)", "tags": ["openai"]},
           "post": {"summary": "Cancel a background response (action: cancel)", "tags": ["openai"]}}),
    Route(r"/v1/models", ModelsHandler, "/v1/models",
          {"get": {"summary": "List models", "tags": ["openai"], "response_schema": "models.list.v1"}}),
    Route(r"/v1/models/([^/]+)", ModelsHandler, "/v1/models/{model}",
          {"get": {"summary": "Retrieve a model", "tags": ["openai"]}}),
    Route(r"/v1/embeddings", EmbeddingsHandler, "/v1/embeddings",
          {"post": {"summary": "Create embeddings (OpenAI shape; gemini models via batchEmbedContents)",
                    "tags": ["openai"], "request_schema": "embeddings.request.v1"}}),
    Route(r"/v1beta/models/([^/:]+):([A-Za-z]+)", GeminiNativeHandler, "/v1beta/models/{model}:{method}",
          {"post": {"summary": "Gemini-native generateContent, streamGenerateContent (alt=sse), countTokens, "
                               "embedContent, batchEmbedContents; gemini models only", "tags": ["gemini"]}}),
    Route(r"/v1beta/models", GeminiModelsHandler, "/v1beta/models",
          {"get": {"summary": "List the gemini-served models (Gemini shape)", "tags": ["gemini"]}}),
    Route(r"/v1beta/models/([^/:]+)", GeminiModelsHandler, "/v1beta/models/{model}",
          {"get": {"summary": "Retrieve a gemini-served model (Gemini shape)", "tags": ["gemini"]}}),
    Route(r"/", RootHandler, "/",
          {"get": {"summary": "Reachability check (clients probe it: Claude Code sends HEAD /)",
                   "tags": ["operations"], "public": True},
           "head": {"summary": "Reachability check", "tags": ["operations"], "public": True}}),
    Route(r"/health", HealthHandler, "/health",
          {"get": {"summary": "Liveness", "tags": ["operations"], "public": True},
           "head": {"summary": "Liveness", "tags": ["operations"], "public": True}}),
    Route(r"/health/ready", ReadyHandler, "/health/ready",
          {"get": {"summary": "Readiness: 503 while draining or with no usable account", "tags": ["operations"],
                   "public": True},
           "head": {"summary": "Readiness", "tags": ["operations"], "public": True}}),
    Route(r"/metrics", MetricsHandler, "/metrics",
          {"get": {"summary": "Prometheus metrics", "tags": ["operations"], "public": True}}),
    *(Route(*r) for r in ADMIN_ROUTES),
    *(Route(*r) for r in STATUS_ROUTES),
    Route(r"/openapi.json", OpenAPIHandler, "/openapi.json",
          {"get": {"summary": "This document", "tags": ["operations"], "public": True}}),
]


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One line per request; never headers or bodies (they carry keys)."""
    gw = getattr(handler, "gw", None)
    if gw is None or not gw.access_log.enabled:
        return
    req = handler.request
    kind = getattr(handler, "error_kind", None)
    ttfb = getattr(handler, "_ttfb", None)
    gw.access_log.record({
        "method": req.method, "path": req.path,
        "status": (handler.client_status() if hasattr(handler, "client_status")
                   else 499 if getattr(handler, "_gone", False) else handler.get_status()),
        "ms": round(1000.0 * req.request_time(), 2),
        "model": getattr(handler, "model_id", "") or None,
        "provider": getattr(handler, "provider_name", "") or None,
        "account": getattr(handler, "account_id", "") or None,
        "error": kind.value if kind is not None else None,
        "remote": req.remote_ip,
        "ttfb_ms": round(1000.0 * ttfb, 2) if ttfb is not None else None,
    })


def make_app(gw: Gateway) -> tornado.web.Application:
    handlers = [tornado.routing.Rule(WebSocketUpgrade(r.pattern), r.handler, {"gw": gw}) if r.upgrade
                else (r.pattern, r.handler, {"gw": gw}) for r in ROUTES]
    if gw.tracer is not None:
        gw.tracer.use_routes(ROUTES)
    return tornado.web.Application(
        handlers,
        routes=ROUTES,  # for the handlers' Allow header (they cannot import this module)
        default_handler_class=NotFoundHandler,
        default_handler_args={"gw": gw},
        log_function=log_request,
        compress_response=False,   # SSE must not be buffered by a compressor
    )
