"""The recorded Claude Code and Codex requests, replayed against the gateway.

Needs no CLI: the bodies and headers in ``tests/fixtures/clients/`` are what the
CLIs sent (``python -m tests.clients.record`` rewrites them).  Listed here are the
(fixture, upstream type) pairs that pass today; the others, with the error each
gets, are in ``tests/fixtures/clients/README.md``
(``python -m tests.clients.replay`` prints that table).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.clients.harness import CLIENT_KEY, FIXTURES, UPSTREAM_MODEL, UPSTREAM_TYPES, gateway_config
from tests.clients.replay import fixture_id, replay, send
from tests.clients.scripted import ScriptedModel
from tests.e2e.harness import LoopThread

CLAUDE = "claude-code/2.1.332"
CODEX = "codex/0.171.0"
CODEX_HTTP = ["text", "second_turn", "tool_first", "tool_result", "reasoning_high", "unknown_model"]

PASSING: list[tuple[str, str]] = [
    *((f"{CLAUDE}/thinking_off", kind) for kind in UPSTREAM_TYPES),
    (f"{CLAUDE}/thinking_budget", "anthropic"),
    *((f"{CODEX}/{name}", "openai-responses") for name in CODEX_HTTP),
]
# Same format both sides: the body goes upstream as the CLI sent it, only the model mapped.
PASS_THROUGH = {"claude-code": "anthropic", "codex": "openai-responses"}


def all_fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*/*/*.json"))


@pytest.mark.parametrize("fid,kind", PASSING, ids=[f"{f}->{k}" for f, k in PASSING])
def test_recorded_request_passes(harness: LoopThread, fid: str, kind: str) -> None:
    path = FIXTURES / f"{fid}.json"
    out = replay(harness, path, kind)
    assert out.ok, f"{fid} on {kind}: {out}"
    assert out.upstream_models == [UPSTREAM_MODEL[kind]]


@pytest.mark.parametrize("fid,kind", [(f, k) for f, k in PASSING if PASS_THROUGH[f.split("/")[0]] == k])
def test_pass_through_sends_the_body_as_recorded(harness: LoopThread, fid: str, kind: str) -> None:
    fx = json.loads((FIXTURES / f"{fid}.json").read_text())
    up = harness.upstream()
    up.handler = model = ScriptedModel()
    gw = harness.gateway(gateway_config(kind, up.url))
    status, _ = send(gw.url, fx)
    assert status == 200
    [rec] = model.seen
    assert rec.json() == {**fx["body"], "model": UPSTREAM_MODEL[kind]}


def test_every_fixture_names_its_source_and_holds_no_real_key() -> None:
    readme = (FIXTURES / "README.md").read_text()
    files = all_fixtures()
    assert {fixture_id(p).split("/")[0] for p in files} == {"claude-code", "codex"}
    for p in files:
        text = p.read_text()
        fx = json.loads(text)
        src = fx["source"]
        assert src["cli"] == p.parent.parent.name and src["version"] == p.parent.name, p
        assert src["command"] and src["recorded"] and src["scenario"], p
        assert not re.search(r"\bsk-", text.replace(CLIENT_KEY, "")), f"{p}: a key other than the fake one"
        assert f"`{fixture_id(p)}.json`" in readme, f"{p} is not described in {FIXTURES / 'README.md'}"
