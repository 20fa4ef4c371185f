"""Real-CLI harness: Claude Code and Codex CLI driven as a user drives them.

The CLIs are the pinned npm builds that ``tests/clients/install.sh`` puts in
``tests/clients/node_modules`` (both ship a native binary).  Each run gets a
fresh HOME / CODEX_HOME in a temp dir (no real settings, no real credentials),
a minimal environment (no proxy variables, no inherited keys), telemetry,
update checks and every other call to the vendors' hosts off, stdin closed, a
hard timeout, and is killed with its whole process group in ``finally``.
Every URL handed to a CLI is on 127.0.0.1.

The answers come from ``tests/clients/scripted.py``'s ``ScriptedModel``, behind
the gateway (``gateway_config`` routes every model name to one upstream of the
type under test) or, for recording fixtures, in front of the CLI directly.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN = HERE / "node_modules" / ".bin"
FIXTURES = HERE.parent / "fixtures" / "clients"

# An obviously fake key: the only one the CLIs ever get, so the only one fixtures show.
CLIENT_KEY = "sk-test-client-key-FAKE-0000"
TIMEOUT = 60.0


# ---------------------------------------------------------------- the CLIs

@dataclass
class CLI:
    name: str          # "claude-code" or "codex"
    path: Path
    version: str


def find_cli(name: str) -> CLI | None:
    """The installed CLI, or None (the tests then skip and say why)."""
    exe = BIN / {"claude-code": "claude", "codex": "codex"}[name]
    if not exe.exists():
        return None
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30,
                             env=_base_env(Path("/nonexistent")), stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"(\d+\.\d+\.\d+)", out)
    return CLI(name, exe, m.group(1)) if m else None


def _base_env(home: Path) -> dict[str, str]:
    # Nothing inherited: no proxy variables, no real keys, no real config dirs.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "TERM": "dumb", "NO_COLOR": "1", "TMPDIR": str(home / "tmp")}


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.stdout)

    def jsonl(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def explain(self) -> str:
        return f"$ {' '.join(self.argv)}\nrc={self.returncode} ({self.seconds:.1f}s)\n" \
               f"--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = TIMEOUT) -> Run:
    """Run a CLI to the end, or kill its process group at ``timeout``."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        err += f"\n[harness] killed after {timeout:.0f} s"
    finally:
        # Whatever the CLI left running in its session (tool processes, helpers) goes too.
        _kill_group(proc.pid)
        if proc.poll() is None:
            proc.wait()
    return Run(argv, proc.returncode, out, err, time.monotonic() - t0)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ClaudeCode:
    """``claude -p`` against ``base_url`` (an Anthropic Messages server: the gateway or a fake)."""

    def __init__(self, cli: CLI, home: Path, workdir: Path, base_url: str) -> None:
        self.cli, self.home, self.workdir, self.base_url = cli, home, workdir, base_url
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        return {**_base_env(self.home),
                "ANTHROPIC_BASE_URL": self.base_url, "ANTHROPIC_API_KEY": CLIENT_KEY,
                "CLAUDE_CONFIG_DIR": str(self.home / ".claude"),
                # No telemetry, error reporting, update checks, feedback surveys or
                # other calls to Anthropic's hosts: the network here is closed.
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
                "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1",
                "CLAUDE_CODE_ENABLE_TELEMETRY": "0", "DISABLE_COST_WARNINGS": "1",
                "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1", "IS_SANDBOX": "1", **extra}

    def ask(self, prompt: str, *args: str, output: str = "json", env: dict[str, str] | None = None,
            timeout: float = TIMEOUT) -> Run:
        argv = [str(self.cli.path), "-p", prompt, "--output-format", output,
                # the shell tool may run `echo` only: enough for a tool round trip, nothing else
                "--allowedTools", "Bash(echo:*)", *args]
        if output == "stream-json":
            argv.append("--verbose")    # required by -p with stream-json
        return run(argv, self.env(**(env or {})), self.workdir, timeout)


CODEX_BASE_CONFIG = """\
# Written by tests/clients/harness.py: a custom provider on loopback, nothing else.
model = "{model}"
model_provider = "tp"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false
{extra}
[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"
trace_exporter = "none"
metrics_exporter = "none"

# The curated plugin marketplace is synced from github.com at start: off.
[features]
plugins = false

[model_providers.tp]
name = "tornado-proxy test"
base_url = "{base_url}"
wire_api = "responses"
env_key = "TP_TEST_KEY"
supports_websockets = {websockets}
request_max_retries = 0
stream_max_retries = 0
"""


class Codex:
    """``codex exec`` against ``base_url`` (…/v1 of a Responses server: the gateway or a fake)."""

    def __init__(self, cli: CLI, home: Path, workdir: Path, base_url: str, model: str = "gpt-5.5",
                 websockets: bool = False, extra_config: str = "") -> None:
        self.cli, self.home, self.workdir = cli, home, workdir
        self.codex_home = home / ".codex"
        for d in (home / "tmp", self.codex_home, workdir):
            d.mkdir(parents=True, exist_ok=True)
        self.config_toml = CODEX_BASE_CONFIG.format(model=model, base_url=base_url,
                                                    websockets=str(websockets).lower(), extra=extra_config)
        (self.codex_home / "config.toml").write_text(self.config_toml)

    def env(self) -> dict[str, str]:
        return {**_base_env(self.home), "CODEX_HOME": str(self.codex_home), "TP_TEST_KEY": CLIENT_KEY}

    def exec(self, prompt: str, *args: str, resume: bool = False, timeout: float = TIMEOUT) -> Run:
        head = [str(self.cli.path), "exec"] + (["resume", "--last"] if resume else [])
        argv = [*head, "--skip-git-repo-check", "--strict-config", "--json", *args, prompt]
        return run(argv, self.env(), self.workdir, timeout)

    @staticmethod
    def final_text(r: Run) -> str:
        """The agent's last message, from ``--json`` events."""
        texts = [e["item"].get("text", "") for e in r.jsonl()
                 if e.get("type") == "item.completed" and e.get("item", {}).get("type") == "agent_message"]
        return texts[-1] if texts else ""


# --------------------------------------- the gateway in front of each upstream

UPSTREAM_TYPES = ("anthropic", "openai", "openai-responses", "gemini", "bedrock")
UPSTREAM_MODEL = {"anthropic": "claude-upstream-test", "openai": "gpt-upstream-test",
                  "openai-responses": "gpt-upstream-test", "gemini": "gemini-upstream-test",
                  "bedrock": "anthropic.claude-upstream-test-v1:0"}
UPSTREAM_TIMEOUTS = {"connect": 2, "first_byte": 10, "idle": 10}


def provider_config(kind: str, up_url: str) -> dict[str, Any]:
    """A provider of type ``kind`` named ``up`` on the fake upstream at ``up_url``."""
    p: dict[str, Any] = {"name": "up", "type": kind, "timeouts": UPSTREAM_TIMEOUTS,
                         "accounts": [{"id": "up-1", "api_key": "test-key-upstream"}]}
    if kind in ("openai", "openai-responses"):
        p["base_url"] = up_url + "/v1"
    elif kind == "bedrock":
        p.update(base_url=up_url, options={"region": "us-east-1"},
                 accounts=[{"id": "aws-1", "aws_access_key_id": "AKIDFAKEFORTESTS0000",
                            "aws_secret_access_key": "fake-secret-for-tests"}])
    else:
        p["base_url"] = up_url
    return p


def gateway_config(kind: str, up_url: str, **model: Any) -> dict[str, Any]:
    """Every model name routed to one ``kind`` upstream, as ``UPSTREAM_MODEL[kind]``."""
    return {"server": {}, "providers": [provider_config(kind, up_url)],
            "models": [{"id": "*", "provider": "up", "upstream_model": UPSTREAM_MODEL[kind], **model}]}


def upstream_model(kind: str, rec: Any) -> str:
    """The model an upstream request (a ``Recorded``) asked for; Gemini and Bedrock carry it
    in the path."""
    from urllib.parse import unquote

    if kind == "gemini":
        return unquote(rec.path.rsplit("/", 1)[-1].split(":", 1)[0])
    if kind == "bedrock":
        return unquote(rec.path.split("/model/", 1)[-1].rsplit("/", 1)[0])
    return str(json.loads(rec.body).get("model", ""))


def reasoning_asked(kind: str, rec: Any) -> bool:
    """Whether an upstream request (a ``Recorded``) turned the upstream's reasoning on,
    in that upstream's own terms."""
    body = json.loads(rec.body)
    if kind == "anthropic":
        return (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")
    if kind == "openai":
        return body.get("reasoning_effort") not in (None, "none")
    if kind == "openai-responses":
        return (body.get("reasoning") or {}).get("effort") not in (None, "none")
    if kind == "gemini":
        tc = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
        return bool(tc.get("thinkingLevel")) or (tc.get("thinkingBudget") or 0) != 0
    if kind == "bedrock":
        return ((body.get("additionalModelRequestFields") or {}).get("thinking") or {}).get("type") == "enabled"
    raise ValueError(kind)
