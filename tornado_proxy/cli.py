"""Command line: ``tornado-proxy [--config FILE] [--host H] [--port N]`` and ``--check-config FILE``."""
from __future__ import annotations

import argparse
import sys

from . import __version__


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
                   help="worker processes sharing the port (default: server.workers, else the number of cores)")
    p.add_argument("--check-config", metavar="FILE",
                   help="validate FILE and exit: 0 if valid, 1 with every problem listed if not")
    p.add_argument("--version", action="version", version=f"tornado-proxy {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .config import ConfigError, load

    if args.check_config:
        try:
            cfg = load(args.check_config)
        except ConfigError as exc:
            print(f"{args.check_config}: invalid", file=sys.stderr)
            for p in exc.problems:
                print(f"  {p}", file=sys.stderr)
            return 1
        print(f"{args.check_config}: ok ({len(cfg.providers)} provider(s), {len(cfg.models)} model route(s))")
        return 0
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"tornado-proxy: {args.config or 'default config'}: invalid configuration", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    import os

    workers = args.workers if args.workers is not None else cfg.server.get("workers") or 0
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Must be set before prometheus_client is imported (by .server): it picks its
        # value store at import time.
        import atexit
        import shutil
        import tempfile

        d = tempfile.mkdtemp(prefix="tornado-proxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = d
        parent = os.getpid()
        atexit.register(lambda: os.getpid() == parent and shutil.rmtree(d, ignore_errors=True))
    from .server import serve

    return serve(cfg, args.host, args.port, workers)


if __name__ == "__main__":
    sys.exit(main())
