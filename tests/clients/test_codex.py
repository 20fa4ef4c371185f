"""The real Codex CLI (``codex exec``) through the gateway's ``/v1/responses``.

Over HTTP on every upstream type: a streamed text turn, a tool round trip, a
resumed second turn, with reasoning on; Codex's ``client_metadata``, hosted and
custom tools and ``text.verbosity`` go by the field policy (docs/field-policy.md).
On an ``openai-responses`` upstream the request passes through untouched.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from tests.clients.conftest import Stack
import pytest

from tests.clients.harness import UPSTREAM_MODEL, UPSTREAM_TYPES, Codex, Run, reasoning_asked, upstream_model
from tests.clients.scripted import TOOL_OUTPUT

StartStack = Callable[..., Stack]
CodexFor = Callable[..., Codex]


def events(run: Run) -> list[dict[str, Any]]:
    assert run.returncode == 0, run.explain()
    evs = run.jsonl()
    assert not [e for e in evs if e.get("type") in ("error", "turn.failed")], run.explain()
    assert evs[-1]["type"] == "turn.completed", run.explain()
    return evs


def items(evs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["item"] for e in evs if e["type"] == "item.completed" and e["item"]["type"] == kind]


def test_text_turn_on_responses_upstream(stack: StartStack, codex: CodexFor) -> None:
    s = stack("openai-responses")
    evs = events(codex(s).exec("say PING-ALPHA"))
    assert [m["text"] for m in items(evs, "agent_message")] == ["PONG-ALPHA"]
    [req] = s.requests
    body = req.json()
    assert req.path == "/v1/responses" and body["model"] == UPSTREAM_MODEL["openai-responses"]
    assert req.headers["authorization"] == "Bearer test-key-upstream"   # the account's key, not the client's
    # pass-through: Codex's own fields and hosted tools reach the upstream untouched
    assert body["stream"] is True and body["store"] is False
    assert "x-codex-turn-metadata" in body["client_metadata"] and body["prompt_cache_key"]
    assert {t["type"] for t in body["tools"]} >= {"function", "custom", "web_search"}


def test_tool_round_trip_on_responses_upstream(stack: StartStack, codex: CodexFor) -> None:
    s = stack("openai-responses")
    evs = events(codex(s).exec("RUN-TOOL and tell me what it printed"))
    [cmd] = items(evs, "command_execution")
    assert cmd["exit_code"] == 0 and cmd["aggregated_output"].strip() == TOOL_OUTPUT
    assert items(evs, "agent_message")[-1]["text"] == f"TOOL-SAW: {TOOL_OUTPUT}"
    first, follow = (r.json() for r in s.requests)
    reasoning, call, output = follow["input"][-3:]
    # the encrypted reasoning item comes back (store: false), then the call and its output
    assert reasoning["type"] == "reasoning" and reasoning["encrypted_content"] == "ZmFrZS1ycy00001"
    assert call["type"] == "function_call" and call["name"] == "exec_command"
    assert output["type"] == "function_call_output" and output["call_id"] == call["call_id"]
    assert TOOL_OUTPUT in json.dumps(output["output"])


def test_second_turn_resumes_the_session(stack: StartStack, codex: CodexFor) -> None:
    s = stack("openai-responses")
    c = codex(s)
    events(c.exec("say PING-ALPHA"))
    evs = events(c.exec("now say PING-BETA", resume=True))
    assert items(evs, "agent_message")[-1]["text"] == "PONG-BETA"
    history = s.requests[-1].json()["input"]
    said = [p["text"] for it in history if it.get("role") == "assistant" for p in it["content"]]
    assert said == ["PONG-ALPHA"] and history[-1]["content"][-1]["text"] == "now say PING-BETA"


def test_reasoning_effort_and_summary_on_responses_upstream(stack: StartStack, codex: CodexFor) -> None:
    s = stack("openai-responses")
    c = codex(s, extra_config='model_reasoning_effort = "high"\nmodel_reasoning_summary = "detailed"\n')
    evs = events(c.exec("say PING-DELTA"))
    assert s.requests[0].json()["reasoning"] == {"effort": "high", "summary": "detailed"}
    # the upstream's reasoning summary is shown by the CLI, then the answer
    assert [r["text"] for r in items(evs, "reasoning")] == ["**Answering** the user briefly."]
    assert items(evs, "agent_message")[-1]["text"] == "PONG-DELTA"


def test_gateway_model_name_codex_does_not_know(stack: StartStack, codex: CodexFor) -> None:
    # A gateway alias is a model Codex has no metadata for: it sends a plainer request
    # (a `namespace` tool, no apply_patch, no verbosity), which passes through as well.
    s = stack("openai-responses")
    evs = events(codex(s, model="team-coder").exec("say PING-EPSILON"))
    assert items(evs, "agent_message")[-1]["text"] == "PONG-EPSILON"
    body = s.requests[0].json()
    assert body["model"] == UPSTREAM_MODEL["openai-responses"]
    assert "namespace" in {t["type"] for t in body["tools"]}


@pytest.mark.parametrize("kind", UPSTREAM_TYPES)
def test_http_on_every_upstream(stack: StartStack, codex: CodexFor, kind: str) -> None:
    s = stack(kind)
    c = codex(s)
    # a streamed text answer (Codex always streams)
    evs = events(c.exec("say PING-ALPHA"))
    assert [m["text"] for m in items(evs, "agent_message")] == ["PONG-ALPHA"]
    # a tool round trip that completes: exec_command ran, its output went back
    evs = events(c.exec("RUN-TOOL and tell me what it printed"))
    [cmd] = items(evs, "command_execution")
    assert cmd["exit_code"] == 0 and cmd["aggregated_output"].strip() == TOOL_OUTPUT
    assert items(evs, "agent_message")[-1]["text"] == f"TOOL-SAW: {TOOL_OUTPUT}"
    assert TOOL_OUTPUT in s.requests[2].body.decode()
    # a second turn that carries the first session
    evs = events(c.exec("now say PING-BETA", resume=True))
    assert items(evs, "agent_message")[-1]["text"] == "PONG-BETA"
    assert f"TOOL-SAW: {TOOL_OUTPUT}" in s.requests[-1].body.decode()
    assert len(s.requests) == 4
    # reasoning (effort medium) reached every upstream as its own reasoning switch
    assert all(reasoning_asked(kind, r) for r in s.requests), [r.body[:300] for r in s.requests]
    assert {upstream_model(kind, r) for r in s.requests} == {UPSTREAM_MODEL[kind]}
