"""ConverseStream events (decoded by ``eventstream``) -> pivot chunks."""
from __future__ import annotations

import enum
from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import StreamContext, StreamTranslator, stream_cut
from ..toolkit import delta_chunk, usage_chunk
from .errors import error_for
from .response import _bad, convert_usage, finish_reason


class _Phase(enum.Enum):
    """ConverseStream phases and the events each accepts (exceptions: in any phase).

    START:   messageStart
    CONTENT: contentBlockStart, contentBlockDelta, contentBlockStop, messageStop
    STOPPED: metadata (usage and latency come after messageStop)
    DONE:    nothing
    FAILED:  nothing (an error was raised)
    """

    START = "start"
    CONTENT = "content"
    STOPPED = "stopped"
    DONE = "done"
    FAILED = "failed"


class _Block:
    __slots__ = ("kind", "tool_index", "text", "signature", "redacted", "closed")

    def __init__(self, kind: str, tool_index: int = -1) -> None:
        self.kind = kind              # "text" | "reasoning" | "tool"
        self.tool_index = tool_index
        self.text: list[str] = []
        self.signature = ""
        self.redacted = ""
        self.closed = False


class BedrockStream(StreamTranslator):
    """ConverseStream messages -> pivot chunks.

    Text and reasoning blocks have no ``contentBlockStart``: their first delta opens
    them.  A reasoning block's text streams as ``reasoning_content``; the whole
    block (with its signature, or its redacted bytes) is emitted as one
    ``thinking_blocks`` delta when it stops.  ``metadata`` gives the usage chunk and
    the latency (``ctx.upstream_latency_ms``).
    """

    __slots__ = ("ctx", "phase", "blocks", "tools")

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.phase = _Phase.START
        self.blocks: dict[int, _Block] = {}
        self.tools = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return delta_chunk(self.ctx, delta, finish)

    def _fail(self, err: ProxyError) -> ProxyError:
        self.phase = _Phase.FAILED
        return err

    def feed(self, event: Any) -> list[dict[str, Any]]:
        headers = event.headers
        mtype = headers.get(":message-type")
        if mtype == "exception":
            etype = str(headers.get(":exception-type") or "")
            try:
                body = jsonutil.loads(event.payload)
            except ValueError:
                body = None
            msg = body.get("message") if isinstance(body, dict) else None
            if not isinstance(msg, str):
                msg = event.payload.decode("utf-8", "replace")[:500]
            raise self._fail(error_for(etype[:1].upper() + etype[1:], msg))
        if mtype == "error":
            raise self._fail(ProxyError(ErrorKind.UPSTREAM_ERROR,
                                        f"Bedrock stream error {headers.get(':error-code')}: "
                                        f"{headers.get(':error-message')}"))
        if mtype != "event":
            raise self._fail(_bad(f"an event-stream message of type {mtype!r}"))
        etype = headers.get(":event-type")
        try:
            data = jsonutil.loads(event.payload)
        except ValueError:
            raise self._fail(_bad(f"a {etype} event that is not JSON")) from None
        if not isinstance(data, dict):
            raise self._fail(_bad(f"a {etype} event that is not an object"))
        try:
            return self._event(etype, data)
        except ProxyError as err:
            raise self._fail(err) from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise self._fail(_bad(f"a malformed {etype} event ({type(exc).__name__}: {exc})")) from None

    def _event(self, etype: Any, data: dict[str, Any]) -> list[dict[str, Any]]:
        phase = self.phase
        if etype == "messageStart" and phase is _Phase.START:
            self.phase = _Phase.CONTENT
            return [self._chunk({"role": "assistant", "content": ""})]
        if phase is _Phase.CONTENT:
            if etype == "contentBlockDelta":
                return self._delta(int(data["contentBlockIndex"]), data["delta"])
            if etype == "contentBlockStart":
                return self._start(int(data["contentBlockIndex"]), data["start"])
            if etype == "contentBlockStop":
                return self._stop(int(data["contentBlockIndex"]))
            if etype == "messageStop":
                out: list[dict[str, Any]] = []
                for idx in sorted(self.blocks):
                    out.extend(self._stop(idx))
                out.append(self._chunk({}, finish_reason(data.get("stopReason"))))
                self.phase = _Phase.STOPPED
                return out
        if etype == "metadata" and phase is _Phase.STOPPED:
            self.phase = _Phase.DONE
            metrics = data.get("metrics")
            if isinstance(metrics, dict) and "latencyMs" in metrics:
                self.ctx.upstream_latency_ms = metrics["latencyMs"]
            usage = convert_usage(data.get("usage"))
            if usage is None:
                return []
            return [usage_chunk(self.ctx, usage)]
        raise _bad(f"a {etype!r} event in phase {phase.value}")

    def _start(self, idx: int, start: dict[str, Any]) -> list[dict[str, Any]]:
        if idx in self.blocks:
            raise _bad(f"a second contentBlockStart for block {idx}")
        tu = start.get("toolUse")
        if not isinstance(tu, dict):
            raise _bad(f"a contentBlockStart of an unexpected kind ({', '.join(sorted(start))})")
        block = self.blocks[idx] = _Block("tool", self.tools)
        self.tools += 1
        return [self._chunk({"tool_calls": [{"index": block.tool_index, "id": tu["toolUseId"], "type": "function",
                                             "function": {"name": tu["name"], "arguments": ""}}]})]

    def _delta(self, idx: int, delta: dict[str, Any]) -> list[dict[str, Any]]:
        block = self.blocks.get(idx)
        if block is not None and block.closed:
            raise _bad(f"a delta for block {idx} after it stopped")
        if "text" in delta:
            if block is None:
                block = self.blocks[idx] = _Block("text")
            if block.kind != "text":
                raise _bad(f"text in {block.kind} block {idx}")
            text = str(delta["text"])
            return [self._chunk({"content": text})] if text else []
        if "reasoningContent" in delta:
            if block is None:
                block = self.blocks[idx] = _Block("reasoning")
            if block.kind != "reasoning":
                raise _bad(f"reasoning in {block.kind} block {idx}")
            rc = delta["reasoningContent"]
            if "text" in rc:
                text = str(rc["text"])
                block.text.append(text)
                return [self._chunk({"reasoning_content": text})] if text else []
            if "signature" in rc:
                block.signature += str(rc["signature"])
                return []
            if "redactedContent" in rc:
                block.redacted += str(rc["redactedContent"])
                return []
            raise _bad(f"a reasoningContent delta of an unexpected kind ({', '.join(sorted(rc))})")
        if "toolUse" in delta:
            if block is None or block.kind != "tool":
                raise _bad(f"toolUse input for block {idx}, which is not a started tool block")
            fragment = str(delta["toolUse"]["input"])
            if not fragment:
                return []
            return [self._chunk({"tool_calls": [{"index": block.tool_index,
                                                 "function": {"arguments": fragment}}]})]
        raise _bad(f"a contentBlockDelta of an unexpected kind ({', '.join(sorted(delta))})")

    def _stop(self, idx: int) -> list[dict[str, Any]]:
        block = self.blocks.get(idx)
        if block is None:
            # An empty text block may stop without any delta.
            block = self.blocks[idx] = _Block("text")
        if block.closed:
            return []
        block.closed = True
        if block.kind != "reasoning":
            return []
        if block.redacted:
            tb: dict[str, Any] = {"type": "redacted_thinking", "data": block.redacted}
        else:
            tb = {"type": "thinking", "thinking": "".join(block.text), "signature": block.signature}
        return [self._chunk({"thinking_blocks": [tb]})]

    def finish(self) -> list[dict[str, Any]]:
        if self.phase is _Phase.DONE:
            return []
        if self.phase is _Phase.FAILED:
            raise _bad("a stream that already failed")
        what = {_Phase.START: "no messageStart", _Phase.CONTENT: "no messageStop",
                _Phase.STOPPED: "no metadata after messageStop"}[self.phase]
        self.phase = _Phase.FAILED
        raise stream_cut(what)
