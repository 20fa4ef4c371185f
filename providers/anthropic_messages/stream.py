"""Anthropic Messages event stream -> pivot chunks (``AnthropicStream``).  Event shapes
follow the ``anthropic`` Python SDK's ``lib/streaming/_messages.py``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import Phase, StreamContext, StreamTranslator, TextLane, stream_cut, text_chunk
from ..toolkit import delta_chunk, usage_chunk
from .errors import upstream_error_event
from .response import _finish, usage_to_pivot

JSON = dict[str, Any]


@dataclass
class _Block:
    kind: str                     # "text" | "tool_use" | "thinking" | "redacted_thinking" | "other"
    tool_index: int = -1
    thinking: list[str] = field(default_factory=list)
    signature: str = ""
    data: str = ""
    start_input: Any = None       # a tool_use start that already carries its input
    sent_args: bool = False


class AnthropicStream(StreamTranslator):
    """Anthropic SSE events -> pivot chunks.  Keyed by content-block index.

    Phases and the events each accepts (``ping`` and unknown event types are
    ignored in every phase but DONE; ``error`` raises in any):

    * START: ``message_start`` -> CONTENT (role chunk).
    * CONTENT: ``content_block_start/delta/stop``, ``message_delta``;
      ``message_stop`` -> DONE (finish chunk, usage chunk).
    * DONE: nothing.
    """

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.phase = Phase.START
        self.blocks: dict[int, _Block] = {}
        self.n_tools = 0
        self.usage: JSON = {}
        self.stop_reason: str | None = None
        # The fused text lane while a text block is open (None otherwise).
        self._lane: TextLane | None = None

    def text_lane(self) -> TextLane | None:
        return self._lane

    def _chunk(self, delta: JSON, finish: str | None = None) -> JSON:
        return delta_chunk(self.ctx, delta, finish)

    def _bad(self, what: str) -> ProxyError:
        self.phase = Phase.FAILED
        self._lane = None
        return ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"unexpected upstream stream event: {what}")

    def feed(self, event: Any) -> list[JSON]:
        try:
            obj = event.json()
        except ValueError:
            raise self._bad("data that is not JSON") from None
        if type(obj) is not dict:
            raise self._bad("data that is not an object")
        etype = obj.get("type") or event.event
        if etype == "content_block_delta" and self.phase is Phase.CONTENT:
            # Nearly every event, and nearly always text into an open text block.
            delta = obj.get("delta")
            if type(delta) is dict and delta.get("type") == "text_delta":
                b = self.blocks.get(obj.get("index"))  # type: ignore[arg-type]
                if b is not None and b.kind == "text":
                    text = delta.get("text")
                    return [text_chunk(self.ctx, text)] if text else []
            return self._block_delta(obj)
        if etype == "error":
            self.phase = Phase.FAILED
            self._lane = None
            raise upstream_error_event(obj)
        if self.phase is Phase.DONE or self.phase is Phase.FAILED:
            raise self._bad(f"'{etype}' after the stream ended")
        if etype == "ping":
            return []
        if self.phase is Phase.START:
            if etype != "message_start":
                raise self._bad(f"'{etype}' before message_start")
            self.phase = Phase.CONTENT
            usage = (obj.get("message") or {}).get("usage")
            if isinstance(usage, dict):
                self.usage.update({k: v for k, v in usage.items() if v is not None})
            return [self._chunk({"role": "assistant", "content": ""})]
        if etype == "content_block_start":
            return self._block_start(obj)
        if etype == "content_block_delta":
            return self._block_delta(obj)
        if etype == "content_block_stop":
            return self._block_stop(obj)
        if etype == "message_delta":
            delta = obj.get("delta") or {}
            if delta.get("stop_reason"):
                self.stop_reason = delta["stop_reason"]
            usage = obj.get("usage")
            if isinstance(usage, dict):
                # Cumulative totals: set, don't add; absent fields keep message_start's values.
                self.usage.update({k: v for k, v in usage.items() if v is not None})
            return []
        if etype == "message_stop":
            if self.blocks:
                raise self._bad(f"message_stop with block {min(self.blocks)} still open")
            self.phase = Phase.DONE
            out = [self._chunk({}, _finish(self.stop_reason))]
            if self.usage:
                out.append(usage_chunk(self.ctx, usage_to_pivot(self.usage)))
            return out
        if etype == "message_start":
            raise self._bad("a second message_start")
        return []  # Anthropic may add event types; unknown ones carry nothing we map

    def _index(self, obj: JSON) -> int:
        index = obj.get("index")
        if not isinstance(index, int):
            raise self._bad(f"'{obj.get('type')}' without an index")
        return index

    def _block_start(self, obj: JSON) -> list[JSON]:
        index = self._index(obj)
        if index in self.blocks:
            raise self._bad(f"content_block_start for open block {index}")
        cb = obj.get("content_block") or {}
        kind = cb.get("type")
        if kind == "text":
            self.blocks[index] = _Block("text")
            # Deltas into this block, as Anthropic writes them (its SDK's wire format).
            self._lane = TextLane.of(b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                                     b'"delta":{"type":"text_delta","text":"' % index, b'"}}')
            return [text_chunk(self.ctx, cb["text"])] if cb.get("text") else []
        if kind == "tool_use":
            # The pivot's tool index counts tool calls only, whatever blocks came first.
            b = _Block("tool_use", tool_index=self.n_tools, start_input=cb.get("input"))
            self.n_tools += 1
            self.blocks[index] = b
            return [self._chunk({"tool_calls": [{"index": b.tool_index, "id": cb.get("id"), "type": "function",
                                                 "function": {"name": cb.get("name"), "arguments": ""}}]})]
        if kind == "thinking":
            b = _Block("thinking")
            self.blocks[index] = b
            if cb.get("thinking"):
                b.thinking.append(cb["thinking"])
                return [self._chunk({"reasoning_content": cb["thinking"]})]
            return []
        if kind == "redacted_thinking":
            self.blocks[index] = _Block("redacted_thinking", data=cb.get("data") or "")
            return []
        self.blocks[index] = _Block("other")  # server tool blocks etc.: never asked for by a pivot request
        return []

    def _block_delta(self, obj: JSON) -> list[JSON]:
        index = self._index(obj)
        b = self.blocks.get(index)
        if b is None:
            raise self._bad(f"content_block_delta for block {index}, which is not open")
        delta = obj.get("delta") or {}
        dtype = delta.get("type")
        if dtype == "text_delta" and b.kind == "text":
            text = delta.get("text") or ""
            return [text_chunk(self.ctx, text)] if text else []
        if dtype == "input_json_delta" and b.kind == "tool_use":
            part = delta.get("partial_json") or ""
            if not part:
                return []
            b.sent_args = True
            return [self._chunk({"tool_calls": [{"index": b.tool_index, "function": {"arguments": part}}]})]
        if dtype == "thinking_delta" and b.kind == "thinking":
            text = delta.get("thinking") or ""
            if not text:
                return []
            b.thinking.append(text)
            return [self._chunk({"reasoning_content": text})]
        if dtype == "signature_delta" and b.kind == "thinking":
            b.signature += delta.get("signature") or ""
            return []
        if dtype == "citations_delta" or b.kind == "other":
            return []  # citations have no Chat Completions field (documented)
        raise self._bad(f"'{dtype}' in a {b.kind} block")

    def _block_stop(self, obj: JSON) -> list[JSON]:
        index = self._index(obj)
        b = self.blocks.pop(index, None)
        if b is None:
            raise self._bad(f"content_block_stop for block {index}, which is not open")
        if b.kind == "text":
            self._lane = None
        if b.kind == "thinking":
            # The signature must survive: the complete block travels in the pivot so an
            # OpenAI-format client can send it back on its next turn.
            return [self._chunk({"thinking_blocks": [{"type": "thinking", "thinking": "".join(b.thinking),
                                                      "signature": b.signature}]})]
        if b.kind == "redacted_thinking":
            return [self._chunk({"thinking_blocks": [{"type": "redacted_thinking", "data": b.data}]})]
        if b.kind == "tool_use" and not b.sent_args:
            # A call with no argument deltas: send its start input (usually {}), so the
            # client always gets parseable JSON arguments.
            args = jsonutil.dumps(b.start_input if isinstance(b.start_input, dict) else {})
            return [self._chunk({"tool_calls": [{"index": b.tool_index, "function": {"arguments": args}}]})]
        return []

    def finish(self) -> list[JSON]:
        if self.phase is not Phase.DONE:
            raise stream_cut("no message_stop" if self.phase is not Phase.START else "no message_start")
        return []

    def fail(self, err: ProxyError) -> list[JSON]:
        self.phase = Phase.FAILED
        self._lane = None
        return []
