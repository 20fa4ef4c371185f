"""The gateway object: everything a handler needs, built once from the config."""
from __future__ import annotations

import time
from typing import Any, Iterable

from providers import PROVIDER_TYPES
from providers.base import Provider

from tornado_proxy.accounts.scheduler import Scheduler
from tornado_proxy.config import Config, Router
from tornado_proxy.observability import tracing
from tornado_proxy.observability.accesslog import AccessLog
from tornado_proxy.observability.account_metrics import AccountCollector
from tornado_proxy.observability.metrics import Metrics
from tornado_proxy.pipeline.upstream import Upstream


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
        self.scheduler = Scheduler.from_config(
            config, store=self.state, rate_limits={n: p.rate_limit_headers for n, p in self.providers.items()})
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
        # The open Responses WebSockets (handlers/responses_ws.py): at a drain the idle
        # ones are closed at once, the busy ones after their answer.
        self.websockets: set[Any] = set()
        self.started = time.time()
        from tornado_proxy.state.responses import ResponseStore
        from tornado_proxy.state.store import SharedResponses, SharedStateStore

        # previous_response_id on non-Responses upstreams (handlers/responses.py)
        self.response_store = SharedResponses(ResponseStore.from_config(s.get("response_store")),
                                              self.state if isinstance(self.state, SharedStateStore) else None)
        self.access_log = AccessLog(s.get("log_format", "text"))
        self.tracer = tracing.from_config(config)  # None unless observability.otel.enabled
        self._openapi: dict[str, Any] | None = None

    def openapi(self, routes: Iterable[Any]) -> dict[str, Any]:
        """The OpenAPI document of ``routes`` (the app's route table), built once."""
        if self._openapi is None:
            from tornado_proxy import __version__
            from tornado_proxy.pipeline.openapi import build_openapi

            entries = [(r.openapi_path, m, meta) for r in routes for m, meta in r.methods.items()]
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
