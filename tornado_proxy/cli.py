"""Command line: ``tornado-proxy [--config FILE] [--host H] [--port N]`` and ``--check-config FILE``."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tornado_proxy import __version__

if TYPE_CHECKING:
    from tornado_proxy.config import Config


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tornado-proxy",
        description="LLM API gateway: OpenAI Chat Completions, OpenAI Responses and Anthropic Messages "
                    "in front of OpenAI-compatible, Anthropic, Responses, Gemini and Bedrock upstreams.")
    p.add_argument("--config", "-c", metavar="FILE",
                   help="JSON config file (default: the built-in conf/default.json)")
    p.add_argument("--host", help="address to listen on (overrides server.host)")
    p.add_argument("--port", "-p", type=int, help="port to listen on (overrides server.port)")
    p.add_argument("--workers", "-w", type=int, metavar="N",
                   help="worker processes sharing the port (default: server.workers, else one per CPU the "
                        "process may use: its CPU affinity capped by its cgroup CPU quota)")
    p.add_argument("--check-config", metavar="FILE",
                   help="validate FILE and exit: 0 if valid, 1 with every problem listed if not")
    p.add_argument("--version", action="version", version=f"tornado-proxy {__version__}")
    return p


CGROUP_ROOT_ENV = "TORNADO_PROXY_CGROUP_ROOT"  # where cgroupfs is mounted; tests point it at fake files


def default_workers(cgroup_root: str | None = None) -> int:
    """One worker per CPU this process may use: the CPUs it may run on, capped by its
    cgroup CPU quota rounded up.  A container started with ``--cpus 2`` on a 64-core host
    sees all 64 cores in its affinity mask but gets two cores' worth of time: 64 workers
    there would only contend for it."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root or os.environ.get(CGROUP_ROOT_ENV) or "/sys/fs/cgroup")
    return cpus if quota is None else max(1, min(cpus, math.ceil(quota)))


def cgroup_cpu_quota(root: str) -> float | None:
    """CPUs' worth of time this process's cgroup CPU quota allows (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), the tightest if several apply; None: no quota.

    Looked for at the mount's top (a container's own cgroup namespace) and at the
    process's cgroup path from /proc/self/cgroup (a systemd unit's ``CPUQuota=``)."""
    rels = {""}
    try:  # "0::/system.slice/x.service" (v2), "4:cpu,cpuacct:/docker/abc" (v1)
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if controllers == "" or "cpu" in controllers.split(","):
                rels.add(rel.strip("/"))
    except (OSError, ValueError):
        pass
    quotas = []
    for mount in ("", "cpu", "cpu,cpuacct"):
        for rel in rels:
            d = Path(root, mount, rel)
            try:
                fields = (d / "cpu.max").read_text().split()
            except OSError:
                try:
                    fields = [(d / f"cpu.cfs_{f}_us").read_text() for f in ("quota", "period")]
                except OSError:
                    continue
            try:  # "max 100000" (v2) and -1 (v1) mean no limit
                quota, period = float(fields[0]), float(fields[1])
            except (ValueError, IndexError):
                continue
            if quota > 0 and period > 0:
                quotas.append(quota / period)
    return min(quotas) if quotas else None


def load_or_say(path: str | None, heading: str) -> Config | None:
    """The loaded config, or None after its problems are printed under ``heading``."""
    from tornado_proxy.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        print(heading, file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.check_config:
        cfg = load_or_say(args.check_config, f"{args.check_config}: invalid")
        if cfg is None:
            return 1
        print(f"{args.check_config}: ok ({len(cfg.providers)} provider(s), {len(cfg.models)} model route(s))")
        return 0
    cfg = load_or_say(args.config, f"tornado-proxy: {args.config or 'default config'}: invalid configuration")
    if cfg is None:
        return 2
    import os

    workers = args.workers if args.workers is not None else cfg.server.get("workers") or 0
    if workers <= 0:
        workers = default_workers()
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Must be set before prometheus_client is imported (by .server): it picks its
        # value store at import time.
        import atexit
        import shutil
        import tempfile

        d = tempfile.mkdtemp(prefix="tornado-proxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = d
        parent = os.getpid()
        def remove_metrics_dir() -> None:  # in the parent only: forked workers inherit atexit
            if os.getpid() == parent:
                shutil.rmtree(d, ignore_errors=True)
        atexit.register(remove_metrics_dir)
    from tornado_proxy.server.workers import serve

    return serve(cfg, args.host, args.port, workers)


if __name__ == "__main__":
    sys.exit(main())
