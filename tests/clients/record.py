"""Record the requests the real CLIs send, into ``tests/fixtures/clients/<cli>/<version>/``.

    .venv/bin/python -m tests.clients.record [claude-code|codex ...]

Each CLI talks straight to a capture server on 127.0.0.1 (the scripted model of
``tests/clients/harness.py``: no gateway in between), so every file holds exactly
what the CLI put on the wire: method, path, query, headers and JSON body, or for
Codex's WebSocket transport the upgrade request's headers and every frame.
Secrets are obvious fakes already (the CLIs only ever get ``CLIENT_KEY``); the
temp HOME is rewritten to ``/home/user``, the capture server's port to 8000, and
``content-length`` is left out (the body is stored re-indented).
"""
from __future__ import annotations

import datetime
import json
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from tests.clients.harness import CLI, CLIENT_KEY, FIXTURES, ClaudeCode, Codex, Run, find_cli
from tests.clients.scripted import ResponsesWebSocketServer, ScriptedModel
from tests.e2e.harness import LoopThread, Recorded

FAKE_HOME = "/home/user"


class Recorder:
    def __init__(self, cli: CLI, lt: LoopThread) -> None:
        self.cli, self.lt = cli, lt
        self.out = FIXTURES / cli.name / cli.version
        self.tmp = Path(tempfile.mkdtemp(prefix=f"record-{cli.name}-"))
        self.today = datetime.date.today().isoformat()
        self.written: list[str] = []

    def clean(self, text: str, port: int) -> str:
        return text.replace(str(self.tmp / "home"), FAKE_HOME).replace(f"127.0.0.1:{port}", "127.0.0.1:8000")

    def headers(self, h: dict[str, str]) -> dict[str, str]:
        out = {}
        for k, v in sorted(h.items()):
            if k == "content-length":
                continue
            if k in ("authorization", "x-api-key"):
                assert CLIENT_KEY in v, f"{k} is not the harness's fake key"
            out[k] = v
        return out

    def write(self, name: str, run: Run, scenario: str, port: int, doc: dict[str, Any],
              setup: dict[str, Any] | None = None) -> None:
        argv = [Path(run.argv[0]).name, *run.argv[1:]]
        full = {"source": {"cli": self.cli.name, "version": self.cli.version, "recorded": self.today,
                           "scenario": scenario, "command": shlex.join(argv), **(setup or {})}, **doc}
        text = self.clean(json.dumps(full, indent=1, ensure_ascii=False), port)
        assert not re.search(r"\bsk-", text.replace(CLIENT_KEY, "")), f"{name}: a key-like string besides the fake key"
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"{name}.json").write_text(text + "\n")
        self.written.append(name)

    def write_requests(self, names: list[str], run: Run, recs: list[Recorded], scenario: str, port: int,
                       setup: dict[str, Any] | None = None) -> None:
        if run.returncode != 0:
            raise SystemExit(f"{scenario}: the CLI failed\n{run.explain()}")
        if len(recs) != len(names):
            raise SystemExit(f"{scenario}: expected {len(names)} request(s), got "
                             f"{[r.method + ' ' + r.path for r in recs]}\n{run.explain()}")
        for i, (name, rec) in enumerate(zip(names, recs)):
            self.write(name, run, f"{scenario} (request {i + 1} of {len(recs)})", port, {
                "method": rec.method, "path": rec.path, "query": rec.query,
                "headers": self.headers(rec.headers), "body": rec.json()}, setup)


def record_claude(cli: CLI, lt: LoopThread) -> list[str]:
    r = Recorder(cli, lt)
    up = lt.upstream()

    def session(name: str) -> ClaudeCode:
        up.handler = model = ScriptedModel()
        session.model = model  # type: ignore[attr-defined]
        return ClaudeCode(cli, r.tmp / "home", r.tmp / "home" / name, up.url)

    def take() -> list[Recorded]:
        return session.model.seen  # type: ignore[attr-defined,no-any-return]

    c = session("text")
    run1 = c.ask("say PING-ALPHA")
    r.write_requests(["text"], run1, take(), "a first text turn (-p, --output-format json)", up.port)
    sid = run1.json()["session_id"]
    session("text")
    run2 = c.ask("now say PING-BETA", "--resume", sid)
    r.write_requests(["second_turn"], run2, take(), "a second turn of the same conversation (--resume)", up.port)

    c = session("stream")
    run = c.ask("say PING-GAMMA", "--include-partial-messages", output="stream-json")
    r.write_requests(["stream"], run, take(), "a turn with --output-format stream-json --include-partial-messages",
                     up.port)

    c = session("tool")
    run = c.ask("RUN-TOOL and tell me what it printed")
    r.write_requests(["tool_first", "tool_result"], run, take(),
                     "a tool round trip: Bash(echo) called, then the request carrying the tool_result", up.port)

    c = session("effort")
    run = c.ask("say PING-DELTA", "--effort", "max")
    r.write_requests(["thinking_effort_max"], run, take(), "thinking at --effort max", up.port)

    # Claude Code 2.1.332 sends adaptive thinking to Opus 5.5 whatever MAX_THINKING_TOKENS says;
    # a budget (and "disabled") goes to models that take one.
    c = session("budget")
    run = c.ask("say PING-EPSILON", "--model", "claude-sonnet-4-5", env={"MAX_THINKING_TOKENS": "16000"})
    r.write_requests(["thinking_budget"], run, take(),
                     "thinking with a token budget: --model claude-sonnet-4-5, MAX_THINKING_TOKENS=16000", up.port,
                     {"env": {"MAX_THINKING_TOKENS": "16000"}})

    c = session("nothink")
    run = c.ask("say PING-ZETA", "--model", "claude-sonnet-4-5", env={"MAX_THINKING_TOKENS": "0"})
    r.write_requests(["thinking_off"], run, take(),
                     "thinking off: --model claude-sonnet-4-5, MAX_THINKING_TOKENS=0", up.port,
                     {"env": {"MAX_THINKING_TOKENS": "0"}})

    c = session("other")
    run = c.ask("say PING-ETA", "--model", "gpt-5")
    r.write_requests(["other_model"], run, take(),
                     "a model name that is not Claude's (--model gpt-5, as a gateway user runs it)", up.port)
    shutil.rmtree(r.tmp, ignore_errors=True)
    return r.written


def record_codex(cli: CLI, lt: LoopThread) -> list[str]:
    r = Recorder(cli, lt)
    up = lt.upstream()

    def session(name: str, **kw: Any) -> Codex:
        up.handler = model = ScriptedModel()
        session.model = model  # type: ignore[attr-defined]
        return Codex(cli, r.tmp / "home" / name, r.tmp / "home" / name / "project", up.url + "/v1", **kw)

    def take() -> list[Recorded]:
        return session.model.seen  # type: ignore[attr-defined,no-any-return]

    def setup(c: Codex) -> dict[str, Any]:
        return {"config.toml": c.config_toml}

    c = session("text")
    run = c.exec("say PING-ALPHA")
    r.write_requests(["text"], run, take(), "a first text turn (codex exec --json; Codex always streams)",
                     up.port, setup(c))
    session("text")
    run = c.exec("now say PING-BETA", resume=True)
    r.write_requests(["second_turn"], run, take(), "a second turn of the same session (codex exec resume --last)",
                     up.port, setup(c))

    c = session("tool")
    run = c.exec("RUN-TOOL and tell me what it printed")
    r.write_requests(["tool_first", "tool_result"], run, take(),
                     "a tool round trip: exec_command called, then the request carrying the function_call_output",
                     up.port, setup(c))

    c = session("reasoning", extra_config='model_reasoning_effort = "high"\nmodel_reasoning_summary = "detailed"\n')
    run = c.exec("say PING-DELTA")
    r.write_requests(["reasoning_high"], run, take(),
                     'reasoning on: model_reasoning_effort = "high", model_reasoning_summary = "detailed"',
                     up.port, setup(c))

    c = session("nomodel", model="tp-test-model")
    run = c.exec("say PING-EPSILON")
    r.write_requests(["unknown_model"], run, take(),
                     "a model name Codex has no metadata for (what a gateway alias looks like to Codex)",
                     up.port, setup(c))

    # The WebSocket transport (supports_websockets = true on the provider).
    ws = ResponsesWebSocketServer(ScriptedModel()).start(lt)
    for name, prompt in (("ws_text", "say PING-ALPHA"), ("ws_tool", "RUN-TOOL and tell me what it printed")):
        ws.connections.clear()
        c = Codex(cli, r.tmp / "home" / name, r.tmp / "home" / name / "project", ws.url + "/v1", websockets=True)
        run = c.exec(prompt)
        if run.returncode != 0 or len(ws.connections) != 1 or ws.posts:
            raise SystemExit(f"{name}: expected one WebSocket and no POST\n{run.explain()}")
        conn = ws.connections[0]
        r.write(name, run, "the Responses WebSocket transport: the upgrade request and every frame Codex sent",
                ws.port, {"transport": "websocket", "method": "GET", "path": conn.path,
                          "headers": r.headers(conn.headers), "frames": conn.frames},
                setup(c))
    shutil.rmtree(r.tmp, ignore_errors=True)
    return r.written


RECORDERS: dict[str, Callable[[CLI, LoopThread], list[str]]] = {"claude-code": record_claude, "codex": record_codex}


def main(argv: list[str]) -> int:
    lt = LoopThread()
    for name in argv or list(RECORDERS):
        cli = find_cli(name)
        if cli is None:
            print(f"{name}: not installed (run tests/clients/install.sh)")
            return 1
        target = FIXTURES / cli.name / cli.version
        if target.exists():
            shutil.rmtree(target)
        written = RECORDERS[name](cli, lt)
        print(f"{name} {cli.version}: {', '.join(written)} -> {target}")
        lt.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
