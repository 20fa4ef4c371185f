"""OpenAI Chat Completions, the client API: ``/v1/chat/completions``.

The pivot *is* Chat Completions, so this side adds nothing but the encoder and the
error shape: a request is the pivot once its nulls are gone, an answer is the pivot
as it is.  The ``openai`` upstream is ``providers.openai_chat``.
"""
from __future__ import annotations

from typing import Any

from providers.base import ClientFormat, StreamContext, StreamEncoder, text_chunk
from tornado_proxy.errors import ProxyError, openai_body
from tornado_proxy.jsonutil import dumpb
from tornado_proxy.pipeline.sse import DONE, encode_json

# What follows the text in the text_chunk of the pivot, encoded.
_TEXT_TAIL = b'"},"finish_reason":null}]}\n\n'


class OpenAIEncoder(StreamEncoder):
    __slots__ = ("include_usage", "ctx", "_text_head")

    def __init__(self, include_usage: bool, ctx: StreamContext | None = None) -> None:
        self.include_usage = include_usage
        self.ctx = ctx
        self._text_head: bytes | None = None

    def text_bytes(self, literals: list[bytes]) -> bytes:
        """``feed(text_chunk(ctx, text))`` for each literal: the chunk around it is the same every time."""
        head = self._text_head
        if head is None:
            ctx = self.ctx
            if ctx is None:
                raise ValueError("the text lane needs the stream context")
            whole = dumpb(text_chunk(ctx, ""))  # ...,"delta":{"content":""},"finish_reason":null}]}
            end = len(whole) - len(_TEXT_TAIL) + 2
            assert whole[end - 1:] + b"\n\n" == b'"' + _TEXT_TAIL
            head = self._text_head = b"data: " + whole[:end]
        if len(literals) == 1:
            return head + literals[0] + _TEXT_TAIL
        return head + (_TEXT_TAIL + head).join(literals) + _TEXT_TAIL

    def feed(self, chunk: dict[str, Any]) -> bytes:
        if not self.include_usage and "usage" in chunk:
            if not chunk.get("choices"):
                return b""  # the usage chunk the client did not ask for
            chunk = {k: v for k, v in chunk.items() if k != "usage"}
        return b"data: " + dumpb(chunk) + b"\n\n"

    def finish(self) -> bytes:
        return DONE

    def fail(self, err: ProxyError) -> bytes:
        # The openai SDK raises APIError on a data frame carrying "error".
        return encode_json(openai_body(err))


class OpenAIChatFormat(ClientFormat):
    name = "openai"

    def parse_request(self, body: dict[str, Any]) -> dict[str, Any]:
        # Many clients send "param": null for "not given"; translators treat absent and
        # null alike only if nulls are gone.
        if any(v is None for v in body.values()):
            return {k: v for k, v in body.items() if v is not None}
        return body

    def render_response(self, pivot: dict[str, Any], ctx: StreamContext) -> dict[str, Any]:
        return pivot

    def new_encoder(self, ctx: StreamContext) -> StreamEncoder:
        return OpenAIEncoder(ctx.include_usage, ctx)

    def error_body(self, err: ProxyError) -> dict[str, Any]:
        return openai_body(err)
