"""``streamGenerateContent?alt=sse`` events -> pivot chunks (:class:`GeminiStreamTranslator`)."""
from __future__ import annotations

from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import Phase, StreamContext, StreamTranslator, stream_cut
from ..toolkit import delta_chunk, usage_chunk
from .response import (
    _check_prompt_block,
    _stream_error,
    convert_usage,
    grounding_links,
    links_text,
    map_finish_reason,
    render_part,
    tool_call_from_part,
)


class _Candidate:
    __slots__ = ("index", "started", "calls", "finish", "links")

    def __init__(self, index: int) -> None:
        self.index = index
        self.started = False       # role sent
        self.calls = 0             # tool calls emitted so far (next tool call index)
        self.finish: str | None = None   # Gemini finishReason, once seen
        self.links: list[tuple[str, str]] = []


class GeminiStreamTranslator(StreamTranslator):
    """``streamGenerateContent?alt=sse`` events -> pivot chunks.

    Each event is a whole ``GenerateContentResponse`` holding new parts only.
    Phases and the events each accepts:

    * START: a response chunk (candidates and/or usageMetadata), a prompt block
      (raises CONTENT_FILTER) or an error object (raises).
    * CONTENT (a candidate has started): the same.
    * DONE (every candidate seen has its finishReason): chunks without new
      parts (usageMetadata, groundingMetadata); new parts are an error.
    * FAILED: nothing; ``feed`` raises.

    ``finish()`` in DONE emits the held search links, one ``finish_reason``
    chunk per candidate and the usage chunk; anywhere else it raises stream_cut.
    """

    def __init__(self, ctx: StreamContext, show_links: bool = False) -> None:
        self.ctx = ctx
        self.show_links = show_links
        self.phase = Phase.START
        self.cands: dict[int, _Candidate] = {}
        self.usage: dict[str, Any] | None = None

    def _delta(self, cand: _Candidate, delta: dict[str, Any]) -> dict[str, Any]:
        if not cand.started:
            cand.started = True
            delta = {"role": "assistant", **delta}
        return delta_chunk(self.ctx, delta, index=cand.index)

    def feed(self, event: Any) -> list[dict[str, Any]]:
        if self.phase is Phase.FAILED:
            raise ProxyError(ErrorKind.INTERNAL, "stream translator fed after it failed")
        data = getattr(event, "data", event)
        if not isinstance(data, str):
            data = bytes(data).decode("utf-8", "replace")
        if not data.strip():
            return []
        try:
            obj = jsonutil.loads(data)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            if "error" in obj:
                raise _stream_error(obj, data)
            _check_prompt_block(obj)
            return self._response(obj)
        except ProxyError:
            self.phase = Phase.FAILED
            raise
        except (ValueError, TypeError, AttributeError, KeyError, jsonutil.JSONDecodeError) as exc:
            self.phase = Phase.FAILED
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"bad Gemini stream event: {exc}")

    def _response(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if obj.get("usageMetadata") is not None:
            # Every chunk carries the running totals: set, don't add.
            self.usage = convert_usage(obj["usageMetadata"])
        for pos, raw in enumerate(obj.get("candidates") or []):
            c = int(raw.get("index", pos) or 0)
            cand = self.cands.get(c)
            if cand is None:
                cand = self.cands[c] = _Candidate(c)
            rendered_parts = [r for r in map(render_part, (raw.get("content") or {}).get("parts") or [])
                              if r is not None]
            if cand.finish is not None and rendered_parts:
                raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                                 f"Gemini sent content for candidate {c} after its finishReason")
            for kind, value in rendered_parts:
                if kind == "call":
                    call = tool_call_from_part(value, self.ctx, c, cand.calls)
                    out.append(self._delta(cand, {"tool_calls": [{"index": cand.calls, **call}]}))
                    cand.calls += 1
                elif kind == "reasoning":
                    out.append(self._delta(cand, {"reasoning_content": value}))
                else:
                    out.append(self._delta(cand, {"content": value}))
            for link in grounding_links(raw.get("groundingMetadata")):
                if link not in cand.links:
                    cand.links.append(link)
            if raw.get("finishReason") and cand.finish is None:
                cand.finish = raw["finishReason"]
        if self.cands:
            done = all(c.finish is not None for c in self.cands.values())
            self.phase = Phase.DONE if done else Phase.CONTENT
        return out

    def finish(self) -> list[dict[str, Any]]:
        if self.phase is Phase.FAILED:
            return []
        if self.phase is not Phase.DONE:
            raise stream_cut("no finishReason from Gemini")
        out: list[dict[str, Any]] = []
        for c in sorted(self.cands):
            cand = self.cands[c]
            if self.show_links and cand.links:
                out.append(self._delta(cand, {"content": links_text(cand.links)}))
            delta: dict[str, Any] = {} if cand.started else {"role": "assistant", "content": ""}
            cand.started = True
            out.append(delta_chunk(self.ctx, delta, map_finish_reason(cand.finish or "", cand.calls > 0), c))
        if self.usage is not None:
            out.append(usage_chunk(self.ctx, self.usage))
        return out

    def fail(self, err: ProxyError) -> list[dict[str, Any]]:
        self.phase = Phase.FAILED
        return []
