"""OpenTelemetry traces: one span per request, one child span per upstream attempt.

Off by default.  On with the config block (docs/tracing.md)::

    "observability": {"otel": {"enabled": true,
                               "endpoint": "http://collector:4318/v1/traces",
                               "service_name": "tornado-proxy"}}

and the ``[otel]`` extra installed (``opentelemetry-sdk``,
``opentelemetry-exporter-otlp-proto-http``).  What the block leaves out comes from
the standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``...);
``OTEL_SDK_DISABLED=true`` turns tracing off whatever the config says.

Spans follow the OpenTelemetry GenAI semantic conventions: the request span
(kind SERVER, named ``POST /v1/chat/completions``) carries what the client asked
(``gen_ai.request.model`` is the client's model name) and the outcome; each
attempt on an upstream account is a child span (kind CLIENT, named
``chat <upstream model>``) with ``gen_ai.provider.name``, the upstream model, the
account id, the upstream status and, for the attempt that answered, the token
usage.  A failover shows as several attempt spans and a ``failover`` event on the
request span.

Never in an attribute: keys, headers, query strings, prompts, completions or
upstream error text (which may quote either), unless ``capture_content`` is true,
which adds the client's request body (cut at ``max_content_bytes``).

Cost: with tracing off the gateway holds ``None`` here and the pipeline's hooks
are one attribute test each; opentelemetry is never imported.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tornado_proxy.config import ConfigError

if TYPE_CHECKING:
    from providers.base import Provider

    from tornado_proxy.errors import ProxyError

# Our provider types -> the conventions' gen_ai.provider.name values.
PROVIDER_NAMES = {"openai": "openai", "responses": "openai", "anthropic": "anthropic",
                  "gemini": "gcp.gemini", "bedrock": "aws.bedrock"}
# Routes -> gen_ai.operation.name (the Gemini-native route depends on its method).
OPERATIONS = {"chat_completions": "chat", "messages": "chat", "responses": "chat",
              "embeddings": "embeddings", "count_tokens": "count_tokens"}
GEMINI_OPERATIONS = {"generateContent": "generate_content", "streamGenerateContent": "generate_content",
                     "embedContent": "embeddings", "batchEmbedContents": "embeddings",
                     "countTokens": "count_tokens"}


def from_config(config: Any) -> "Tracer | None":
    """The gateway's tracer, or None when tracing is off (the default)."""
    obs = (getattr(config, "raw", None) or {}).get("observability") or {}
    conf = obs.get("otel") or {}
    if not conf.get("enabled"):
        return None
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return Tracer(conf)


def _operation(handler: Any) -> str:
    route = handler.route_name
    if route == "gemini_native":
        args = handler.path_args
        return GEMINI_OPERATIONS.get(str(args[1]) if len(args) > 1 else "", "generate_content")
    return OPERATIONS.get(route, str(route))


def _usage_attributes(usage: dict[str, Any] | None) -> dict[str, int]:
    """Pivot usage -> gen_ai.usage.*; input tokens include cached ones, as the conventions say."""
    if not usage:
        return {}
    out = {}
    for attr, key in (("gen_ai.usage.input_tokens", "prompt_tokens"),
                      ("gen_ai.usage.output_tokens", "completion_tokens")):
        v = usage.get(key)
        if isinstance(v, int):
            out[attr] = v
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        for attr, key in (("gen_ai.usage.cache_read.input_tokens", "cached_tokens"),
                          ("gen_ai.usage.cache_creation.input_tokens", "cache_creation_tokens")):
            v = details.get(key)
            if isinstance(v, int):
                out[attr] = v
    return out


class Tracer:
    """The SDK's tracer provider and exporter, built once per process (after a fork)."""

    def __init__(self, conf: dict[str, Any]) -> None:
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise ConfigError(["$.observability.otel.enabled: tracing needs the optional packages: "
                               "pip install 'tornado-proxy[otel]'"]) from None
        from tornado_proxy import __version__

        self._trace = trace
        self._propagate = propagate
        self.capture_content = bool(conf.get("capture_content"))
        self.max_content_bytes = int(conf.get("max_content_bytes", 16384))
        service = conf.get("service_name") or os.environ.get("OTEL_SERVICE_NAME") or "tornado-proxy"
        resource = Resource.create({"service.name": service, "service.version": __version__})
        sampler = None
        if conf.get("sample_ratio") is not None:
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

            sampler = ParentBased(TraceIdRatioBased(float(conf["sample_ratio"])))
        self.provider = TracerProvider(resource=resource, sampler=sampler)
        exporter = conf.get("exporter", "otlp")
        if exporter == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                raise ConfigError(["$.observability.otel: the OTLP exporter is missing: "
                                   "pip install 'tornado-proxy[otel]'"]) from None
            # endpoint/headers None: the exporter reads the OTEL_EXPORTER_OTLP_* variables
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
                endpoint=conf.get("endpoint"), headers=conf.get("headers"))))
        elif exporter == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            self.provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        # exporter "none": spans are made for processors added in code (tests), not sent
        self.tracer = self.provider.get_tracer("tornado_proxy", __version__)
        self._servers: dict[str, tuple[str, int | None]] = {}
        self._routes: list[tuple[Any, str]] | None = None

    def start(self, handler: Any) -> "RequestTrace":
        return RequestTrace(self, handler)

    def use_routes(self, routes: Any) -> None:
        """The route table (``app.ROUTES``: given by the app, which imports us)."""
        import re

        self._routes = [(re.compile(r.pattern + "$"), r.openapi_path) for r in routes]

    def route_of(self, path: str) -> str:
        """The route template of a path (low cardinality: a span name, ``http.route``)."""
        for rx, template in self._routes or ():
            if rx.match(path):
                return template
        return "other"

    def server_of(self, provider: "Provider") -> tuple[str, int | None]:
        hit = self._servers.get(provider.name)
        if hit is None:
            url = urlsplit(str(provider.conf.get("base_url") or ""))
            try:
                port = url.port
            except ValueError:
                port = None
            hit = self._servers[provider.name] = (url.hostname or "", port)
        return hit

    def shutdown(self) -> None:
        self.provider.shutdown()  # flushes what the batch processor still holds


class RequestTrace:
    """One request's spans.  Created by the pipeline when a request starts; every method is O(1)."""

    __slots__ = ("t", "span", "ctx", "operation", "attempt_span", "attempt_error", "attempts", "requested",
                 "last_kind", "last_account")

    def __init__(self, t: Tracer, handler: Any) -> None:
        self.t = t
        req = handler.request
        route = t.route_of(req.path)
        trace = t._trace
        parent = t._propagate.extract(req.headers)  # a client's traceparent continues its trace
        attrs: dict[str, Any] = {"http.request.method": req.method or "", "http.route": route,
                                 "url.path": req.path, "url.scheme": req.protocol,
                                 "gen_ai.operation.name": _operation(handler)}
        self.span = t.tracer.start_span(f"{req.method} {route}", context=parent, kind=trace.SpanKind.SERVER,
                                        attributes=attrs)
        self.ctx = trace.set_span_in_context(self.span)
        self.attempt_span: Any = None
        self.attempt_error: "ProxyError | None" = None
        self.attempts = 0
        self.requested = ""
        self.last_kind = ""
        self.last_account = ""
        self.operation = attrs["gen_ai.operation.name"]

    # -- upstream attempts (LLMHandler.with_accounts) ----------------------------------
    def attempt(self, handler: Any, provider: "Provider", account_id: str, ctx: Any) -> None:
        """An account was leased for an attempt: its span starts (the previous one has ended)."""
        t = self.t
        trace = t._trace
        self.attempts += 1
        if self.attempts == 1:
            self.requested = ctx.model
            self.span.set_attribute("gen_ai.request.model", ctx.model)
            if t.capture_content:
                # the client's body, held until the first byte goes out (LLMHandler._release)
                raw = getattr(handler, "_raw", b"") or b""
                self.span.set_attribute("tornado_proxy.request.body",
                                        raw[: t.max_content_bytes].decode("utf-8", "replace"))
        else:
            self.span.add_event("failover", {"tornado_proxy.attempt": self.attempts,
                                             "tornado_proxy.failed_account.id": self.last_account,
                                             "error.type": self.last_kind})
        hit = handler.gw.router.resolve(ctx.model)
        upstream_model = hit[0].get("upstream_model", ctx.model) if hit is not None else ctx.model
        host, port = t.server_of(provider)
        op = self.operation
        ptype = getattr(provider, "type_name", "") or str(provider.conf.get("type", ""))
        attrs: dict[str, Any] = {"gen_ai.operation.name": op,
                                 "gen_ai.provider.name": PROVIDER_NAMES.get(ptype, ptype),
                                 "gen_ai.request.model": upstream_model,
                                 "tornado_proxy.provider": provider.name,
                                 "tornado_proxy.account.id": account_id,
                                 "tornado_proxy.attempt": self.attempts,
                                 "server.address": host}
        if port is not None:
            attrs["server.port"] = port
        self.attempt_span = t.tracer.start_span(f"{op} {upstream_model}", context=self.ctx,
                                                kind=trace.SpanKind.CLIENT, attributes=attrs)
        self.attempt_error = None
        self.last_account = account_id

    def attempt_failed(self, err: "ProxyError") -> None:
        self.attempt_error = err
        self.last_kind = err.kind.value

    def attempt_done(self, handler: Any) -> None:
        """The attempt is over (answered, failed, or the client left): its span ends."""
        span = self.attempt_span
        if span is None:
            return
        self.attempt_span = None
        err = self.attempt_error
        kind = err.kind.value if err is not None else (handler.error_kind.value if handler.error_kind else "")
        if not kind and getattr(handler, "_gone", False):
            kind = "client_closed"  # the transfer was aborted with the client's connection
        if err is not None and err.upstream_status is not None:
            span.set_attribute("http.response.status_code", err.upstream_status)
        if kind:
            # the kind only: an upstream's message may quote the prompt
            span.set_attribute("error.type", kind)
            span.set_status(self.t._trace.Status(self.t._trace.StatusCode.ERROR, kind))
        else:
            span.set_attribute("http.response.status_code", 200)
            usage = _usage_attributes(handler._usage)
            if usage:
                span.set_attributes(usage)
        span.end()

    # -- the end of the request (LLMHandler.on_finish) -----------------------------------
    def end(self, handler: Any) -> None:
        self.attempt_done(handler)
        span = self.span
        gone = getattr(handler, "_gone", False)
        status = 499 if gone else handler.get_status()
        span.set_attribute("http.response.status_code", status)
        requested = self.requested or getattr(handler, "model_id", "")
        if requested:
            span.set_attribute("gen_ai.request.model", requested)
            # every route answers with the model name the client asked for
            if status < 400:
                span.set_attribute("gen_ai.response.model", requested)
        if getattr(handler, "provider_name", ""):
            span.set_attribute("tornado_proxy.provider", handler.provider_name)
        if getattr(handler, "account_id", ""):
            span.set_attribute("tornado_proxy.account.id", handler.account_id)
        span.set_attribute("tornado_proxy.attempts", self.attempts)
        span.set_attribute("tornado_proxy.stream", bool(getattr(handler, "_streaming", False)))
        usage = _usage_attributes(getattr(handler, "_usage", None))
        if usage:
            span.set_attributes(usage)
        kind = handler.error_kind
        if gone:
            span.set_attribute("error.type", "client_closed")
        elif kind is not None:
            span.set_attribute("error.type", kind.value)
            if status >= 500 or getattr(handler, "_first_sent", False):
                # a server span is an error for 5xx, and for a stream that failed after its first byte
                span.set_status(self.t._trace.Status(self.t._trace.StatusCode.ERROR, kind.value))
        span.end()
