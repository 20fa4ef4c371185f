"""compose.yaml: valid for Compose, every file it mounts exists, and the pieces point at
each other (Prometheus scrapes the gateway's service and port, Grafana reads the
provisioned data source and dashboard). `docker compose up` itself was not run here."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tornado_proxy.config import SERVER_DEFAULTS

from .support import DEPLOY, ROOT, dockerfile_stages, need_tool

yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of openapi-spec-validator) is needed to read compose.yaml")

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts."""
    out = {}
    for v in SERVICES[service].get("volumes", []):
        host, container = v.split(":")[:2]
        if host.startswith("."):
            out[container] = (ROOT / host).resolve()
    return out


def host_path(service: str, container_path: str) -> Path:
    for target, host in sorted(mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return host / Path(container_path).relative_to(target) if container_path != target else host
    raise AssertionError(f"{service}: {container_path} is not in any bind mount")


def test_docker_compose_accepts_it() -> None:
    r = subprocess.run([need_tool("docker-compose"), "-f", str(ROOT / "compose.yaml"), "config", "-q"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_every_mounted_file_exists() -> None:
    for name in SERVICES:
        for target, host in mounts(name).items():
            assert host.exists(), f"{name}: {host} (mounted at {target}) does not exist"


def test_the_gateway_runs_the_image_on_the_echo_demo_and_stops_after_a_drain() -> None:
    gw = SERVICES["gateway"]
    assert gw["build"] == "." and (ROOT / "Dockerfile").exists()
    cmd = json.loads(dockerfile_stages()[-1].last("CMD"))
    config = cmd[cmd.index("--config") + 1]
    assert host_path("gateway", config) == (ROOT / "conf" / "default.json").resolve()
    assert float(gw["stop_grace_period"].rstrip("s")) > float(SERVER_DEFAULTS["drain_seconds"])
    assert any(str(p).endswith(":" + cmd[cmd.index("--port") + 1]) for p in gw["ports"])


def test_prometheus_scrapes_the_gateway_service_and_loads_the_rules() -> None:
    args = SERVICES["prometheus"]["command"]
    conf_path = host_path("prometheus", next(a for a in args if a.startswith("--config.file=")).split("=", 1)[1])
    assert conf_path == (DEPLOY / "prometheus" / "prometheus.yml").resolve()
    conf = yaml.safe_load(conf_path.read_text())
    cmd = json.loads(dockerfile_stages()[-1].last("CMD"))
    targets = [t for job in conf["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"gateway:{cmd[cmd.index('--port') + 1]}"]
    for rule_file in conf["rule_files"]:
        assert (conf_path.parent / rule_file).exists()


def test_grafana_gets_the_data_source_and_the_dashboard() -> None:
    ds = yaml.safe_load(host_path("grafana", "/etc/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090" and "prometheus" in SERVICES
    dash = yaml.safe_load(host_path("grafana", "/etc/grafana/provisioning/dashboards/tornado-proxy.yml").read_text())
    folder = dash["providers"][0]["options"]["path"]
    assert host_path("grafana", folder + "/tornado-proxy.json") == (DEPLOY / "grafana" / "tornado-proxy.json").resolve()
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path("grafana", home).exists()
