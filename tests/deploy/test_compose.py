"""compose.yaml: valid for Compose, every file it mounts exists, and the pieces point at
each other (the gateway keeps its state in the redis service and waits for its health
check, Prometheus scrapes the gateway's service and port, Grafana reads the provisioned
data source and dashboard). `docker compose up` itself was not run here: the gateway's
config and redis' health check are run against a real redis-server instead."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tornado_proxy.config import SERVER_DEFAULTS

from .support import DEPLOY, ROOT, Process, chat, clean_env, dockerfile_stages, free_port, need_tool

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
    assert host_path("gateway", config) == (ROOT / "conf" / "compose.json").resolve()
    # conf/compose.json is the built-in default but for where the state goes
    own = {"$comment", "state", "accounts_file"}
    compose, default = gateway_config(), json.loads((ROOT / "conf" / "default.json").read_text())
    assert {k: v for k, v in compose.items() if k not in own} == {k: v for k, v in default.items() if k not in own}
    assert float(gw["stop_grace_period"].rstrip("s")) > float(SERVER_DEFAULTS["drain_seconds"])
    assert any(str(p).endswith(":" + cmd[cmd.index("--port") + 1]) for p in gw["ports"])


def gateway_config() -> dict[str, Any]:
    cmd = json.loads(dockerfile_stages()[-1].last("CMD"))
    return json.loads(host_path("gateway", cmd[cmd.index("--config") + 1]).read_text())


def test_the_gateway_keeps_its_state_in_the_redis_service_once_it_is_healthy() -> None:
    state = gateway_config()["state"]
    assert state["store"] == "redis"
    url = urllib.parse.urlsplit(state["url"])
    redis = SERVICES[url.hostname]
    assert redis["image"].startswith("redis:") and "--port" not in redis["command"] and url.port == 6379
    assert SERVICES["gateway"]["depends_on"][url.hostname] == {"condition": "service_healthy"}
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "redis-data:/data" in redis["volumes"]  # AOF and snapshots survive the container
    # the accounts file in the gateway's state volume, not in the read-only root
    accounts = Path(gateway_config()["accounts_file"])
    named = {v.split(":")[1] for v in SERVICES["gateway"]["volumes"] if not v.startswith(".")}
    assert str(accounts.parent) in named


def test_the_gateway_config_and_the_redis_healthcheck_work_against_a_real_redis(tmp_path: Path) -> None:
    """The compose gateway's own config (the redis host mapped to a real redis-server on
    loopback, the volume to a folder): the echo demo answers and its state is in redis;
    redis' health check command passes on it, and fails once it is gone."""
    from tests.state.conftest import RedisServer, need_redis

    need_redis()
    cli = need_tool("redis-cli")
    healthcheck = SERVICES["redis"]["healthcheck"]["test"][1:]
    assert healthcheck[0] == "redis-cli"
    redis = RedisServer(tmp_path).start()
    cfg = gateway_config()
    cfg["state"]["url"] = cfg["state"]["url"].replace("redis:6379", f"127.0.0.1:{redis.port}")
    cfg["accounts_file"] = str(tmp_path / "state" / Path(cfg["accounts_file"]).name)
    (tmp_path / "state").mkdir()
    port = free_port()
    cfg["server"]["port"] = port
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    p = Process([sys.executable, "-m", "tornado_proxy", "--config", str(tmp_path / "config.json"), "--workers", "1"],
                clean_env(), cwd=str(ROOT))
    try:
        check = [cli, "-p", str(redis.port), *healthcheck[1:]]
        assert subprocess.run(check, capture_output=True, timeout=10).returncode == 0
        p.wait_for("listening on")
        assert chat(port, "echo") == 200
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'tornado_proxy_state_store_up{store="redis"} 1.0' in text
        clients = subprocess.run([cli, "-p", str(redis.port), "client", "list"], capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()
        assert [c for c in clients if "cmd=client" not in c], "the gateway holds no connection to redis"
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 0, p.stderr
    finally:
        p.kill()
        redis.kill()
    assert subprocess.run(check, capture_output=True, timeout=10).returncode != 0


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
