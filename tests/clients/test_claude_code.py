"""The real Claude Code CLI (``claude -p``) through the gateway's ``/v1/messages``.

Claude Code's default model (Opus 5.5: a mid-conversation ``role: "system"``
turn, adaptive thinking with ``output_config.effort``, ``context_management``,
``thinking.display``) on every upstream type: a streamed answer, a text answer
to a tool round trip, a resumed second turn, with thinking on throughout.  Claude
Sonnet 4.5 (a thinking budget) on an ``anthropic`` upstream, and on every upstream
with thinking off (``MAX_THINKING_TOKENS=0``).
"""
from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from tests.clients.conftest import Stack
from tests.clients.harness import (UPSTREAM_MODEL, UPSTREAM_TYPES, ClaudeCode, Run, reasoning_asked,
                                   upstream_model)
from tests.clients.scripted import TOOL_OUTPUT

MODEL = "claude-sonnet-4-5"
NO_THINKING = {"MAX_THINKING_TOKENS": "0"}

Claude = Callable[[Stack], ClaudeCode]
StartStack = Callable[..., Stack]


def result(run: Run) -> dict[str, Any]:
    """The final ``result`` message of a successful run."""
    assert run.returncode == 0, run.explain()
    events = run.jsonl()    # one line for --output-format json, one event per line for stream-json
    out = next((e for e in reversed(events) if e.get("type") == "result"), None)
    assert out is not None, run.explain()
    assert out["is_error"] is False and out["subtype"] == "success", run.explain()
    return out  # type: ignore[no-any-return]


def test_text_turn_on_anthropic_upstream(stack: StartStack, claude: Claude) -> None:
    s = stack("anthropic")
    out = result(claude(s).ask("say PING-ALPHA", "--model", MODEL))
    assert out["result"] == "PONG-ALPHA"
    assert out["num_turns"] == 1 and list(out["modelUsage"]) == [MODEL]
    [req] = s.requests
    body = req.json()
    assert req.path == "/v1/messages" and body["model"] == UPSTREAM_MODEL["anthropic"]
    # the account's key goes upstream, never the client's; Claude Code's betas are passed on
    assert req.headers["x-api-key"] == "test-key-upstream"
    assert "claude-code-20250219" in req.headers["anthropic-beta"]
    # pass-through: Claude Code's thinking budget and context edits reach Anthropic as sent
    assert body["thinking"]["type"] == "enabled" and body["thinking"]["budget_tokens"] > 0
    assert body["context_management"] == {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    assert body["messages"][-1]["content"][-1]["text"] == "say PING-ALPHA"


def test_tool_round_trip_with_thinking_on_anthropic_upstream(stack: StartStack, claude: Claude) -> None:
    s = stack("anthropic")
    out = result(claude(s).ask("RUN-TOOL and tell me what it printed", "--model", MODEL))
    # the CLI ran Bash(echo) and the answer to the tool result is the final output
    assert out["result"] == f"TOOL-SAW: {TOOL_OUTPUT}" and out["num_turns"] == 2
    first, follow = (r.json() for r in s.requests)
    assert [t["name"] for t in first["tools"]].count("Bash") == 1
    assistant, tool_turn = follow["messages"][-2:]
    # the signed thinking block comes back before the tool_use, as Anthropic requires
    assert [b["type"] for b in assistant["content"]] == ["thinking", "text", "tool_use"]
    assert assistant["content"][0]["signature"] == "c2lnLWZha2Ut0001"
    [res] = tool_turn["content"]
    assert res["type"] == "tool_result" and res["tool_use_id"] == assistant["content"][2]["id"]
    assert TOOL_OUTPUT in json.dumps(res["content"])


def test_second_turn_resumes_the_conversation(stack: StartStack, claude: Claude) -> None:
    s = stack("anthropic")
    c = claude(s)
    first = result(c.ask("say PING-ALPHA", "--model", MODEL))
    out = result(c.ask("now say PING-BETA", "--model", MODEL, "--resume", first["session_id"]))
    assert out["result"] == "PONG-BETA" and out["session_id"] == first["session_id"]
    body = s.requests[-1].json()
    texts = [b.get("text", "") for m in body["messages"] for b in m["content"] if isinstance(b, dict)]
    assert "PONG-ALPHA" in texts and texts[-1] == "now say PING-BETA"


def test_stream_json_output_on_anthropic_upstream(stack: StartStack, claude: Claude) -> None:
    s = stack("anthropic")
    run = claude(s).ask("say PING-GAMMA", "--model", MODEL, "--include-partial-messages", output="stream-json")
    assert result(run)["result"] == "PONG-GAMMA"
    deltas = [e["event"]["delta"].get("text") for e in run.jsonl()
              if e.get("type") == "stream_event" and e["event"].get("type") == "content_block_delta"]
    assert "PONG-GAMMA" in deltas     # the upstream's text_delta reached the CLI as a stream event


@pytest.mark.parametrize("kind", UPSTREAM_TYPES)
def test_text_tool_round_trip_and_resume_without_thinking(stack: StartStack, claude: Claude, kind: str) -> None:
    s = stack(kind)
    c = claude(s)
    first = result(c.ask("say PING-ALPHA", "--model", MODEL, env=NO_THINKING))
    assert first["result"] == "PONG-ALPHA"
    out = result(c.ask("RUN-TOOL and tell me what it printed", "--model", MODEL, env=NO_THINKING))
    assert out["result"] == f"TOOL-SAW: {TOOL_OUTPUT}" and out["num_turns"] == 2
    # the tool result reached the upstream in that upstream's own format
    assert TOOL_OUTPUT in s.requests[2].body.decode()
    again = result(c.ask("now say PING-BETA", "--model", MODEL, "--resume", first["session_id"], env=NO_THINKING))
    assert again["result"] == "PONG-BETA"
    assert "PONG-ALPHA" in s.requests[3].body.decode()     # the history went upstream, translated
    assert len(s.requests) == 4
    assert {upstream_model(kind, r) for r in s.requests} == {UPSTREAM_MODEL[kind]}


@pytest.mark.parametrize("kind", UPSTREAM_TYPES)
def test_default_model_on_every_upstream(stack: StartStack, claude: Claude, kind: str) -> None:
    s = stack(kind)
    c = claude(s)
    # a streamed answer: the upstream's text reached the CLI as stream events
    run = c.ask("say PING-ALPHA", "--include-partial-messages", output="stream-json")
    first = result(run)
    assert first["result"] == "PONG-ALPHA"
    assert "PONG-ALPHA" in [e["event"]["delta"].get("text") for e in run.jsonl()
                            if e.get("type") == "stream_event" and e["event"].get("type") == "content_block_delta"]
    # a tool round trip that completes, answered as text
    out = result(c.ask("RUN-TOOL and tell me what it printed"))
    assert out["result"] == f"TOOL-SAW: {TOOL_OUTPUT}" and out["num_turns"] == 2
    assert TOOL_OUTPUT in s.requests[2].body.decode()
    # a second turn that carries the first
    again = result(c.ask("now say PING-BETA", "--resume", first["session_id"]))
    assert again["result"] == "PONG-BETA" and again["session_id"] == first["session_id"]
    assert "PONG-ALPHA" in s.requests[3].body.decode()
    assert len(s.requests) == 4
    # thinking on (adaptive + effort) reached every upstream as its own reasoning switch
    assert all(reasoning_asked(kind, r) for r in s.requests), [r.body[:300] for r in s.requests]
    # the mid-conversation system turn (Claude Code's environment block) went upstream
    assert all(b"Primary working directory" in r.body or b"working directory" in r.body.lower()
               for r in s.requests)
    assert {upstream_model(kind, r) for r in s.requests} == {UPSTREAM_MODEL[kind]}
