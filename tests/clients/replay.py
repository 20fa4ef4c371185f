"""Replay the recorded CLI requests against the gateway, on every upstream type.

    .venv/bin/python -m tests.clients.replay     # prints the table for tests/fixtures/clients/README.md

Each recorded HTTP request (``tests/fixtures/clients/<cli>/<version>/*.json``, not
the WebSocket ones) is sent with its own headers (the gateway has no access keys
here) to the gateway, whose one upstream, of each type in turn, answers with a
text reply.  An outcome is ``ok`` when the answer is 200 and, for a stream, ends
normally (``message_stop`` / ``response.completed``, no error event); otherwise
it is the status and the error message the client got.
"""
from __future__ import annotations

import http.client
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.clients.harness import FIXTURES, UPSTREAM_TYPES, gateway_config, upstream_model
from tests.clients.scripted import ScriptedModel
from tests.e2e.harness import LoopThread

# Hop-by-hop and per-connection headers; http.client sets its own.
_SKIP = {"host", "content-length", "connection", "accept-encoding", "transfer-encoding"}


def http_fixtures() -> list[Path]:
    return sorted(p for p in FIXTURES.glob("*/*/*.json") if json.loads(p.read_text()).get("transport") != "websocket")


def fixture_id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}/{path.stem}"


@dataclass
class Outcome:
    status: int
    ok: bool
    error: str           # the client's error message ("" when ok)
    upstream_models: list[str]

    def __str__(self) -> str:
        return "ok" if self.ok else f"{self.status}: {self.error}"


def send(gw_url: str, fx: dict[str, Any], timeout: float = 20) -> tuple[int, bytes]:
    host, port = gw_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        path = fx["path"] + (f"?{fx['query']}" if fx.get("query") else "")
        headers = {k: v for k, v in fx["headers"].items() if k not in _SKIP}
        conn.request(fx["method"], path, body=json.dumps(fx["body"]).encode(), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def error_of(status: int, body: bytes) -> str:
    """The error message a client would show, from a JSON error or the stream's error event."""
    text = body.decode("utf-8", "replace")
    if status != 200:
        try:
            err = json.loads(text).get("error", {})
            return str(err.get("message", err)) if isinstance(err, dict) else str(err)
        except ValueError:
            return text[:300]
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        try:
            ev = json.loads(line[5:])
        except ValueError:
            continue
        if ev.get("type") == "error":
            e = ev.get("error") or ev
            return f"stream error: {e.get('message', e)}"
        if ev.get("type") == "response.failed":
            return f"stream error: {(ev['response'].get('error') or {}).get('message')}"
    if "message_stop" in text or "response.completed" in text or not text.startswith("event"):
        return ""
    return "stream ended without its final event"


def replay(lt: LoopThread, fixture: Path | dict[str, Any], kind: str) -> Outcome:
    fx = json.loads(fixture.read_text()) if isinstance(fixture, Path) else fixture
    up = lt.upstream()
    up.handler = model = ScriptedModel()
    gw = lt.gateway(gateway_config(kind, up.url))
    try:
        status, body = send(gw.url, fx)
    finally:
        lt.cleanup()
    err = error_of(status, body)
    return Outcome(status, status == 200 and not err, err, [upstream_model(kind, r) for r in model.seen])


_QUOTED = re.compile(r"'([A-Za-z_][\w.\[\]]*)'")


def _delete(body: Any, path: str) -> bool:
    """Remove ``path`` (``a.b[2].c``) from ``body``; False when it is not there."""
    keys: list[str | int] = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    node = body
    for k in keys[:-1]:
        try:
            node = node[k]
        except (KeyError, IndexError, TypeError):
            return False
    try:
        del node[keys[-1]]
    except (KeyError, IndexError, TypeError):
        return False
    return True


def peel(lt: LoopThread, fixture: Path | dict[str, Any], kind: str, steps: int = 15) -> tuple[list[str], Outcome]:
    """Replay, and while the gateway rejects a field it names, remove that field and
    replay again: every rejection a request meets, in order, not only the first."""
    fx = json.loads(fixture.read_text()) if isinstance(fixture, Path) else fixture
    errors: list[str] = []
    for _ in range(steps):
        out = replay(lt, fx, kind)
        if out.ok or out.status != 400:
            return errors, out
        errors.append(out.error)
        m = _QUOTED.search(out.error)
        if m is None or m.group(1) in ("input", "messages", "model"):
            return errors, out
        path = m.group(1)
        # A bad role or type rejects the whole message / tool: remove that element.
        path = re.sub(r"(\[\d+\])\.(role|type)$", r"\1", path)
        # a field named without its parent ('verbosity' for text.verbosity)
        nested = [f"{k}.{path}" for k, v in fx["body"].items() if isinstance(v, dict) and path in v]
        if not _delete(fx["body"], path) and not (nested and _delete(fx["body"], nested[0])):
            return errors, out
    return errors, out


def matrix(lt: LoopThread) -> dict[tuple[str, str], Outcome]:
    return {(fixture_id(f), kind): replay(lt, f, kind) for f in http_fixtures() for kind in UPSTREAM_TYPES}


def main() -> int:
    import logging

    logging.disable(logging.ERROR)  # the gateway logs rejected requests; the table says it all
    lt = LoopThread()
    if sys.argv[1:] == ["--peel"]:
        for f in http_fixtures():
            for kind in UPSTREAM_TYPES:
                errors, out = peel(lt, f, kind)
                short = [e if len(e) < 300 else e[:120] + " ... " + e[-100:] for e in errors]
                print(f"{fixture_id(f)} -> {kind}: " + (" / ".join(short) or "-") + f"  => {str(out)[:300]}")
        return 0
    res = matrix(lt)
    print("| fixture | " + " | ".join(UPSTREAM_TYPES) + " |")
    print("|---|" + "---|" * len(UPSTREAM_TYPES))
    for fid in dict.fromkeys(f for f, _ in res):
        print(f"| `{fid}` | " + " | ".join(str(res[fid, k]).replace("|", "\\|") for k in UPSTREAM_TYPES) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
