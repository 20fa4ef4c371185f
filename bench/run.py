#!/usr/bin/env python3
"""Side-by-side benchmark of tornado-proxy, TensorZero, LiteLLM proxy and Portkey's gateway.

One script: installs what it needs (Debian packages, a venv per Python gateway,
Portkey from npm), starts a fake upstream (nginx + the echo module) and each
gateway in turn, loads them with wrk and bench/sseload.c, and prints one table
(also written to bench/RESULTS.md). See bench/README.md.

Standard library only, so that it runs with any python3 >= 3.9 before anything
is installed. Loopback only: every server binds 127.0.0.1 and every load is
bounded in time.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"
BUILD = BENCH / "build"

# Versions measured. Pinned so that two runs compare the same peers; bump on purpose.
LITELLM_SPEC = "litellm[proxy]==1.106.2"
TENSORZERO_SPEC = "tensorzero==2026.6.0"
PY_SPY_SPEC = "py-spy"
APT_PACKAGES = ["nginx", "libnginx-mod-http-echo", "wrk", "gcc", "libc6-dev", "nodejs", "npm"]

GATEWAY_CORE = 0  # the gateway under test
LOAD_CORE = 1  # load generators, the fake upstream and this script

CHUNKS = 50  # SSE chunks per stream
SLOW_INTERVAL_S = 0.2  # slow streams: one chunk every 200 ms
NOFILE = 65536  # file descriptors for 10 000 slow streams (client + upstream sockets)

MODEL = "bench-model"
LITELLM_KEY = "sk-bench-fake-master-key"  # obviously fake; LiteLLM refuses to start without one
REQUEST = {"messages": [{"role": "user", "content": "Say hello in fifty words."}], "max_tokens": 64}

# ----------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kw)


def out(cmd: list[str], **kw: Any) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: Optional[subprocess.Popen[bytes]] = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def raise_nofile() -> None:
    """preexec_fn: lift the fd limit (root may raise the hard limit up to fs.nr_open)."""
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    except (ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def median(values: list[float]) -> float:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


def http_post(port: int, path: str, headers: dict[str, str], body: bytes, timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    for k, v in headers.items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ----------------------------------------------------------------------------
# installation


def install(args: argparse.Namespace) -> None:
    need_apt = [
        not Path("/usr/sbin/nginx").exists(),
        not Path("/usr/lib/nginx/modules/ngx_http_echo_module.so").exists(),
        shutil.which("wrk") is None,
        shutil.which("cc") is None,
        shutil.which("node") is None or shutil.which("npm") is None,
    ]
    if any(need_apt):
        log("installing Debian packages: " + " ".join(APT_PACKAGES))
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # Keep the nginx package from starting the system-wide service on :80 (all
        # interfaces): policy-rc.d exit 101 is Debian's "don't start daemons" switch.
        policy = Path("/usr/sbin/policy-rc.d")
        made_policy = not policy.exists()
        if made_policy:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
        try:
            run(["apt-get", "update"], env=env)
            cmd = ["apt-get", "install", "-y", "--no-install-recommends"]
            pkgs = list(APT_PACKAGES)
            if shutil.which("node") is not None and shutil.which("npm") is not None:
                pkgs = [p for p in pkgs if p not in ("nodejs", "npm")]
            run(cmd + pkgs, env=env)
        finally:
            if made_policy:
                policy.unlink()
    BUILD.mkdir(exist_ok=True)
    src, exe = BENCH / "sseload.c", BUILD / "sseload"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        log("building sseload")
        run(["cc", "-O2", "-Wall", "-o", str(exe), str(src)])
    if "litellm" in args.gateways:
        venv = BENCH / ".venv-litellm"
        if not (venv / "bin" / "litellm").exists():
            log(f"installing {LITELLM_SPEC} into {venv}")
            run([sys.executable, "-m", "venv", str(venv)])
            run([str(venv / "bin" / "pip"), "install", "-q", "--upgrade", "pip"])
            run([str(venv / "bin" / "pip"), "install", "-q", LITELLM_SPEC])
    if "tensorzero" in args.gateways:
        venv = BENCH / ".venv-tensorzero"
        if not (venv / "bin" / "python").exists() or not list(venv.glob("lib/python*/site-packages/tensorzero")):
            log(f"installing {TENSORZERO_SPEC} into {venv}")
            run([sys.executable, "-m", "venv", str(venv)])
            run([str(venv / "bin" / "pip"), "install", "-q", TENSORZERO_SPEC])
    if "portkey" in args.gateways:
        pk = BENCH / "portkey"
        if not (pk / "node_modules" / "@portkey-ai" / "gateway").exists():
            log("installing @portkey-ai/gateway from npm (package-lock pins @hono/node-server)")
            lock = (pk / "package-lock.json").exists()
            run(["npm", "ci" if lock else "install", "--no-audit", "--no-fund"], cwd=pk)
    if "tornado-proxy" in args.gateways or args.profile:
        venv = BENCH / ".venv-tornado"
        if not (venv / "bin" / "python").exists():
            log(f"creating {venv} with tornado-proxy from {REPO}")
            run([sys.executable, "-m", "venv", str(venv)])
            run([str(venv / "bin" / "pip"), "install", "-q", "--upgrade", "pip"])
        # The runtime dependencies from setup.cfg, every run (a new one since the venv was
        # made would stop the gateway from starting); the code itself runs from the work
        # tree via PYTHONPATH, so that what is measured is what is checked out (and an
        # install step never writes into the repo).
        run([str(venv / "bin" / "pip"), "install", "-q", *tornado_proxy_requirements(), PY_SPY_SPEC])


def tornado_proxy_requirements() -> list[str]:
    import configparser
    cp = configparser.ConfigParser()
    cp.read(REPO / "setup.cfg")
    reqs = cp.get("options", "install_requires", fallback="")
    return [r.strip() for r in reqs.splitlines() if r.strip() and not r.strip().startswith("#")] or [
        "tornado", "pycurl", "ujson", "jsonschema", "prometheus-client"]


# ----------------------------------------------------------------------------
# fake upstream: nginx serving fixed OpenAI and Anthropic responses


def _openai_chunk(delta: dict[str, Any], finish: Optional[str]) -> str:
    return json.dumps({
        "id": "chatcmpl-bench0001", "object": "chat.completion.chunk", "created": 1700000000,
        "model": MODEL, "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }, separators=(",", ":"))


def upstream_bodies() -> dict[str, Any]:
    """Response shapes from the OpenAI and Anthropic API references (chat completion
    object / chunk; Messages and its SSE event sequence). 50 chunks per stream."""
    words = [f"word{i} " for i in range(CHUNKS - 2)]
    text = "".join(words)
    openai_json = json.dumps({
        "id": "chatcmpl-bench0001", "object": "chat.completion", "created": 1700000000, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": len(words), "total_tokens": 12 + len(words)},
        "system_fingerprint": "fp_bench",
    }, separators=(",", ":"))
    openai_events = [f"data: {_openai_chunk({'role': 'assistant', 'content': ''}, None)}\n\n"]
    openai_events += [f"data: {_openai_chunk({'content': w}, None)}\n\n" for w in words]
    openai_events.append(f"data: {_openai_chunk({}, 'stop')}\n\n")
    openai_events.append("data: [DONE]\n\n")
    assert len(openai_events) == CHUNKS + 1

    def ev(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

    anth_json = json.dumps({
        "id": "msg_bench0001", "type": "message", "role": "assistant", "model": MODEL,
        "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": len(words)},
    }, separators=(",", ":"))
    anth_events = [
        ev("message_start", {"type": "message_start", "message": {
            "id": "msg_bench0001", "type": "message", "role": "assistant", "model": MODEL, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ev("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}}),
    ]
    anth_events += [ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": w}}) for w in words]
    anth_events += [
        ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                             "usage": {"output_tokens": len(words)}}),
        ev("message_stop", {"type": "message_stop"}),
    ]
    return {"openai_json": openai_json, "openai_events": openai_events,
            "anthropic_json": anth_json, "anthropic_events": anth_events}


def _ngx_str(s: str) -> str:
    # nginx quoted strings: escape backslash and quote; \n is turned into a newline by nginx.
    assert "$" not in s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def nginx_conf(port: int, root: Path) -> str:
    b = upstream_bodies()

    def stream(events: list[str], sleep: float) -> str:
        parts = []
        for i, e in enumerate(events):
            if i and sleep:
                parts.append(f"echo_sleep {sleep};")
            parts.append(f"echo -n {_ngx_str(e)}; echo_flush;")
        return "\n      ".join(parts)

    def loc(prefix: str, body: str, ctype: str) -> str:
        return (f"    location /{prefix}/ {{\n      default_type {ctype};\n"
                f"      add_header Cache-Control no-cache;\n      {body}\n    }}\n")

    locs = "".join([
        loc("json", f"return 200 {_ngx_str(b['openai_json'])};", "application/json"),
        loc("sse", stream(b["openai_events"], 0), "text/event-stream"),
        loc("slow", stream(b["openai_events"], SLOW_INTERVAL_S), "text/event-stream"),
        loc("ajson", f"return 200 {_ngx_str(b['anthropic_json'])};", "application/json"),
        loc("asse", stream(b["anthropic_events"], 0), "text/event-stream"),
        loc("aslow", stream(b["anthropic_events"], SLOW_INTERVAL_S), "text/event-stream"),
    ])
    return f"""# generated by bench/run.py: the fake upstream (one worker, pinned with the load generator)
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes 1;
worker_rlimit_nofile {NOFILE};
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 30000; multi_accept on; }}
http {{
  access_log off;
  client_body_temp_path {root}/tmp;
  proxy_temp_path {root}/tmp;
  fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp;
  scgi_temp_path {root}/tmp;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  tcp_nodelay on;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
{locs}    location / {{ return 404 '{{"error":{{"message":"bench upstream: unknown path"}}}}'; }}
  }}
}}
"""


class Upstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.root = WORK / "upstream"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(nginx_conf(self.port, self.root))
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(LOAD_CORE), "nginx", "-p", str(self.root), "-c", str(conf)],
            preexec_fn=raise_nofile, stdout=subprocess.DEVNULL, stderr=open(self.root / "stderr.log", "wb"))
        wait_port(self.port, 10, self.proc)
        HARNESS_PIDS.append(self.proc.pid)
        log(f"fake upstream (nginx) on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ----------------------------------------------------------------------------
# gateways


@dataclass
class Target:
    """Where a load goes: port, path, headers and the request body."""
    port: int
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


SCENARIO_KINDS = {  # kind -> (upstream prefix, format, stream)
    "json": ("json", "openai", False),
    "sse": ("sse", "openai", True),
    "slow": ("slow", "openai", True),
    "xsse": ("asse", "anthropic", True),  # cross-format: OpenAI client, Anthropic upstream
}


class Gateway:
    name = ""
    label = ""
    cross_format = True

    def __init__(self, upstream: Upstream) -> None:
        self.up = upstream
        self.port = 0
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.logf: Any = None

    # overridden
    def command(self) -> tuple[list[str], dict[str, str], Optional[Path]]:
        raise NotImplementedError

    def target(self, kind: str) -> Target:
        raise NotImplementedError

    def version(self) -> str:
        return ""

    def start_timeout(self) -> float:
        return 60

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.port = free_port()
        cmd, env, cwd = self.command()
        self.logf = open(WORK / f"{self.name}.log", "ab")
        self.logf.write(f"\n=== start {time.ctime()}: {' '.join(cmd)}\n".encode())
        self.logf.flush()
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(GATEWAY_CORE)] + cmd, env=dict(os.environ, **env), cwd=cwd,
            preexec_fn=lambda: (raise_nofile(), os.setsid()), stdout=self.logf, stderr=self.logf)
        wait_port(self.port, self.start_timeout(), self.proc)
        self.wait_ready()

    def wait_ready(self) -> None:
        """Listening is not ready (LiteLLM answers 404 until its config is loaded):
        wait until a non-streaming request succeeds."""
        t = self.target("json")
        end = time.monotonic() + self.start_timeout()
        status, data = 0, b""
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                status, data = http_post(t.port, t.path, t.headers, json.dumps(t.body).encode(), timeout=10)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready: HTTP {status} {data[:200]!r}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.logf:
            self.logf.close()
        self.proc = None

    def body(self, kind: str, model: str) -> dict[str, Any]:
        stream = SCENARIO_KINDS[kind][2]
        b = dict(REQUEST, model=model)
        if stream:
            b["stream"] = True
        return b


class Floor(Gateway):
    """The upstream itself, loaded directly: the floor, and the harness ceiling."""
    name = "floor"
    label = "upstream direct"
    cross_format = False  # the cross-format figure is a gateway's own same- vs cross-format ratio

    def start(self) -> None:
        self.port = self.up.port

    def stop(self) -> None:
        pass

    @property
    def pid(self) -> Optional[int]:
        return None

    def target(self, kind: str) -> Target:
        prefix, fmt, _ = SCENARIO_KINDS[kind]
        if kind == "slow":
            prefix = "slow"
        path = f"/{prefix}/v1/chat/completions" if fmt == "openai" else f"/{prefix}/v1/messages"
        return Target(self.port, path, {"Authorization": "Bearer test-key-123"}, self.body(kind, MODEL))

    def version(self) -> str:
        return out(["nginx", "-v"]) or subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()


class TornadoProxy(Gateway):
    name = "tornado-proxy"
    label = "tornado-proxy"

    def __init__(self, upstream: Upstream, server: Optional[dict[str, Any]] = None,
                 rev: Optional[str] = None, state: Optional[dict[str, Any]] = None) -> None:
        super().__init__(upstream)
        self.server = server or {}  # `server` settings (--busy-poll-us); empty: every default
        self.state = state or {}  # the top-level `state` key (+state.store=...); empty: the default
        self.redis: Optional[subprocess.Popen[bytes]] = None
        self.tree = REPO
        if rev:  # --compare: another commit's code, side by side with the work tree's
            self.name = self.label = f"tornado-proxy@{rev}"
            self.tree = checkout(rev)

    def has_anthropic(self) -> bool:
        # A module before the split of #15, a package after it (--compare may check out either).
        return any((self.tree / "providers" / name).exists()
                   for name in ("anthropic_messages.py", "anthropic_messages"))

    @property
    def cross_format(self) -> bool:  # type: ignore[override]
        return self.has_anthropic()

    def config(self) -> dict[str, Any]:
        base = f"http://127.0.0.1:{self.up.port}"
        providers = []
        models = []
        for kind, (prefix, fmt, _) in SCENARIO_KINDS.items():
            if fmt == "anthropic" and not self.has_anthropic():
                continue
            p: dict[str, Any] = {
                "name": f"up-{kind}", "type": "openai" if fmt == "openai" else "anthropic",
                "base_url": f"{base}/{prefix}/v1" if fmt == "openai" else f"{base}/{prefix}",
                "accounts": [{"id": f"bench-{kind}", "api_key": "test-key-123"}],
            }
            providers.append(p)
            models.append({"id": f"bench-{kind}", "provider": p["name"], "upstream_model": MODEL})
        cfg: dict[str, Any] = {"providers": providers, "models": models}
        if self.server:
            cfg["server"] = dict(self.server)
        if self.state:
            cfg["state"] = dict(self.state)
            if self.state.get("store") == "local" and "path" not in self.state:
                cfg["state"]["path"] = str(WORK / f"state-{self.port}")  # a fresh file per run
            if self.state.get("store") == "redis" and "url" not in self.state:
                cfg["state"]["url"] = f"redis://127.0.0.1:{self.redis_port}/0"
        return cfg

    def start(self) -> None:
        if self.state.get("store") == "redis" and "url" not in self.state:
            # A throwaway Redis on the load core (no persistence), as a replica's nearby Redis.
            self.redis_port = free_port()
            self.redis = subprocess.Popen(
                ["taskset", "-c", str(LOAD_CORE), "redis-server", "--port", str(self.redis_port),
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(self.redis_port, 10, self.redis)
        super().start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self.redis and self.redis.poll() is None:
                self.redis.terminate()
                self.redis.wait(10)

    def command(self) -> tuple[list[str], dict[str, str], Optional[Path]]:
        cfg = WORK / f"{self.name}.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        py = str(BENCH / ".venv-tornado" / "bin" / "python")
        cmd = [py, "-m", "tornado_proxy", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(self.port)]
        helptext = out([py, "-m", "tornado_proxy", "--help"], cwd=self.tree,
                       env=dict(os.environ, PYTHONPATH=str(self.tree)))
        if "--workers" in helptext:
            cmd += ["--workers", "1"]  # one process on one core: the comparison
        return cmd, {"PYTHONPATH": str(self.tree)}, self.tree

    def target(self, kind: str) -> Target:
        return Target(self.port, "/v1/chat/completions", {"Authorization": "Bearer test-key-123"},
                      self.body(kind, f"bench-{kind}"))

    def version(self) -> str:
        if self.tree != REPO:
            return f"git {self.tree.name.split('-', 1)[1]}"
        rev = out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        dirty = out(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
        py = BENCH / ".venv-tornado" / "bin" / "python"
        libs = out([str(py), "-c", "import tornado, pycurl; print('tornado', tornado.version, '|', pycurl.version)"])
        return f"git {rev}{' (+ uncommitted changes)' if dirty else ''}; {libs}"


def checkout(rev: str) -> Path:
    """The tree of commit ``rev`` under .work/ (git archive: no worktree, no index touched)."""
    sha = out(["git", "-C", str(REPO), "rev-parse", "--short", rev])
    if not sha:
        raise SystemExit(f"--compare: no commit {rev!r}")
    tree = WORK / f"tree-{sha}"
    if not (tree / "tornado_proxy").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


class LiteLLM(Gateway):
    name = "litellm"
    label = "LiteLLM proxy"

    def start_timeout(self) -> float:
        return 120

    def command(self) -> tuple[list[str], dict[str, str], Optional[Path]]:
        base = f"http://127.0.0.1:{self.up.port}"
        lines = ["model_list:"]
        for kind, (prefix, fmt, _) in SCENARIO_KINDS.items():
            model = f"openai/{MODEL}" if fmt == "openai" else f"anthropic/{MODEL}"
            api_base = f"{base}/{prefix}/v1" if fmt == "openai" else f"{base}/{prefix}"
            lines += [f"  - model_name: bench-{kind}", "    litellm_params:",
                      f"      model: {model}", f"      api_base: {api_base}", "      api_key: test-key-123"]
        cfg = WORK / "litellm.yaml"
        cfg.write_text("\n".join(lines) + "\n")
        exe = str(BENCH / ".venv-litellm" / "bin" / "litellm")
        env = {
            # No network but loopback: use the bundled model cost map, no telemetry.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
            "DISABLE_SCHEMA_UPDATE": "True",
            # No database; a master key is required to start (clients send it as their key).
            "LITELLM_MASTER_KEY": LITELLM_KEY,
        }
        return [exe, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(self.port),
                "--num_workers", "1"], env, WORK

    def target(self, kind: str) -> Target:
        return Target(self.port, "/v1/chat/completions", {"Authorization": f"Bearer {LITELLM_KEY}"},
                      self.body(kind, f"bench-{kind}"))

    def version(self) -> str:
        py = BENCH / ".venv-litellm" / "bin" / "python"
        return "litellm " + out([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"])


class Portkey(Gateway):
    name = "portkey"
    label = "Portkey gateway"

    def command(self) -> tuple[list[str], dict[str, str], Optional[Path]]:
        pk = BENCH / "portkey"
        script = pk / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
        env = {"NODE_ENV": "production", "TRUSTED_CUSTOM_HOSTS": "127.0.0.1"}
        return ["node", "--import", "./loopback.mjs", str(script), f"--port={self.port}", "--headless"], env, pk

    def target(self, kind: str) -> Target:
        prefix, fmt, _ = SCENARIO_KINDS[kind]
        base = f"http://127.0.0.1:{self.up.port}/{prefix}/v1"
        headers = {"Authorization": "Bearer test-key-123", "x-portkey-provider": fmt,
                   "x-portkey-custom-host": base}
        if fmt == "anthropic":
            headers["x-api-key"] = "test-key-123"
        return Target(self.port, "/v1/chat/completions", headers, self.body(kind, MODEL))

    def version(self) -> str:
        pk = BENCH / "portkey" / "node_modules"
        def ver(p: str) -> str:
            try:
                return json.loads((pk / p / "package.json").read_text())["version"]
            except OSError:
                return "?"
        return (f"@portkey-ai/gateway {ver('@portkey-ai/gateway')}, @hono/node-server {ver('@hono/node-server')}, "
                f"hono {ver('hono')}, node {out(['node', '--version'])}")


class TensorZero(Gateway):
    """TensorZero's Rust gateway, as its pip wheel embeds it (bench/tensorzero_serve.py),
    no database, its OpenAI-compatible endpoint; one model per upstream shape."""
    name = "tensorzero"
    label = "TensorZero"

    def config(self) -> str:
        base = f"http://127.0.0.1:{self.up.port}"
        lines = ["# generated by bench/run.py: one model per upstream shape, no observability",
                 "[gateway.observability]", "enabled = false", ""]
        for kind, (prefix, fmt, _) in SCENARIO_KINDS.items():
            api_base = f"{base}/{prefix}/v1/"  # it appends chat/completions or messages
            lines += [f"[models.bench-{kind}]", 'routing = ["up"]', "",
                      f"[models.bench-{kind}.providers.up]", f'type = "{fmt}"',
                      f'api_base = "{api_base}"', f'model_name = "{MODEL}"', 'api_key_location = "env::BENCH_UPSTREAM_KEY"', ""]
        return "\n".join(lines)

    def command(self) -> tuple[list[str], dict[str, str], Optional[Path]]:
        cfg = WORK / "tensorzero.toml"
        cfg.write_text(self.config())
        self.url_file = WORK / "tensorzero.url"
        self.url_file.unlink(missing_ok=True)
        py = str(BENCH / ".venv-tensorzero" / "bin" / "python")
        return [py, str(BENCH / "tensorzero_serve.py"), str(cfg), str(self.url_file)], \
            {"RUST_LOG": "warn", "BENCH_UPSTREAM_KEY": "test-key-123"}, WORK

    def start(self) -> None:
        # The embedded gateway picks its own port: read it from the file the wrapper writes.
        cmd, env, cwd = self.command()
        self.logf = open(WORK / f"{self.name}.log", "ab")
        self.logf.write(f"\n=== start {time.ctime()}: {' '.join(cmd)}\n".encode())
        self.logf.flush()
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(GATEWAY_CORE)] + cmd, env=dict(os.environ, **env), cwd=cwd,
            preexec_fn=lambda: (raise_nofile(), os.setsid()), stdout=self.logf, stderr=self.logf)
        end = time.monotonic() + self.start_timeout()
        while not self.url_file.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"tensorzero did not start (see {WORK / 'tensorzero.log'})")
            time.sleep(0.1)
        m = re.match(r"http://127\.0\.0\.1:(\d+)/", self.url_file.read_text())
        if not m:
            raise RuntimeError(f"tensorzero listens on {self.url_file.read_text()!r}, not on loopback")
        self.port = int(m.group(1))
        wait_port(self.port, self.start_timeout(), self.proc)
        self.wait_ready()

    def target(self, kind: str) -> Target:
        return Target(self.port, "/openai/v1/chat/completions", {"Authorization": "Bearer test-key-123"},
                      self.body(kind, f"tensorzero::model_name::bench-{kind}"))

    def version(self) -> str:
        py = BENCH / ".venv-tensorzero" / "bin" / "python"
        return "tensorzero " + out([str(py), "-c", "import importlib.metadata as m; print(m.version('tensorzero'))"])


GATEWAYS: dict[str, type[Gateway]] = {
    "floor": Floor, "tornado-proxy": TornadoProxy, "tensorzero": TensorZero, "portkey": Portkey,
    "litellm": LiteLLM,
}


def _harness_tree() -> list[int]:
    return [p for h in HARNESS_PIDS for p in _tree(h)]


# ----------------------------------------------------------------------------
# process sampling: CPU seconds and peak RSS of the gateway's process tree

_CLK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    res, todo = [], [pid]
    while todo:
        p = todo.pop()
        res.append(p)
        todo.extend(children.get(p, []))
    return res


def _cpu_rss(pids: list[int]) -> tuple[float, int]:
    cpu, rss = 0.0, 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            cpu += (int(fields[11]) + int(fields[12])) / _CLK
            rss += int(fields[21]) * _PAGE
        except (OSError, IndexError, ValueError):
            pass
    return cpu, rss


def _core_busy() -> dict[int, float]:
    """Busy seconds per core from /proc/stat (everything but idle and iowait)."""
    res = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                res[int(name[3:])] = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / _CLK
    return res


def _self_children_cpu() -> float:
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


HARNESS_PIDS: list[int] = []  # nginx master/worker: the harness's share of the load core


class Sampler:
    """Samples the gateway tree every 100 ms while a load runs, and measures how
    much CPU *other* processes took on each core meanwhile (the machine is shared:
    a figure taken while something else ran on the gateway's core is suspect)."""

    def __init__(self, pid: Optional[int]) -> None:
        self.foreign_gw = self.foreign_load = 0.0
        self.pid = pid
        self.peak_rss = 0
        self.cpu0 = self.cpu1 = 0.0
        self.t0 = self.t1 = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.pids: list[int] = []

    def __enter__(self) -> "Sampler":
        self._busy0 = _core_busy()
        self._harness0 = _cpu_rss(_harness_tree())[0] + _self_children_cpu()
        if self.pid:
            self.pids = _tree(self.pid)
            self.cpu0, self.peak_rss = _cpu_rss(self.pids)
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        self.t0 = time.monotonic()
        return self

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(0.1):
            n += 1
            if n % 20 == 0:
                self.pids = _tree(self.pid or 0)  # workers may come and go
            _, rss = _cpu_rss(self.pids)
            self.peak_rss = max(self.peak_rss, rss)

    def __exit__(self, *exc: Any) -> None:
        self.t1 = time.monotonic()
        if self._thread:
            self._stop.set()
            self._thread.join()
            self.cpu1, rss = _cpu_rss(self.pids)
            self.peak_rss = max(self.peak_rss, rss)
        busy1 = _core_busy()
        harness = _cpu_rss(_harness_tree())[0] + _self_children_cpu() - self._harness0
        wall = max(self.t1 - self.t0, 1e-9)
        d = {c: busy1[c] - self._busy0.get(c, 0) for c in busy1}
        # The gateway is pinned to GATEWAY_CORE: anything else busy there is foreign.
        # Loopback softirq work may be accounted to the core rather than a process,
        # so a few % show up even on a quiet machine.
        self.foreign_gw = max(0.0, 100 * (d.get(GATEWAY_CORE, 0) - self.cpu_s) / wall)
        self.foreign_load = max(0.0, 100 * (d.get(LOAD_CORE, 0) - harness) / wall)

    @property
    def cpu_s(self) -> float:
        return self.cpu1 - self.cpu0

    @property
    def cpu_pct(self) -> float:
        return 100.0 * self.cpu_s / max(self.t1 - self.t0, 1e-9)


# ----------------------------------------------------------------------------
# loads


def _lua(t: Target) -> Path:
    p = WORK / f"wrk-{t.port}-{abs(hash(json.dumps(t.body, sort_keys=True)))}.lua"
    body = json.dumps(t.body, separators=(",", ":"))
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in t.headers.items()]
    p.write_text("\n".join(lines) + "\n")
    return p


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(s: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s.strip())
    if not m:
        raise ValueError(s)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(t: Target, conns: int, duration: float) -> dict[str, Any]:
    cmd = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s",
           "--timeout", "10s", "--latency", "-s", str(_lua(t)), f"http://127.0.0.1:{t.port}{t.path}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    text = res.stdout
    r: dict[str, Any] = {"raw": text}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    r["rps"] = float(m.group(1)) if m else 0.0
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}%\s+(\S+)", text, re.M)
        r[f"p{p}_ms"] = _ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    r["errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"(\d+) requests in", text)
    r["requests"] = int(m.group(1)) if m else 0
    return r


def fd_capped(n: int) -> int:
    """A gateway holding n streams needs 2n sockets (client + upstream) plus a few.
    Where the hard RLIMIT_NOFILE cannot be raised (a container without
    CAP_SYS_RESOURCE), n is cut to what fits, and said so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = hard if hard != resource.RLIM_INFINITY else NOFILE
    fit = (limit - 200) // 2 // 100 * 100
    if n > fit:
        NOTES.append(f"{n} streams need {2 * n + 200} file descriptors in the gateway; this machine's hard "
                     f"limit is {limit} and cannot be raised here, so that load opened {fit} streams.")
        return fit
    return n


NOTES: list[str] = []
NOTES_MARK = "## Notes (hand-written; kept when run.py rewrites this file)"


def sseload(t: Target, *, conns: int = 1, duration: float = 0, count: int = 0, timeout: float = 30,
            expect: int = CHUNKS, max_connecting: int = 64, rate: float = 0) -> dict[str, Any]:
    body = WORK / f"body-{abs(hash(json.dumps(t.body, sort_keys=True)))}.json"
    body.write_text(json.dumps(t.body, separators=(",", ":")))
    cmd = ["taskset", "-c", str(LOAD_CORE), str(BUILD / "sseload"), "-p", str(t.port), "-P", t.path,
           "-b", str(body), "-t", str(timeout), "-e", str(expect), "-C", str(max_connecting)]
    for k, v in t.headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd += ["-n", str(count), "-r", str(rate)] if count else ["-d", str(duration), "-c", str(conns)]
    limit = (timeout if count else duration + timeout) + 30
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, preexec_fn=raise_nofile)
    if res.returncode != 0:
        raise RuntimeError(f"sseload failed: {res.stderr.strip()}")
    return json.loads(res.stdout)


# ----------------------------------------------------------------------------
# scenarios


@dataclass
class Result:
    gateway: str
    scenario: str
    reps: list[dict[str, Any]] = field(default_factory=list)

    def med(self, key: str) -> float:
        return median([r.get(key) for r in self.reps])  # type: ignore[misc]


def flat(r: dict[str, Any]) -> dict[str, Any]:
    """sseload JSON -> flat keys."""
    f = {k: v for k, v in r.items() if not isinstance(v, dict)}
    for k in ("ttfb_ms", "total_ms"):
        for p, v in r[k].items():
            f[f"{k[:-3]}_{p}_ms"] = v if v >= 0 else None
    return f


def smoke(gw: Gateway, kinds: list[str]) -> list[str]:
    """One request per kind; returns the kinds that work (the rest are reported as n/a)."""
    ok = []
    for kind in kinds:
        t = gw.target(kind)
        if kind == "slow":
            ok.append(kind)  # same route as "sse", only slower
            continue
        try:
            status, data = http_post(t.port, t.path, t.headers, json.dumps(t.body).encode())
        except OSError as e:
            log(f"  {gw.name} {kind}: {e}")
            continue
        text = data.decode("utf-8", "replace")
        good = status == 200 and (("word3 " in text) if kind == "json" else text.count("data:") >= CHUNKS - 3)
        if good and SCENARIO_KINDS[kind][2]:
            good = "[DONE]" in text
        if good:
            ok.append(kind)
        else:
            log(f"  {gw.name} {kind}: HTTP {status}: {text[:300]!r}")
    return ok


# The machine is a VM whose cores are shared with other tenants of the host: for
# seconds at a time a core runs at half its speed, and nothing inside the VM shows it
# (no process takes the CPU, there is no steal time).  A fixed pure-Python workload on
# the gateway's core for one second, before and after each measured run, shows it: the
# most rounds it ever managed is the reference.
_PROBE = ("import time\nn=0\nend=time.perf_counter()+1.0\nwhile time.perf_counter()<end:\n"
          " d={}\n for i in range(5000): d[i%1000]=i\n n+=1\nprint(n)")
_probe_best = [0.0]


def cpu_probe() -> float:
    """How slow the gateway's core is now: the best rounds per second over this second's (>= 1)."""
    out = subprocess.run(["taskset", "-c", str(GATEWAY_CORE), sys.executable, "-c", _PROBE],
                         capture_output=True, text=True, timeout=60).stdout
    n = float(out.strip())
    _probe_best[0] = max(_probe_best[0], n)
    return _probe_best[0] / max(n, 1.0)


def wait_fast_core(limit: float, slack: float) -> float:
    """Wait (bounded) until the gateway's core runs within ``slack`` of its best speed."""
    end = time.monotonic() + limit
    slow = cpu_probe()
    while slow > slack and time.monotonic() < end:
        time.sleep(1)
        slow = cpu_probe()
    return slow


def attempt(gw: Gateway, args: argparse.Namespace, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One measured run; repeated (up to --retries times) while other processes
    take more than --max-foreign % of the gateway's core, or the host slowed that
    core down (cpu_probe, before and after); the quietest is kept."""
    best: Optional[dict[str, Any]] = None
    for i in range(1 + args.retries):
        before = wait_fast_core(args.host_wait, args.host_slack) if args.host_slack else 1.0
        with Sampler(gw.pid) as s:
            r = dict(fn())
        after = cpu_probe() if args.host_slack else 1.0
        r.update(cpu_s=s.cpu_s, cpu_pct=s.cpu_pct, peak_rss_mib=s.peak_rss / 2**20,
                 foreign_gw_pct=s.foreign_gw, foreign_load_pct=s.foreign_load,
                 host_slow=max(before, after))
        # Other processes on either core distort a figure: on the gateway's core they
        # take its CPU, on the load core they slow the upstream and the load client.
        foreign = max(s.foreign_gw, s.foreign_load / 2)
        r["foreign_pct"] = foreign
        # (a host-slowed run counts as busy as 100 % foreign per 1.0 of slowdown)
        badness = foreign + 100 * max(0.0, r["host_slow"] - 1)
        r["badness"] = badness
        if best is None or badness < best["badness"]:
            best = r
        if (foreign <= args.max_foreign and (not args.host_slack or r["host_slow"] <= args.host_slack)) \
                or i == args.retries:
            break
        log(f"    (other processes took {s.foreign_gw:.0f}% of core {GATEWAY_CORE}, "
            f"{s.foreign_load:.0f}% of core {LOAD_CORE}; core {GATEWAY_CORE} ran at "
            f"1/{r['host_slow']:.2f} of its best speed: again)")
    assert best is not None
    return best


def measure(gws: list[Gateway], args: argparse.Namespace, results: dict[tuple[str, str], Result]) -> None:
    """Every load on every gateway in interleaved rounds: for each load, one warm-up run
    per gateway, then round after round of one run per gateway (the order rotating), so
    that what the shared machine does to a round it does to every gateway in it and the
    ratios within a round (``ratios()``) cancel it.  Every gateway stays up meanwhile,
    pinned to the same core; the idle ones take next to nothing of it."""
    D = args.duration
    works: dict[str, list[str]] = {}
    up: list[Gateway] = []
    for gw in gws:
        kinds = ["json", "sse", "slow"] + (["xsse"] if gw.cross_format else [])
        try:
            gw.start()
        except Exception as e:  # one broken peer must not lose the others' figures
            log(f"{gw.name}: FAILED to start: {e!r}")
            gw.stop()
            continue
        works[gw.name] = [k for k in smoke(gw, kinds) if k in args.loads]
        log(f"{gw.name}: working routes {works[gw.name]}")
        up.append(gw)

    def rounds(name: str, kind: str, make: Callable[[Gateway], Callable[[], dict[str, Any]]],
               fresh: bool = False, only: Optional[list[str]] = None) -> None:
        part = [g for g in up if kind in works.get(g.name, []) and (only is None or g.name in only)]
        if not part:
            return
        if not fresh:
            for gw in part:
                try:
                    make(gw)()  # warm-up (not counted)
                except Exception as e:
                    log(f"  {gw.name} {name} warm-up: FAILED: {e!r}")
        for i in range(args.reps):
            for gw in part[i % len(part):] + part[:i % len(part)]:
                if fresh:  # peak RSS is about holding streams, not what earlier loads left behind
                    gw.stop()
                    gw.start()
                try:
                    r = attempt(gw, args, make(gw))
                except Exception as e:
                    log(f"  {gw.name} {name} round {i + 1}: FAILED: {e!r}")
                    continue
                r["round"] = i
                results.setdefault((gw.name, name), Result(gw.name, name)).reps.append(r)
                if fresh:
                    time.sleep(1)  # let closed sockets drain
        for gw in part:
            res = results.get((gw.name, name))
            if res and res.reps:
                log(f"  {gw.name} {name}: " + summarize(res))

    try:
        for c in (1, 16, 64):
            rounds(f"json-c{c}", "json", lambda gw, c=c: (lambda t=gw.target("json"): wrk(t, c, D)))
        for kind in ("sse", "xsse"):
            for c in ((1, 16) if kind == "sse" else (16,)):
                rounds(f"{kind}-c{c}", kind,
                       lambda gw, c=c, kind=kind: (lambda t=gw.target(kind): _stream_run(t, c, D, kind)))
        if args.slow and "slow" in args.loads:
            loads = [(args.slow, args.slow_rate, None)]
            if args.slow_max:
                loads.append((args.slow_max, args.slow_max_rate,
                              ["floor"] + [g.name for g in up if g.name.startswith("tornado-proxy")]))
            for n_asked, rate, only in loads:
                n = fd_capped(n_asked)
                timeout = n / rate + CHUNKS * SLOW_INTERVAL_S + args.slow_slack
                rounds(f"slow-{n_asked}", "slow", lambda gw, n=n, rate=rate, timeout=timeout: (
                    lambda t=gw.target("slow"): flat(sseload(t, count=n, rate=rate, timeout=timeout,
                                                             max_connecting=args.max_connecting))),
                       fresh=True, only=only)
    finally:
        for gw in up:
            gw.stop()


def _stream_run(t: Target, c: int, d: float, kind: str) -> dict[str, Any]:
    r = flat(sseload(t, conns=c, duration=d, timeout=10, expect=CHUNKS - 5 if kind == "xsse" else CHUNKS))
    return r


def wait_idle(limit: float) -> None:
    """Wait (bounded) until both cores have been nearly idle for 3 s."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        b0 = _core_busy()
        time.sleep(3)
        b1 = _core_busy()
        busy = max(100 * (b1[c] - b0.get(c, 0)) / 3 for c in b1)
        if busy < 10:
            return
        log(f"waiting for a quiet machine (busiest core {busy:.0f}%)")
    log("machine still busy; measuring anyway (see foreign_gw_pct in .work/results.json)")


def summarize(res: Result) -> str:
    r0 = res.reps[0] if res.reps else {}
    foreign = f"foreign {res.med('foreign_gw_pct'):.0f}%/{res.med('foreign_load_pct'):.0f}%"
    if res.reps and "host_slow" in res.reps[0]:
        foreign += f" core speed 1/{res.med('host_slow'):.2f}"
    if "rps" in r0:
        return (f"{res.med('rps'):.0f} req/s p50 {res.med('p50_ms'):.2f} ms p99 {res.med('p99_ms'):.2f} ms "
                f"cpu {res.med('cpu_pct'):.0f}% errors {sum(r['errors'] + r['non2xx'] for r in res.reps)} {foreign}")
    return (f"ok {res.med('ok'):.0f}/{res.med('started'):.0f} {res.med('streams_per_s'):.0f} streams/s "
            f"ttfb p50 {res.med('ttfb_p50_ms'):.2f} p99 {res.med('ttfb_p99_ms'):.2f} ms, "
            f"whole p50 {res.med('total_p50_ms'):.1f} p99 {res.med('total_p99_ms'):.1f} ms, "
            f"cpu {res.med('cpu_pct'):.0f}% rss {res.med('peak_rss_mib'):.0f} MiB "
            f"client cpu {res.med('client_cpu_s'):.2f}s {foreign}")


# ----------------------------------------------------------------------------
# report


def fmt(v: Optional[float], spec: str = ".0f") -> str:
    if v is None or v != v:
        return "n/a"
    return format(v, spec)


def table(results: dict[tuple[str, str], Result], names: list[str], args: argparse.Namespace) -> str:
    labels = {n: LABELS.get(n, n) for n in names}

    def get(n: str, sc: str) -> Optional[Result]:
        r = results.get((n, sc))
        return r if r and r.reps else None

    rows: list[tuple[str, list[str]]] = []

    def row(title: str, sc: str, fn: Callable[[Result], Optional[float]], spec: str = ".0f") -> None:
        cells = []
        for n in names:
            r = get(n, sc)
            cells.append(fmt(fn(r), spec) if r else "n/a")
        rows.append((title, cells))

    for c in (1, 16, 64):
        sc = f"json-c{c}"
        row(f"non-stream c={c}: req/s", sc, lambda r: r.med("rps"))
        row(f"non-stream c={c}: p50 ms", sc, lambda r: r.med("p50_ms"), ".2f")
        row(f"non-stream c={c}: p99 ms", sc, lambda r: r.med("p99_ms"), ".2f")
    row("non-stream c=64: gateway CPU %", "json-c64", lambda r: r.med("cpu_pct"))
    for kind, conc, what in (("sse", 1, "stream 50 chunks"), ("sse", 16, "stream 50 chunks"),
                             ("xsse", 16, "cross-format stream (Anthropic upstream)")):
        sc = f"{kind}-c{conc}"
        row(f"{what} c={conc}: streams/s", sc, lambda r: r.med("streams_per_s"))
        row(f"{what} c={conc}: TTFB p50 ms", sc, lambda r: r.med("ttfb_p50_ms"), ".2f")
        row(f"{what} c={conc}: TTFB p99 ms", sc, lambda r: r.med("ttfb_p99_ms"), ".2f")
        row(f"{what} c={conc}: whole stream p50 ms", sc, lambda r: r.med("total_p50_ms"), ".2f")
        row(f"{what} c={conc}: whole stream p99 ms", sc, lambda r: r.med("total_p99_ms"), ".2f")
        if conc == 16:
            row(f"{what} c={conc}: gateway CPU µs/chunk", sc,
                lambda r: median([1e6 * x["cpu_s"] / max(1, x["ok"] * CHUNKS) for x in r.reps]) if r.gateway != "floor" else None, ".1f")
    for n_slow in sorted({int(sc.split("-")[1]) for (_, sc) in results if sc.startswith("slow-")}):
        sc = f"slow-{n_slow}"
        what = f"{n_slow} slow streams"
        row(f"{what}: completed", sc, lambda r: r.med("ok"))
        row(f"{what}: most open at once", sc, lambda r: r.med("peak_active"))
        row(f"{what}: TTFB p99 ms", sc, lambda r: r.med("ttfb_p99_ms"), ".1f")
        row(f"{what}: whole stream p99 s", sc, lambda r: r.med("total_p99_ms") / 1e3 if r.med("ok") else None, ".2f")
        row(f"{what}: peak RSS MiB", sc, lambda r: r.med("peak_rss_mib") if r.gateway != "floor" else None)
        row(f"{what}: gateway CPU %", sc, lambda r: r.med("cpu_pct") if r.gateway != "floor" else None)
    head = "| | " + " | ".join(labels[n] for n in names) + " |"
    sep = "|---|" + "---:|" * len(names)
    body = "\n".join(f"| {t} | " + " | ".join(c) + " |" for t, c in rows if any(x != "n/a" for x in c))
    return "\n".join([head, sep, body])


def _by_round(results: dict[tuple[str, str], Result], n: str, sc: str) -> dict[int, dict[str, Any]]:
    r = results.get((n, sc))
    return {x["round"]: x for x in r.reps if "round" in x} if r else {}


def _cpu_chunk(x: dict[str, Any]) -> float:
    return x["cpu_s"] / max(1, x["ok"] * CHUNKS)


def within_rounds(results: dict[tuple[str, str], Result], a: str, sc_a: str, b: str, sc_b: str,
                  f: Callable[[dict[str, Any], dict[str, Any]], Optional[float]]) -> Optional[float]:
    """Median over rounds of f(a's run, b's run) for runs of the same round."""
    ra, rb = _by_round(results, a, sc_a), _by_round(results, b, sc_b)
    vals = []
    for i in sorted(set(ra) & set(rb)):
        try:
            v = f(ra[i], rb[i])
        except (TypeError, ZeroDivisionError, KeyError):
            v = None
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None


def ratios(results: dict[tuple[str, str], Result], names: list[str], ref: Optional[str] = None) -> str:
    """Each gateway against the reference peer (--ref; TensorZero if measured), as the
    median over rounds of the ratio within a round; the added latency over the floor
    within a round; each gateway's cross-format ÷ same-format CPU per chunk."""
    ref = ref or ("tensorzero" if "tensorzero" in names else None)
    gws = [n for n in names if n != "floor"]
    rows: list[tuple[str, list[Optional[float]], str]] = []
    if ref:
        for sc, what, key in (("json-c1", "non-stream req/s c=1", "rps"),
                              ("json-c16", "non-stream req/s c=16", "rps"),
                              ("json-c64", "non-stream req/s c=64", "rps"),
                              ("sse-c1", "streams/s c=1", "streams_per_s"),
                              ("sse-c16", "streams/s c=16", "streams_per_s"),
                              ("xsse-c16", "cross-format streams/s c=16", "streams_per_s")):
            rows.append((f"{what} ÷ {LABELS.get(ref, ref)}",
                         [within_rounds(results, n, sc, ref, sc, lambda x, y, k=key: x[k] / y[k]) for n in gws],
                         ".2f"))
        for c in (1, 16, 64):
            rows.append((f"non-stream CPU per request c={c} ÷ {LABELS.get(ref, ref)}",
                         [within_rounds(results, n, f"json-c{c}", ref, f"json-c{c}",
                                        lambda x, y: (x["cpu_s"] / x["requests"]) / (y["cpu_s"] / y["requests"]))
                          for n in gws], ".3f"))
        rows.append((f"stream CPU per chunk c=16 ÷ {LABELS.get(ref, ref)}",
                     [within_rounds(results, n, "sse-c16", ref, "sse-c16", lambda x, y: _cpu_chunk(x) / _cpu_chunk(y))
                      for n in gws], ".3f"))
    for key in ("p50_ms", "p99_ms"):
        rows.append((f"added {key[:3]} at c=1 over the floor, ms",
                     [within_rounds(results, n, "json-c1", "floor", "json-c1", lambda x, y, k=key: x[k] - y[k])
                      for n in gws], ".2f"))
    rows.append(("cross-format ÷ same-format CPU per chunk, c=16",
                 [within_rounds(results, n, "xsse-c16", n, "sse-c16", lambda x, y: _cpu_chunk(x) / _cpu_chunk(y))
                  for n in gws], ".2f"))
    head = "| | " + " | ".join(LABELS.get(n, n) for n in gws) + " |"
    sep = "|---|" + "---:|" * len(gws)
    body = "\n".join(f"| {t} | " + " | ".join(fmt(v, spec) for v in vals) + " |"
                     for t, vals, spec in rows if any(v is not None for v in vals))
    return "\n".join([head, sep, body]) if body else ""


def targets(results: dict[tuple[str, str], Result]) -> str:
    """The issue's targets for tornado-proxy, checked against this run."""
    def g(n: str, sc: str, key: str) -> Optional[float]:
        r = results.get((n, sc))
        return r.med(key) if r and r.reps else None

    tp, lines = "tornado-proxy", []

    def check(what: str, value: Optional[float], limit: Optional[float], ok: Optional[bool], unit: str) -> None:
        if value is None or limit is None or ok is None:
            lines.append(f"| {what} | n/a | {fmt(limit, '.2f')} {unit} | not measured |")
        else:
            lines.append(f"| {what} | {value:.2f} {unit} | {limit:.2f} {unit} | {'PASS' if ok else 'FAIL'} |")

    f50, t50 = g("floor", "json-c1", "p50_ms"), g(tp, "json-c1", "p50_ms")
    f99, t99 = g("floor", "json-c1", "p99_ms"), g(tp, "json-c1", "p99_ms")
    a50 = t50 - f50 if t50 is not None and f50 is not None else None
    a99 = t99 - f99 if t99 is not None and f99 is not None else None
    check("added p50 latency over the floor, c=1", a50, 0.5, a50 is not None and a50 <= 0.5, "ms")
    check("added p99 latency over the floor, c=1", a99, 2.0, a99 is not None and a99 <= 2.0, "ms")
    for c in (16, 64):
        pk, t = g("portkey", f"json-c{c}", "rps"), g(tp, f"json-c{c}", "rps")
        lim = 2 * pk if pk else None
        check(f"non-stream req/s c={c} ≥ 2× Portkey", t, lim, None if t is None or lim is None else t >= lim, "req/s")
    pk, t = g("portkey", "sse-c16", "streams_per_s"), g(tp, "sse-c16", "streams_per_s")
    lim = 2 * pk if pk else None
    check("streams/s c=16 ≥ 2× Portkey", t, lim, None if t is None or lim is None else t >= lim, "streams/s")
    f, t = g("floor", "sse-c16", "ttfb_p50_ms"), g(tp, "sse-c16", "ttfb_p50_ms")
    d = t - f if t is not None and f is not None else None
    check("stream TTFB p50 over the floor, c=16", d, 2.0, d is not None and d <= 2.0, "ms")
    slow = sorted({int(sc.split("-")[1]) for (n, sc) in results if n == tp and sc.startswith("slow-")})
    for n in slow:
        sc = f"slow-{n}"
        ok, opened = g(tp, sc, "ok"), g(tp, sc, "started")
        check(f"{n} slow streams: all complete (of {opened or n:.0f} opened)", ok, opened or float(n),
              ok is not None and ok >= (opened or n), "streams")
        if n <= 1000:
            v = g(tp, sc, "ttfb_p99_ms")
            check(f"{n} slow streams: TTFB p99", v, 50.0, v is not None and v <= 50, "ms")
            fl, v = g("floor", sc, "total_p99_ms"), g(tp, sc, "total_p99_ms")
            d = (v - fl) / 1e3 if v is not None and fl is not None else None
            check(f"{n} slow streams: whole-stream p99 over the floor", d, 0.3, d is not None and d <= 0.3, "s")
            v = g(tp, sc, "peak_rss_mib")
            check(f"{n} slow streams: peak RSS", v, 100.0, v is not None and v <= 100, "MiB")
        else:
            v = g(tp, sc, "peak_rss_mib")
            check(f"{n} slow streams: peak RSS", v, 1024.0, v is not None and v < 1024, "MiB")

    def per_chunk(sc: str) -> Optional[float]:
        r = results.get((tp, sc))
        if not r or not r.reps:
            return None
        return median([x["cpu_s"] / max(1, x["ok"] * CHUNKS) for x in r.reps])

    same, cross = per_chunk("sse-c16"), per_chunk("xsse-c16")
    ratio = cross / same if same and cross else None
    check("cross-format CPU/chunk ÷ same-format", ratio, 1.5, None if ratio is None else ratio <= 1.5, "×")
    return "| target | measured | limit | |\n|---|---:|---:|---|\n" + "\n".join(lines)


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    osr = ""
    try:
        osr = re.search(r'PRETTY_NAME="([^"]+)"', Path("/etc/os-release").read_text()).group(1)  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {osr}, Linux {platform.release()}"


def write_results(text: str, results: dict[tuple[str, str], Result], names: list[str],
                  versions: dict[str, str], args: argparse.Namespace) -> None:
    raw = {f"{g}/{s}": [{k: v for k, v in r.items() if k != "raw"} for r in res.reps]
           for (g, s), res in results.items()}
    (WORK / "results.json").write_text(json.dumps(raw, indent=1))
    if args.no_write:
        return
    vers = "\n".join(f"- {LABELS.get(n, n)}: {versions.get(n, '')}" for n in names)
    tools = (f"- wrk: {out(['dpkg-query', '-W', '-f=${Version}', 'wrk'])}, "
             f"nginx echo module: {out(['dpkg-query', '-W', '-f=${Version}', 'libnginx-mod-http-echo'])}, "
             f"python {platform.python_version()}")
    doc = f"""# Benchmark results

Produced by `python3 bench/run.py {' '.join(args.argv)}` on {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.
How it works and how to read it: `bench/README.md`.

Machine: {machine()}.
Gateway pinned to core {GATEWAY_CORE}; load generators, fake upstream (nginx) and the
harness on core {LOAD_CORE}. Loopback only. Each figure is the median of {args.reps}
repetition(s) of {args.duration:g} s (slow streams: one shot each), after a warm-up run.

Versions:
{vers}
{tools}

{text}
"""
    # A hand-written section (interpretation, profiles) survives a re-run.
    try:
        old = (BENCH / "RESULTS.md").read_text()
    except OSError:
        old = ""
    if NOTES_MARK in old:
        doc += "\n" + old[old.index(NOTES_MARK):]
    (BENCH / "RESULTS.md").write_text(doc)


# ----------------------------------------------------------------------------
# profiling (phase 2): py-spy on tornado-proxy under load


LABELS: dict[str, str] = {n: g.label for n, g in GATEWAYS.items()}  # (+ tornado-proxy@REV)


def make_gateway(name: str, up: Upstream, args: argparse.Namespace) -> Gateway:
    """A gateway by name; ``tornado-proxy@REV`` is another commit's code (--compare),
    ``tornado-proxy+KEY=VALUE`` the work tree's with that ``server`` setting (--variant)."""
    if name.startswith("tornado-proxy"):
        server: dict[str, Any] = {} if args.busy_poll_us is None else {"busy_poll_us": args.busy_poll_us}
        state: dict[str, Any] = {}
        base, _, setting = name.partition("+")
        if setting:
            key, _, value = setting.partition("=")
            if key.startswith("state."):  # the top-level `state` key: state.store=redis
                state[key[len("state."):]] = json.loads(value) if value[:1] in "[{\"0123456789" else value
            else:
                server[key] = json.loads(value)
        gw: Gateway = TornadoProxy(up, server, base.partition("@")[2] or None, state)
        if setting:
            gw.name = gw.label = name
    else:
        gw = GATEWAYS[name](up)
    LABELS[gw.name] = gw.label
    return gw


def profile(up: Upstream, args: argparse.Namespace) -> None:
    gw = make_gateway("tornado-proxy", up, args)
    pyspy = str(BENCH / ".venv-tornado" / "bin" / "py-spy")
    gw.start()
    try:
        for kind, conns in (("json", 16), ("sse", 16), ("xsse", 16), ("slow", args.slow)):
            if kind == "xsse" and not gw.cross_format or kind not in args.loads:
                continue
            t = gw.target(kind)
            outp = WORK / f"profile-{kind}.txt"
            secs = args.duration if kind != "slow" else args.slow / args.slow_rate + CHUNKS * SLOW_INTERVAL_S
            rec = subprocess.Popen(["taskset", "-c", str(LOAD_CORE), pyspy, "record", "-p", str(gw.pid),
                                    "-d", str(int(secs) + 1), "-r", "250", "-f", "raw", "-o", str(outp),
                                    "--nonblocking", "--gil"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            with Sampler(gw.pid) as smp:
                if kind == "json":
                    done = wrk(t, conns, args.duration)["requests"]
                elif kind == "slow":
                    done = sseload(t, count=conns, rate=args.slow_rate, timeout=secs + args.slow_slack)["ok"]
                else:
                    done = sseload(t, conns=conns, duration=args.duration, expect=1)["ok"]
            rec.wait(secs + 30)
            print(f"\n## py-spy: {kind}, {'c' if kind != 'slow' else 'streams'}={conns}\n")
            print(phase_table(outp, smp.cpu_s, done))
            print(f"(other processes took {smp.foreign_gw:.0f} % of core {GATEWAY_CORE} meanwhile, "
                  f"{smp.foreign_load:.0f} % of core {LOAD_CORE})\n")
            print(top_frames(outp))
    finally:
        gw.stop()


# Phases of a request, for the per-phase breakdown of a profile: a sample goes to the
# phase of its innermost frame that one of these names (first match in this order,
# per frame), so a JSON parse under the body reader counts as parsing and the same
# parse under the answer as the answer. Order within a frame: specific before generic.
PHASES: list[tuple[str, str]] = [
    ("metrics / access log", r"\(tornado_proxy/observability/(?:metrics|accesslog|account_metrics|tracing)\.py\)"
                             r"|\(prometheus_client/|log_request|RequestHandler\._log \(|LLMHandler\.on_finish"),
    ("scheduler (lease)", r"\(tornado_proxy/accounts/"),
    ("response write", r"HTTP1Connection\.(?:write_headers|write|finish|_next|_write_future|_frame) "
                       r"|RequestHandler\.(?:finish|flush|set_header|clear|_convert_header_value|set_status) "
                       r"|_SelectorSocketTransport\.write|BaseHandler\.clear|_http_date|LLMHandler\._mark_first"),
    ("answer (usage, scrub, translate)", r"LLMHandler\._answer |LLMHandler\._answer_early|usage_of"
                                         r"|translate_response|render_response|tornado_proxy/observability/redact"),
    ("provider build", r"build_native_request|build_request|Provider\.headers|Transfer\.header_lines"
                       r"|serve\.<locals>\.build"),
    ("upstream transfer (curl)", r"\(tornado_proxy/pipeline/upstream\.py\)|pycurl"),
    ("parse (HTTP, body, validation)", r"HTTP1Connection\.(?:data_received|on_\w+) |_Request\.__init__"
                                       r"|LLMHandler\.(?:read_body|validate|data_received) |json_body"
                                       r"|tornado_proxy/pipeline/validation|parse_request"),
    ("route / handler construction", r"HTTP1Connection\._start |_ServerRequest|_HandlerDelegate\."
                                     r"|Application\.(?:get_handler_delegate|find_handler)|RequestHandler\.__init__"
                                     r"|BaseHandler\.(?:__init__|initialize)|LLMHandler\.(?:initialize|prepare|__init__)"
                                     r"|Router\.resolve|_has_stream_request_body|RequestHandler\._execute"),
    ("handler coroutine (await, tasks)", r"LLMHandler\.|tornado/gen\.py|asyncio/tasks\.py|tornado/ioloop\.py"),
    ("event loop (poll, dispatch)", r"selectors\.py|busypoll\.py|asyncio/"),
]
_PHASE_RES = [(name, re.compile(rx)) for name, rx in PHASES]


def phase_shares(path: Path) -> tuple[int, dict[str, int]]:
    """py-spy collapsed stacks -> samples per phase (PHASES; "other" for the rest)."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, cnt = line.rpartition(" ")
        if not stack:
            continue
        c = int(cnt)
        total += c
        frames = [re.sub(r"\((?:.*/(?:site-packages|lib/python3\.\d+)/)?([^:]*):\d+\)", r"(\1)", f)
                  for f in stack.split(";")]
        phase = "other"
        for f in reversed(frames):
            hit = next((name for name, rx in _PHASE_RES if rx.search(f)), None)
            if hit is not None:
                phase = hit
                break
        counts[phase] = counts.get(phase, 0) + c
    return total, counts


def phase_table(path: Path, cpu_s: float, requests: int) -> str:
    """Per-phase breakdown: share of samples and CPU µs per request."""
    try:
        total, counts = phase_shares(path)
    except OSError:
        return "(no profile)"
    per_req = 1e6 * cpu_s / max(1, requests)
    lines = [f"gateway CPU {per_req:.0f} µs per request ({requests} requests, {cpu_s:.2f} s CPU, "
             f"{total} samples)", "", "| phase | samples | CPU µs per request |", "|---|---:|---:|"]
    for name in [p for p, _ in PHASES] + ["other"]:
        share = counts.get(name, 0) / max(1, total)
        lines.append(f"| {name} | {100 * share:.1f} % | {share * per_req:.0f} |")
    return "\n".join(lines)


def top_frames(path: Path, n: int = 20) -> str:
    """py-spy collapsed stacks -> the top functions by self and by inclusive samples
    (lines folded into their function), and the hottest lines of the project's own code."""
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return "(no profile: py-spy failed; it needs ptrace permission)"
    for line in lines:
        stack, _, cnt = line.rpartition(" ")
        if not stack:
            continue
        c = int(cnt)
        total += c
        raw = stack.split(";")
        # "func (/path/to/site-packages/pkg/mod.py:123)" -> "func (pkg/mod.py)"
        frames = [re.sub(r" \((?:.*/(?:site-packages|lib/python3\.\d+|main)/)?([^:]*):\d+\)", r" (\1)", f)
                  for f in raw]
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c
        for f in reversed(raw):  # the innermost frame in the project's own code
            if re.search(r"\((?:.*/)?(?:tornado_proxy|providers)/", f):
                k = re.sub(r"\(.*/(?=(?:tornado_proxy|providers)/)", "(", f)
                own[k] = own.get(k, 0) + c
                break

    def top(d: dict[str, int], k: int = n) -> str:
        return "\n".join(f"  {100 * v / max(total, 1):5.1f}%  {name}"
                         for name, v in sorted(d.items(), key=lambda x: -x[1])[:k])
    return (f"{total} samples\nself (function):\n{top(self_c)}\ninclusive (function):\n{top(incl, n + 10)}\n"
            f"innermost project line:\n{top(own)}")


# ----------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateways", default="floor,tornado-proxy,tensorzero,portkey,litellm",
                    help="comma-separated subset of: " + ",".join(GATEWAYS))
    ap.add_argument("--duration", type=float, default=5, help="seconds per measured run (default 5)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per figure; the median is reported")
    ap.add_argument("--slow", type=int, default=1000, help="simultaneous slow streams (0: skip)")
    ap.add_argument("--slow-max", type=int, default=10000, help="slow streams on tornado-proxy alone (0: skip)")
    ap.add_argument("--slow-rate", type=float, default=500, help="slow streams opened per second (default 500)")
    ap.add_argument("--slow-max-rate", type=float, default=1000,
                    help="the same for the --slow-max load (default 1000: all open within 10 s)")
    ap.add_argument("--slow-slack", type=float, default=30,
                    help="a slow load gives up this long after its last stream should have ended")
    ap.add_argument("--max-connecting", type=int, default=64, help="sseload: connects in flight at once")
    ap.add_argument("--retries", type=int, default=2,
                    help="re-run a measurement while other processes load the gateway's core")
    ap.add_argument("--max-foreign", type=float, default=10,
                    help="%% of the gateway's core other processes may take before a run is redone")
    ap.add_argument("--host-slack", type=float, default=1.2,
                    help="redo a run when the gateway's core ran slower than this many times its best "
                         "(a CPU probe before and after; the host's other tenants; 0: off)")
    ap.add_argument("--host-wait", type=float, default=30,
                    help="before a run, wait up to this many seconds for the core to be fast again")
    ap.add_argument("--wait-idle", type=float, default=0,
                    help="before each gateway, wait up to this many seconds for a quiet machine")
    ap.add_argument("--loads", default="json,sse,xsse,slow",
                    help="comma-separated subset of: json (non-stream), sse, xsse (cross-format), slow")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 s, 1 rep, 200 slow streams, no 10k")
    ap.add_argument("--profile", action="store_true", help="py-spy tornado-proxy under load instead")
    ap.add_argument("--compare", default="", metavar="REV[,REV]",
                    help="also run tornado-proxy as of these commits (git archive into .work/), "
                         "side by side with the work tree's")
    ap.add_argument("--variant", default="", metavar="KEY=VALUE[,KEY=VALUE]",
                    help="also run the work tree's tornado-proxy with this server setting (JSON value), "
                         "e.g. busy_poll_us=0, as gateway tornado-proxy+KEY=VALUE; a state.KEY sets the "
                         "top-level state key instead, e.g. state.store=redis (a throwaway redis-server)")
    ap.add_argument("--ref", default=None,
                    help="the gateway the 'within a round' ratios divide by (default: tensorzero if run)")
    ap.add_argument("--busy-poll-us", type=int, default=None,
                    help="tornado-proxy's server.busy_poll_us (default: the gateway's own default)")
    ap.add_argument("--no-install", action="store_true", help="skip the install step")
    ap.add_argument("--no-write", action="store_true", help="don't rewrite bench/RESULTS.md")
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    if args.quick:
        args.duration, args.reps, args.slow, args.slow_max, args.slow_slack = 2, 1, 200, 0, 10
        args.no_write = True
    args.loads = [x.strip() for x in args.loads.split(",") if x.strip()]
    names = [n.strip() for n in args.gateways.split(",") if n.strip()]
    names += [f"tornado-proxy@{r.strip()}" for r in args.compare.split(",") if r.strip()]
    names += [f"tornado-proxy+{v.strip()}" for v in args.variant.split(",") if v.strip()]
    for n in names:
        if n not in GATEWAYS and not n.startswith(("tornado-proxy@", "tornado-proxy+")):
            ap.error(f"unknown gateway {n!r}")
    if "floor" not in names:
        names.insert(0, "floor")  # every figure is read against the floor
    args.gateways = names
    if (os.cpu_count() or 1) < 2:
        ap.error("needs 2 cores: one for the gateway, one for load and upstream")
    WORK.mkdir(exist_ok=True)
    if not args.no_install:
        install(args)
    os.sched_setaffinity(0, {LOAD_CORE})  # keep this script off the gateway's core
    raise_nofile()

    if args.host_slack:
        # The reference speed of the gateway's core: the best of a few probes.
        for _ in range(5):
            cpu_probe()
        log(f"core {GATEWAY_CORE} probe: best {_probe_best[0]:.0f} rounds/s")
    up = Upstream()
    up.start()
    try:
        if args.profile:
            profile(up, args)
            return 0
        results: dict[tuple[str, str], Result] = {}
        versions: dict[str, str] = {}
        gws = []
        for n in names:
            gw = make_gateway(n, up, args)
            versions[n] = gw.version()
            log(f"=== {gw.label} ({versions[n]})")
            gws.append(gw)
        if args.wait_idle:
            wait_idle(args.wait_idle)
        measure(gws, args, results)
        text = "## Figures\n\n" + table(results, names, args)
        rt = ratios(results, names, args.ref)
        if rt:
            text += ("\n\n## Within a round\n\nMedians over the rounds of figures taken within one round "
                     "(the gateways run one after another, load by load): what the shared machine does to "
                     "a round it does to every gateway in it.\n\n" + rt)
        if NOTES:
            text += "\n\n" + "\n".join(f"Note: {x}" for x in dict.fromkeys(NOTES))
        if "tornado-proxy" in names:
            text += "\n\n## Targets (issue 8), tornado-proxy\n\n" + targets(results)
        print(text)
        write_results(text, results, names, versions, args)
    finally:
        up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
