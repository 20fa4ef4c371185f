"""AWS Bedrock through the Converse API: the ``bedrock`` upstream.

Chat Completions (the pivot) goes to ``POST /model/{modelId}/converse`` or
``/converse-stream``.  Requests are signed with SigV4 (service ``bedrock``), or carry
a Bedrock API key as a bearer token.  Streams come back as
``application/vnd.amazon.eventstream``: binary frames, each with a prelude CRC and a
message CRC, whose JSON payloads are ConverseStream events.

Why botocore: SigV4 (canonical request, double URI-encoding of the path, payload
hash, the HMAC key chain) and the event-stream framing (two CRC32s, typed headers)
are easy to get subtly wrong by hand; botocore is AWS's own, well-kept code for both
(``SigV4Auth``, ``EventStreamBuffer``).  Nothing else of botocore is used (no
sessions, no credential chain, no HTTP).

Shapes follow the Bedrock API reference and botocore's service model
``bedrock-runtime/2023-09-30/service-2.json``.  See ``README.md`` for the
mapping table and for the few fields that are documented drops.
"""
from __future__ import annotations

import time
from typing import Any, Callable
from urllib.parse import quote

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import Account, Provider, StreamContext, StreamTranslator, UpstreamRequest
from ..toolkit import options_problems
from .errors import ERROR_KINDS, classify, error_for
from .eventstream import EventStreamDecoder
from .request import (ANSWER_ALLOWANCE, DOCUMENT_FORMATS, IMAGE_FORMATS,
                      MIN_BUDGET, SERVICE_TIERS, _part_image_url, claude_thinking, convert_messages, convert_tools,
                      converse_request, reasoning_level)
from .response import MALFORMED_STOPS, STOP_REASONS, _bad, convert_usage, finish_reason, translate_converse
from .signing import SIGNING_SERVICE, _signer_class, sigv4_sign
from .stream import BedrockStream

__all__ = [
    "ANSWER_ALLOWANCE", "DOCUMENT_FORMATS", "ERROR_KINDS", "IMAGE_FORMATS",
    "MALFORMED_STOPS", "MIN_BUDGET", "SERVICE_TIERS", "SIGNING_SERVICE", "STOP_REASONS",
    "BedrockProvider", "BedrockStream", "EventStreamDecoder",
    "claude_thinking", "classify", "convert_messages", "convert_tools", "convert_usage", "converse_request",
    "error_for", "finish_reason", "reasoning_level", "sigv4_sign", "translate_converse",
]


_SCHEMA_NAME = "providers/bedrock.options"  # checked by toolkit.options_problems


class BedrockProvider(Provider):
    """Amazon Bedrock Runtime, Converse API.

    Accounts: ``aws_access_key_id`` + ``aws_secret_access_key`` (+ optional
    ``aws_session_token``) for SigV4, or ``api_key`` as a Bedrock API key (bearer).
    The region comes from the account, else ``options.region``.
    """

    type_name = "bedrock"
    native_format = None
    default_base_url = ""  # per region: https://bedrock-runtime.{region}.amazonaws.com
    stream_decoder = "eventstream"

    def __init__(self, conf: dict[str, Any], clock: Callable[[], float] = time.time) -> None:
        super().__init__(conf)
        self.options: dict[str, Any] = dict(conf.get("options") or {})
        # SigV4 puts the signing time in the signature (and AWS rejects one more than
        # five minutes off), so build_request must read the clock; tests pass one in.
        self.clock = clock
        _signer_class()  # load botocore now, not on the first request
        import botocore.eventstream  # noqa: F401

    # -- remote images (fetched by the core: tornado_proxy/pipeline/images.py) --
    def urls_to_fetch(self, req: dict[str, Any], model: dict[str, Any]) -> list[str]:
        """The http(s) image URLs of the request's messages, when ``options.image_urls.fetch``."""
        if not (self.options.get("image_urls") or {}).get("fetch"):
            return []
        out: list[str] = []
        for msg in req.get("messages") or []:
            content = msg.get("content") if isinstance(msg, dict) else None
            for part in content if isinstance(content, list) else []:
                url = _part_image_url(part)
                if url is not None and url.startswith(("http://", "https://")) and url not in out:
                    out.append(url)
        return out

    def image_fetch_policy(self) -> dict[str, Any]:
        """The limits of ``options.image_urls`` (defaults: tornado_proxy.pipeline.images)."""
        return {k: v for k, v in (self.options.get("image_urls") or {}).items() if k != "fetch"}

    def inline_fetched(self, req: dict[str, Any], fetched: dict[str, tuple[str, bytes]]) -> dict[str, Any]:
        """A copy of ``req`` with each fetched URL replaced by a base64 data: URL."""
        import base64

        messages = []
        for msg in req.get("messages") or []:
            content = msg.get("content") if isinstance(msg, dict) else None
            if isinstance(content, list):
                parts = []
                for part in content:
                    url = _part_image_url(part)
                    if url is not None and url in fetched:
                        mime, data = fetched[url]
                        image = part["image_url"] if isinstance(part["image_url"], dict) else {}
                        part = {**part, "image_url": {**image, "url": f"data:{mime};base64,"
                                                                     + base64.b64encode(data).decode("ascii")}}
                    parts.append(part)
                msg = {**msg, "content": parts}
            messages.append(msg)
        return {**req, "messages": messages}

    # -- configuration -------------------------------------------------------
    def validate(self, models: list[dict[str, Any]]) -> list[str]:
        problems = options_problems(_SCHEMA_NAME, self.options, "options", "provider_options")
        for j, a in enumerate(self.conf.get("accounts") or []):
            has_keys = bool(a.get("aws_access_key_id")) and bool(a.get("aws_secret_access_key"))
            if a.get("api_key") and (a.get("aws_access_key_id") or a.get("aws_secret_access_key")):
                problems.append(f"accounts[{j}]: give either api_key (a Bedrock API key) or AWS keys, not both")
            elif not a.get("api_key") and not has_keys:
                problems.append(f"accounts[{j}]: needs aws_access_key_id and aws_secret_access_key, or api_key")
            if not (a.get("region") or self.options.get("region")) and (has_keys or not self.base_url):
                problems.append(f"accounts[{j}]: no region (set the account's region or options.region)")
        for m in models:
            problems += options_problems(_SCHEMA_NAME, m.get("options") or {}, f"model {m.get('id')!r}: options",
                                         "model_options")
            # A glob id ("bedrock-*") can serve any model: only a known model id is checked.
            known = m.get("upstream_model") or (None if any(c in str(m.get("id")) for c in "*?[") else m.get("id"))
            style = (m.get("options") or {}).get("reasoning_style")
            if m.get("reasoning") in ("low", "medium", "high") and (
                    style == "none" or (style is None and known and "anthropic.claude" not in str(known).lower())):
                problems.append(f"model {m.get('id')!r}: reasoning '{m['reasoning']}' needs a Claude model "
                                "(or options.reasoning_style 'claude')")
        return problems

    def region(self, account: Account) -> str:
        region = account.extra.get("region") or self.options.get("region")
        if not region:
            raise ProxyError(ErrorKind.INTERNAL, f"Bedrock account '{account.id}' has no region")
        return str(region)

    def new_decoder(self) -> EventStreamDecoder:
        return EventStreamDecoder()

    # -- the four jobs ---------------------------------------------------------
    def build_request(self, req: dict[str, Any], model: dict[str, Any], account: Account,
                      stream: bool) -> UpstreamRequest:
        body = jsonutil.dumpb(converse_request(req, model))
        model_id = str(model.get("upstream_model") or model["id"])
        base = self.base_url
        if not base or not account.api_key:
            region = self.region(account)
            base = base or f"https://bedrock-runtime.{region}.amazonaws.com"
        # The model id is one path segment: ARNs and "...-v1:0" ids are percent-encoded.
        url = f"{base}/model/{quote(model_id, safe='')}/{'converse-stream' if stream else 'converse'}"
        headers = {"Content-Type": "application/json",
                   "Accept": "application/vnd.amazon.eventstream" if stream else "application/json",
                   **self.extra_headers, **(account.extra.get("headers") or {}), **(model.get("headers") or {})}
        if account.api_key:
            headers["Authorization"] = "Bearer " + account.api_key
        else:
            key_id = account.extra.get("aws_access_key_id")
            secret = account.extra.get("aws_secret_access_key")
            if not key_id or not secret:
                raise ProxyError(ErrorKind.INTERNAL, f"Bedrock account '{account.id}' has no AWS keys")
            headers = sigv4_sign("POST", url, headers, body, access_key=str(key_id), secret_key=str(secret),
                                 session_token=account.extra.get("aws_session_token") or None,
                                 region=self.region(account), when=self.clock())
        return UpstreamRequest("POST", url, headers, body, stream)

    def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
        try:
            obj = jsonutil.loads(body)
        except ValueError:
            raise _bad("a body that is not JSON") from None
        return translate_converse(obj, ctx)

    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        return BedrockStream(ctx)

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ProxyError:
        return classify(status, headers, body)
