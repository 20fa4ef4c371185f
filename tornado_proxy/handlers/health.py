"""Liveness, readiness, models, metrics and the OpenAPI document."""
from __future__ import annotations

import hmac

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.handlers.base import BaseHandler


class HealthHandler(BaseHandler):
    """GET|HEAD /health: the process is up and its event loop turns."""

    public = True
    route_name = "health"
    answer = b'{"status":"ok"}'

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(self.answer)

    def head(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish()


class RootHandler(HealthHandler):
    """GET|HEAD /: what a client's reachability check hits (Claude Code sends ``HEAD /``
    before its first request).  Public, like /health: it tells nothing but "up"."""

    route_name = "root"
    answer = b'{"status":"ok","service":"tornado-proxy"}'


class ReadyHandler(BaseHandler):
    """GET|HEAD /health/ready: 503 while draining or while a provider has no usable account."""

    public = True
    route_name = "ready"

    def _state(self) -> tuple[int, dict[str, object]]:
        gw = self.gw
        if gw.draining:
            return 503, {"status": "draining"}
        unusable = [p.name for p in gw.providers.values() if not p.local and not gw.scheduler.usable(p.name)]
        if unusable:
            return 503, {"status": "unavailable", "providers_without_usable_account": unusable}
        return 200, {"status": "ready"}

    def get(self) -> None:
        status, body = self._state()
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(jsonutil.dumpb(body))

    def head(self) -> None:
        status, _ = self._state()
        self.set_status(status)
        self.finish()


class ModelsHandler(BaseHandler):
    """GET /v1/models and /v1/models/{id}, from config, in OpenAI's shape."""

    route_name = "models"

    def get(self, model_id: str | None = None) -> None:
        self.set_header("Content-Type", "application/json")
        listed = self.gw.router.listed()
        if model_id is None:
            self.finish(jsonutil.dumpb({"object": "list", "data": listed}))
            return
        for m in listed:
            if m["id"] == model_id:
                self.finish(jsonutil.dumpb(m))
                return
        raise ProxyError(ErrorKind.MODEL_NOT_FOUND, f"the model '{model_id}' does not exist", param="model")


class MetricsHandler(BaseHandler):
    """GET /metrics: Prometheus text format."""

    public = True
    route_name = "metrics"

    async def get(self) -> None:
        token = self.gw.metrics_token
        if token:  # account ids, states and quotas are for the operator's scraper only
            auth = self.request.headers.get("Authorization", "")
            given = auth[7:].strip().encode("utf-8", "surrogateescape") if auth[:7].lower() == "bearer " else b""
            if not hmac.compare_digest(given, token):
                raise ProxyError(ErrorKind.AUTH_INVALID if given else ErrorKind.AUTH_MISSING,
                                 "/metrics needs 'Authorization: Bearer <server.metrics_token>'")
        refresh = getattr(self.gw.state, "refresh_counters", None)
        if refresh is not None:
            # the account counters are the store's (every worker's and replica's): read
            # them now, after adding ours, so every scrape anywhere agrees and never goes back
            await refresh()
        body, ctype = self.gw.metrics.render()
        self.set_header("Content-Type", ctype)
        self.finish(body)


class OpenAPIHandler(BaseHandler):
    public = True
    route_name = "openapi"

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(jsonutil.dumpb(self.gw.openapi(self.application.settings.get("routes", ()))))
