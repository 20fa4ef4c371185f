"""The real Claude Code CLI keeps its signed thinking blocks through an aliased model.

Claude Code keeps a turn's thinking blocks only when the turn's ``model`` (from
``message_start``) is the model it calls.  Through the gateway the model it calls
is an alias (``claude-sonnet-4-5`` here, routed to ``claude-upstream-test``), so
the gateway must answer with the alias even on the ``anthropic`` pass-through.
The upstream here checks what the real Anthropic API checks: with thinking on,
an assistant turn that used a tool must start with its thinking block.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from tests.clients.conftest import Stack
from tests.clients.harness import ClaudeCode, Run
from tests.clients.scripted import TOOL_OUTPUT
from tests.e2e.harness import Recorded, Reply

MODEL = "claude-sonnet-4-5"


def result(run: Run) -> dict[str, Any]:
    assert run.returncode == 0, run.explain()
    out = next((e for e in reversed(run.jsonl()) if e.get("type") == "result"), None)
    assert out is not None and out["is_error"] is False, run.explain()
    return out  # type: ignore[no-any-return]


def thinking_required(model: Callable[[Recorded], Reply | None]) -> Callable[[Recorded], Reply | None]:
    """Anthropic's rule: with thinking on, the assistant turns with a tool_use start with thinking."""
    def check(rec: Recorded) -> Reply | None:
        body = rec.json() if rec.path.startswith("/v1/messages") else {}
        if (body.get("thinking") or {}).get("type") in ("enabled", "adaptive"):
            for i, m in enumerate(body.get("messages", [])):
                blocks = m["content"] if isinstance(m.get("content"), list) else []
                if m["role"] == "assistant" and any(b.get("type") == "tool_use" for b in blocks) \
                        and blocks[0].get("type") not in ("thinking", "redacted_thinking"):
                    return Reply.json({"type": "error", "error": {
                        "type": "invalid_request_error",
                        "message": f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, "
                                   f"but found `{blocks[0].get('type')}`. When `thinking` is enabled, a final "
                                   "`assistant` message must start with a thinking block."}}, status=400)
        return model(rec)
    return check


def test_tool_turns_with_thinking_through_an_alias(stack: Callable[..., Stack],
                                                   claude: Callable[[Stack], ClaudeCode]) -> None:
    s = stack("anthropic")
    s.up.handler = thinking_required(s.model)
    c = claude(s)
    first = result(c.ask("RUN-TOOL and tell me what it printed", "--model", MODEL))
    assert first["result"] == f"TOOL-SAW: {TOOL_OUTPUT}"
    # the next turn of the same session replays the earlier tool turn: its thinking must be there
    again = result(c.ask("RUN-TOOL once more", "--model", MODEL, "--resume", first["session_id"]))
    assert again["result"] == f"TOOL-SAW: {TOOL_OUTPUT}"
    last = s.requests[-1].json()
    tool_turns = [m for m in last["messages"] if m["role"] == "assistant"
                  and any(b.get("type") == "tool_use" for b in m["content"])]
    assert len(tool_turns) == 2
    assert all(m["content"][0]["type"] == "thinking" and m["content"][0]["signature"] for m in tool_turns), \
        json.dumps(tool_turns)[:2000]
