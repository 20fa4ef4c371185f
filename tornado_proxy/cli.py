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
    from .server import serve

    return serve(cfg, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
