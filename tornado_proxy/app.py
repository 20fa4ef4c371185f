"""The gateway object and the one route table."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import tornado.routing
import tornado.web

from providers import PROVIDER_TYPES
from providers.base import Provider

from tornado_proxy.observability import tracing
from tornado_proxy.observability.accesslog import AccessLog
from tornado_proxy.observability.account_metrics import AccountCollector
from tornado_proxy.config import Config, Router
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
from tornado_proxy.observability.metrics import Metrics
from tornado_proxy.accounts.scheduler import Scheduler
from tornado_proxy.pipeline.upstream import Upstream



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


class Gateway:
    """Everything a handler needs, built once from the config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        s = config.server
        self.access_keys: list[bytes] = [k.encode("utf-8") for k in s["access_keys"]]
        self.access_key_header: str = s["access_key_header"]
        self.admin_token: str = s.get("admin_token") or ""
        self.metrics_token: bytes = (s.get("metrics_token") or "").encode("utf-8")
        # Who may pin an account with x-auth-id: everyone (True), nobody (False), or the
        # holders of the listed access keys.
        pinning = s.get("account_pinning", True)
        self.pinning_keys: frozenset[bytes] | None = (
            None if pinning is True else frozenset(k.encode("utf-8") for k in (pinning or ()) if k))
        self.pin_headers: tuple[str, ...] = tuple(sorted({
            str((p.get("scheduler") or {}).get(n) or d).lower()
            for p in config.providers for n, d in (("pin_header", "x-auth-id"), ("strict_pin_header", "x-auth-strict"))}))
        self.cors_origins: list[str] = list(s["cors_origins"])
        self.max_body_bytes: int = s["max_body_bytes"]
        types = dict(PROVIDER_TYPES)
        self.providers: dict[str, Provider] = {p["name"]: types[p["type"]](p) for p in config.providers}
        self.router = Router(config.models, self.providers)
        from tornado_proxy.state.config import make_store

        # shared with the other workers and replicas (docs/state.md); started by start()
        self.state = make_store(config)
        self.scheduler = Scheduler.from_config(config, store=self.state)
        upstream_class = Upstream
        if s["upstream_client"] == "tornado":
            from tornado_proxy.pipeline.tornado_upstream import TornadoUpstream

            upstream_class = TornadoUpstream
        self.upstream = upstream_class(max_clients=s["max_clients"], max_body_bytes=s["max_upstream_body_bytes"],
                                 max_error_bytes=s["max_upstream_error_bytes"])
        self.metrics = Metrics()
        self.metrics.init_providers(self.providers)
        self.metrics.register_collector(AccountCollector(self.scheduler))
        self.metrics.watch_state_store(self.state)
        self.draining = False
        self.active_requests = 0
        self.started = time.time()
        from tornado_proxy.state.responses import ResponseStore
        from tornado_proxy.state.store import SharedResponses, SharedStateStore

        # previous_response_id on non-Responses upstreams (handlers/responses.py)
        self.response_store = SharedResponses(ResponseStore.from_config(s.get("response_store")),
                                              self.state if isinstance(self.state, SharedStateStore) else None)
        self.access_log = AccessLog(s.get("log_format", "text"))
        self.tracer = tracing.from_config(config)  # None unless observability.otel.enabled
        self._openapi: dict[str, Any] | None = None

    def openapi(self) -> dict[str, Any]:
        if self._openapi is None:
            from tornado_proxy import __version__
            from tornado_proxy.pipeline.openapi import build_openapi

            entries = [(r.openapi_path, m, meta) for r in ROUTES for m, meta in r.methods.items()]
            doc = build_openapi(entries)
            doc.setdefault("info", {})["version"] = __version__
            self._openapi = doc
        return self._openapi

    async def start(self) -> None:
        """Load the shared state before the first request (a replica starting joins as it is)."""
        start = getattr(self.state, "start", None)
        if start is not None:
            await start()

    async def close_state(self) -> None:
        close = getattr(self.state, "close", None)
        if close is not None:
            await close()

    def close(self) -> None:
        """The rest, once ``close_state`` has been awaited (``Server`` does both, in order)."""
        self.upstream.close()
        self.access_log.close()
        if self.tracer is not None:
            self.tracer.shutdown()


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
        "status": 499 if getattr(handler, "_gone", False) else handler.get_status(),
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
