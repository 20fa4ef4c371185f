"""A tiny deterministic "model" on every upstream wire format, for the real-CLI tests.

It answers Anthropic Messages, OpenAI Responses (SSE, and the WebSocket transport
Codex uses), OpenAI Chat Completions, Gemini and Bedrock ConverseStream requests,
streamed or whole, and follows markers in the conversation so a test reads like
one:

* ``PING-<WORD>`` in the last user text: the answer is the text ``PONG-<WORD>``;
* ``RUN-TOOL`` in the last user text: a call of the client's shell tool (Claude
  Code's ``Bash``, Codex's ``exec_command``) running ``echo TOOL-OUTPUT-7781``;
* a tool result as the last turn: ``TOOL-SAW: TOOL-OUTPUT-7781`` when the result
  holds the marker (``TOOL-SAW: nothing`` otherwise), so the client's final
  output proves the result travelled back;
* thinking / reasoning asked for (Anthropic, Responses): a signed thinking block
  or an encrypted reasoning item comes first.

Every request is kept in ``seen``.  Use it as ``FakeUpstream.handler`` (from
``tests/e2e/harness``) behind the gateway, or on its own as the server a CLI
talks to when recording fixtures.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from tests.e2e.harness import Recorded, Reply

TOOL_OUTPUT = "TOOL-OUTPUT-7781"
_PING = re.compile(r"PING-([A-Z0-9]+)")
_TOOL_OUT = re.compile(r"TOOL-OUTPUT-\d+")
_USAGE_IN, _USAGE_OUT = 21, 7


@dataclass
class Decision:
    kind: str                  # "text" or "tool"
    text: str = ""
    think: bool = False


def decide(user_text: str | None, tool_result: Any, think: bool = False) -> Decision:
    """``tool_result``: the last turn when it carries tool results (any JSON), else None."""
    if tool_result is not None:
        m = _TOOL_OUT.search(json.dumps(tool_result))
        return Decision("text", f"TOOL-SAW: {m.group(0) if m else 'nothing'}", think)
    text = user_text or ""
    if "RUN-TOOL" in text:
        return Decision("tool", think=think)
    m = _PING.findall(text)
    return Decision("text", f"PONG-{m[-1]}" if m else "PONG", think)


def shell_call(tool_names: list[str]) -> tuple[str, dict[str, Any]]:
    """The call of the client's shell tool: its name and arguments."""
    cmd = f"echo {TOOL_OUTPUT}"
    if "exec_command" in tool_names:
        return "exec_command", {"cmd": cmd}
    if "shell" in tool_names:
        return "shell", {"command": ["bash", "-lc", cmd]}
    return "Bash", {"command": cmd, "description": "Print a marker"}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text_of(p.get("text", p.get("content", ""))) if isinstance(p, dict) else str(p)
                         for p in content)
    return ""


def _sse(events: Iterable[tuple[str | None, dict[str, Any]]]) -> bytes:
    out = b""
    for name, data in events:
        head = f"event: {name}\n" if name else ""
        out += f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
    return out


@dataclass
class ScriptedModel:
    count: int = 0
    seen: list[Recorded] = field(default_factory=list)

    def _next_id(self) -> int:
        self.count += 1
        return self.count

    # ------------------------------------------------------ Anthropic Messages

    def anthropic(self, body: dict[str, Any]) -> Reply:
        msgs = [m for m in body.get("messages", []) if m.get("role") in ("user", "assistant")]
        last = msgs[-1] if msgs else {"role": "user", "content": ""}
        content = last.get("content")
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"] \
            if last["role"] == "user" and isinstance(content, list) else []
        thinking = body.get("thinking") or {}
        d = decide(_text_of(content) if last["role"] == "user" and not results else None,
                   results or None, thinking.get("type") in ("enabled", "adaptive"))
        n = self._next_id()
        model = body.get("model", "claude")
        blocks: list[dict[str, Any]] = []
        if d.think:
            blocks.append({"type": "thinking", "thinking": "The user wants a short answer.",
                           "signature": f"c2lnLWZha2Ut{n:04d}"})
        if d.kind == "tool":
            name, args = shell_call([t.get("name", "") for t in body.get("tools", [])])
            blocks += [{"type": "text", "text": "Running the tool."},
                       {"type": "tool_use", "id": f"toolu_fake{n:04d}", "name": name, "input": args}]
        else:
            blocks.append({"type": "text", "text": d.text})
        stop = "tool_use" if d.kind == "tool" else "end_turn"
        usage = {"input_tokens": _USAGE_IN, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 "output_tokens": _USAGE_OUT}
        if not body.get("stream"):
            return Reply.json({"id": f"msg_fake{n:04d}", "type": "message", "role": "assistant", "model": model,
                               "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": usage})
        ev: list[tuple[str | None, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": {
            "id": f"msg_fake{n:04d}", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}})]

        def delta(i: int, d: dict[str, Any]) -> tuple[str, dict[str, Any]]:
            return "content_block_delta", {"type": "content_block_delta", "index": i, "delta": d}

        for i, b in enumerate(blocks):
            if b["type"] == "thinking":
                start = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [{"type": "thinking_delta", "thinking": b["thinking"]},
                          {"type": "signature_delta", "signature": b["signature"]}]
            elif b["type"] == "text":
                start, deltas = {"type": "text", "text": ""}, [{"type": "text_delta", "text": b["text"]}]
            else:
                start = {"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}
                deltas = [{"type": "input_json_delta", "partial_json": json.dumps(b["input"])}]
            ev.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": start}))
            ev += [delta(i, x) for x in deltas]
            ev.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        ev += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                  "usage": {"output_tokens": _USAGE_OUT}}),
               ("message_stop", {"type": "message_stop"})]
        return Reply.sse(_sse(ev))

    # --------------------------------------------------------- OpenAI Responses

    def responses_events(self, body: dict[str, Any], history: list[dict[str, Any]] | None = None,
                         ) -> list[dict[str, Any]]:
        """The events answering one Responses request; ``history``: the items a WebSocket
        connection rebuilt from ``previous_response_id``."""
        items = list(history or [])
        inp = body.get("input", [])
        items += [{"type": "message", "role": "user", "content": inp}] if isinstance(inp, str) else inp
        n = self._next_id()
        rid, model = f"resp_fake{n:04d}", body.get("model", "gpt")
        base = {"id": rid, "object": "response", "created_at": 1767225600, "model": model, "output": [],
                "status": "in_progress", "error": None, "incomplete_details": None}
        if body.get("generate") is False:     # the WebSocket prewarm: no output
            return self._numbered([{"type": "response.created", "response": base},
                                   {"type": "response.completed", "response": {**base, "status": "completed",
                                    "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}}}])
        items = [it for it in items if it.get("role") not in ("system", "developer")]
        tail = []
        for it in reversed(items):      # the trailing tool outputs, if the last turn is one
            if it.get("type") not in ("function_call_output", "custom_tool_call_output"):
                break
            tail.append(it)
        last = items[-1] if items else {}
        effort = (body.get("reasoning") or {}).get("effort")
        d = decide(_text_of(last.get("content")) if not tail and last.get("role") == "user" else None,
                   tail or None, effort not in (None, "none"))
        output: list[dict[str, Any]] = []
        if d.think:
            output.append({"id": f"rs_fake{n:04d}", "type": "reasoning", "encrypted_content": f"ZmFrZS1ycy0{n:04d}",
                           "summary": [{"type": "summary_text", "text": "**Answering** the user briefly."}]})
        if d.kind == "tool":
            name, args = shell_call([t.get("name", "") for t in body.get("tools", [])])
            output.append({"id": f"fc_fake{n:04d}", "type": "function_call", "status": "completed",
                           "call_id": f"call_fake{n:04d}", "name": name, "arguments": json.dumps(args)})
        else:
            output.append({"id": f"msg_fake{n:04d}", "type": "message", "role": "assistant", "status": "completed",
                           "content": [{"type": "output_text", "text": d.text, "annotations": []}]})
        ev: list[dict[str, Any]] = [{"type": "response.created", "response": base},
                                    {"type": "response.in_progress", "response": base}]
        for i, it in enumerate(output):
            ref = {"item_id": it["id"], "output_index": i}
            if it["type"] == "reasoning":
                part = it["summary"][0]
                ev += [{"type": "response.output_item.added", "output_index": i, "item": {**it, "summary": []}},
                       {"type": "response.reasoning_summary_part.added", **ref, "summary_index": 0,
                        "part": {"type": "summary_text", "text": ""}},
                       {"type": "response.reasoning_summary_text.delta", **ref, "summary_index": 0,
                        "delta": part["text"]},
                       {"type": "response.reasoning_summary_text.done", **ref, "summary_index": 0,
                        "text": part["text"]},
                       {"type": "response.reasoning_summary_part.done", **ref, "summary_index": 0, "part": part}]
            elif it["type"] == "function_call":
                ev += [{"type": "response.output_item.added", "output_index": i,
                        "item": {**it, "status": "in_progress", "arguments": ""}},
                       {"type": "response.function_call_arguments.delta", **ref, "delta": it["arguments"]},
                       {"type": "response.function_call_arguments.done", **ref, "arguments": it["arguments"]}]
            else:
                part = it["content"][0]
                ev += [{"type": "response.output_item.added", "output_index": i,
                        "item": {**it, "status": "in_progress", "content": []}},
                       {"type": "response.content_part.added", **ref, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": []}},
                       {"type": "response.output_text.delta", **ref, "content_index": 0, "delta": part["text"]},
                       {"type": "response.output_text.done", **ref, "content_index": 0, "text": part["text"]},
                       {"type": "response.content_part.done", **ref, "content_index": 0, "part": part}]
            ev.append({"type": "response.output_item.done", "output_index": i, "item": it})
        ev.append({"type": "response.completed", "response": {**base, "status": "completed", "output": output,
                   "usage": {"input_tokens": _USAGE_IN, "input_tokens_details": {"cached_tokens": 0},
                             "output_tokens": _USAGE_OUT, "output_tokens_details": {"reasoning_tokens": 0},
                             "total_tokens": _USAGE_IN + _USAGE_OUT}}})
        return self._numbered(ev)

    @staticmethod
    def _numbered(ev: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for seq, e in enumerate(ev):
            e["sequence_number"] = seq
        return ev

    def responses(self, body: dict[str, Any]) -> Reply:
        events = self.responses_events(body)
        if body.get("stream"):
            return Reply.sse(_sse((e["type"], e) for e in events))
        return Reply.json(events[-1]["response"])

    # -------------------------------------------------- OpenAI Chat Completions

    def chat(self, body: dict[str, Any]) -> Reply:
        # A mid-conversation system turn may come last (Claude Code's environment block).
        msgs = [m for m in body.get("messages", []) if m.get("role") not in ("system", "developer")]
        tail = []
        for m in reversed(msgs):
            if m.get("role") != "tool":
                break
            tail.append(m)
        last = msgs[-1] if msgs else {}
        d = decide(_text_of(last.get("content")) if not tail and last.get("role") == "user" else None, tail or None)
        n = self._next_id()
        cid, model = f"chatcmpl-fake{n:04d}", body.get("model", "gpt")
        msg: dict[str, Any] = {"role": "assistant", "content": None}
        if d.kind == "tool":
            name, args = shell_call([t.get("function", {}).get("name", "") for t in body.get("tools", [])])
            msg["tool_calls"] = [{"id": f"call_fake{n:04d}", "type": "function",
                                  "function": {"name": name, "arguments": json.dumps(args)}}]
            finish = "tool_calls"
        else:
            msg["content"], finish = d.text, "stop"
        usage = {"prompt_tokens": _USAGE_IN, "completion_tokens": _USAGE_OUT, "total_tokens": _USAGE_IN + _USAGE_OUT}
        head = {"id": cid, "created": 1767225600, "model": model}
        if not body.get("stream"):
            return Reply.json({**head, "object": "chat.completion", "usage": usage,
                               "choices": [{"index": 0, "message": msg, "finish_reason": finish}]})

        def chunk(delta: dict[str, Any], fin: str | None = None, **kw: Any) -> tuple[None, dict[str, Any]]:
            return None, {**head, "object": "chat.completion.chunk",
                          "choices": [{"index": 0, "delta": delta, "finish_reason": fin}], **kw}

        if d.kind == "tool":
            call = msg["tool_calls"][0]
            body_chunks = [chunk({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call["id"], "type": "function",
                 "function": {"name": call["function"]["name"], "arguments": ""}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": call["function"]["arguments"]}}]})]
        else:
            body_chunks = [chunk({"role": "assistant", "content": ""}), chunk({"content": d.text})]
        data = _sse([*body_chunks, chunk({}, finish),
                     (None, {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})])
        return Reply.sse(data + b"data: [DONE]\n\n")

    # ------------------------------------------------------------------ Gemini

    def gemini(self, body: dict[str, Any], stream: bool) -> Reply:
        contents = body.get("contents", [])
        last = contents[-1] if contents else {}
        parts = last.get("parts", [])
        results = [p for p in parts if "functionResponse" in p]
        d = decide(_text_of(parts) if not results else None, results or None)
        n = self._next_id()
        if d.kind == "tool":
            names = [f.get("name", "") for t in body.get("tools", []) for f in t.get("functionDeclarations", [])]
            name, args = shell_call(names)
            part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
        else:
            part = {"text": d.text}
        doc = {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
               "usageMetadata": {"promptTokenCount": _USAGE_IN, "candidatesTokenCount": _USAGE_OUT,
                                 "totalTokenCount": _USAGE_IN + _USAGE_OUT},
               "modelVersion": "gemini-upstream-test", "responseId": f"fake{n:04d}"}
        return Reply.sse(_sse([(None, doc)])) if stream else Reply.json(doc)

    # ----------------------------------------------------------------- Bedrock

    def bedrock(self, body: dict[str, Any], stream: bool) -> Reply:
        msgs = body.get("messages", [])
        last = msgs[-1] if msgs else {}
        blocks = last.get("content", [])
        results = [b for b in blocks if "toolResult" in b]
        d = decide(_text_of(blocks) if last.get("role") == "user" and not results else None, results or None)
        n = self._next_id()
        out: dict[str, Any]
        if d.kind == "tool":
            names = [t.get("toolSpec", {}).get("name", "") for t in (body.get("toolConfig") or {}).get("tools", [])]
            name, args = shell_call(names)
            out, stop = {"toolUse": {"toolUseId": f"tooluse_fake{n:04d}", "name": name, "input": args}}, "tool_use"
        else:
            out, stop = {"text": d.text}, "end_turn"
        usage = {"inputTokens": _USAGE_IN, "outputTokens": _USAGE_OUT, "totalTokens": _USAGE_IN + _USAGE_OUT}
        if not stream:
            return Reply.json({"output": {"message": {"role": "assistant", "content": [out]}}, "stopReason": stop,
                               "usage": usage, "metrics": {"latencyMs": 5}})
        from tests.fixtures.bedrock.make_fixtures import encode_frame

        frames: list[tuple[str, dict[str, Any]]] = [("messageStart", {"role": "assistant"})]
        if "toolUse" in out:
            tu = out["toolUse"]
            frames += [("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {
                           "toolUseId": tu["toolUseId"], "name": tu["name"]}}}),
                       ("contentBlockDelta", {"contentBlockIndex": 0,
                                              "delta": {"toolUse": {"input": json.dumps(tu["input"])}}})]
        else:
            frames.append(("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": out["text"]}}))
        frames += [("contentBlockStop", {"contentBlockIndex": 0}), ("messageStop", {"stopReason": stop}),
                   ("metadata", {"usage": usage, "metrics": {"latencyMs": 5}})]
        data = b"".join(encode_frame([(":event-type", ev), (":content-type", "application/json"),
                                      (":message-type", "event")], json.dumps(p).encode()) for ev, p in frames)
        return Reply(200, {"Content-Type": "application/vnd.amazon.eventstream"}, chunks=[data])

    # ---------------------------------------------------- as a FakeUpstream handler

    def __call__(self, rec: Recorded) -> Reply | None:
        self.seen.append(rec)
        if rec.method != "POST":
            return Reply.json({"error": {"message": f"scripted model: no {rec.method} {rec.path}"}}, status=404)
        body = rec.json()
        path = rec.path
        if path.endswith("/messages/count_tokens"):
            return Reply.json({"input_tokens": 42})
        if path.endswith("/messages"):
            return self.anthropic(body)
        if path.endswith("/responses"):
            return self.responses(body)
        if path.endswith("/chat/completions"):
            return self.chat(body)
        if ":streamGenerateContent" in path or ":generateContent" in path:
            return self.gemini(body, stream=":streamGenerateContent" in path)
        if path.endswith("/converse-stream") or path.endswith("/converse"):
            return self.bedrock(body, stream=path.endswith("/converse-stream"))
        return Reply.json({"error": {"message": f"scripted model: no route {path}"}}, status=404)


# ------------------------------------------ Codex's Responses WebSocket transport

@dataclass
class WSConnection:
    path: str
    headers: dict[str, str]
    frames: list[Any] = field(default_factory=list)               # what the client sent, parsed
    answers: list[dict[str, Any]] = field(default_factory=list)   # the events sent back


class ResponsesWebSocketServer:
    """``GET /v1/responses`` upgraded to a WebSocket, answered as OpenAI's server answers
    Codex (``/work/shared/protocols/codex-responses-websocket.md``): one ``response.create``
    per request, one JSON text frame per event back, and with ``store: false`` the last
    input and output kept per connection for ``previous_response_id``.  ``POST
    /v1/responses`` (Codex's HTTP fallback) gets SSE from the same model.  Everything
    received is recorded."""

    def __init__(self, model: ScriptedModel) -> None:
        self.model = model
        self.connections: list[WSConnection] = []
        self.posts: list[Recorded] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Any:
        import tornado.web
        import tornado.websocket

        srv = self

        class H(tornado.websocket.WebSocketHandler):
            def check_origin(self, origin: str) -> bool:
                return True

            def open(self, *a: Any) -> None:
                self.conn = WSConnection(self.request.path,
                                         {k.lower(): v for k, v in self.request.headers.items()})
                self.history: list[dict[str, Any]] = []
                self.last_id: str | None = None
                srv.connections.append(self.conn)

            def on_message(self, message: str | bytes) -> None:
                try:
                    frame = json.loads(message)
                except ValueError:
                    self.conn.frames.append({"unparsed": repr(message)})
                    return
                self.conn.frames.append(frame)
                if frame.get("type") != "response.create":
                    return
                prev = frame.get("previous_response_id")
                history = self.history if prev and prev == self.last_id else []
                events = srv.model.responses_events(frame, history)
                done = events[-1]["response"]
                inp = frame.get("input", [])
                self.history = history + (inp if isinstance(inp, list) else []) + list(done.get("output", []))
                self.last_id = done["id"]
                for e in events:
                    self.conn.answers.append(e)
                    self.write_message(json.dumps(e))

            def check_xsrf_cookie(self) -> None:
                pass

            async def post(self, *a: Any) -> None:
                rec = Recorded("POST", self.request.path, self.request.query,
                               {k.lower(): v for k, v in self.request.headers.items()}, self.request.body)
                srv.posts.append(rec)
                reply = srv.model(rec)
                assert reply is not None
                self.set_status(reply.status)
                for k, v in reply.headers.items():
                    self.set_header(k, v)
                for c in reply.chunks or [reply.body]:
                    self.write(c)
                self.finish()

        return tornado.web.Application([(r"/v1/responses", H)])

    def start(self, lt: Any) -> "ResponsesWebSocketServer":
        from tornado.httpserver import HTTPServer

        async def go() -> None:
            server = HTTPServer(self.app())
            server.listen(0, "127.0.0.1")
            self.port = next(iter(server._sockets.values())).getsockname()[1]
            lt._cleanups.append(server.stop)

        lt.run(go())
        return self
