"""The contract of ``providers/base.py`` is abstract base classes: a part that leaves out
a method its kind must have fails when it is made, not when a request first needs it.

Every registered upstream type (``providers.PROVIDER_TYPES``) is a ``Provider`` whose
translators are ``StreamTranslator``s; every client format a route serves (the route
table, ``tornado_proxy.app.ROUTES``) is a ``ClientFormat`` whose encoders are
``StreamEncoder``s.
"""
from __future__ import annotations

import inspect
from typing import Any

import pytest

from providers import PROVIDER_TYPES
from providers.base import (ClientFormat, Exchange, LocalProvider, Provider, StreamContext, StreamEncoder,
                            StreamTranslator, UpstreamRequest)
from providers.coze import CozeProvider
from tornado_proxy.errors import ErrorKind, ProxyError

CTX = StreamContext(id="chatcmpl-contract", created=1700000000, model="m")

# Enough config for each type's constructor (Bedrock wants a region).
CONF: dict[str, dict[str, Any]] = {"bedrock": {"options": {"region": "us-east-1"}}}


def provider(type_name: str, cls: type[Provider]) -> Provider:
    return cls({"name": type_name, "type": type_name, **CONF.get(type_name, {})})


# -- the bases are abstract -----------------------------------------------------------

@pytest.mark.parametrize("base,missing", [
    (Provider, {"build_request", "translate_response", "new_stream"}),
    (LocalProvider, {"respond", "stream_chunks"}),
    (StreamTranslator, {"feed", "finish"}),
    (StreamEncoder, {"feed", "finish", "fail"}),
    (ClientFormat, {"parse_request", "render_response", "new_encoder", "error_body"}),
    (Exchange, {"next", "result"}),
])
def test_each_base_names_what_a_subclass_must_implement(base: type, missing: set[str]) -> None:
    assert inspect.isabstract(base)
    assert set(base.__abstractmethods__) == missing  # type: ignore[attr-defined]


def test_an_incomplete_subclass_cannot_be_made() -> None:
    class NoStream(Provider):
        type_name = "half"

        def build_request(self, req: dict[str, Any], model: dict[str, Any], account: Any,
                          stream: bool) -> UpstreamRequest:
            return UpstreamRequest("POST", "http://127.0.0.1:9/", {}, b"{}")

        def translate_response(self, body: bytes, ctx: StreamContext) -> dict[str, Any]:
            return {}

    class NoFinish(StreamTranslator):
        def feed(self, event: Any) -> list[dict[str, Any]]:
            return []

    class NoFail(StreamEncoder):
        def feed(self, chunk: dict[str, Any]) -> bytes:
            return b""

        def finish(self) -> bytes:
            return b""

    class NoErrors(ClientFormat):
        def parse_request(self, body: dict[str, Any]) -> dict[str, Any]:
            return body

        def render_response(self, pivot: dict[str, Any], ctx: StreamContext) -> dict[str, Any]:
            return pivot

        def new_encoder(self, ctx: StreamContext) -> StreamEncoder:
            raise AssertionError

    class NoChunks(LocalProvider):
        def respond(self, req: dict[str, Any], ctx: StreamContext) -> dict[str, Any]:
            return {}

    class NoResult(Exchange):
        def next(self, body: bytes) -> tuple[float, UpstreamRequest] | None:
            return None

    with pytest.raises(TypeError, match="new_stream"):
        NoStream({"name": "half", "type": "half"})  # type: ignore[abstract]
    with pytest.raises(TypeError, match="finish"):
        NoFinish()  # type: ignore[abstract]
    with pytest.raises(TypeError, match="fail"):
        NoFail()  # type: ignore[abstract]
    with pytest.raises(TypeError, match="error_body"):
        NoErrors()  # type: ignore[abstract]
    with pytest.raises(TypeError, match="stream_chunks"):
        NoChunks({"name": "l", "type": "l"})  # type: ignore[abstract]
    with pytest.raises(TypeError, match="result"):
        NoResult()  # type: ignore[abstract]


def test_a_subclass_with_the_abstract_methods_keeps_the_defaults() -> None:
    class Minimal(StreamTranslator):
        def feed(self, event: Any) -> list[dict[str, Any]]:
            return [{"event": event}]

        def finish(self) -> list[dict[str, Any]]:
            return []

    tr = Minimal()
    assert tr.feed(1) == [{"event": 1}]
    assert tr.fail(ProxyError(ErrorKind.UPSTREAM_STREAM_CUT, "cut")) == []
    assert tr.text_lane is None


# -- every registered part is one -----------------------------------------------------

@pytest.mark.parametrize("type_name,cls", PROVIDER_TYPES, ids=[t for t, _ in PROVIDER_TYPES])
def test_every_registered_provider_type_is_a_concrete_provider(type_name: str, cls: type[Provider]) -> None:
    assert issubclass(cls, Provider) and not inspect.isabstract(cls)
    p = provider(type_name, cls)
    assert cls.type_name == type_name
    if cls.local:
        assert isinstance(p, LocalProvider)
        assert p.stream_chunks({"messages": [{"role": "user", "content": "hi"}]}, CTX)
        with pytest.raises(ProxyError) as e:
            p.new_stream(CTX)
        assert e.value.kind is ErrorKind.INTERNAL
        return
    assert isinstance(p.new_stream(CTX), StreamTranslator)
    if cls.native_format is not None:
        # a pass-through route calls these: the defaults are for providers without one
        assert cls.build_native_request is not Provider.build_native_request
        assert cls.stream_complete_marker is not Provider.stream_complete_marker


def test_the_provider_without_a_native_format_says_so() -> None:
    p = provider("coze", CozeProvider)
    assert p.native_format is None
    with pytest.raises(NotImplementedError, match="CozeProvider"):
        p.build_native_request({}, b"{}", {}, None, False, {})  # type: ignore[arg-type]


def test_the_multi_request_answer_is_an_exchange() -> None:
    p = provider("coze", CozeProvider)
    up = p.build_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                         {"id": "m", "upstream_model": "bot-1"}, _account(), False)
    assert isinstance(p.new_exchange(up, CTX), Exchange)


def _account() -> Any:
    from providers.base import Account

    return Account(id="a", api_key="k")


def _route_formats() -> dict[str, ClientFormat]:
    from tornado_proxy.app import ROUTES

    found: dict[str, ClientFormat] = {}
    for route in ROUTES:
        fmt = getattr(route.handler, "client_format", None)
        if fmt is not None:
            found[route.handler.__name__] = fmt
    return found


def test_every_client_format_a_route_serves_is_a_concrete_client_format() -> None:
    formats = _route_formats()
    assert {f.name for f in formats.values()} >= {"openai", "anthropic", "responses", "gemini"}
    for handler, fmt in formats.items():
        assert isinstance(fmt, ClientFormat), handler
        assert not inspect.isabstract(type(fmt)), handler
        assert isinstance(fmt.new_encoder(CTX), StreamEncoder), handler


# -- the stream context is typed fields, nothing free-form ----------------------------

def test_the_stream_context_has_typed_fields_only() -> None:
    ctx = StreamContext(id="resp_1", created=1, model="m")
    assert not hasattr(ctx, "__dict__")  # slotted: a misspelt field is an error, not a new key
    with pytest.raises(AttributeError):
        ctx.extra = {}  # type: ignore[attr-defined]
    assert (ctx.include_usage, ctx.model_entry, ctx.upstream_latency_ms) == (False, None, None)
    assert (ctx.client_request, ctx.passthrough, ctx.fail_seq, ctx.result) == (None, False, 0, None)
