"""deploy/systemd/tornado-proxy.service: `systemd-analyze verify` and `security` pass on it,
its stop timeout and open-files limit fit the server's defaults, its ExecStart and
ExecReload, run against a real gateway, re-read the accounts file without ending it, and
under its environment the local state store's file lands in its StateDirectory."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from tornado_proxy.config import SERVER_DEFAULTS

from .support import DEPLOY, ROOT, Process, children, clean_env, free_port, need_tool, wait_http

UNIT = DEPLOY / "systemd" / "tornado-proxy.service"
# The venv's real tornado-proxy: verify wants ExecStart's binary to exist.
TORNADO_PROXY = str(Path(sys.executable).parent / "tornado-proxy")


def unit() -> dict[str, list[str]]:
    """Service-section key -> values (a key may repeat), continuation lines joined."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in re.sub(r"\\\n", " ", UNIT.read_text()).splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.setdefault(f"{section}.{k}", []).append(v)
    return out


def templated(tmp_path: Path) -> Path:
    """A copy with ExecStart's binary pointing at the venv's real tornado-proxy."""
    exec_start = unit()["Service.ExecStart"][0]
    binary = shlex.split(exec_start)[0]
    if not os.path.exists(TORNADO_PROXY):
        pytest.skip(f"{TORNADO_PROXY} is missing: install the project in this venv")
    d = tmp_path / "units"
    d.mkdir()
    path = d / UNIT.name  # verify derives the unit's name from the file's
    path.write_text(UNIT.read_text().replace(binary, TORNADO_PROXY))
    return path


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min)?", value)
    assert m, value
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "min": 60, None: 1}[m.group(2)]


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    path = templated(tmp_path)
    r = subprocess.run([need_tool("systemd-analyze"), "verify", str(path)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values ("ignoring"): any line about our unit fails.
    ours = [line for line in (r.stdout + r.stderr).splitlines() if UNIT.name in line]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    """The control for the test above: what verify says about a misspelt key reaches us."""
    path = templated(tmp_path)
    path.write_text(path.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    r = subprocess.run([need_tool("systemd-analyze"), "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert any(UNIT.name in line and "ProtectSystm" in line for line in (r.stdout + r.stderr).splitlines())


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    """systemd's own exposure score (0 best, 10 worst) stays in its "OK" band."""
    path = templated(tmp_path)
    r = subprocess.run([need_tool("systemd-analyze"), "security", "--offline=yes", str(path)], capture_output=True,
                       text=True, timeout=60)
    if "--offline" in r.stderr and r.returncode != 0:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def test_stop_timeout_outlasts_the_drain_and_files_fit_two_sockets_per_stream() -> None:
    u = unit()
    assert u["Service.KillSignal"] == ["SIGTERM"]
    assert seconds(u["Service.TimeoutStopSec"][0]) > float(SERVER_DEFAULTS["drain_seconds"]), \
        "a drain of drain_seconds would be cut by SIGKILL"
    # serve() asks for 2 x max_clients + 1024 (raise_fd_limit), up to the hard limit set here
    assert int(u["Service.LimitNOFILE"][0]) >= 2 * int(SERVER_DEFAULTS["max_clients"]) + 1024


@pytest.mark.parametrize("key, check", [
    ("User", lambda v: v == ["tornado-proxy"]),            # a dedicated user (not DynamicUser=: see the unit)
    ("ProtectSystem", lambda v: v == ["strict"]),
    ("StateDirectory", lambda v: v == ["tornado-proxy"]),  # the accounts file and the local store
    ("Restart", lambda v: v == ["on-failure"]),
    ("KillSignal", lambda v: v == ["SIGTERM"]),
    ("ExecReload", lambda v: len(v) == 1 and "-HUP" in shlex.split(v[0])),
], ids=["User", "ProtectSystem", "StateDirectory", "Restart", "KillSignal", "ExecReload"])
def test_the_unit_has_what_issue_18_asks_for(key: str, check: Callable[[list[str]], bool]) -> None:
    assert check(unit().get(f"Service.{key}", [])), f"{key}={unit().get(f'Service.{key}')}"


def reload_command(mainpid: int) -> list[str]:
    argv = shlex.split(unit()["Service.ExecReload"][0])
    return [re.sub(r"\$\{?MAINPID\}?", str(mainpid), a) for a in argv]


@pytest.mark.parametrize("workers", [1, 2])
def test_exec_reload_rereads_the_accounts_file_and_the_service_lives_on(tmp_path: Path, workers: int) -> None:
    """ExecStart as the unit has it (config path mapped), then ExecReload with $MAINPID: every
    worker re-reads the accounts file (a broken one is reported, not applied), and the main
    process and its workers are the same ones afterwards, still serving. With more than one
    worker the main process is their parent and passes the SIGHUP on."""
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps({"version": 1, "generation": 1, "accounts": [
        {"id": "f1", "provider": "up", "api_key": "file-key-1"}]}))
    port = free_port()
    conf = tmp_path / "config.json"
    conf.write_text(json.dumps({
        "server": {"port": port, "workers": workers}, "accounts_file": str(accounts),
        "providers": [{"name": "up", "type": "openai", "base_url": "http://127.0.0.1:9/v1", "accounts": []}],
        "models": [{"id": "m", "provider": "up"}]}))
    argv = [a.replace("/etc/tornado-proxy/config.json", str(conf)) for a in shlex.split(unit()["Service.ExecStart"][0])]
    argv[0] = TORNADO_PROXY
    p = Process(argv, clean_env())
    try:
        p.wait_for("listening on", count=workers)
        before = sorted(children(p.pid))
        assert len(before) == (workers if workers > 1 else 0)
        tmp = accounts.with_suffix(".tmp")
        tmp.write_text("{not json")
        tmp.rename(accounts)
        r = subprocess.run(reload_command(p.pid), capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        p.wait_for("accounts file not reloaded", count=workers)
        assert p.proc.poll() is None, f"ExecReload ended the main process:\n{p.stderr}"
        assert sorted(children(p.pid)) == before
        wait_http(f"http://127.0.0.1:{port}/health", proc=p)
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 0, p.stderr
    finally:
        p.kill()


def unit_environment(state_root: Path) -> dict[str, str]:
    """The unit's Environment= assignments, with %S (the state root, /var/lib) mapped."""
    env: dict[str, str] = {}
    for value in unit()["Service.Environment"]:
        for word in shlex.split(value):
            k, _, v = word.partition("=")
            env[k] = v.replace("%S", str(state_root))
    return env


@pytest.mark.parametrize("workers", [1, 2])
def test_the_local_store_lands_in_the_state_directory(tmp_path: Path, workers: int) -> None:
    """The shipped default config (no accounts file, no state.path) under the unit's
    environment: the local store's file is created in StateDirectory= (%S/tornado-proxy),
    not under the service user's home, wherever that is."""
    u = unit()
    state_root = tmp_path / "var-lib"
    state_dir = state_root / u["Service.StateDirectory"][0]
    state_dir.mkdir(parents=True)  # systemd creates it, owned by User=, before ExecStart
    assert u["Service.WorkingDirectory"] == ["/var/lib/" + u["Service.StateDirectory"][0]]
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    conf = tmp_path / "config.json"
    default = json.loads((ROOT / "conf" / "default.json").read_text())
    assert "accounts_file" not in default and "state" not in default
    conf.write_text(json.dumps({**default, "server": {**default["server"], "port": port}}))
    argv = [a.replace("/etc/tornado-proxy/config.json", str(conf)) for a in shlex.split(u["Service.ExecStart"][0])]
    argv[0] = TORNADO_PROXY
    argv += ["--workers", str(workers)]
    # systemd starts the service with its own environment, never the caller's XDG_*
    env = {k: v for k, v in clean_env(HOME=str(home)).items() if not k.startswith("XDG_")}
    env.update(unit_environment(state_root))
    p = Process(argv, env, cwd=str(state_dir))
    try:
        p.wait_for("listening on", count=workers)
        wait_http(f"http://127.0.0.1:{port}/health", proc=p)
        assert (state_dir / "state.db").is_file(), sorted(str(f) for f in tmp_path.rglob("state.db"))
        assert not list(home.rglob("*")), "the service wrote into its home"
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 0, p.stderr
    finally:
        p.kill()
