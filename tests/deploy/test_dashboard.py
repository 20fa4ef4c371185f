"""Every PromQL query of the Grafana dashboard and of the alert rules parses, and names only
metrics and labels that a running gateway exports (collected from a live /metrics scrape
after traffic, in-process and with two workers)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from .support import DEPLOY, Scraped, dashboard_queries, grafana_to_promql, need_tool, parse_promql

yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of openapi-spec-validator) is needed to read the rules")

DASHBOARD = json.loads((DEPLOY / "grafana" / "tornado-proxy.json").read_text())
RULES = [r for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"] for r in g["rules"]]
# Series Prometheus makes itself for every scrape, and labels it adds.
PROMETHEUS_OWN = {"up"}
TARGET_LABELS = {"job", "instance"}


def queries() -> list[tuple[str, str, list[str]]]:
    qs = [(where, grafana_to_promql(expr), legend) for where, expr, legend in dashboard_queries(DASHBOARD)]
    qs += [(f"alert {r['alert']}", r["expr"], []) for r in RULES]
    return qs


@pytest.fixture(scope="module")
def exported(scraped: Callable[[int], Scraped]) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for workers in (1, 2):
        for k, v in scraped(workers).names.items():
            names.setdefault(k, set()).update(v)
    return names


@pytest.mark.parametrize("name, expr, metrics, labels", [
    ("aggregation and matchers", 'sum by (provider, kind) (rate(a_total{provider=~".*", kind!="x"}[5m]))',
     {"a_total"}, {"provider", "kind"}),
    ("binary op, keywords, numbers", "(b / c) > 0.05 and d > bool 1e3 or on (job) e offset 5m",
     {"b", "c", "d", "e"}, {"job"}),
    ("histogram", "histogram_quantile(0.95, sum by (le) (rate(f_bucket[5m])))", {"f_bucket"}, {"le"}),
    ("strings are not names", 'g{l="h i"} unless label_replace(j, "k", "$1", "m", "(.*)")', {"g", "j"}, {"l"}),
    ("colons", "job:rate5m:sum", {"job:rate5m:sum"}, set()),
])
def test_the_query_reader_finds_metrics_and_labels(name: str, expr: str, metrics: set[str], labels: set[str]) -> None:
    q = parse_promql(expr)
    assert (q.metrics, q.labels) == (metrics, labels)


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (dashboard variables replaced)."""
    rules = {"groups": [{"name": "check", "rules": [{"record": f"check:q{i}", "expr": expr}
                                                    for i, (_, expr, _) in enumerate(queries())]}]}
    (tmp_path / "q.yml").write_text(yaml.safe_dump(rules))
    r = subprocess.run([need_tool("promtool"), "check", "rules", str(tmp_path / "q.yml")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_query_names_metrics_and_labels_the_gateway_exports(exported: dict[str, set[str]]) -> None:
    problems = []
    for where, expr, legend in queries():
        q = parse_promql(expr)
        if not q.metrics:
            problems.append(f"{where}: no metric found in {expr}")
        unknown = q.metrics - set(exported) - PROMETHEUS_OWN
        if unknown:
            problems.append(f"{where}: not exported: {sorted(unknown)}")
        have = TARGET_LABELS.union(*(exported.get(m, set()) for m in q.metrics))
        if q.metrics & PROMETHEUS_OWN:
            have |= TARGET_LABELS
        missing = (q.labels | set(legend)) - have
        if missing:
            problems.append(f"{where}: labels {sorted(missing)} are on none of {sorted(q.metrics)}")
    assert not problems, "\n".join(problems)


def test_the_dashboard_covers_traffic_errors_latency_tokens_accounts_quota_and_the_store() -> None:
    used = set().union(*(parse_promql(grafana_to_promql(e)).metrics for _, e, _ in dashboard_queries(DASHBOARD)))
    for m in ("tornado_proxy_requests_total", "tornado_proxy_provider_requests_total",
              "tornado_proxy_upstream_errors_total", "tornado_proxy_time_to_first_byte_seconds_bucket",
              "tornado_proxy_request_duration_seconds_bucket", "tornado_proxy_upstream_time_to_first_byte_seconds_bucket",
              "tornado_proxy_tokens_total", "tornado_proxy_active_streams", "tornado_proxy_account_state",
              "tornado_proxy_account_cooldown_seconds", "tornado_proxy_account_quota_remaining",
              "tornado_proxy_state_store_up", "tornado_proxy_state_store_errors_total"):
        assert m in used, m
    ttfb = [e for _, e, _ in dashboard_queries(DASHBOARD) if "time_to_first_byte_seconds_bucket" in e
            and "upstream" not in e]
    assert ttfb and all("by (le, route, provider)" in e for e in ttfb), "TTFB is shown by route and provider"


def test_the_dashboard_uses_its_data_source_variable() -> None:
    """Provisioned or imported, it runs on whichever Prometheus is picked, not a fixed uid."""
    for p in DASHBOARD["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]


def panel_expr(title: str) -> str:
    for where, expr, _ in dashboard_queries(DASHBOARD):
        if where.startswith(f"panel {title!r}"):
            return grafana_to_promql(expr)
    raise AssertionError(f"no panel {title!r}")


def test_account_panels_count_each_account_once_however_many_gateways_report_it(tmp_path: Path) -> None:
    """Evaluated by promtool on synthetic series: gw1 and gw2 share one Redis, so both report
    its totals for account a1 (1 request/s in all); gw3 and gw4 each have a local store and
    their own counts for b1 (1 request/s each). The panel shows a1 at 1/s, not 2, and b1 at 2/s;
    the state panel counts a1 as one active account, not two."""
    gw = 'job="tornado-proxy",instance="{}:8000"'
    series = []
    for name, store in (("gw1", "redis"), ("gw2", "redis"), ("gw3", "local"), ("gw4", "local")):
        account, provider = ("a1", "up") if store == "redis" else ("b1", "p2")
        series += [
            {"series": f'tornado_proxy_state_store_up{{{gw.format(name)},store="{store}"}}', "values": "1x20"},
            {"series": f'tornado_proxy_account_requests_total{{{gw.format(name)},provider="{provider}",'
                       f'account="{account}",outcome="success"}}', "values": "0+60x20"},
            {"series": f'tornado_proxy_account_state{{{gw.format(name)},provider="{provider}",account="{account}",'
                       f'state="active"}}', "values": "1x20"}]
    tests = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [
            {"expr": panel_expr("Account requests by outcome"), "eval_time": "15m", "exp_samples": [
                {"labels": '{provider="up",account="a1",outcome="success"}', "value": 1},
                {"labels": '{provider="p2",account="b1",outcome="success"}', "value": 2}]},
            {"expr": panel_expr("Accounts by state"), "eval_time": "15m", "exp_samples": [
                {"labels": '{provider="up",state="active"}', "value": 1},
                {"labels": '{provider="p2",state="active"}', "value": 1}]}]}]}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(tests))
    r = subprocess.run([need_tool("promtool"), "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
