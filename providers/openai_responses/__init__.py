"""The ``openai-responses`` upstream: OpenAI's Responses API (or any compatible one).

Pivot Chat Completions request -> ``POST {base_url}/responses`` (``request``); the
Response object (``response``) or its event stream (``stream``) -> pivot; Responses
error objects -> our kinds (``errors``).  The client half of the same API
(``/v1/responses``) lives in ``tornado_proxy.apis.openai_responses`` and takes from here
the names both halves share: the envelope prefix, the error codes and ``thinking_block``
(what the two pass each other per request are ``StreamContext``'s Responses fields:
``client_request``, ``passthrough``, ``fail_seq``, ``result``).

Reasoning state (README, "Reasoning state"): a Responses ``reasoning`` output
item becomes a pivot ``thinking_blocks`` entry ``{"type": "thinking",
"thinking": <summary text>, "signature": <encrypted_content>, "id": <rs_ id>}``
and goes back upstream as a ``reasoning`` input item on the next turn, so a chat
client keeps OpenAI's reasoning across tool calls without ``store``.

Nothing here does I/O or reads a clock: ids and times come from ``StreamContext``.
"""
from __future__ import annotations

import urllib.parse
from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from .. import ratelimits
from ..base import Account, Provider, StreamContext, StreamTranslator, UpstreamRequest, default_classify
from ..toolkit import options_problems, upstream_json, usage_in
from .errors import error_from_responses, responses_error_code
from .request import _options, messages_to_input, pivot_to_responses
from .response import responses_to_pivot, thinking_block, usage_to_pivot
from .stream import ResponsesToPivot, StreamPhase

__all__ = [
    "ENVELOPE_PREFIX", "ResponsesProvider", "ResponsesToPivot", "StreamPhase", "error_from_responses",
    "messages_to_input", "pivot_to_responses", "responses_error_code", "responses_to_pivot", "thinking_block",
    "usage_to_pivot",
]

JSON = dict[str, Any]

SCHEMA_NAME = "providers/openai-responses.options"  # checked by toolkit.options_problems

# Reasoning items we hand to Responses clients carry pivot thinking blocks (from
# Anthropic, Gemini, Bedrock...) in this envelope: "tpr1." + base64url(JSON list).
ENVELOPE_PREFIX = "tpr1."


class ResponsesProvider(Provider):
    type_name = "openai-responses"
    native_format = "responses"
    default_base_url = "https://api.openai.com/v1"
    # OpenAI's API limits, and the windows of ChatGPT-plan (Codex) accounts
    rate_limit_headers = ratelimits.OPENAI + ratelimits.CODEX

    def validate(self, models: list[JSON]) -> list[str]:
        problems = options_problems(SCHEMA_NAME, self.conf.get("options") or {}, "options")
        for m in models:
            problems += options_problems(SCHEMA_NAME, m.get("options") or {}, f"model {m.get('id')!r}: options")
        return problems

    def _headers(self, account: Account, model: JSON, stream: bool) -> dict[str, str]:
        opts = _options(self.conf, model)
        headers = {"content-type": "application/json",
                   "accept": "text/event-stream" if stream else "application/json"}
        if account.api_key:
            if opts.get("auth_header") == "api-key":
                # Azure OpenAI's key header.
                headers["api-key"] = account.api_key
            else:
                headers["authorization"] = "Bearer " + account.api_key
        headers.update(self.extra_headers)
        headers.update(account.extra.get("headers") or {})
        headers.update(model.get("headers") or {})
        return headers

    def _url(self, model: JSON, suffix: str = "") -> str:
        opts = _options(self.conf, model)
        url = self.base_url + (opts.get("path") or "/responses") + suffix
        if opts.get("api_version"):
            url += ("&" if "?" in url else "?") + "api-version=" + str(opts["api_version"])
        return url

    def build_request(self, req: JSON, model: JSON, account: Account, stream: bool) -> UpstreamRequest:
        body = pivot_to_responses(req, model, self.conf, stream)
        return UpstreamRequest("POST", self._url(model), self._headers(account, model, stream),
                               jsonutil.dumpb(body), stream)

    def translate_response(self, body: bytes, ctx: StreamContext) -> JSON:
        return responses_to_pivot(upstream_json(body, "a body", obj=False), ctx)

    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        return ResponsesToPivot(ctx)

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ProxyError:
        err = default_classify(status, headers, body)
        if status == 429 and b"insufficient_quota" in body:
            # OpenAI says "429" for an empty wallet too; waiting will not help.
            return ProxyError(ErrorKind.UPSTREAM_PAYMENT, err.message, upstream_status=status, headers=headers)
        return err

    def build_native_request(self, body: JSON, raw: bytes, model: JSON, account: Account, stream: bool,
                             client_headers: dict[str, str], path: str = "") -> UpstreamRequest:
        upstream_model = model.get("upstream_model")
        prompt = model.get("system_prompt")
        if (upstream_model and body.get("model") != upstream_model) or prompt:
            body = {**body, "model": upstream_model or body.get("model")}
            if prompt:
                body["instructions"] = prompt + ("\n\n" + body["instructions"] if body.get("instructions") else "")
            raw = jsonutil.dumpb(body)
        return UpstreamRequest("POST", self._url(model, path), self._headers(account, model, stream), raw, stream)

    def build_resource_request(self, method: str, segments: list[str], query: str,
                               account: Account) -> UpstreamRequest:
        """``GET/DELETE /responses/{id}``, ``.../cancel``, ``.../input_items``.

        ``segments`` are the path's parts after ``/responses`` (each quoted here, so none
        can add a path level or a query), ``query`` an already encoded query string."""
        url = self._url({}, "".join("/" + urllib.parse.quote(s, safe="") for s in segments))
        if query:
            url += ("&" if "?" in url else "?") + query
        headers = self._headers(account, {}, False)
        if method != "POST":
            headers.pop("content-type", None)
        return UpstreamRequest(method, url, headers, b"" if method == "POST" else None, False)

    def stream_complete_marker(self) -> bytes | None:
        # Both good endings (response.completed and response.incomplete) carry the
        # final usage, at the end of their response object; no other event has
        # "input_tokens" (created/in_progress say "usage":null, items have none).
        return b'"input_tokens"'

    def usage_of(self, obj: Any) -> dict[str, Any] | None:
        # A Response's ``usage``, or the one of a stream event's ``response``.
        return usage_to_pivot(usage_in(obj, "response"))
