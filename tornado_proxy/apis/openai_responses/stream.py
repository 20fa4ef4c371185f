"""Pivot chunks -> the Responses event stream (``event:`` lines, ``sequence_number``),
in the shapes openai-python's ``ResponseStreamState`` accepts."""
from __future__ import annotations

import enum
import logging
from typing import Any

from providers.base import StreamContext, StreamEncoder, fold_chunks
from providers.openai_responses import responses_error_code
from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from .custom_input import CustomInput
from .request import tool_names
from .response import (
    _call_item,
    _item_id,
    _message_item,
    _reasoning_item,
    _text_part,
    _wants_summary,
    response_object,
    usage_from_pivot,
)

JSON = dict[str, Any]
log = logging.getLogger("tornado_proxy.responses")


class EncoderPhase(enum.Enum):
    """START: nothing sent.  OPEN: response.created sent, items streaming.
    DONE: response.completed/incomplete sent.  FAILED: error + response.failed sent."""

    START = "start"
    OPEN = "open"
    DONE = "done"
    FAILED = "failed"


class _Item:
    """An output item being streamed."""

    __slots__ = ("kind", "index", "id", "text", "blocks", "parts", "call", "part_open", "summary_open", "input")

    def __init__(self, kind: str, index: int, item_id: str) -> None:
        self.kind = kind            # "reasoning" | "message" | "function_call"
        self.index = index
        self.id = item_id
        self.text = ""              # reasoning summary text, or the open message part's text
        self.blocks: list[JSON] = []
        self.parts: list[JSON] = []  # closed message content parts
        self.call: JSON = {}
        self.part_open: str | None = None  # "output_text" | "refusal"
        self.summary_open = False
        self.input: CustomInput | None = None  # a custom tool's call: its input, decoded as it comes


class ResponsesEncoder(StreamEncoder):
    """Pivot chunks -> Responses SSE events (see ``EncoderPhase``).

    Items open in the order their first delta arrives; a reasoning or message
    item is closed when anything else starts, function calls when something
    other than a function call starts, all of them at the end.
    """

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.req: JSON = ctx.client_request or {}
        self.names = tool_names(self.req.get("tools"))
        self.phase = EncoderPhase.START
        self.seq = 0
        self.output: list[JSON | None] = []   # done items by output_index
        self.current: _Item | None = None     # the open reasoning/message item
        self.calls: dict[int, _Item] = {}     # pivot tool index -> open function call item
        self.finish_reason: str | None = None
        self.usage: JSON | None = None
        self._buf: list[bytes] = []
        self._chunks: list[JSON] = []          # folded at the end for ctx.result

    # -- framing -------------------------------------------------------------------
    def _emit(self, kind: str, payload: JSON) -> None:
        event = {"type": kind, **payload, "sequence_number": self.seq}
        self.seq += 1
        self._buf.append(b"event: " + kind.encode("ascii") + b"\ndata: " + jsonutil.dumpb(event) + b"\n\n")

    def _flush(self) -> bytes:
        out = b"".join(self._buf)
        self._buf.clear()
        return out

    def _start(self) -> None:
        if self.phase is EncoderPhase.START:
            self.phase = EncoderPhase.OPEN
            resp = response_object(self.ctx, "in_progress", [], None)
            self._emit("response.created", {"response": resp})
            self._emit("response.in_progress", {"response": resp})

    # -- items -----------------------------------------------------------------------
    def _open(self, kind: str, prefix: str) -> _Item:
        item = _Item(kind, len(self.output), _item_id(self.ctx, prefix, len(self.output)))
        self.output.append(None)
        return item

    def _close_current(self) -> None:
        item = self.current
        if item is None:
            return
        self.current = None
        if item.kind == "reasoning":
            if item.summary_open:
                self._emit("response.reasoning_summary_text.done", {
                    "item_id": item.id, "output_index": item.index, "summary_index": 0, "text": item.text})
                self._emit("response.reasoning_summary_part.done", {
                    "item_id": item.id, "output_index": item.index, "summary_index": 0,
                    "part": {"type": "summary_text", "text": item.text}})
            done = _reasoning_item(item.id, item.text, item.blocks, self.req)
        else:
            self._close_part(item)
            done = _message_item(item.id, item.parts)
        self.output[item.index] = done
        self._emit("response.output_item.done", {"output_index": item.index, "item": done})

    def _close_part(self, item: _Item) -> None:
        if item.part_open is None:
            return
        base = {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts)}
        if item.part_open == "output_text":
            part = _text_part(item.text)
            self._emit("response.output_text.done", {**base, "text": item.text, "logprobs": []})
        else:
            part = {"type": "refusal", "refusal": item.text}
            self._emit("response.refusal.done", {**base, "refusal": item.text})
        self._emit("response.content_part.done", {**base, "part": part})
        item.parts.append(part)
        item.part_open = None
        item.text = ""

    def _close_calls(self) -> None:
        for item in self.calls.values():
            if self.output[item.index] is not None:
                continue
            args = item.call["function"]["arguments"]
            done = _call_item(item.id, item.call, names=self.names)
            if done["type"] == "custom_tool_call":
                self._custom_rest(item, done["input"])
                self._emit("response.custom_tool_call_input.done", {
                    "item_id": item.id, "output_index": item.index, "input": done["input"]})
            else:
                self._emit("response.function_call_arguments.done", {
                    "item_id": item.id, "output_index": item.index, "arguments": args, "name": done["name"]})
            self.output[item.index] = done
            self._emit("response.output_item.done", {"output_index": item.index, "item": done})

    def _reasoning(self) -> _Item:
        if self.current is None or self.current.kind != "reasoning":
            self._close_current()
            self._close_calls()
            item = self._open("reasoning", "rs")
            self.current = item
            self._emit("response.output_item.added", {"output_index": item.index,
                                                      "item": {"id": item.id, "type": "reasoning", "summary": []}})
        return self.current

    def _message_part(self, part: str) -> _Item:
        if self.current is None or self.current.kind != "message":
            self._close_current()
            self._close_calls()
            item = self._open("message", "msg")
            self.current = item
            self._emit("response.output_item.added", {"output_index": item.index,
                                                      "item": _message_item(item.id, [], "in_progress")})
        item = self.current
        if item.part_open != part:
            self._close_part(item)
            item.part_open = part
            empty = _text_part("") if part == "output_text" else {"type": "refusal", "refusal": ""}
            self._emit("response.content_part.added", {"item_id": item.id, "output_index": item.index,
                                                       "content_index": len(item.parts), "part": empty})
        return item

    def _tool_call(self, tc: JSON) -> None:
        idx = tc.get("index", 0)
        fn = tc.get("function") or {}
        item = self.calls.get(idx)
        if item is None:
            self._close_current()
            item = self._open("function_call", "fc")
            item.call = {"id": tc.get("id"), "type": "function",
                         "function": {"name": fn.get("name"), "arguments": ""}}
            self.calls[idx] = item
            added = _call_item(item.id, item.call, "in_progress", self.names)
            if added["type"] == "custom_tool_call":
                item.input = CustomInput()
            self._emit("response.output_item.added", {"output_index": item.index, "item": added})
        elif self.output[item.index] is not None:
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                             f"tool call {idx} continued after other output started")
        args = fn.get("arguments")
        if args:
            item.call["function"]["arguments"] += args
            if item.input is None:
                self._emit("response.function_call_arguments.delta", {
                    "item_id": item.id, "output_index": item.index, "delta": args})
            else:
                # A custom tool's input is the string inside the arguments ({"input": "..."}):
                # its text goes out as soon as it is decoded.
                text = item.input.feed(args)
                if text:
                    self._emit("response.custom_tool_call_input.delta", {
                        "item_id": item.id, "output_index": item.index, "delta": text})

    def _custom_rest(self, item: _Item, final: str) -> None:
        """Before ``.done``: what the deltas have not said of the input (all of it when the
        decoder did not find ``input`` in time, so that the deltas add up to it)."""
        sent = item.input.text() if item.input is not None else ""
        if final.startswith(sent):
            if len(final) > len(sent):
                self._emit("response.custom_tool_call_input.delta", {
                    "item_id": item.id, "output_index": item.index, "delta": final[len(sent):]})
        else:
            # The whole arguments say another input than the one streamed (a second
            # "input" member, which JSON readers take last): .done has theirs.
            log.debug("custom tool call %s: the streamed input is not a prefix of the final one", item.id)

    # -- the StreamEncoder interface ---------------------------------------------------
    def feed(self, chunk: JSON) -> bytes:
        if self.phase in (EncoderPhase.DONE, EncoderPhase.FAILED):
            raise ProxyError(ErrorKind.INTERNAL, "chunk after the end of the Responses stream")
        self._start()
        self._chunks.append(chunk)
        if chunk.get("usage"):
            self.usage = usage_from_pivot(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                item = self._reasoning()
                if _wants_summary(self.req):
                    if not item.summary_open:
                        item.summary_open = True
                        self._emit("response.reasoning_summary_part.added", {
                            "item_id": item.id, "output_index": item.index, "summary_index": 0,
                            "part": {"type": "summary_text", "text": ""}})
                    self._emit("response.reasoning_summary_text.delta", {
                        "item_id": item.id, "output_index": item.index, "summary_index": 0,
                        "delta": delta["reasoning_content"]})
                item.text += delta["reasoning_content"]
            if delta.get("thinking_blocks"):
                self._reasoning().blocks.extend(delta["thinking_blocks"])
            if delta.get("content"):
                item = self._message_part("output_text")
                item.text += delta["content"]
                self._emit("response.output_text.delta", {
                    "item_id": item.id, "output_index": item.index, "content_index": len(item.parts),
                    "delta": delta["content"], "logprobs": []})
            if delta.get("refusal"):
                item = self._message_part("refusal")
                item.text += delta["refusal"]
                self._emit("response.refusal.delta", {
                    "item_id": item.id, "output_index": item.index, "content_index": len(item.parts),
                    "delta": delta["refusal"]})
            for tc in delta.get("tool_calls") or []:
                self._tool_call(tc)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return self._flush()

    def _done_output(self) -> list[JSON]:
        return [o for o in self.output if o is not None]

    def finish(self) -> bytes:
        if self.phase in (EncoderPhase.DONE, EncoderPhase.FAILED):
            return b""
        self._start()
        self._close_current()
        self._close_calls()
        self.phase = EncoderPhase.DONE
        status = "incomplete" if self.finish_reason in ("length", "content_filter") else "completed"
        resp = response_object(self.ctx, status, self._done_output(), self.usage, self.finish_reason)
        self._emit("response.completed" if status == "completed" else "response.incomplete", {"response": resp})
        self.ctx.result = {"pivot": fold_chunks(self._chunks), "response": resp}
        return self._flush()

    def fail(self, err: ProxyError) -> bytes:
        if self.phase in (EncoderPhase.DONE, EncoderPhase.FAILED):
            return b""
        code = responses_error_code(err)
        if self.ctx.passthrough:
            self.phase = EncoderPhase.FAILED
            event = {"type": "error", "code": code, "message": err.message, "param": err.param,
                     "sequence_number": self.ctx.fail_seq}
            return b"event: error\ndata: " + jsonutil.dumpb(event) + b"\n\n"
        self._start()
        self.phase = EncoderPhase.FAILED
        self._emit("error", {"code": code, "message": err.message, "param": err.param})
        resp = response_object(self.ctx, "failed", self._done_output(), self.usage,
                               error={"code": code, "message": err.message})
        self._emit("response.failed", {"response": resp})
        return self._flush()
