"""deploy/prometheus: the config and the alert rules pass promtool, every alert fires on
its series and stays quiet on healthy ones, and a live /metrics passes promtool's lint."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from .support import DEPLOY, Scraped, need_tool

yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of openapi-spec-validator) is needed to read the rules")

PROM = DEPLOY / "prometheus"


def promtool(*args: str, cwd: Path = PROM, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_tool("promtool"), *args], cwd=cwd, input=None if input is None else input.decode(),
                          capture_output=True, text=True, timeout=60)


def test_the_rules_and_the_config_pass_promtool_check() -> None:
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("check", "config", "prometheus.yml")  # also checks that rule_files resolve
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_fires_on_its_series_and_stays_quiet_on_healthy_ones() -> None:
    r = promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def alerts() -> list[dict]:
    return [rule for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for rule in g["rules"]]


def test_every_alert_has_a_firing_case_and_a_quiet_case() -> None:
    cases: dict[str, list[bool]] = {}
    for t in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]:
        for a in t["alert_rule_test"]:
            cases.setdefault(a["alertname"], []).append(bool(a["exp_alerts"]))
    for rule in alerts():
        assert True in cases.get(rule["alert"], []), f"{rule['alert']}: no case where it fires"
        assert False in cases.get(rule["alert"], []), f"{rule['alert']}: no case where it stays quiet"


@pytest.mark.parametrize("name", [r["alert"] for r in alerts()])
def test_an_alert_that_never_fires_fails_its_unit_test(tmp_path: Path, name: str) -> None:
    """The firing cases are real: with the alert's expression replaced by one that is never
    true, `promtool test rules` fails."""
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    for g in doc["groups"]:
        for rule in g["rules"]:
            if rule["alert"] == name:
                rule["expr"] = "vector(1) < 0"
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc))
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    r = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert r.returncode != 0 and name in r.stdout + r.stderr


def test_promtool_lint_finds_a_bad_metric() -> None:
    """The control for the test below: promtool's lint does report findings."""
    bad = b"# HELP requests_count Requests\n# TYPE requests_count counter\nrequests_count 1\n"
    r = promtool("check", "metrics", input=bad)
    assert r.returncode != 0 and "_total" in r.stdout + r.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_live_metrics_pass_promtool_lint(scraped: Callable[[int], Scraped], workers: int) -> None:
    """/metrics of a running gateway after traffic (streams, 404s, upstream 5xx, timeouts,
    429s, an account disabled), in-process and in multiprocess mode, with no findings."""
    need_tool("promtool")
    for text in scraped(workers).texts:
        r = promtool("check", "metrics", input=text.encode())
        assert (r.returncode, r.stdout + r.stderr) == (0, ""), text


def test_timeout_series_exist_from_start_so_the_first_timeout_counts(harness) -> None:
    """TornadoProxyUpstreamTimeouts takes increase() of upstream_errors_total: a series
    born at 1 would hide its first timeout, so every provider's timeout series start at 0."""
    from tests.e2e.harness import openai_provider, simple_config

    up = harness.upstream()
    gw = harness.gateway(simple_config([openai_provider(up)], [{"id": "m", "provider": "up"}]))
    text = gw.metrics_text()
    for kind in ("connect_timeout", "first_byte_timeout", "idle_timeout"):
        assert f'tornado_proxy_upstream_errors_total{{kind="{kind}",provider="up"}} 0.0' in text
