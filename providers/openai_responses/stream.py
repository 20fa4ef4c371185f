"""The Responses event stream (``event:`` lines, ``sequence_number``) -> pivot chunks."""
from __future__ import annotations

import enum
from typing import Any

from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import StreamContext, StreamTranslator, stream_cut
from ..toolkit import delta_chunk, usage_chunk, upstream_json
from .errors import error_from_responses
from .response import _finish_reason, thinking_block, usage_to_pivot

JSON = dict[str, Any]


class StreamPhase(enum.Enum):
    """START: only ``response.created``/``queued`` (or ``error``).  OUTPUT: items and
    their deltas, ``in_progress``; ends with completed/incomplete (-> DONE) or
    failed/``error`` (-> FAILED).  Nothing is accepted after DONE or FAILED."""

    START = "start"
    OUTPUT = "output"
    DONE = "done"
    FAILED = "failed"


# Events that carry nothing the pivot needs (their content also arrives as deltas
# or in output_item.done).  Listed so that the choice is explicit.
_IGNORED_EVENTS = frozenset({
    "response.in_progress", "response.queued", "response.content_part.added", "response.content_part.done",
    "response.reasoning_summary_part.added", "response.reasoning_summary_part.done",
    "response.output_text.annotation.added", "response.refusal.done",
})


class ResponsesToPivot(StreamTranslator):
    """One upstream Responses stream -> pivot chunks (see ``StreamPhase``)."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.phase = StreamPhase.START
        self._tool_index: dict[int, int] = {}        # output_index -> pivot tool call index
        self._args_sent: set[int] = set()            # output_index of calls that got argument text
        self._text_sent: set[tuple[int, int]] = set()  # (output_index, content_index) with text out
        self._reasoning_key: tuple[int, str, int] | None = None
        self._reasoning_any = False

    # -- chunk builders ----------------------------------------------------------
    def _chunk(self, delta: JSON, finish: str | None = None) -> JSON:
        return delta_chunk(self.ctx, delta, finish)

    def _reasoning_delta(self, key: tuple[int, str, int], text: str) -> list[JSON]:
        if not text:
            return []
        if key != self._reasoning_key and self._reasoning_any:
            # A new summary part: the non-streaming translation joins parts with a
            # blank line, so the stream does too (folded == whole).
            text = "\n\n" + text
        self._reasoning_key = key
        self._reasoning_any = True
        return [self._chunk({"reasoning_content": text})]

    # -- the state machine ---------------------------------------------------------
    def feed(self, event: Any) -> list[JSON]:
        data = getattr(event, "data", None)
        if data is None or data == "" or data == "[DONE]":
            return []
        ev = upstream_json(data, "an event")
        kind = ev.get("type") or getattr(event, "event", None)
        if kind == "error":
            self.phase = StreamPhase.FAILED
            raise error_from_responses(ev.get("error") if isinstance(ev.get("error"), dict) else ev,
                                       "upstream stream error")
        if kind == "response.failed":  # (in any phase, as ``error``: its error is the news)
            self.phase = StreamPhase.FAILED
            raise error_from_responses((ev.get("response") or {}).get("error"), "upstream response failed")
        if self.phase is StreamPhase.START:
            if kind in ("response.created", "response.queued"):
                self.phase = StreamPhase.OUTPUT
                return [self._chunk({"role": "assistant"})]
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"upstream stream began with {kind!r}, "
                             "expected response.created")
        if self.phase is not StreamPhase.OUTPUT:
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"upstream sent {kind!r} after the response ended")
        return self._output(kind, ev)

    def _output(self, kind: Any, ev: JSON) -> list[JSON]:
        oi: int = ev.get("output_index", 0)
        if kind == "response.output_text.delta":
            self._text_sent.add((oi, ev.get("content_index", 0)))
            return [self._chunk({"content": ev.get("delta") or ""})] if ev.get("delta") else []
        if kind == "response.reasoning_summary_text.delta":
            return self._reasoning_delta((oi, "s", ev.get("summary_index", 0)), ev.get("delta") or "")
        if kind == "response.reasoning_text.delta":
            return self._reasoning_delta((oi, "c", ev.get("content_index", 0)), ev.get("delta") or "")
        if kind == "response.function_call_arguments.delta":
            idx = self._tool_index.get(oi)
            if idx is None:
                raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                                 f"function call arguments for output {oi} before its item was added")
            if not ev.get("delta"):
                return []
            self._args_sent.add(oi)
            return [self._chunk({"tool_calls": [{"index": idx, "function": {"arguments": ev["delta"]}}]})]
        if kind == "response.output_item.added":
            item = ev.get("item") or {}
            if item.get("type") != "function_call":
                return []
            idx = len(self._tool_index)
            self._tool_index[oi] = idx
            args = item.get("arguments") or ""
            if args:
                self._args_sent.add(oi)
            return [self._chunk({"tool_calls": [{
                "index": idx, "id": item.get("call_id") or item.get("id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": args}}]})]
        if kind == "response.output_item.done":
            return self._item_done(oi, ev.get("item") or {})
        if kind == "response.output_text.done":
            # A vendor that sends only the final text (no deltas) still gets through.
            if (oi, ev.get("content_index", 0)) not in self._text_sent and ev.get("text"):
                self._text_sent.add((oi, ev.get("content_index", 0)))
                return [self._chunk({"content": ev["text"]})]
            return []
        if kind == "response.refusal.delta":
            return [self._chunk({"refusal": ev.get("delta") or ""})] if ev.get("delta") else []
        if kind in ("response.reasoning_summary_text.done", "response.reasoning_text.done",
                    "response.function_call_arguments.done"):
            return []
        if kind in ("response.completed", "response.incomplete"):
            return self._end(ev.get("response") or {})
        if kind == "response.created":
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream sent response.created twice")
        # _IGNORED_EVENTS, and event types OpenAI adds later (hosted tools, audio...):
        # they carry nothing a chat client can receive.
        return []

    def _item_done(self, oi: Any, item: JSON) -> list[JSON]:
        kind = item.get("type")
        if kind == "reasoning":
            return [self._chunk({"thinking_blocks": [thinking_block(item)]})]
        if kind == "function_call":
            idx = self._tool_index.get(oi)
            if idx is None:
                # Announced only when done: emit the whole call now.
                idx = len(self._tool_index)
                self._tool_index[oi] = idx
                self._args_sent.add(oi)
                return [self._chunk({"tool_calls": [{
                    "index": idx, "id": item.get("call_id") or item.get("id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""}}]})]
            if oi not in self._args_sent and item.get("arguments"):
                self._args_sent.add(oi)
                return [self._chunk({"tool_calls": [{"index": idx, "function": {"arguments": item["arguments"]}}]})]
        return []

    def _end(self, resp: JSON) -> list[JSON]:
        self.phase = StreamPhase.DONE
        out = [self._chunk({}, _finish_reason(resp, bool(self._tool_index)))]
        usage = usage_to_pivot(resp.get("usage"))
        if usage is not None:
            out.append(usage_chunk(self.ctx, usage))
        return out

    def finish(self) -> list[JSON]:
        if self.phase is StreamPhase.DONE:
            return []
        if self.phase is StreamPhase.FAILED:
            raise ProxyError(ErrorKind.UPSTREAM_ERROR, "upstream response failed")
        raise stream_cut("no response.completed")
