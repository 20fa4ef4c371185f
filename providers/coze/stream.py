"""Coze's chat stream -> pivot chunks.

The wire (Coze "Create chat" streaming reference; coze-py ``_chat_stream_handler`` and
its ``tests/testdata/chat_*_resp.txt``): ``event:``/``data:`` SSE with

* ``conversation.chat.created`` / ``conversation.chat.in_progress``: a Chat object;
* ``conversation.message.delta``: a Message; ``type: "answer"`` carries the text
  (``content``) and maybe ``reasoning_content``; other types (``function_call``,
  ``tool_response``, ``verbose``, ``follow_up``) are the bot's own workings, not answer;
* ``conversation.message.completed``: the whole message again (nothing new);
* ``conversation.chat.completed``: a Chat with ``usage`` (``input_count``,
  ``output_count``, ``token_count``): the answer is over;
* ``conversation.chat.failed``: a Chat whose ``last_error`` has code and msg;
* ``conversation.chat.requires_action``: the bot waits for a local plugin's output;
* ``error``: ``{"code", "msg"}``; ``done``: ``"[DONE]"``, the end of the stream.

Errors that come before any stream (a bad token, an unknown bot) arrive as a plain
JSON body ``{"code": 4100, "msg": ...}`` with HTTP 200: ``CozeDecoder`` notices a body
that starts with ``{`` and hands it over whole as one ``CozeBody`` event.

Phases: START (nothing yet) -> CONTENT (chat created) -> DONE (chat.completed; a
``done`` may follow) ; FAILED after an error.  Unknown event names (Coze adds audio
and card events) are ignored; any known event out of phase is an error.
"""
from __future__ import annotations

from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.sse import MAX_EVENT_BYTES, SSEDecoder

from ..base import Phase, StreamContext, StreamTranslator, stream_cut
from ..toolkit import delta_chunk, usage_chunk
from .errors import code_of, coded_error


class CozeBody:
    """A whole non-SSE answer body the decoder found where a stream was expected."""

    __slots__ = ("raw",)
    event = "coze.body"

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


class CozeDecoder:
    """``SSEDecoder`` for an SSE answer; a JSON body (an error Coze sent with HTTP 200
    instead of a stream) becomes one ``CozeBody`` at the end."""

    __slots__ = ("_sse", "_json", "_mode", "_max")

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._sse = SSEDecoder(max_bytes)
        self._json = b""
        self._mode: str | None = None  # "sse" | "json", decided by the first non-blank byte
        self._max = max_bytes

    def feed(self, data: bytes) -> Any:
        if self._mode is None:
            head = data.lstrip()
            if not head:
                self._json += data
                return []
            self._mode = "json" if head[:1] in (b"{", b"[") else "sse"
            if self._mode == "sse":
                data, self._json = self._json + data, b""
        if self._mode == "json":
            self._json += data
            if len(self._json) > self._max:
                raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream sent an oversized non-stream body")
            return []
        return self._sse.feed(data)

    def finish(self) -> list[Any]:
        if self._mode == "json":
            return [CozeBody(self._json)]
        return self._sse.finish()


_CHAT_EVENTS = ("conversation.chat.created", "conversation.chat.in_progress")


class CozeStream(StreamTranslator):
    __slots__ = ("ctx", "phase", "role_sent", "usage")

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.phase = Phase.START
        self.role_sent = False
        self.usage: dict[str, Any] | None = None

    def _fail(self, err: ProxyError) -> ProxyError:
        self.phase = Phase.FAILED
        return err

    def feed(self, event: Any) -> list[dict[str, Any]]:
        if self.phase is Phase.FAILED:
            return []
        name = event.event
        if name == "coze.body":
            try:
                obj = jsonutil.loads(event.raw)
            except ValueError:
                raise self._fail(ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                                            "upstream sent a body that is neither a stream nor JSON")) from None
            hit = code_of(obj)
            if hit is None:
                raise self._fail(ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                                            "upstream sent a JSON body instead of a stream"))
            raise self._fail(coded_error(*hit))
        if name == "done":
            if self.phase is not Phase.DONE:
                raise self._fail(stream_cut("'done' before conversation.chat.completed"))
            return []
        if name == "error":
            obj = self._json(event)
            hit = code_of(obj) if isinstance(obj, dict) else None
            raise self._fail(coded_error(*hit, where=" mid-stream") if hit is not None else
                             ProxyError(ErrorKind.UPSTREAM_ERROR, f"upstream error mid-stream: {event.data[:300]}"))
        if name is None or not name.startswith("conversation."):
            return []  # not Coze's: nothing we know; unknown events are skipped, as coze-py does
        if self.phase is Phase.DONE:
            raise self._fail(ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"upstream sent {name} after the chat completed"))
        obj = self._json(event)
        if name in _CHAT_EVENTS:
            if self.phase is Phase.START:
                self.phase = Phase.CONTENT
                self.role_sent = True
                return [delta_chunk(self.ctx, {"role": "assistant", "content": ""})]
            return []
        if name == "conversation.message.delta":
            if obj.get("type") != "answer" or obj.get("role", "assistant") != "assistant":
                return []
            delta: dict[str, Any] = {}
            if obj.get("reasoning_content"):
                delta["reasoning_content"] = obj["reasoning_content"]
            if obj.get("content"):
                delta["content"] = obj["content"]
            if not delta:
                return []
            out = []
            if not self.role_sent:
                self.role_sent = True
                self.phase = Phase.CONTENT
                out.append(delta_chunk(self.ctx, {"role": "assistant", "content": ""}))
            out.append(delta_chunk(self.ctx, delta))
            return out
        if name == "conversation.chat.completed":
            self.phase = Phase.DONE
            out = [] if self.role_sent else [delta_chunk(self.ctx, {"role": "assistant", "content": ""})]
            out.append(delta_chunk(self.ctx, {}, "stop"))
            u = obj.get("usage")
            if isinstance(u, dict):
                inp, outp = int(u.get("input_count") or 0), int(u.get("output_count") or 0)
                self.usage = {"prompt_tokens": inp, "completion_tokens": outp,
                              "total_tokens": int(u.get("token_count") or inp + outp)}
                out.append(usage_chunk(self.ctx, self.usage))
            return out
        if name == "conversation.chat.failed":
            le = obj.get("last_error")
            le = le if isinstance(le, dict) else {}
            raise self._fail(coded_error(le.get("code"), le.get("msg"), where=" (the chat failed)"))
        if name == "conversation.chat.requires_action":
            raise self._fail(ProxyError(ErrorKind.UPSTREAM_BAD_REQUEST,
                                        "the Coze bot asked for a local plugin's output (requires_action), "
                                        "which this gateway cannot give"))
        return []  # message.completed, audio.delta, ...: nothing the pivot lacks

    def _json(self, event: Any) -> dict[str, Any]:
        try:
            obj = event.json()
        except ValueError:
            raise self._fail(ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                                        f"upstream sent a {event.event} event that is not JSON")) from None
        if not isinstance(obj, dict):
            raise self._fail(ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                                        f"upstream sent a {event.event} event that is not an object"))
        return obj

    def finish(self) -> list[dict[str, Any]]:
        if self.phase is not Phase.DONE:
            raise stream_cut("no conversation.chat.completed")
        return []
