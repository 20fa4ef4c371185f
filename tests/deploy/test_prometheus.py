"""deploy/prometheus: the config and the alert rules pass promtool, every alert fires on
its series and stays quiet on healthy ones, and a live /metrics passes promtool's lint
(with the default local store, and with a real redis-server up and then gone)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from .support import DEPLOY, ROOT, Process, Scraped, chat, children, clean_env, free_port, need_tool

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


# -- the state store's series, with a real redis-server -------------------------------------

STORE_UP = 'tornado_proxy_state_store_up{store="redis"}'
STORE_ERRORS = 'tornado_proxy_state_store_errors_total{store="redis"}'


def redis_server(tmp: Path):  # type: ignore[no-untyped-def]
    from tests.state.conftest import RedisServer, need_redis

    need_redis()
    return RedisServer(tmp).start()


def redis_gateway(tmp: Path, redis_url: str, workers: int) -> tuple[Process, int]:
    port = free_port()
    conf = tmp / "config.json"
    conf.write_text(json.dumps({"server": {"port": port, "host": "127.0.0.1", "drain_seconds": 5},
                                "state": {"store": "redis", "url": redis_url, "timeout": 0.5},
                                "providers": [{"name": "echo", "type": "echo"}],
                                "models": [{"id": "echo", "provider": "echo"}]}))
    p = Process([sys.executable, "-m", "tornado_proxy", "--config", str(conf), "--workers", str(workers)],
                clean_env(), cwd=str(ROOT))
    p.wait_for("listening on", count=workers)
    return p, port


def scrape(port: int) -> str:
    """One /metrics on a new connection (so with several workers the kernel picks one)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {series} in:\n{text}")


def scrapes_until(port: int, done: Callable[[list[str]], bool], n: int, timeout: float = 15.0) -> list[str]:
    """``n`` scrapes in a row, taken again until ``done`` holds for them."""
    deadline = time.monotonic() + timeout
    while True:
        texts = [scrape(port) for _ in range(n)]
        if done(texts):
            return texts
        assert time.monotonic() < deadline, texts[-1]
        time.sleep(0.1)


@pytest.mark.parametrize("workers", [1, 2])
def test_live_metrics_with_the_redis_store_pass_promtool_lint(tmp_path: Path, workers: int) -> None:
    """With "state": {"store": "redis"}, /metrics passes the lint while the store answers
    and while it is gone, and carries the two series the store alerts read."""
    need_tool("promtool")
    redis = redis_server(tmp_path)
    p = None
    try:
        p, port = redis_gateway(tmp_path, redis.url, workers)
        assert chat(port, "echo") == 200 and chat(port, "echo", stream=True) == 200
        up = scrapes_until(port, lambda ts: all(sample(t, STORE_UP) == 1.0 for t in ts), 2 * workers)
        assert all(sample(t, STORE_ERRORS) == 0.0 for t in up)
        redis.kill()
        down = scrapes_until(port, lambda ts: all(sample(t, STORE_UP) == 0.0 for t in ts), 2 * workers)
        assert all(sample(t, STORE_ERRORS) >= 1.0 for t in down)
        for text in up + down:
            r = promtool("check", "metrics", input=text.encode())
            assert (r.returncode, r.stdout + r.stderr) == (0, ""), text
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 0, p.stderr
    finally:
        if p is not None:
            p.kill()
        redis.kill()


def test_store_series_are_the_same_from_every_worker(tmp_path: Path) -> None:
    """The alerts take increase() of the error counter and the lowest up: a scrape must
    report every worker, not the one that answered. Two workers count errors while the
    store is down; one is then killed and replaced by a worker that counted none: the
    counter, scraped again and again, never goes back (a drop reads as a reset and
    increase() would count the whole value again), and up is the same in every scrape."""
    redis = redis_server(tmp_path)
    p = None
    try:
        p, port = redis_gateway(tmp_path, redis.url, 2)
        redis.kill()
        scrapes_until(port, lambda ts: all(sample(t, STORE_ERRORS) >= 1.0 for t in ts), 8)
        redis.start()  # the same port: the workers reconnect
        scrapes_until(port, lambda ts: all(sample(t, STORE_UP) == 1.0 for t in ts), 8)
        before = children(p.pid)
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)
        p.wait_for("listening on", count=3)
        assert len(children(p.pid)) == 2 and before[0] not in children(p.pid)
        texts = scrapes_until(port, lambda ts: all(sample(t, STORE_UP) == 1.0 for t in ts), 16)
        errors = [sample(t, STORE_ERRORS) for t in texts]
        assert errors == sorted(errors) and errors[0] >= 1.0, errors
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 0, p.stderr
    finally:
        if p is not None:
            p.kill()
        redis.kill()
