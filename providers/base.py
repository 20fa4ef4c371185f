"""The contract between the server core and the vendor modules.

This package never imports tornado: everything here is pure data in, data out, so
every translation is tested without a network.

The pivot
=========
Every request travels through the gateway as an **OpenAI Chat Completions**
request dict (the *pivot*), and every answer comes back as a Chat Completions
response dict or a sequence of ``chat.completion.chunk`` dicts.  A client format
(``ClientFormat``) turns its own request into the pivot and the pivot answer back
into its own shape; an upstream format (``Provider``) turns the pivot request into
the upstream's request and the upstream's answer into the pivot.  Same-format
routes (OpenAI client -> ``openai`` upstream, Anthropic client -> ``anthropic``
upstream, ...) skip the pivot and pass bytes through.

Pivot extensions (documented in README, "Reasoning state"); these are the fields a
plain OpenAI Chat Completions message does not have:

* assistant message / delta ``reasoning_content: str``: visible reasoning text.
* assistant message ``thinking_blocks: list`` (and in a stream, a delta with
  ``thinking_blocks`` holding *complete* blocks, emitted when a block ends):
  ``{"type": "thinking", "thinking": str, "signature": str}`` or
  ``{"type": "redacted_thinking", "data": str}``.  Anthropic and Bedrock
  thinking map here 1:1.  OpenAI Responses reasoning items map here too as
  ``{"type": "thinking", "thinking": <summary text>, "signature":
  <encrypted_content>, "id": <rs_ id>}``.  A client sends the blocks back
  on the assistant message of the next turn and the provider restores them.
* tool call ``extra_content: {"google": {"thought_signature": str}}``: Gemini's
  ``thoughtSignature`` of a ``functionCall`` part (the same field Google's own
  OpenAI-compatible endpoint uses).
* usage: ``prompt_tokens``, ``completion_tokens``, ``total_tokens``,
  ``prompt_tokens_details: {"cached_tokens": int}`` and, where the upstream
  reports it, ``prompt_tokens_details.cache_creation_tokens`` and
  ``completion_tokens_details: {"reasoning_tokens": int}``.  ``prompt_tokens``
  always *includes* cached and cache-creation tokens (OpenAI's convention), so
  a translator from Anthropic adds ``input_tokens + cache_read_input_tokens +
  cache_creation_input_tokens``.
* finish_reason: ``stop`` | ``length`` | ``tool_calls`` | ``content_filter``.

Streams in the pivot: the first chunk carries ``delta.role = "assistant"``; tool
call deltas carry ``index`` (0-based, in order of the tool calls, not of content
blocks), ``id``/``type``/``function.name`` on the first delta of a call and
``function.arguments`` fragments after; the last content chunk carries
``finish_reason``; then a chunk with ``choices: []`` and ``usage`` (always emitted
when the upstream reported usage; the OpenAI client encoder drops it unless the
client asked with ``stream_options.include_usage``).

Errors are :class:`tornado_proxy.errors.ProxyError` (this package may import
``tornado_proxy.errors`` and ``tornado_proxy.jsonutil``, which do not import tornado).
"""
from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable

from tornado_proxy.errors import ErrorKind, ProxyError, from_status
# (re-exported: the fused text lane's patterns live with the lane)
from tornado_proxy.pipeline.text_lane import PLAIN_JSON_STRING as PLAIN_JSON_STRING, TextLane as TextLane  # noqa: F401

from . import headers as headers_mod
from .headers import RequestInfo as RequestInfo  # (re-exported)
from .ratelimits import NONE as NO_RATE_LIMITS, RateLimitHeaders


@dataclass(slots=True)
class StreamContext:
    """What a translator needs that it must not make up itself, and what one request's
    parts hand each other.  One per request.

    Translators read no clock and draw no random ids: everything that would make
    their output differ between two runs comes in here.  Every field is typed and
    slotted (translators and encoders read it per chunk); a part that needs to pass
    something new adds a field here, with its default.
    """

    id: str                      # "chatcmpl-..." / "msg_..." / "resp_..." as the client format wants
    created: int                 # unix seconds
    model: str                   # the model name the client asked for (echoed back)
    include_usage: bool = False  # OpenAI clients: stream_options.include_usage
    # The model's config entry the route resolved (``Provider``'s ``model`` argument),
    # for a translator that reads its options (Gemini: ``show_search_links``); None on
    # routes that did not put it here (the pipeline then resolves it again).
    model_entry: dict[str, Any] | None = None
    # Bedrock: the latency the upstream reported (``metrics.latencyMs``), once it has.
    upstream_latency_ms: int | None = None
    # -- the Responses client API (/v1/responses) --------------------------------------
    # The client's Responses request: the Response objects we render echo its
    # parameters, as OpenAI's do (set by the handler; None elsewhere).
    client_request: dict[str, Any] | None = None
    # Set by the handler when the upstream's own Responses stream is passed through:
    # an error then is one ``error`` event continuing the upstream's numbering
    # (``fail_seq``, its next sequence_number), not a response of our own.
    passthrough: bool = False
    fail_seq: int = 0
    # Where render_response / the encoder leave what they answered, for the handler
    # to keep in the response store: {"pivot": chat.completion, "response": Response}.
    result: dict[str, Any] | None = None


@dataclass
class UpstreamRequest:
    """An HTTP request to send upstream, fully built (headers include auth)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    stream: bool = False

    def __post_init__(self) -> None:
        # orjson writes into a 4 KiB buffer and a small result keeps all of it: a body
        # held for a whole stream would cost 4 KiB instead of its size.  Copied exact.
        body = self.body
        if body is not None and len(body) < 3072:
            self.body = bytes(memoryview(body))


@dataclass
class Account:
    """One credential of a provider, as the scheduler hands it out."""

    id: str
    api_key: str | None = None
    weight: float = 1.0
    # Anything else from the account's config entry (aws keys, region, oauth fields...)
    extra: dict[str, Any] = field(default_factory=dict)


class Phase(enum.Enum):
    """The phases of a stream translator; each translator documents which events it accepts in each."""

    START = "start"
    CONTENT = "content"
    DONE = "done"
    FAILED = "failed"


class StreamTranslator(ABC):
    """Upstream stream events -> pivot chunks.  One per request.  No I/O, no clock.

    A subclass implements ``feed`` and ``finish``; ``fail`` and ``text_lane`` have defaults.

    ``feed(event)`` takes one decoded upstream event (an ``SSEEvent`` or, for
    Bedrock, one event-stream message) and returns the pivot chunk dicts it
    completes.  ``finish()`` is called when the upstream transfer ended normally:
    it returns any last chunks, or raises ``ProxyError(UPSTREAM_STREAM_CUT)`` if
    the stream ended before its terminal event.  ``fail(err)`` is called when the
    transfer failed; it returns chunks to emit before the error frame (usually none).
    An ``error`` event in the stream raises ``ProxyError``.
    """

    @abstractmethod
    def feed(self, event: Any) -> list[dict[str, Any]]:
        """One decoded upstream event -> the pivot chunks it completes."""

    @abstractmethod
    def finish(self) -> list[dict[str, Any]]:
        """The upstream transfer ended normally -> the last chunks (or raise stream_cut)."""

    def fail(self, err: ProxyError) -> list[dict[str, Any]]:
        return []

    #: The fused text lane (optional; SSE upstreams).  ``text_lane()`` returns, for
    #: the translator's state at that moment, a ``TextLane`` whose patterns match the
    #: event blocks that are plain text deltas ``feed`` would turn into exactly
    #: ``text_chunk(ctx, text)`` and nothing else, changing no state; or ``None`` when
    #: no such event can come next.  The decoder asks again after every event it
    #: hands to ``feed``, so the lane always reflects every earlier event.
    text_lane: Any = None


def text_chunk(ctx: StreamContext, text: str) -> dict[str, Any]:
    """The pivot chunk of a text delta, as every translator with a text lane emits it."""
    return {"id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created, "model": ctx.model,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


class StreamEncoder(ABC):
    """Pivot chunks -> the bytes of the client's stream format.  One per request.

    ``feed(chunk)`` returns bytes to write (maybe ``b""``); ``finish()`` the closing
    bytes (``data: [DONE]``, ``message_stop``, ``response.completed``...);
    ``fail(err)`` the error frame in the client's format.  A subclass implements all
    three; ``text_bytes`` is optional.
    """

    @abstractmethod
    def feed(self, chunk: dict[str, Any]) -> bytes:
        """One pivot chunk -> the bytes to write (maybe ``b""``)."""

    @abstractmethod
    def finish(self) -> bytes:
        """The closing bytes of a stream that ended normally."""

    @abstractmethod
    def fail(self, err: ProxyError) -> bytes:
        """The error frame, in the client's format, for a stream that failed."""

    #: The fused text lane (optional): ``text_bytes(literals)`` returns what ``feed``
    #: returns for ``text_chunk(ctx, text)`` of each text in turn, joined, given their
    #: JSON string literals without quotes, none empty (see ``TextLane``).
    text_bytes: Any = None


class ClientFormat(ABC):
    """A format clients speak to us: parse its requests, render our answers in it.

    A subclass implements ``parse_request``, ``render_response``, ``new_encoder`` and
    ``error_body``; ``context_id`` has a default (a ``chatcmpl-`` id).
    """

    name = "openai"          # "openai" | "anthropic" | "responses" | "gemini"

    @abstractmethod
    def parse_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """Client request -> pivot request.  Raises ProxyError(INVALID_REQUEST, param=...)."""

    @abstractmethod
    def render_response(self, pivot: dict[str, Any], ctx: StreamContext) -> dict[str, Any]:
        """The pivot chat.completion -> the client's response body."""

    @abstractmethod
    def new_encoder(self, ctx: StreamContext) -> StreamEncoder:
        """The encoder of one streamed answer."""

    @abstractmethod
    def error_body(self, err: ProxyError) -> dict[str, Any]:
        """An error, in the API's own words."""

    def context_id(self, rand_hex: str) -> str:
        """The response id for this format, from random hex the handler draws."""
        return "chatcmpl-" + rand_hex


class Provider(ABC):
    """An upstream API.  One instance per configured provider entry.

    ``conf`` is the provider's config entry (``name``, ``type``, ``base_url``,
    ``headers``, ``timeouts``, ``accounts``, ``options``...).  ``model`` arguments
    are a model's config entry (``id``, ``provider``, ``upstream_model``,
    ``reasoning``, ``max_tokens``, ``system_prompt``, ``headers``, ``options``...).

    A subclass implements ``build_request``, ``translate_response`` and ``new_stream``
    (a provider that answers in-process derives from ``LocalProvider`` instead).  The
    rest are defaults: ``validate``, ``classify_error``, ``finish_request``,
    ``new_exchange``; one with a ``native_format`` also overrides
    ``build_native_request`` and ``stream_complete_marker``.
    """

    type_name = ""
    # The client format this upstream speaks natively ("openai", "anthropic",
    # "responses", "gemini"), for byte pass-through; None if none.
    native_format: str | None = None
    default_base_url = ""
    # "sse" or "eventstream": which decoder the core feeds the upstream bytes to.
    stream_decoder = "sse"
    # Does this provider answer locally (no HTTP)? True for a LocalProvider (EchoProvider).
    local = False

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.name: str = conf["name"]
        self.base_url: str = (conf.get("base_url") or self.default_base_url).rstrip("/")
        self.extra_headers: dict[str, str] = dict(conf.get("headers") or {})
        self.session_id_header: str = str(conf.get("session_id_header") or headers_mod.DEFAULT_SESSION_HEADER).lower()
        bad = headers_mod.problems(self.extra_headers, "headers")
        if bad:
            raise ValueError("; ".join(bad))
        self._templates = headers_mod.templated(self.extra_headers)

    # -- configuration -------------------------------------------------------
    def validate(self, models: list[dict[str, Any]]) -> list[str]:
        """Problems with this provider's config or its models' options (checked at start)."""
        return []

    # -- the four jobs ---------------------------------------------------------
    @abstractmethod
    def build_request(self, req: dict[str, Any], model: dict[str, Any], account: Account,
                      stream: bool) -> UpstreamRequest:
        """Pivot request (model already resolved) -> the upstream HTTP request."""

    @abstractmethod
    def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
        """The upstream's whole (non-streaming) 2xx body -> a pivot chat.completion dict."""

    @abstractmethod
    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        """The translator of one streamed answer."""

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> ProxyError:
        """A non-2xx upstream answer -> ProxyError (with retry_after from headers/body)."""
        return default_classify(status, headers, body)

    def finish_request(self, up: UpstreamRequest, info: RequestInfo, model: dict[str, Any],
                       account: Account) -> UpstreamRequest:
        """The last look at a built request, with what the client sent besides its body:
        fills header templates (``providers/headers.py``).  A provider that takes
        something from the client's headers overrides this (validating what it takes)."""
        templates = self._templates
        own = model.get("headers"), account.extra.get("headers")
        if own[0] or own[1]:
            templates = {**templates, **headers_mod.templated(*own)}
        if templates:
            headers_mod.expand(up.headers, templates, info, self.session_id_header)
        return up

    def new_exchange(self, up: UpstreamRequest, ctx: StreamContext) -> "Exchange | None":
        """For an upstream whose non-streaming answer takes more than one request (create,
        then poll): the Exchange that follows up the answer to ``up``; None (the default)
        for a one-request answer, which ``translate_response`` turns into the pivot."""
        return None

    # -- native pass-through -------------------------------------------------
    def build_native_request(self, body: dict[str, Any], raw: bytes, model: dict[str, Any],
                             account: Account, stream: bool, client_headers: dict[str, str],
                             path: str = "") -> UpstreamRequest:
        """Same-format route: forward the client's body with only the model mapped.
        Called only when the client's format is ``native_format``, so a provider
        without one (the default, None) leaves this as it is."""
        raise NotImplementedError(f"{type(self).__name__} has no native format to pass through")

    def stream_complete_marker(self) -> bytes | None:
        """Bytes whose presence near the end of a passed-through stream means it finished."""
        return None

    # The format's first stream event carries usage the last ones may not (Anthropic's
    # message_start: the input tokens): a passed-through stream keeps its first read.
    usage_in_first_event = False

    def usage_of(self, obj: Any) -> dict[str, Any] | None:
        """Usage in pivot terms from one of this upstream's own answers or stream
        events, passed through to a client of the same format (for metrics).  The
        default reads OpenAI's ``usage``; an upstream with its own shape overrides it."""
        u = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(u, dict) and ("prompt_tokens" in u or "completion_tokens" in u):
            return u
        return None

    #: The rate-limit headers this upstream sends (``providers/ratelimits.py``), which the
    #: scheduler reads for an account's headroom and for when a spent limit refills.
    #: Empty by default (none the gateway reads); an instance may set its own from its config.
    rate_limit_headers: RateLimitHeaders = NO_RATE_LIMITS


class LocalProvider(Provider):
    """A provider that answers in-process, with no upstream request (``local = True``):
    the pipeline calls ``respond`` (non-streaming) or ``stream_chunks`` instead of the
    HTTP jobs, which a local provider never reaches.  See ``EchoProvider``.
    A subclass implements ``respond`` and ``stream_chunks``."""

    local = True

    @abstractmethod
    def respond(self, req: dict[str, Any], ctx: StreamContext) -> dict[str, Any]:
        """Pivot request -> the pivot chat.completion."""

    @abstractmethod
    def stream_chunks(self, req: dict[str, Any], ctx: StreamContext) -> list[dict[str, Any]]:
        """Pivot request -> the pivot chunks of the streamed answer."""

    def _not_http(self) -> ProxyError:
        return ProxyError(ErrorKind.INTERNAL, f"{type(self).__name__} answers locally: it sends no upstream request")

    def build_request(self, req: dict[str, Any], model: dict[str, Any], account: Account,
                      stream: bool) -> UpstreamRequest:
        raise self._not_http()

    def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
        raise self._not_http()

    def new_stream(self, ctx: StreamContext) -> StreamTranslator:
        raise self._not_http()


class Exchange(ABC):
    """A non-streaming answer that takes several upstream requests (create, poll, fetch).

    No I/O and no clock, like a translator: the pipeline sends the first request
    (``build_request``), then hands each 2xx body to ``next(body)``, which returns
    ``(delay_seconds, next_request)`` or None when the answer is complete; then
    ``result()`` is the pivot chat.completion.  The pipeline waits ``delay`` between
    requests and gives up after ``max_seconds`` in all (``IDLE_TIMEOUT``).  ``next``
    raises ProxyError for an answer that is an error (as a 200 with an error code).
    """

    max_seconds: float = 300.0

    @abstractmethod
    def next(self, body: bytes) -> tuple[float, UpstreamRequest] | None:
        """One 2xx body -> (delay, the next request), or None when the answer is complete."""

    @abstractmethod
    def result(self) -> dict[str, Any]:
        """The pivot chat.completion, once ``next`` returned None."""


def error_message_from_body(body: bytes) -> str:
    """Best effort at the human message in an upstream error body of any vendor."""
    from tornado_proxy import jsonutil

    text = body.decode("utf-8", "replace").strip()
    try:
        obj = jsonutil.loads(text)
    except Exception:
        return text[:500] or "upstream error"
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("Message")
            if isinstance(msg, str):
                return msg
        elif isinstance(err, str):
            return err
        msg = obj.get("message") or obj.get("Message")
        if isinstance(msg, str):
            return msg
    return text[:500]


def default_classify(status: int, headers: dict[str, str], body: bytes) -> ProxyError:
    from .toolkit import parse_retry_after  # (the toolkit builds on this module)

    msg = error_message_from_body(body)
    return from_status(status, f"upstream returned {status}: {msg}",
                       retry_after=parse_retry_after(headers), headers=headers)


def stream_cut(detail: str = "") -> ProxyError:
    return ProxyError(ErrorKind.UPSTREAM_STREAM_CUT,
                      "upstream stream ended before it finished" + (f" ({detail})" if detail else ""))


def bad_request(message: str, param: str | None = None) -> ProxyError:
    return ProxyError(ErrorKind.INVALID_REQUEST, message, param=param)


def unsupported(param: str, why: str) -> ProxyError:
    return ProxyError(ErrorKind.UNSUPPORTED, f"'{param}' is not supported here: {why}", param=param)


def iter_text_parts(content: Any) -> Iterable[str]:
    """Text of a Chat Completions ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                yield part.get("text", "")


def estimate_tokens(text: str) -> int:
    """A local token estimate (about four characters a token for English text).

    Used where no upstream counts for us: the echo model and local count_tokens.
    """
    return (len(text.encode("utf-8")) + 3) // 4 if text else 0


def fold_chunks(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Pivot chunks -> the pivot chat.completion they add up to, as an OpenAI client folds a stream.

    The Responses store keeps folded answers; the translator tests check that folding a
    translated stream equals translating the whole response.
    """
    head: dict[str, Any] = {}
    msg: dict[str, Any] = {"role": "assistant", "content": None}
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    for ch in chunks:
        if not head:
            head = {"id": ch.get("id"), "created": ch.get("created"), "model": ch.get("model")}
        if ch.get("usage"):
            usage = ch["usage"]
        for choice in ch.get("choices") or []:
            d = choice.get("delta") or {}
            for key in ("content", "reasoning_content", "refusal"):
                if d.get(key):
                    msg[key] = (msg.get(key) or "") + d[key]
            if d.get("thinking_blocks"):
                msg.setdefault("thinking_blocks", []).extend(d["thinking_blocks"])
            for tc in d.get("tool_calls") or []:
                call = calls.setdefault(tc.get("index", 0), {"id": None, "type": "function",
                                                              "function": {"name": None, "arguments": ""}})
                if tc.get("id"):
                    call["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    call["function"]["name"] = fn["name"]
                call["function"]["arguments"] += fn.get("arguments") or ""
                if tc.get("extra_content"):
                    call["extra_content"] = tc["extra_content"]
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
    if calls:
        msg["tool_calls"] = [calls[i] for i in sorted(calls)]
    out: dict[str, Any] = {"id": head.get("id"), "object": "chat.completion", "created": head.get("created"),
                 "model": head.get("model"), "choices": [{"index": 0, "message": msg, "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    return out


def system_turn_text(text: str) -> str:
    """A mid-conversation system turn for an upstream with one system prompt only
    (Gemini, Bedrock): kept at its place as user text, marked the way Claude Code
    itself marks system text inside a user turn for models without such turns."""
    return f"<system-reminder>\n{text}\n</system-reminder>"


# JSON mode (response_format json_object) for upstreams without one (Anthropic,
# Bedrock): said as an instruction after the client's system prompt.  OpenAI's JSON
# mode needs the word "JSON" in the conversation for the same reason: the model is
# told, and the answer is what it writes (docs/field-policy.md).
JSON_MODE_INSTRUCTION = ("Respond with a single valid JSON object and nothing else: no prose before or "
                         "after it, no Markdown code fences.")
