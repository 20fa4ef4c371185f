"""The real CLI in a subprocess, for the process-level tests: started on a free port
(or a given one), waited for until /health answers, and always killed afterwards."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from tests.e2e.harness import with_paths

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Gateway:
    """``tornado-proxy --config ... --workers N`` in a process group of its own."""

    def __init__(self, tmp: Path, config: dict[str, Any] | None, workers: int, port: int | None = None,
                 preexec: Callable[[], None] | None = None, env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        args = [sys.executable, "-m", "tornado_proxy", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(workers)]
        if config is not None:
            cfg = tmp / f"c{self.port}.json"
            cfg.write_text(json.dumps(with_paths(config)))
            args[3:3] = ["--config", str(cfg)]
        extra = env or {}
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env["PYTHONPATH"] = str(ROOT)
        env.update(extra)
        self.log = tmp / f"gw{self.port}.log"
        self._log = self.log.open("wb")

        def setup() -> None:
            os.setpgrp()  # its own group: the test can kill every process it started
            if preexec is not None:
                preexec()

        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=self._log,
                                     preexec_fn=setup)
        self.pgid = self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, limit: float = 20, workers: int = 1) -> None:
        """Until /health answers and ``workers`` workers say they are listening."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self.stderr().count("tornado-proxy listening on") >= workers:
                try:
                    urllib.request.urlopen(self.url + "/health", timeout=2)
                    return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                raise AssertionError(f"the gateway exited with {self.proc.returncode}:\n{self.stderr()}")
            time.sleep(0.05)
        raise AssertionError(f"the gateway did not come up:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The parent's children, read off /proc."""
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    stat = Path(f"/proc/{d}/stat").read_text()
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                    out.append(int(d))
        return sorted(out)

    def kill_all(self) -> None:
        """Every process of its group (the parent, workers, orphans), then reap."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextmanager
def gateway(tmp: Path, config: dict[str, Any] | None = None, workers: int = 1, **kw: Any) -> Iterator[Gateway]:
    g = Gateway(tmp, config, workers, **kw)
    try:
        yield g
    finally:
        g.kill_all()


def echo_config(**server: Any) -> dict[str, Any]:
    return {"server": server, "providers": [{"name": "echo", "type": "echo"}],
            "models": [{"id": "echo", "provider": "echo"}]}
