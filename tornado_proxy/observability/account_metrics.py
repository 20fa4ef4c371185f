"""Per-account metrics: a Prometheus collector that reads the scheduler at scrape time.

Nothing is counted twice: the scheduler already keeps every number per account
(it needs them to choose), so the collector only turns ``Scheduler.snapshot()``
into metric families when ``/metrics`` is scraped.  The label is the account id
from config or the accounts file, never its key.  Every outcome and every state
series exists for every account, so rates and alerts work before the first error.

With a shared state store (``local``, ``redis``) the counters (requests by
outcome, tokens, latency sum/count, refreshes) are the store's totals, summed over
every worker and replica, so every scrape of any of them reports the same,
non-decreasing series; the scrape handler refreshes them first.  States come from
the shared account state; in-flight, success ratio and quota (remaining, used,
headroom: read off the answers this process got) are this process's.

Register once: ``metrics.register_collector(AccountCollector(scheduler))``.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from tornado_proxy.accounts.leases import OUTCOMES
from tornado_proxy.state.accounts_state import Status

STATES = tuple(s.value for s in Status)


class AccountCollector(Collector):
    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def describe(self) -> list[Metric]:
        return []  # families depend on the accounts at scrape time

    def collect(self) -> Iterator[Metric]:
        snap = self.scheduler.snapshot()
        store = getattr(self.scheduler, "store", None)
        counter_totals = getattr(store, "counter_totals", None)
        totals = counter_totals() if counter_totals is not None else None
        if totals is not None:
            snap = [_from_store(a, totals.get(f"{a['provider']}/{a['id']}") or {}) for a in snap]
        pa = ["provider", "account"]
        requests = CounterMetricFamily("tornado_proxy_account_requests",
                                       "Upstream requests per account by outcome", labels=[*pa, "outcome"])
        state = GaugeMetricFamily("tornado_proxy_account_state",
                                  "1 for the account's current state (active, cooling, probing, disabled)",
                                  labels=[*pa, "state"])
        cooldown = GaugeMetricFamily("tornado_proxy_account_cooldown_seconds",
                                     "Seconds left in the account's cooldown", labels=pa)
        inflight = GaugeMetricFamily("tornado_proxy_account_inflight_requests",
                                     "Requests in flight on the account", labels=pa)
        health = GaugeMetricFamily("tornado_proxy_account_success_ratio",
                                   "Decayed success rate the scheduler weighs the account by", labels=pa)
        latency = SummaryMetricFamily("tornado_proxy_account_upstream_latency_seconds",
                                      "Upstream time to first byte of successful requests", labels=pa)
        tokens = CounterMetricFamily("tornado_proxy_account_tokens", "Tokens per account (in/out)",
                                     labels=[*pa, "direction"])
        refresh = CounterMetricFamily("tornado_proxy_account_token_refreshes",
                                      "OAuth token refreshes per account by outcome", labels=[*pa, "outcome"])
        expiry = GaugeMetricFamily("tornado_proxy_account_token_expiry_seconds",
                                   "Seconds until the account's OAuth access token expires", labels=pa)
        quota = GaugeMetricFamily("tornado_proxy_account_quota_remaining",
                                  "The upstream's last remaining-quota header per limit", labels=[*pa, "limit"])
        used = GaugeMetricFamily("tornado_proxy_account_quota_used_ratio",
                                 "Spent share of each quota window the upstream reports (0..1; windows from a "
                                 "fixed list: unified_5h, codex_primary, tokens...)", labels=[*pa, "window"])
        headroom = GaugeMetricFamily("tornado_proxy_account_quota_headroom_ratio",
                                     "What the account's tightest quota window has left (0..1); the scheduler "
                                     "prefers accounts with more", labels=pa)
        for a in snap:
            lab = [a["provider"], a["id"]]
            for o in OUTCOMES:
                requests.add_metric([*lab, o], a["requests"].get(o, 0))
            for s in STATES:
                state.add_metric([*lab, s], 1.0 if a["state"] == s else 0.0)
            cooldown.add_metric(lab, a["cooldown_s"])
            inflight.add_metric(lab, a["inflight"])
            health.add_metric(lab, a["success_rate"])
            latency.add_metric(lab, count_value=a["latency_count"], sum_value=a["latency_sum_s"])
            tokens.add_metric([*lab, "in"], a["tokens"]["prompt"])
            tokens.add_metric([*lab, "out"], a["tokens"]["completion"])
            if a["credential"] == "oauth":
                refresh.add_metric([*lab, "ok"], a["refresh"]["ok"])
                refresh.add_metric([*lab, "failed"], a["refresh"]["failed"])
                if a["token_expires_in_s"] is not None:
                    expiry.add_metric(lab, a["token_expires_in_s"])
            for limit, value in a["quota_remaining"].items():
                quota.add_metric([*lab, limit], value)
            for window, value in a.get("quota_used", {}).items():
                used.add_metric([*lab, window], value)
            if a.get("headroom") is not None:
                headroom.add_metric(lab, a["headroom"])
        yield from (requests, state, cooldown, inflight, health, latency, tokens, refresh, expiry, quota, used,
                    headroom)


def _from_store(a: dict[str, Any], tot: dict[str, float]) -> dict[str, Any]:
    """The snapshot with its counters replaced by the store's totals."""
    return {**a,
            "requests": {o: int(tot.get("o:" + o, 0)) for o in OUTCOMES},
            "latency_sum_s": tot.get("latency_sum", 0.0),
            "latency_count": int(tot.get("latency_count", 0)),
            "tokens": {"prompt": int(tot.get("prompt_tokens", 0)), "completion": int(tot.get("completion_tokens", 0))},
            "refresh": {"ok": int(tot.get("refresh_ok", 0)), "failed": int(tot.get("refresh_failed", 0))}}
