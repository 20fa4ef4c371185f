"""Google Gemini (Generative Language API, ``v1beta``): the ``gemini`` upstream.

Pivot (OpenAI Chat Completions) requests become ``models/{m}:generateContent``
or ``models/{m}:streamGenerateContent?alt=sse`` bodies; Gemini responses and SSE
streams become pivot responses and chunks.  The key goes in ``x-goog-api-key``.
``base_url`` is the host (default ``https://generativelanguage.googleapis.com``,
as the google-genai SDK and ``GEMINI_BASE_URL`` have it); the option
``api_version`` (default ``v1beta``) is appended unless ``base_url`` already ends
in a version.

The package, by role: ``request`` (pivot -> ``generateContent`` body; its tool
schemas through ``schema``), ``response`` (the whole answer back), ``stream`` (the SSE
events back), ``errors`` (Google's errors -> ProxyError), ``embeddings``; here
:class:`GeminiProvider` and the native pass-through.  What Gemini-native clients see
(their errors in Google's shape) is the client API ``tornado_proxy.apis.gemini_native``.

Beyond the four jobs of :class:`providers.base.Provider`, this package offers:

* :meth:`GeminiProvider.build_embeddings_request` ``(req, model, account) ->
  UpstreamRequest`` and :meth:`GeminiProvider.translate_embeddings` ``(body, req)
  -> dict``: an OpenAI ``POST /v1/embeddings`` request to ``batchEmbedContents``
  and its answer back to an OpenAI embeddings response.
* :meth:`GeminiProvider.build_native_request`: a Gemini-native client request
  (``generateContent``, ``streamGenerateContent``, ``countTokens``,
  ``embedContent``, ``batchEmbedContents``) forwarded with the model mapped.
* :func:`clean_schema`: JSON Schema -> the OpenAPI subset Gemini's ``Schema`` takes.
* :func:`classify_gemini_error`: Google RPC error bodies -> ProxyError, with
  ``RetryInfo.retryDelay`` and per-day ``QuotaFailure`` turned into ``retry_after``.

Choices made here (README: README.md):

* Tool call ids: Gemini usually sends none, so ids are ``call_{ctx.id}_{i}``
  (``call_{ctx.id}_c{c}_{i}`` for candidates after the first): stable between a
  stream and the same answer non-streamed.  Ids are not sent upstream; a tool
  result is matched to its call by ``tool_call_id`` and sent as a
  ``functionResponse`` with that call's name, in the calls' order.
* ``thoughtSignature`` of a ``functionCall`` part travels in the tool call's
  ``extra_content.google.thought_signature`` and is restored on the next turn.
  Signatures on text parts are not carried (Gemini does not require them back).
* Thought parts (``thought: true``) become ``reasoning_content``; reasoning sent
  back by clients (``reasoning_content``, ``thinking_blocks``) is dropped: Gemini
  takes no thoughts as input.
* ``finish_reason`` chunks are held until the upstream stream ends, because
  grounding metadata (for ``show_search_links``) may come with the last chunk.
"""
from __future__ import annotations

import re
import time
import urllib.parse
from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from .. import ratelimits
from ..base import Account, Provider, StreamContext, StreamTranslator, UpstreamRequest
from ..toolkit import options_problems
from .embeddings import EMBED_CHARS_PER_TOKEN, build_embeddings_body, embedding_inputs, translate_embeddings
from .errors import classify_gemini_error, parse_duration, seconds_until_pacific_midnight
from .request import (SKIP_SIGNATURE, build_generate_body, content_parts,
                      convert_messages, convert_tool_choice, convert_tools, guess_mime, merged_options,
                      parse_data_uri, resolve_reasoning, safety_settings, strip_alias_suffix,
                      thinking_config)
from .response import (convert_usage, grounding_links, links_text, map_finish_reason, render_part,
                       tool_call_from_part, tool_call_id, translate_generate_response)
from .schema import MAX_SCHEMA_DEPTH, MAX_SCHEMA_NODES, clean_schema
from .stream import GeminiStreamTranslator

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_API_VERSION = "v1beta"

_VERSION_SEGMENT = re.compile(r"v\d+(?:alpha|beta)?\d*")

NATIVE_METHODS = ("generateContent", "streamGenerateContent", "countTokens", "embedContent",
                  "batchEmbedContents")

# The public names of the package's parts, for ``from providers.gemini import X``.
__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_BASE_URL",
    "EMBED_CHARS_PER_TOKEN",
    "GeminiProvider",
    "GeminiStreamTranslator",
    "MAX_SCHEMA_DEPTH",
    "MAX_SCHEMA_NODES",
    "NATIVE_METHODS",
    "SKIP_SIGNATURE",
    "build_embeddings_body",
    "build_generate_body",
    "classify_gemini_error",
    "clean_schema",
    "content_parts",
    "convert_messages",
    "convert_tool_choice",
    "convert_tools",
    "convert_usage",
    "embedding_inputs",
    "grounding_links",
    "guess_mime",
    "links_text",
    "map_finish_reason",
    "merged_options",
    "parse_data_uri",
    "parse_duration",
    "render_part",
    "resolve_reasoning",
    "safety_settings",
    "seconds_until_pacific_midnight",
    "strip_alias_suffix",
    "thinking_config",
    "tool_call_from_part",
    "tool_call_id",
    "translate_embeddings",
    "translate_generate_response",
]


# ---------------------------------------------------------------------------
# the provider
# ---------------------------------------------------------------------------

class GeminiProvider(Provider):
    type_name = "gemini"
    native_format = "gemini"
    default_base_url = DEFAULT_BASE_URL
    stream_decoder = "sse"
    rate_limit_headers = ratelimits.GEMINI  # none sent; its per-day quotas reset at midnight Pacific

    def validate(self, models: list[dict[str, Any]]) -> list[str]:
        problems = options_problems("providers/gemini.options", self.conf.get("options") or {},
                                    f"provider '{self.name}' options")
        for m in models:
            problems += options_problems("providers/gemini.options", m.get("options") or {},
                                         f"model '{m.get('id')}' options")
        return problems

    def options(self, model: dict[str, Any]) -> dict[str, Any]:
        return merged_options(self.conf, model)

    def api_root(self) -> str:
        """``base_url`` with the API version (``base_url`` may already end in one)."""
        last = self.base_url.rsplit("/", 1)[-1]
        if _VERSION_SEGMENT.fullmatch(last):
            return self.base_url
        return f"{self.base_url}/{(self.conf.get('options') or {}).get('api_version', DEFAULT_API_VERSION)}"

    def _url(self, model_name: str, method: str, query: str = "") -> str:
        name = urllib.parse.quote(model_name.removeprefix("models/"), safe="-._~")
        return f"{self.api_root()}/models/{name}:{method}" + (f"?{query}" if query else "")

    def _headers(self, model: dict[str, Any], account: Account) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        headers.update(self.extra_headers)
        headers.update(account.extra.get("headers") or {})
        headers.update(model.get("headers") or {})
        if account.api_key:
            headers["x-goog-api-key"] = account.api_key
        return headers

    # -- the four jobs -----------------------------------------------------
    def build_request(self, req: dict[str, Any], model: dict[str, Any], account: Account,
                      stream: bool) -> UpstreamRequest:
        model = strip_alias_suffix(model)
        body = build_generate_body(req, model, self.options(model))
        upstream = str(model["upstream_model"])
        url = self._url(upstream, "streamGenerateContent", "alt=sse") if stream else self._url(upstream, "generateContent")
        return UpstreamRequest("POST", url, self._headers(model, account), jsonutil.dumpb(body), stream)

    def _show_links(self, ctx: StreamContext) -> bool:
        # The translator only sees ctx: the model's options come through ctx.model_entry.
        model = ctx.model_entry
        opts = self.options(model) if model is not None else dict(self.conf.get("options") or {})
        return bool(opts.get("show_search_links"))

    def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
        try:
            obj = jsonutil.loads(body)
        except (ValueError, jsonutil.JSONDecodeError):
            raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini answer is not JSON")
        return translate_generate_response(obj, ctx, self._show_links(ctx))

    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        return GeminiStreamTranslator(ctx, self._show_links(ctx))

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ProxyError:
        # The error path may read the clock: per-day quotas reset at a wall-clock time.
        return classify_gemini_error(status, headers, body, now=time.time())

    # -- embeddings --------------------------------------------------------
    def build_embeddings_request(self, req: dict[str, Any], model: dict[str, Any],
                                 account: Account) -> UpstreamRequest:
        upstream = str(model["upstream_model"])
        body = build_embeddings_body(req, upstream, self.options(model))
        return UpstreamRequest("POST", self._url(upstream, "batchEmbedContents"),
                               self._headers(model, account), jsonutil.dumpb(body), False)

    def translate_embeddings(self, body: bytes, req: dict[str, Any]) -> dict[str, Any]:
        return translate_embeddings(body, req)

    # -- native pass-through -----------------------------------------------
    def build_native_request(self, body: dict[str, Any], raw: bytes, model: dict[str, Any],
                             account: Account, stream: bool, client_headers: dict[str, str],
                             path: str = "") -> UpstreamRequest:
        """A Gemini-native request forwarded with the model mapped.

        ``path`` is the method (``generateContent``, ``countTokens``...);
        ``stream`` (an SSE ``streamGenerateContent``) asks for ``alt=sse``.
        The client's headers are not forwarded.  Model names inside the body
        (``batchEmbedContents`` requests, ``countTokens``'
        ``generateContentRequest``) are rewritten to the upstream model.
        """
        method = path or ("streamGenerateContent" if stream else "generateContent")
        if method not in NATIVE_METHODS:
            raise ProxyError(ErrorKind.NOT_FOUND, f"unknown Gemini method '{method}'")
        model = strip_alias_suffix(model)
        upstream = str(model["upstream_model"])
        name = "models/" + upstream.removeprefix("models/")
        new_body, changed = _rewrite_models(body, name)
        data = jsonutil.dumpb(new_body) if changed else raw
        # Without alt=sse, streamGenerateContent answers one JSON array: the core
        # then forwards it whole (stream=False) with its content type.
        query = "alt=sse" if stream and method == "streamGenerateContent" else ""
        return UpstreamRequest("POST", self._url(upstream, method, query),
                               self._headers(model, account), data, bool(query))

    def stream_complete_marker(self) -> bytes | None:
        return b'"finishReason"'

    def usage_of(self, obj: Any) -> dict[str, Any] | None:
        return convert_usage(obj.get("usageMetadata")) if isinstance(obj, dict) else None


def _rewrite_models(body: dict[str, Any], name: str) -> tuple[dict[str, Any], bool]:
    changed = False
    out = dict(body)
    if isinstance(out.get("model"), str) and out["model"] != name:
        out["model"] = name
        changed = True
    if isinstance(out.get("requests"), list):
        reqs = []
        for r in out["requests"]:
            if isinstance(r, dict) and "model" in r and r["model"] != name:
                r = {**r, "model": name}
                changed = True
            reqs.append(r)
        out["requests"] = reqs
    gcr = out.get("generateContentRequest")
    if isinstance(gcr, dict) and gcr.get("model") != name:
        out["generateContentRequest"] = {**gcr, "model": name}
        changed = True
    return out, changed
