"""The default worker count follows the CPU quota of the process's cgroup (a container's
``--cpus``, systemd's ``CPUQuota=``), not the host's cores: fake cgroup files in a folder
that ``TORNADO_PROXY_CGROUP_ROOT`` points at stand in for /sys/fs/cgroup."""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tornado_proxy.cli import default_workers

from .support import Process, clean_env, free_port

AFFINITY = len(os.sched_getaffinity(0))


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.mark.parametrize("name, files, cpus", [
    ("v2, no quota", {"cpu.max": "max 100000\n"}, None),
    ("v2, half a CPU: still one worker", {"cpu.max": "50000 100000\n"}, 1),
    ("v2, one CPU", {"cpu.max": "100000 100000\n"}, 1),
    ("v2, 1.5 CPUs round up", {"cpu.max": "150000 100000\n"}, 2),
    ("v2, 64 CPUs: capped by affinity", {"cpu.max": "6400000 100000\n"}, 64),
    ("v1, no quota", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ("v1, one CPU", {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ("v1 under cpu,cpuacct", {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
                              "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1),
    ("v1 and v2 both: the tighter", {"cpu.max": "300000 100000\n", "cpu/cpu.cfs_quota_us": "100000\n",
                                     "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ("garbage is no quota", {"cpu.max": "banana\n"}, None),
    ("nothing there", {}, None),
])
def test_default_workers_follow_the_cgroup_quota(tmp_path: Path, name: str, files: dict[str, str],
                                                 cpus: int | None) -> None:
    write(tmp_path, files)
    expected = AFFINITY if cpus is None else min(AFFINITY, cpus)
    assert default_workers(str(tmp_path)) == expected


def test_the_cgroup_of_the_process_counts_not_only_the_top(tmp_path: Path) -> None:
    """Under systemd the quota sits on the unit's own cgroup (/proc/self/cgroup names it)."""
    rel = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
               if line.startswith("0::")).strip("/")
    if not rel:
        pytest.skip("this process is at the top of its cgroup tree (a container): nothing below to tell apart")
    write(tmp_path, {"cpu.max": "max 100000\n", f"{rel}/cpu.max": "100000 100000\n"})
    assert default_workers(str(tmp_path)) == 1


@pytest.mark.skipif(AFFINITY < 2, reason="needs two CPUs to tell one worker from one per CPU")
@pytest.mark.parametrize("quota, workers", [("100000 100000", 1), ("max 100000", AFFINITY),
                                            ("150000 100000", min(AFFINITY, 2))])
def test_the_cli_starts_one_worker_per_cpu_of_the_quota(tmp_path: Path, quota: str, workers: int) -> None:
    """The real CLI, no --workers: as many processes as the quota allows."""
    write(tmp_path / "cg", {"cpu.max": quota + "\n"})
    port = free_port()
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"server": {"port": port}, "providers": [{"name": "echo", "type": "echo"}],
                                "models": [{"id": "echo", "provider": "echo"}]}))
    p = Process([sys.executable, "-m", "tornado_proxy", "--config", str(conf)],
                clean_env(TORNADO_PROXY_CGROUP_ROOT=str(tmp_path / "cg")))
    try:
        p.wait_for("listening on", count=workers)
        p.proc.send_signal(signal.SIGTERM)
        assert p.wait() == 0
    finally:
        p.kill()
    assert sum("listening on" in line for line in p.lines) == workers
    assert (f"{workers} workers on" in p.stderr) == (workers > 1)
