"""The OpenAI Responses client API: ``/v1/responses`` (HTTP and WebSocket).

``ResponsesFormat``: a Responses request -> pivot (``request``); the pivot answer -> a
Response object (``response``) or the Responses event stream (``stream``: ``event:``
lines, ``sequence_number``), in the shapes openai-python's ``ResponseStreamState``
accepts.  The upstream half of the same API (``openai-responses``) is
``providers.openai_responses``; the names both halves share (``ENVELOPE_PREFIX``, error
codes) live there; the request schema is checked by ``tornado_proxy.pipeline.validation``.

Reasoning state (README, "Reasoning state"): pivot thinking blocks from any upstream
reach a Responses client as the ``encrypted_content`` of a ``reasoning`` item, in our
own envelope (``ENVELOPE_PREFIX``), and are unpacked again when the client sends it back.

Nothing here does I/O or reads a clock: ids and times come from ``StreamContext``.
"""
from __future__ import annotations

from typing import Any

from providers.base import ClientFormat, StreamContext, StreamEncoder
from tornado_proxy.errors import ProxyError, openai_body

from .request import (
    CUSTOM_INPUT,
    PIVOT_MAX_TOKENS,
    ROUTE,
    check_request,
    decode_envelope,
    encode_envelope,
    input_to_messages,
    responses_to_pivot_request,
    tool_names,
)
from .response import pivot_to_response, response_object, usage_from_pivot
from .stream import EncoderPhase, ResponsesEncoder

__all__ = [
    "CUSTOM_INPUT", "EncoderPhase", "PIVOT_MAX_TOKENS", "ROUTE", "ResponsesEncoder", "ResponsesFormat",
    "check_request", "decode_envelope", "encode_envelope", "input_to_messages", "pivot_to_response",
    "response_object", "responses_to_pivot_request", "tool_names", "usage_from_pivot",
]

JSON = dict[str, Any]


class ResponsesFormat(ClientFormat):
    """``/v1/responses``: OpenAI Responses requests in, Response objects / events out.

    ``render_response`` and ``new_encoder`` read the client's request from
    ``ctx.client_request`` (the handler puts it there) to echo its parameters
    and to know whether to include reasoning summaries and encrypted reasoning;
    they leave what they answered in ``ctx.result`` for the response store.
    """

    name = "responses"

    def parse_request(self, body: JSON) -> JSON:
        return responses_to_pivot_request(body)

    def parse_with_history(self, body: JSON, history: list[JSON] | None) -> JSON:
        return responses_to_pivot_request(body, history)

    def render_response(self, pivot: JSON, ctx: StreamContext) -> JSON:
        return pivot_to_response(pivot, ctx)

    def new_encoder(self, ctx: StreamContext) -> StreamEncoder:
        return ResponsesEncoder(ctx)

    def error_body(self, err: ProxyError) -> JSON:
        # The Responses API answers HTTP errors in the same envelope as Chat Completions.
        return openai_body(err)

    def context_id(self, rand_hex: str) -> str:
        return "resp_" + rand_hex
