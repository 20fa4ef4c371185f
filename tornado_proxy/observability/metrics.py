"""Prometheus metrics, all here, prefixed ``tornado_proxy_``, in base units.

Labels come from config or code (route name, model id *from config*, provider
name, status class, error kind), never from request data, so a client cannot
create series.  Children are cached in plain dicts: ``labels()`` costs a few
microseconds and runs for every request.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
                               CONTENT_TYPE_LATEST)

from tornado_proxy import fieldpolicy
from tornado_proxy.errors import ErrorKind

# LLM-sized: a reasoning model's answer can take minutes; the defaults stop at 10 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                   120.0, 300.0, 600.0, 1200.0)
TTFB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
                60.0, 120.0, 300.0)

OUTCOMES = ("ok", "client_error", "upstream_error", "timeout", "rate_limited", "cancelled")
TIMEOUT_KINDS = (ErrorKind.CONNECT_TIMEOUT, ErrorKind.FIRST_BYTE_TIMEOUT, ErrorKind.IDLE_TIMEOUT)


def outcome_of(status: int, kind: ErrorKind | None) -> str:
    if kind in (ErrorKind.CONNECT_TIMEOUT, ErrorKind.FIRST_BYTE_TIMEOUT, ErrorKind.IDLE_TIMEOUT):
        return "timeout"
    if status == 429:
        return "rate_limited"
    if status < 400:
        return "ok"
    if status == 499:
        return "cancelled"
    if status < 500:
        return "client_error"
    return "upstream_error"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("tornado_proxy_requests_total", "Requests served, by route, model, provider and status",
                                ["route", "model", "provider", "status"], registry=r)
        self.outcomes = Counter("tornado_proxy_provider_requests_total", "Requests by provider and outcome",
                                ["provider", "outcome"], registry=r)
        self.duration = Histogram("tornado_proxy_request_duration_seconds", "Whole request time",
                                  ["route", "provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("tornado_proxy_time_to_first_byte_seconds",
                              "Time from request to the first byte sent to the client",
                              ["route", "provider"], buckets=TTFB_BUCKETS, registry=r)
        self.upstream_ttfb = Histogram("tornado_proxy_upstream_time_to_first_byte_seconds",
                                       "Time from sending upstream to its first byte",
                                       ["provider"], buckets=TTFB_BUCKETS, registry=r)
        self.active_streams = Gauge("tornado_proxy_active_streams", "Streams in flight", ["route"],
                                    registry=r, multiprocess_mode="livesum")
        self.active_requests = Gauge("tornado_proxy_active_requests", "Requests in flight", ["route"],
                                     registry=r, multiprocess_mode="livesum")
        self.tokens = Counter("tornado_proxy_tokens_total", "Tokens by provider, model and direction (in/out)",
                              ["provider", "model", "direction"], registry=r)
        self.upstream_errors = Counter("tornado_proxy_upstream_errors_total", "Upstream failures by kind",
                                       ["provider", "kind"], registry=r)
        self.failovers = Counter("tornado_proxy_failovers_total", "Requests retried on another account",
                                 ["provider"], registry=r)
        # Field names come from tornado_proxy.fieldpolicy's tables, never from requests.
        self.dropped_fields = Counter("tornado_proxy_dropped_fields_total",
                                      "Request fields dropped because the upstream does not take them "
                                      "and they cannot change the answer", ["route", "field"], registry=r)
        self._dropped: dict[tuple[str, str], Any] = {}
        for route in fieldpolicy.TABLES:
            for name in fieldpolicy.droppable(route):
                self._dropped[(route, name)] = self.dropped_fields.labels(route, name)
        fieldpolicy.set_sink(self.count_dropped)
        self.websocket_closes = Counter("tornado_proxy_websocket_closes_total",
                                        "WebSockets the gateway closed: idle past server.websocket_idle_seconds, "
                                        "shed at the connection limit, or at a drain", ["reason"], registry=r)
        self._ws_closes = {why: self.websocket_closes.labels(why) for why in ("idle", "shed", "draining")}
        self.draining = Gauge("tornado_proxy_draining", "1 while the server drains after SIGTERM", [],
                              registry=r, multiprocess_mode="max")
        self._req: dict[tuple[str, str, str, int, ErrorKind | None], list[Any]] = {}
        self._dur: dict[tuple[str, str], Any] = {}
        self._ttfb: dict[tuple[str, str], Any] = {}
        self._tok: dict[tuple[str, str, str], Any] = {}
        self._out: dict[tuple[str, str], Any] = {}
        self._up_ttfb: dict[str, Any] = {}
        self._streams: dict[str, Any] = {}
        self._active: dict[str, Any] = {}

    def count_dropped(self, route: str, name: str) -> None:
        c = self._dropped.get((route, name))
        if c is not None:
            c.inc()

    def count_websocket_close(self, reason: str) -> None:
        c = self._ws_closes.get(reason)
        if c is not None:
            c.inc()

    def observe_upstream_ttfb(self, provider: str, seconds: float) -> None:
        h = self._up_ttfb.get(provider)
        if h is None:
            h = self._up_ttfb[provider] = self.upstream_ttfb.labels(provider)
        h.observe(seconds)

    def streams_gauge(self, route: str) -> Any:
        g = self._streams.get(route)
        if g is None:
            g = self._streams[route] = self.active_streams.labels(route)
        return g

    def requests_gauge(self, route: str) -> Any:
        g = self._active.get(route)
        if g is None:
            g = self._active[route] = self.active_requests.labels(route)
        return g

    def init_providers(self, providers: Iterable[str]) -> None:
        """Create every provider x outcome series at start, so rates exist before traffic."""
        for p in providers:
            for o in OUTCOMES:
                self._outcome(p, o)
            self.upstream_ttfb.labels(p)
            self.failovers.labels(p)
            # The timeout alert takes increase() of these: a series born at 1 would hide
            # its first timeout from it.
            for kind in TIMEOUT_KINDS:
                self.upstream_errors.labels(p, kind.value)

    def _outcome(self, provider: str, outcome: str) -> Any:
        key = (provider, outcome)
        c = self._out.get(key)
        if c is None:
            c = self._out[key] = self.outcomes.labels(provider, outcome)
        return c

    def observe_request(self, route: str, model: str, provider: str, status: int, kind: ErrorKind | None,
                        duration: float, ttfb: float | None) -> None:
        # Everything a request's end touches, looked up once per distinct outcome (the
        # key's parts come from config and code: bounded) rather than four dict
        # lookups, a status string and outcome_of() per request.
        key = (route, model, provider, status, kind)
        s = self._req.get(key)
        if s is None:
            s = self._req[key] = self._request_series(route, model, provider, status, kind)
        s[0]()
        if s[1] is not None:
            s[1]()
        s[2](duration)
        if ttfb is not None:
            if s[3] is None:  # (made on first use: a route that never sends has no series)
                k2 = (route, provider)
                h = self._ttfb.get(k2)
                if h is None:
                    h = self._ttfb[k2] = self.ttfb.labels(route, provider)
                s[3] = h.observe
            s[3](ttfb)

    def _request_series(self, route: str, model: str, provider: str, status: int,
                        kind: ErrorKind | None) -> list[Any]:
        k2 = (route, provider)
        h = self._dur.get(k2)
        if h is None:
            h = self._dur[k2] = self.duration.labels(route, provider)
        t = self._ttfb.get(k2)
        return [self.requests.labels(route, model, provider, str(status)).inc,
                self._outcome(provider, outcome_of(status, kind)).inc if provider else None,
                h.observe, t.observe if t is not None else None]

    def observe_tokens(self, provider: str, model: str, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        for direction, field in (("in", "prompt_tokens"), ("out", "completion_tokens")):
            n = usage.get(field)
            if isinstance(n, int) and n > 0:
                key = (provider, model, direction)
                c = self._tok.get(key)
                if c is None:
                    c = self._tok[key] = self.tokens.labels(provider, model, direction)
                c.inc(n)

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg)
            for c in getattr(self, "_extra_collectors", []):
                reg.register(c)
            return generate_latest(reg), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def watch_state_store(self, store: Any) -> None:
        """tornado_proxy_state_store_up / _errors_total for a shared store, set by the store
        as it connects and fails.  Regular series rather than read at scrape time: with
        several workers a scrape then reports every worker (errors summed, a dead worker's
        included, so the counter never goes back; up the lowest of the live ones) instead
        of whichever worker answered, which made the counter jump up and down."""
        if not hasattr(store, "on_health"):
            return  # the memory store: nothing to report
        up = Gauge("tornado_proxy_state_store_up",
                   "1 while the shared state store answers, 0 while serving from local state", ["store"],
                   registry=self.registry, multiprocess_mode="livemin").labels(store.backend.name)
        errors = Counter("tornado_proxy_state_store_errors_total",
                         "State store operations that failed or timed out", ["store"],
                         registry=self.registry).labels(store.backend.name)
        up.set(1.0 if store.up else 0.0)

        def report(ok: bool, failed: bool) -> None:
            up.set(1.0 if ok else 0.0)
            if failed:
                errors.inc()
        store.on_health = report

    def register_collector(self, collector: Any) -> None:
        """A custom collector read at scrape time (account health)."""
        self.registry.register(collector)
        self._extra_collectors = [*getattr(self, "_extra_collectors", []), collector]
