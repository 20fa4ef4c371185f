"""The one request pipeline every LLM route runs through.

    client body --ClientFormat.parse_request--> pivot --Router--> (model, provider)
      same format as the upstream?  bytes pass through, only the model mapped
      otherwise:  Provider.build_request -> curl -> decoder -> StreamTranslator
                  -> pivot chunks -> ClientFormat encoder -> write() + flush()

Accounts: each attempt leases an account from the scheduler.  A failure before the
first byte reaches the client is retried on another account within the provider's
failover budget; after it, the client gets an error frame in its own format and
the stream ends (a stream cut short is never reported as a normal finish).

Everything between curl's write callback and ``flush()`` is synchronous (see
``upstream.py``).  When the client goes away the transfer is aborted at once.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

import tornado.web

from providers.base import Account, Exchange, Provider, StreamContext, UpstreamRequest
from providers.headers import RequestInfo

from tornado_proxy import fieldpolicy, jsonutil

from tornado_proxy.observability import redact
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.handlers.base import BaseHandler
from tornado_proxy.pipeline.passthrough import MODEL_KEYS, TAIL_READS, ModelRewrite, usage_from_tail
from tornado_proxy.pipeline.sse import BadEvent, EventChecker, SSEDecoder
from tornado_proxy.pipeline.text_lane import FusedSSEDecoder
from tornado_proxy.pipeline.upstream import Transfer

log = logging.getLogger("tornado_proxy.pipeline")

# Failures that are the upstream's even though no status says so (counted per provider).
_UPSTREAM_BROKE = frozenset({ErrorKind.UPSTREAM_BAD_RESPONSE, ErrorKind.UPSTREAM_STREAM_CUT,
                             ErrorKind.IDLE_TIMEOUT})

SSE_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),  # tell nginx-style proxies in front of us not to buffer
)


def translate_read(decoder: Any, translator: Any, encoder: Any, data: bytes, out: list[bytes],
                   on_usage: Callable[[dict[str, Any]], None]) -> None:
    """One upstream read through decoder, translator and encoder: the client bytes are
    appended to ``out`` and each usage a chunk carries goes to ``on_usage``, also when
    an event raises ``ProxyError`` part way."""
    for ev in decoder.feed(data):
        if ev.__class__ is bytes:  # from the fused text lane: already client bytes
            out.append(ev)
            continue
        for chunk in translator.feed(ev):
            if "usage" in chunk and chunk["usage"]:
                on_usage(chunk["usage"])
            b = encoder.feed(chunk)
            if b:
                out.append(b)


def _scrub(err: ProxyError, account: Account) -> None:
    """Some upstreams quote the credential they rejected: never pass it on to the client
    (nor to the scheduler's last_error).  The lease's own secrets are masked even when
    the scrubber does not know them (a client's own key)."""
    err.message = redact.scrub_with(err.message, (
        account.api_key, account.extra.get("aws_secret_access_key"), account.extra.get("aws_session_token"),
        account.extra.get("access_token")))


@tornado.web.stream_request_body
class LLMHandler(BaseHandler):
    """Base of every model-serving route; subclasses set the client format and schema."""

    schema_name: str | None = "chat_completions.request.v1"
    route_name = "chat_completions"
    _trace: Any = None  # this request's tracing.RequestTrace when tracing is on
    # Per-request state whose start value is immutable lives here, on the class: a
    # request writes only what it changes into its own __dict__ (initialize() makes
    # two lists instead of 25 stores; a held stream's instance dict starts smaller).
    _size = 0
    _too_large = False
    _gone = False
    # The client went only after it had the whole answer (a pass-through stream's end
    # marker): served, not a 499 (SDKs hang up as soon as they read ``[DONE]``).
    _had_all = False
    _first_sent = False
    _transfer: Transfer | None = None
    _decoder: Any = None
    _translator: Any = None
    _encoder: Any = None
    _usage: dict[str, Any] | None = None
    _first_usage: bytes | None = None  # the first read passed through, when it names usage
    _want_first = False  # the next read is a pass-through stream's first, and its format puts usage there
    _checker: EventChecker | None = None
    _tails: list[bytes]  # a pass-through stream's last reads (``_tail``): made by attempt()
    # A pass-through stream's error event, read by the upstream's own translator:
    # the client has the event as it came; the account and the metrics hear of it.
    _pt_error: ProxyError | None = None
    _pt_args: tuple[Provider, StreamContext] | None = None
    _t0 = 0.0
    _ttfb: float | None = None
    _streaming = False
    _serving = False
    _rewrite: ModelRewrite | None = None
    model_id = ""
    provider_name = ""
    account_id = ""
    request_id = ""

    def initialize(self, gw: Any) -> None:  # type: ignore[override]
        super().initialize(gw)
        self._chunks: list[bytes] = []
        # The parsed request (client body, pivot): needed until the first byte goes to
        # the client (a failover rebuilds the upstream request from it), not after.
        self._held: list[dict[str, Any]] = []

    # -- body ------------------------------------------------------------------------
    def prepare(self) -> None:
        # (the IOLoop's clock, read without looking the loop up: asyncio's is time.monotonic)
        self._t0 = time.monotonic()
        if self.gw.tracer is not None:
            self._trace = self.gw.tracer.start(self)
        self.gw.active_requests += 1
        self._counted = True
        self.gw.metrics.requests_gauge(self.route_name).inc()
        super().prepare()
        limit = self.gw.max_body_bytes
        cl = self.request.headers.get("Content-Length")
        if cl and cl.isdigit() and int(cl) > limit:
            raise ProxyError(ErrorKind.BODY_TOO_LARGE, f"request body is larger than {limit} bytes")

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self.gw.max_body_bytes:
            self._too_large = True
            self._chunks = []
            return
        self._chunks.append(chunk)

    def read_body(self) -> Any:
        if self._too_large:
            raise ProxyError(ErrorKind.BODY_TOO_LARGE, f"request body is larger than {self.gw.max_body_bytes} bytes")
        raw = b"".join(self._chunks)
        self._chunks = []
        self._raw = raw
        ctype = self.request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            return self.multipart_body(raw, ctype)
        body = self.json_body(raw)
        if not isinstance(body, dict):
            raise ProxyError(ErrorKind.INVALID_REQUEST, "request body must be a JSON object")
        return body

    def multipart_body(self, raw: bytes, ctype: str) -> Any:
        from tornado_proxy.pipeline.multipart import payload_from_form

        body = payload_from_form(ctype, raw)
        self._raw = jsonutil.dumpb(body)
        return body

    # -- serving ---------------------------------------------------------------------
    async def post(self, *args: Any) -> None:
        self._serving = True
        # This request's task: the fields an upstream translator drops count under this route.
        fieldpolicy.set_route(self.route_name)
        try:
            body = self.read_body()
            key = body.get("prompt_cache_key")
            self._cache_key = key if isinstance(key, str) and key else None  # account stickiness
            await self.serve(body)
        finally:
            self._done()

    def route(self, name: Any) -> tuple[str, dict[str, Any], Provider]:
        """The checked name, the model entry and the provider a client's ``model`` names; the request's labels
        (``model_id``, ``provider_name``) are set from them.  A missing or unknown name is the
        client's error, naming the ``model`` field."""
        if not isinstance(name, str) or not name:
            raise ProxyError(ErrorKind.INVALID_REQUEST, "'model' is required", param="model")
        hit = self.gw.router.resolve(name)
        if hit is None:
            raise ProxyError(ErrorKind.MODEL_NOT_FOUND, f"the model '{name}' does not exist", param="model")
        model, provider = hit
        self.model_id = model["id"]
        self.provider_name = provider.name
        return name, model, provider

    def validate(self, body: dict[str, Any]) -> None:
        if self.schema_name:
            from tornado_proxy.pipeline.validation import validate_body

            validate_body(self.schema_name, body)

    async def serve(self, body: dict[str, Any]) -> None:
        self.validate(body)
        fmt = self.client_format
        pivot = fmt.parse_request(body)
        name, model, provider = self.route(pivot.get("model"))
        stream = bool(pivot.get("stream"))
        so = pivot.get("stream_options")
        ctx = StreamContext(id=fmt.context_id(os.urandom(12).hex()), created=int(time.time()), model=name,
                            include_usage=bool(so.get("include_usage")) if isinstance(so, dict) else False,
                            model_entry=model)
        if provider.local:
            await self.serve_local(provider, pivot, ctx, stream)
            return
        if provider.native_format == fmt.name:
            def build(acct: Account) -> UpstreamRequest:
                return provider.build_native_request(body, self._raw, model, acct, stream,
                                                     self.request.headers)  # type: ignore[arg-type]  # a str -> str mapping
        else:
            pivot = await self.inline_images(provider, pivot, model)

            def build(acct: Account) -> UpstreamRequest:
                return provider.build_request(pivot, model, acct, stream)
        self._held = [body, pivot]  # let go of at the first byte (_mark_first)
        await self.with_accounts(provider, build, ctx, passthrough=provider.native_format == fmt.name)

    async def inline_images(self, provider: Any, pivot: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
        """The pivot with the image URLs its provider needs as bytes fetched and inlined
        (``tornado_proxy/pipeline/images.py``); the pivot itself for any other provider."""
        inline = getattr(provider, "inline_fetched", None)
        if inline is None:
            return pivot
        urls = provider.urls_to_fetch(pivot, model)
        if not urls:
            return pivot
        from tornado_proxy.pipeline.images import fetch_images

        return inline(pivot, await fetch_images(pivot, urls, provider.image_fetch_policy()))  # type: ignore[no-any-return]

    async def serve_local(self, provider: Any, pivot: dict[str, Any], ctx: StreamContext, stream: bool) -> None:
        fmt = self.client_format
        if not stream:
            resp = provider.respond(pivot, ctx)
            self._usage = resp.get("usage")
            self.set_header("Content-Type", "application/json")
            self._mark_first()
            self.finish(jsonutil.dumpb(fmt.render_response(resp, ctx)))
            return
        enc = fmt.new_encoder(ctx)
        self._start_stream()
        for chunk in provider.stream_chunks(pivot, ctx):
            if self._gone:
                return
            if chunk.get("usage"):
                self._usage = chunk["usage"]
            data = enc.feed(chunk)
            if data:
                self._send(data)
                await self.flush()
        self.finish(enc.finish())

    async def with_accounts(self, provider: Provider, build: Callable[[Account], UpstreamRequest],
                            ctx: StreamContext, passthrough: bool) -> None:
        sched = self.gw.scheduler
        policy = sched.policy(provider.name)
        deadline = time.monotonic() + policy.max_seconds
        tried: list[str] = []
        last: ProxyError | None = None
        info = RequestInfo(ctx.id, self.request.headers)
        # What a {request_id} header template sends upstream: the client is told it too, so
        # one id names the request on both sides (every route reaches an upstream here).
        self.request_id = ctx.id
        self.own_header("X-Request-Id", ctx.id)
        model = ctx.model_entry or {}  # (every route hands over the entry it resolved)
        for attempt in range(max(1, policy.max_tries)):
            try:
                lease = sched.acquire(provider.name, headers=self.request.headers, exclude=tried,
                                      cache_key=getattr(self, "_cache_key", None))
            except ProxyError as exc:
                if last is None:
                    raise
                if last.retry_after is None and exc.retry_after is not None:
                    last.retry_after = exc.retry_after
                raise last from None
            tried.append(lease.account.id)
            self.account_id = lease.account.id
            if attempt:
                self.gw.metrics.failovers.labels(provider.name).inc()
            trace = self._trace
            if trace is not None:
                trace.attempt(self, provider, lease.account.id, ctx)
            try:
                await lease.prepare()
                up = provider.finish_request(build(lease.account), info, model, lease.account)
                await self.attempt(provider, up, lease, ctx, passthrough)
                lease.record_usage(self._usage)
                return
            except ProxyError as err:
                _scrub(err, lease.account)
                last = err
                if trace is not None:
                    trace.attempt_failed(err)
                if err.kind is not ErrorKind.INTERNAL:
                    lease.failure(err)
                if err.upstream_status is not None or err.info.retryable or err.kind in _UPSTREAM_BROKE:
                    self.gw.metrics.upstream_errors.labels(provider.name, err.kind.value).inc()
                if self._first_sent or self._gone or not err.info.retryable or time.monotonic() >= deadline:
                    raise
            finally:
                lease.release()
                if trace is not None:
                    trace.attempt_done(self)
        assert last is not None
        raise last

    async def attempt(self, provider: Provider, up: UpstreamRequest, lease: Any, ctx: StreamContext,
                      passthrough: bool) -> None:
        timeouts = provider.conf["timeouts"]
        proxy = lease.proxy or provider.conf.get("proxy")
        fmt = self.client_format
        if up.stream:
            if passthrough:
                on_data = self._on_passthrough
                self._tails, self._first_usage = [], None  # (afresh: an attempt that failed over had its own)
                self._want_first = provider.usage_in_first_event
                self._rewrite = self._model_rewrite(ctx)
                self._encoder = fmt.new_encoder(ctx)  # for the error frame only
                self._checker = EventChecker(self.gw.upstream.max_body_bytes)
                self._pt_error, self._pt_args = None, (provider, ctx)
            else:
                self._translator = translator = provider.new_stream(ctx)
                self._encoder = encoder = fmt.new_encoder(ctx)
                if provider.stream_decoder != "sse":
                    self._decoder = provider.new_decoder()  # type: ignore[attr-defined]
                elif translator.text_lane is not None and encoder.text_bytes is not None:
                    # Plain text deltas go from upstream bytes to client bytes without
                    # being parsed (pipeline/text_lane.py).
                    self._decoder = FusedSSEDecoder(translator.text_lane, encoder.text_bytes,
                                                    self.gw.upstream.max_body_bytes)
                else:
                    self._decoder = SSEDecoder(self.gw.upstream.max_body_bytes)
                on_data = self._on_translated
            t = self.gw.upstream.start(up, on_data=on_data, connect_timeout=timeouts["connect"],
                                       first_byte=timeouts["first_byte"], idle=timeouts["idle"], proxy=proxy)
            self._transfer = t
            res = await self.gw.upstream.wait(t)
            self._transfer = None
            self.gw.metrics.observe_upstream_ttfb(provider.name, res.ttfb or 0.0)
            if self._gone:
                if passthrough and self._pt_error is None and self._ended(provider):
                    # It hung up after the end marker, before the upstream's last bytes
                    # (a chunked body's terminator): the answer was served whole.
                    self._had_all = True
                    lease.success(res.ttfb or 0.0, res.headers)
                    self._usage = usage_from_tail(self._tail(), provider.usage_of)
                return
            if res.error is None and not (200 <= res.status < 300):
                raise provider.classify_error(res.status, res.headers, res.body)
            if res.error is not None:
                if not self._first_sent:
                    raise res.error
                _scrub(res.error, lease.account)
                if self._pt_error is not None:  # the client has the upstream's own error event
                    self._passthrough_failed(provider, lease)
                    return
                self._midstream_failure(provider, lease, res.error, against_account=True)
                return
            if passthrough:
                try:
                    self._relay_rest()  # (its last event may be the error, or malformed)
                except ProxyError as err:
                    if not self._first_sent:
                        raise
                    lease.success(res.ttfb or 0.0, res.headers)
                    self._midstream_failure(provider, lease, err, against_account=False)
                    return
                if self._pt_error is not None:
                    self._passthrough_failed(provider, lease)
                    return
            lease.success(res.ttfb or 0.0, res.headers)
            try:
                if passthrough:
                    if not self._ended(provider, none_is_ended=True):
                        raise ProxyError(ErrorKind.UPSTREAM_STREAM_CUT, "upstream stream ended before it finished")
                    self._usage = usage_from_tail(self._tail(), provider.usage_of)
                    if not self._first_sent:
                        self._start_stream()
                    self.finish()
                    return
                out = [self._encoder.feed(c) for c in self._finish_translator()]
                out.append(self._encoder.finish())
            except ProxyError as err:
                if not self._first_sent:
                    raise
                self._midstream_failure(provider, lease, err, against_account=False)
                return
            if not self._first_sent:
                self._start_stream()
            self.finish(b"".join(out))
            return

        exchange = None if passthrough else provider.new_exchange(up, ctx)
        t = self.gw.upstream.start(up, connect_timeout=timeouts["connect"], first_byte=timeouts["first_byte"],
                                   idle=timeouts["idle"], proxy=proxy)
        self._transfer = t
        self._answer_args = (provider, ctx, passthrough)
        if exchange is None:
            t.on_done = self._answer_early
        res = await self.gw.upstream.wait(t)
        self._transfer = None
        self.gw.metrics.observe_upstream_ttfb(provider.name, res.ttfb or 0.0)
        if not self._answered_2xx(provider, res):
            return
        lease.success(res.ttfb or 0.0, res.headers)
        if exchange is not None:
            await self._follow(provider, exchange, res, timeouts, proxy)
            if not self._gone:
                self._answer(provider, res, ctx, passthrough, exchange.result())
        elif not self._finished:  # (else answered from the transfer's completion already)
            self._answer(provider, res, ctx, passthrough)

    async def _follow(self, provider: Provider, exchange: Exchange, res: Any, timeouts: dict[str, float],
                      proxy: str | None) -> None:
        """A non-streaming answer that takes several requests (``Provider.new_exchange``,
        e.g. create then poll): each 2xx body tells the exchange what to send next."""
        deadline = time.monotonic() + exchange.max_seconds
        while True:
            step = exchange.next(res.body)
            if step is None:
                return
            delay, up = step
            if time.monotonic() + delay > deadline:
                raise ProxyError(ErrorKind.IDLE_TIMEOUT,
                                 f"upstream did not finish the answer within {exchange.max_seconds:g} s")
            if delay > 0:
                await asyncio.sleep(delay)
            if self._gone:
                return
            t = self.gw.upstream.start(up, connect_timeout=timeouts["connect"], first_byte=timeouts["first_byte"],
                                       idle=timeouts["idle"], proxy=proxy)
            self._transfer = t
            res = await self.gw.upstream.wait(t)
            self._transfer = None
            if not self._answered_2xx(provider, res):
                return

    def _answered_2xx(self, provider: Provider, res: Any) -> bool:
        """Did the upstream answer 2xx?  False when the client has gone meanwhile (nothing
        more to do); the transfer's failure or the upstream's error raised as ProxyError."""
        if self._gone:
            return False
        if res.error is not None:
            raise res.error
        if not (200 <= res.status < 300):
            raise provider.classify_error(res.status, res.headers, res.body)
        return True

    def _answer(self, provider: Provider, res: Any, ctx: StreamContext, passthrough: bool,
                pivot: dict[str, Any] | None = None) -> None:
        """A 2xx non-stream upstream answer -> the client's response.  Raises ProxyError,
        before anything is sent, for a body that is not what the upstream format promises."""
        if passthrough:
            try:
                usage = provider.usage_of(jsonutil.loads(res.body))
            except ValueError:
                raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream sent a body that is not JSON") from None
            ctype = res.headers.get("content-type", "application/json")
            body = redact.data(res.body)
            rw = self._model_rewrite(ctx)
            if rw is not None:
                body = rw.feed(body)
        else:
            if pivot is None:
                pivot = provider.translate_response(res.body, ctx)
            usage = pivot.get("usage")
            body = jsonutil.dumpb(self.client_format.render_response(pivot, ctx))
            ctype = "application/json"
        self._usage = usage
        self.set_header("Content-Type", ctype)  # (the upstream's value: checked)
        self.own_header("Content-Length", str(len(body)))  # what finish() would set, unchecked
        self._mark_first()
        self.finish(body)

    def _answer_early(self, errno: int | None, st: float) -> None:
        """The transfer's completion callback: a good answer goes to the client now, not
        one IOLoop turn later when the task awaiting the transfer resumes; the
        bookkeeping (scheduler, metrics) follows then.  Anything else (an error status,
        a transport error, a bad body) is left to that task: failover or the error."""
        t = self._transfer
        if t is None or self._gone or self._finished:
            return
        res = self.gw.upstream.result(t, errno, st)
        if res.error is not None or not 200 <= res.status < 300:
            return
        provider, ctx, passthrough = self._answer_args
        try:
            self._answer(provider, res, ctx, passthrough)
        except ProxyError:
            return  # nothing was sent: the task meets the same error and handles it

    def _finish_translator(self) -> list[dict[str, Any]]:
        chunks = []
        if self._decoder is not None:
            for ev in self._decoder.finish():
                chunks.extend(self._translator.feed(ev))
        chunks.extend(self._translator.finish())
        for c in chunks:
            u = c.get("usage")
            if u:
                self._usage = u
        return chunks

    # -- the synchronous stream path (inside curl's write callback) ------------------
    def _on_translated(self, data: bytes) -> bool:
        if self._gone:
            return False
        out: list[bytes] = []
        try:
            translate_read(self._decoder, self._translator, self._encoder, data, out, self._set_usage)
        except ProxyError:
            # Text translated from this read before the failing event still reaches a
            # client that already has the stream; before the first byte we would rather
            # fail over to another account and start clean.
            if out and self._first_sent:
                self._send(b"".join(out))
            raise
        if out:
            self._send(out[0] if len(out) == 1 else b"".join(out))
        return True

    def _set_usage(self, usage: dict[str, Any]) -> None:
        self._usage = usage

    def _model_rewrite(self, ctx: StreamContext) -> ModelRewrite | None:
        """The rewrite of the upstream's model name into the client's, when they differ."""
        name = ctx.model
        if not name:
            return None
        entry = ctx.model_entry  # (what the route resolved: every route sets it)
        if entry is not None and entry.get("upstream_model") == name:
            return None  # asked for by its upstream name: nothing to rewrite
        return ModelRewrite(MODEL_KEYS.get(self.client_format.name, b'"model"'), name)

    def _on_passthrough(self, data: bytes) -> bool:
        if self._gone:
            return False
        chk = self._checker
        assert chk is not None
        try:
            data = chk.feed(data)  # whole events only, each checked to be JSON
        except BadEvent as bad:
            if bad.good and self._first_sent:  # the good events before it still go out
                self._relay(bad.good)
            raise self._malformed(bad) from None
        if chk.error_events and self._pt_error is None:
            self._error_event(chk)
        if data:
            self._relay(data)
        return True

    def _error_event(self, chk: EventChecker) -> None:
        """The stream's first error event (the later ones change nothing)."""
        err = self._event_error(chk.first_error)
        if not self._first_sent:
            raise err  # as on a translated stream: fail over, or answer the error
        self._pt_error = err

    def _event_error(self, payload: bytes) -> ProxyError:
        """What an error event of a passed-through stream means, in the upstream's own
        terms: its stream translator reads it as it would on a translated stream."""
        assert self._pt_args is not None
        provider, ctx = self._pt_args
        try:
            translator = provider.new_stream(ctx)
            for ev in SSEDecoder().feed(b"data: " + payload + b"\n\n"):
                translator.feed(ev)
        except ProxyError as err:
            return err
        except Exception:  # a shape its translator does not know: still an error event
            log.debug("%s: provider '%s': error event not read by its translator", self.route_name,
                      provider.name, exc_info=True)
        return ProxyError(ErrorKind.UPSTREAM_ERROR, "upstream error mid-stream")

    def _passthrough_failed(self, provider: Provider, lease: Any) -> None:
        """A passed-through stream that carried an error event: a stream that failed
        after the first byte, whose error frame the client already has (``_fail_stream``)."""
        err = self._pt_error
        assert err is not None
        _scrub(err, lease.account)
        self._midstream_failure(provider, lease, err, against_account=True)

    def _relay(self, data: bytes) -> None:
        # Keep the last reads (whole events each: the end marker and the last usage are
        # there, however long an event; a list joined once at the end, ``_tail``) and, in
        # a format that puts usage in its first event, the first read: a slow stream of
        # small reads holds ~1 KiB.
        tails = self._tails
        tails.append(data)
        if len(tails) > TAIL_READS:
            del tails[0]
        if self._want_first:
            self._want_first = False
            if b'"usage' in data:
                self._first_usage = data
        # The upstream may quote a key (ours or another account's) in an error event:
        # one regex search per read; the model name, when it is not the client's, is
        # replaced the same way.  The checker hands over whole events only, so neither
        # can be split across two reads here.
        data = redact.SCRUBBER.data(data)
        rw = self._rewrite
        if rw is not None:
            data = rw.feed(data)
        self._send(data)

    def _ended(self, provider: Provider, none_is_ended: bool = False) -> bool:
        """The passed-through stream's end marker has gone out (``none_is_ended``: what
        to say for an upstream format that has none)."""
        marker = provider.stream_complete_marker()
        if marker is None:
            return none_is_ended
        # From the end: the marker is the last event, and ``in`` would read a whole
        # answer that came in one read (8 KiB in the bench) from its start first.
        tails = self._tails
        if tails and tails[-1].rfind(marker) >= 0:
            return True
        return self._tail().rfind(marker) >= 0

    def _tail(self) -> bytes:
        """The last ``TAIL_READS`` reads passed through, after the first (when its format
        puts usage there and it is not among them).  Each read is whole events (the
        checker hands over no less), so the last event is whole however long: a Responses
        stream's ``response.completed`` repeats the whole answer (and its instructions)
        before its usage, often far more than 4 KiB; Anthropic's ``message_start``, with
        the input tokens, is kept from the start of a long stream."""
        tails = self._tails
        first = self._first_usage
        if first is not None and all(first is not t for t in tails):
            return b"".join([first, *tails])
        return b"".join(tails)

    def _relay_rest(self) -> None:
        """The end of a passed-through stream: its last event, if no blank line followed it."""
        chk = self._checker
        if chk is None:
            return
        try:
            rest = chk.finish()
        except BadEvent as bad:
            raise self._malformed(bad) from None
        if chk.error_events and self._pt_error is None:
            self._error_event(chk)
        if rest:
            self._relay(rest)

    def _malformed(self, bad: BadEvent) -> ProxyError:
        log.warning("%s: provider '%s', account '%s': malformed upstream stream event: %r",
                    self.route_name, self.provider_name, self.account_id, bad.data[:60])
        return ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "upstream sent a stream event that is not JSON")

    def _start_stream(self) -> None:
        self._streaming = True
        self.gw.metrics.streams_gauge(self.route_name).inc()
        for k, v in SSE_HEADERS:
            self.set_header(k, v)

    def _mark_first(self) -> None:
        if not self._first_sent:
            self._first_sent = True
            self._ttfb = time.monotonic() - self._t0
            if self._held:
                self._release()

    def _release(self) -> None:
        """The first byte is out, so no failover will rebuild the request: empty the
        parsed request's top-level dicts (the coroutine frames still refer to them, and
        a long conversation is megabytes of objects) and drop our raw body (the
        transfer's own request bytes go when it ends).  Nothing reads them after this
        point; a Responses request, which its store needs at the end, is not held here."""
        for d in self._held:
            d.clear()
        self._held = []
        self._raw = b""

    def _send(self, data: bytes) -> None:
        if not self._first_sent:
            if not self._streaming:
                self._start_stream()
            self._mark_first()
        self.write(data)
        self.flush()
        conn: Any = self.request.connection  # ours (http1.HTTP1Connection) or Tornado's
        if not getattr(conn, "writable", True):
            # The client reads slower than the upstream sends: stop reading upstream
            # until its socket buffer drains, so the stream waits in the kernel's
            # buffers rather than in ours.
            t = self._transfer
            if t is not None and not t.paused:
                http = self.gw.upstream.http
                http.pause(t)
                conn.when_writable(lambda: http.resume(t))

    def _midstream_failure(self, provider: Provider, lease: Any, err: ProxyError, *, against_account: bool) -> None:
        """A stream the upstream broke after the client had its first byte (``against_account``:
        while it was sending; else its end was wrong, after ``lease.success``)."""
        if against_account:
            lease.failure(err)
        self.gw.metrics.upstream_errors.labels(provider.name, err.kind.value).inc()
        log.info("%s: provider '%s', account '%s': stream failed after the first byte: %s: %s",
                 self.route_name, provider.name, lease.account.id, err.kind.value, err.message)
        self._fail_stream(err)

    def _fail_stream(self, err: ProxyError) -> None:
        """After the first byte: the error becomes a frame in the client's format (none
        when it is a passed-through stream's own error event: the client read that)."""
        self.error_kind = err.kind
        if err is self._pt_error:
            self.finish()
            return
        err.message = redact.text(err.message)
        extra = b""
        if self._translator is not None:
            try:
                extra = b"".join(self._encoder.feed(c) for c in self._translator.fail(err))
            except ProxyError:
                extra = b""
        if not self._first_sent:
            self._start_stream()
            self._mark_first()
        self.finish(extra + self._encoder.fail(err))

    def client_status(self) -> int:
        """The status to log and count: 499 for a client that left before its answer."""
        return 499 if self._gone and not self._had_all else self.get_status()

    def on_connection_close(self) -> None:
        self._gone = True
        super().on_connection_close()
        t = self._transfer
        if t is not None:
            t.abort(ErrorKind.INTERNAL)
        if not self._serving:
            # gone before post() ran (mid-upload): neither its finally nor on_finish will
            self._done()

    def on_body_cut(self) -> None:
        self._chunks = []
        self.on_finish()  # counted out of the requests in flight, and as a 499

    # -- accounting ----------------------------------------------------------------
    def _done(self) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            self.gw.active_requests -= 1
            self.gw.metrics.requests_gauge(self.route_name).dec()
            if self._streaming:
                self.gw.metrics.streams_gauge(self.route_name).dec()
            if self._usage:
                self.gw.metrics.observe_tokens(self.provider_name, self.model_id, self._usage)

    def on_finish(self) -> None:
        self._done()
        if self._trace is not None:
            self._trace.end(self)
        status = self.client_status()
        self.gw.metrics.observe_request(self.route_name, self.model_id, self.provider_name, status,
                                        self.error_kind, time.monotonic() - self._t0, self._ttfb)
