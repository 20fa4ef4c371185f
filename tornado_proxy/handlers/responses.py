"""``/v1/responses``: the OpenAI Responses API on every upstream.

* ``POST /v1/responses`` to an ``openai-responses`` upstream: the body goes through
  as sent (model mapped, auth replaced) and the answer, stream or not, comes back
  byte for byte.
* ``POST /v1/responses`` to any other upstream: Responses request -> pivot ->
  upstream, and back into a Response object or the Responses event stream
  (``tornado_proxy/apis/openai_responses/``).  ``previous_response_id`` is served from the
  gateway's response store (``tornado_proxy/state/responses.py``): each answered
  response keeps its conversation there unless the client said ``store: false``.
  A request whose ``previous_response_id`` is in our store is translated even when
  its model is served by an ``openai-responses`` upstream, which has never seen
  that id.
* ``GET/DELETE /v1/responses/{id}``, ``POST .../cancel``, ``GET .../input_items``:
  answered from the store for our own responses, otherwise forwarded to the first
  configured ``openai-responses`` provider (pin an account with ``x-auth-id``
  when the response belongs to one).

Errors are in the Responses error shape (the OpenAI ``{"error": {...}}`` envelope);
after the first byte of a stream, as ``error`` + ``response.failed`` events.
"""
from __future__ import annotations

import os
import logging
import re
import time
import urllib.parse
from typing import Any

from providers.base import Account, Provider, StreamContext, UpstreamRequest
from providers.openai_responses import ResponsesProvider

from tornado_proxy import jsonutil
from tornado_proxy.apis.openai_responses import ResponsesFormat, input_to_messages
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.handler import LLMHandler
from tornado_proxy.state.responses import ResponseStore, StoredResponse
from tornado_proxy.state.store import SharedResponses
from tornado_proxy.handlers.base import BaseHandler

RESPONSES_FORMAT = ResponsesFormat()
log = logging.getLogger("tornado_proxy.responses")


def response_store(gw: Any) -> SharedResponses:
    """The gateway's store (``Gateway.response_store``: this process's LRU in front of
    the shared state store), made from ``server.response_store`` if the gateway has none."""
    store = getattr(gw, "response_store", None)
    if store is None:
        store = ResponseStore.from_config(gw.config.server.get("response_store"))
    if isinstance(store, ResponseStore):
        store = SharedResponses(store, None)
        gw.response_store = store
    return store


def _input_items(body: dict[str, Any], resp_id: str) -> list[dict[str, Any]]:
    """The request's input as items with ids, for ``GET .../input_items``."""
    inp = body.get("input")
    items: list[dict[str, Any]] = [{"type": "message", "role": "user",
                                    "content": [{"type": "input_text", "text": inp}]}] \
        if isinstance(inp, str) else [dict(i) for i in inp or [] if isinstance(i, dict)]
    base = resp_id[5:] if resp_id.startswith("resp_") else resp_id
    for n, item in enumerate(items):
        item.setdefault("type", "message")
        if not item.get("id"):
            item["id"] = f"{'msg' if item['type'] == 'message' else 'item'}_{base}_in{n}"
        if item["type"] == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
    return items


def _history_message(msg: dict[str, Any]) -> dict[str, Any]:
    """An answer as the assistant turn of the stored conversation.

    Only what the next request needs: text, refusal, tool calls (with their
    ``extra_content``, e.g. Gemini's thought signatures) and thinking blocks
    (signed reasoning to restore).  ``reasoning_content`` is display text and is
    not replayed; upstream-only fields (``annotations``, ``audio``...) are dropped.
    """
    out: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
    if msg.get("refusal"):
        out["refusal"] = msg["refusal"]
    if msg.get("thinking_blocks"):
        out["thinking_blocks"] = msg["thinking_blocks"]
    if msg.get("tool_calls"):
        out["tool_calls"] = [{k: v for k, v in tc.items() if k in ("id", "type", "function", "extra_content")}
                             for tc in msg["tool_calls"] if isinstance(tc, dict)]
    return out


class ResponsesHandler(LLMHandler):
    client_format = RESPONSES_FORMAT
    # Checked by ResponsesFormat on translated routes only: native requests reach
    # OpenAI as sent, with whatever parameters OpenAI has added since.
    schema_name = None
    route_name = "responses"

    async def serve(self, body: dict[str, Any]) -> None:
        fmt = self.client_format
        name, model, provider = self.route(body.get("model"))
        stream = bool(body.get("stream"))
        store = response_store(self.gw)
        prev = body.get("previous_response_id")
        stored = await store.fetch(prev) if isinstance(prev, str) else None
        ctx = StreamContext(id=fmt.context_id(os.urandom(12).hex()), created=int(time.time()), model=name,
                            client_request=body, model_entry=model)
        if provider.native_format == fmt.name and stored is None:
            ctx.passthrough = True
            raw = self._raw

            def build_native(acct: Account) -> UpstreamRequest:
                return provider.build_native_request(body, raw, model, acct, stream, dict(self.request.headers))

            await self.with_accounts(provider, build_native, ctx, passthrough=True)
            return
        if prev is not None and stored is None and not store.enabled:
            raise ProxyError(ErrorKind.INVALID_REQUEST,
                             "'previous_response_id' needs the gateway's response store, which is disabled "
                             "(server.response_store.enabled); send the whole conversation in 'input' instead",
                             param="previous_response_id")
        history = stored.messages if stored is not None else None
        pivot = RESPONSES_FORMAT.parse_with_history(body, history)
        # Stored as the answer is finished (on_finish), not after this coroutine resumes:
        # a client may ask for the response as soon as it has read the last byte.
        self._memo: tuple[Any, ...] | None = (store, ctx, body, history)
        if provider.local:
            await self.serve_local(provider, pivot, ctx, stream)
        else:
            pivot = await self.inline_images(provider, pivot, model)

            def build(acct: Account) -> UpstreamRequest:
                return provider.build_request(pivot, model, acct, stream)

            await self.with_accounts(provider, build, ctx, passthrough=False)

    def finish(self, chunk: Any = None) -> Any:
        """The answer's last bytes (``response.completed``, or the whole Response) wait
        until the shared store has the response: a follow-up sent the moment the client
        has read them, to any worker or replica, finds it."""
        if getattr(self, "_held_finish", False):
            return None  # a repeat (auto-finish, a late duplicate answer) while we wait
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[1].result is not None and not self._gone:
            self._memo = None
            try:
                written = self._remember(*memo)
            except Exception:  # the answer goes out all the same
                log.exception("could not store response %s", memo[1].id)
                written = None
            if written is not None and not written.done():
                self._held_finish = True

                def send(_: Any) -> None:
                    self._held_finish = False
                    if not self._finished and not self._gone:
                        super(ResponsesHandler, self).finish(chunk)
                    elif not self._finished:
                        self.on_finish()  # the client left meanwhile: still counted out

                written.add_done_callback(send)
                return None
        return super().finish(chunk)

    def on_finish(self) -> None:
        memo = getattr(self, "_memo", None)
        if memo is not None:
            self._memo = None
            try:
                self._remember(*memo)
            except Exception:  # the answer is out; a store failure must not hide that
                log.exception("could not store response %s", memo[1].id)
        super().on_finish()

    def _remember(self, store: SharedResponses, ctx: StreamContext, body: dict[str, Any],
                  history: list[dict[str, Any]] | None) -> Any:
        result = ctx.result
        if result is None or body.get("store") is False or not store.enabled:
            return None  # failed, or the client asked us not to keep it
        answer = _history_message(result["pivot"]["choices"][0]["message"])
        messages = [*(history or []), *input_to_messages(body.get("input", [])), answer]
        return store.put(StoredResponse(id=ctx.id, messages=messages, response=result["response"],
                                        input_items=_input_items(body, ctx.id)))

    def _on_passthrough(self, data: bytes) -> bool:
        # Remember the upstream's last sequence_number, so that an error event we
        # add after a cut stream continues its numbering.
        at = data.rfind(b'"sequence_number":')
        if at >= 0:
            digits = data[at + 18:at + 32].split(b",")[0].split(b"}")[0].strip()
            if digits.isdigit() and self._encoder is not None:
                self._encoder.ctx.fail_seq = int(digits) + 1
        return super()._on_passthrough(data)


# What an id of ours or OpenAI's looks like ("resp_" + hex, "msg_...", ...).  Anything
# else -- "/", "?", "#", "%", dots, whitespace, control or non-ASCII characters -- could
# steer the forwarded request to another upstream resource, or be unsendable (which
# would count against the account), so it is refused before anything is sent.
RESOURCE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")

# The query parameters each forwarded resource takes (OpenAI's API reference).  Only
# these go upstream, each re-encoded; anything else (our own access key as ``?key=``,
# say) stays here.
FORWARDED_QUERY = {
    None: frozenset({"include", "include[]", "stream", "starting_after", "include_obfuscation"}),
    "input_items": frozenset({"after", "before", "limit", "order", "include", "include[]"}),
    "cancel": frozenset(),
}


def check_resource_id(resp_id: str) -> None:
    if not RESOURCE_ID.fullmatch(resp_id):
        raise ProxyError(ErrorKind.INVALID_REQUEST, "Invalid 'response_id': expected an ID made of letters, "
                         "digits, '_' and '-' (like 'resp_abc123').", param="response_id")


def forwarded_query(args: dict[str, list[bytes]], sub: str | None) -> str:
    """The client's query string as it may go upstream: known names only, each value
    decoded and re-encoded (so no raw byte of the client's reaches the URL)."""
    allowed = FORWARDED_QUERY.get(sub, frozenset())
    pairs = []
    for name, values in args.items():
        if name not in allowed:
            continue
        for v in values:
            try:
                text = v.decode("utf-8")
            except UnicodeDecodeError:
                raise ProxyError(ErrorKind.INVALID_REQUEST, f"Invalid '{name}': not UTF-8 text.",
                                 param=name) from None
            pairs.append((name, text))
    return urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)


def _responses_provider(gw: Any) -> ResponsesProvider | None:
    for p in gw.providers.values():
        if isinstance(p, ResponsesProvider):
            return p
    return None


class ResponseResourceHandler(BaseHandler):
    """``/v1/responses/{id}`` and its ``cancel`` / ``input_items`` sub-resources."""

    client_format = RESPONSES_FORMAT
    route_name = "responses"

    async def get(self, resp_id: str, sub: str | None = None) -> None:
        check_resource_id(resp_id)
        if sub not in (None, "input_items"):
            raise ProxyError(ErrorKind.METHOD_NOT_ALLOWED, f"GET is not allowed on {self.request.path}")
        entry = await response_store(self.gw).fetch(resp_id)
        if entry is None:
            await self.forward("GET", resp_id, sub)
        elif sub is None:
            if self.get_query_argument("stream", "false") == "true":
                raise ProxyError(ErrorKind.UNSUPPORTED, "'stream' is only for background responses, which this "
                                 "gateway does not run", param="stream")
            self.send_json(entry.response)
        else:
            self.send_json(self._list(entry.input_items))

    async def delete(self, resp_id: str, sub: str | None = None) -> None:
        check_resource_id(resp_id)
        if sub is not None:
            raise ProxyError(ErrorKind.METHOD_NOT_ALLOWED, f"DELETE is not allowed on {self.request.path}")
        if await response_store(self.gw).delete(resp_id):
            self.send_json({"id": resp_id, "object": "response", "deleted": True})
        else:
            await self.forward("DELETE", resp_id, None)

    async def post(self, resp_id: str, sub: str | None = None) -> None:
        check_resource_id(resp_id)
        if sub != "cancel":
            raise ProxyError(ErrorKind.METHOD_NOT_ALLOWED, f"POST is not allowed on {self.request.path}")
        if await response_store(self.gw).fetch(resp_id) is not None:
            raise ProxyError(ErrorKind.INVALID_REQUEST, "Only background responses can be cancelled; this one "
                             "has already completed.", param="response_id")
        await self.forward("POST", resp_id, sub)

    def _list(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        order = self.get_query_argument("order", "desc")
        if order not in ("asc", "desc"):
            raise ProxyError(ErrorKind.INVALID_REQUEST, "'order' must be asc or desc", param="order")
        try:
            limit = int(self.get_query_argument("limit", "20"))
        except ValueError:
            raise ProxyError(ErrorKind.INVALID_REQUEST, "'limit' must be an integer", param="limit") from None
        if not 1 <= limit <= 100:
            raise ProxyError(ErrorKind.INVALID_REQUEST, "'limit' must be between 1 and 100", param="limit")
        seq = list(reversed(items)) if order == "desc" else list(items)
        after = self.get_query_argument("after", None)
        if after is not None:
            ids = [i["id"] for i in seq]
            seq = seq[ids.index(after) + 1:] if after in ids else []
        page = seq[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(seq) > limit}

    def send_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(jsonutil.dumpb(obj))

    async def forward(self, method: str, resp_id: str, sub: str | None) -> None:
        provider = _responses_provider(self.gw)
        if provider is None:
            raise ProxyError(ErrorKind.NOT_FOUND, f"No response found with id '{resp_id}'.", param="response_id")
        self.provider_name = provider.name
        await self._forward_to(provider, method, [resp_id] + ([sub] if sub else []),
                               forwarded_query(self.request.query_arguments, sub))

    async def _forward_to(self, provider: ResponsesProvider, method: str, segments: list[str], query: str) -> None:
        lease = self.gw.scheduler.acquire(provider.name, headers=self.request.headers)
        try:
            await lease.prepare()
            up = provider.build_resource_request(method, segments, query, lease.account)
            timeouts = provider.conf["timeouts"]
            res = await self.gw.upstream.fetch(up, connect_timeout=timeouts["connect"],
                                               first_byte=timeouts["first_byte"], idle=timeouts["idle"],
                                               proxy=lease.proxy or provider.conf.get("proxy"))
            if res.error is not None:
                lease.failure(res.error)
                raise res.error
            if not 200 <= res.status < 300:
                err = provider.classify_error(res.status, res.headers, res.body)
                lease.failure(err)
                raise err
            lease.success(res.ttfb or 0.0, res.headers)
        finally:
            lease.release()
        self.set_status(res.status)
        self.set_header("Content-Type", res.headers.get("content-type", "application/json"))
        self.finish(res.body)
