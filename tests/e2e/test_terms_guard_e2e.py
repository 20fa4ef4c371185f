"""The terms guard, end to end: a Claude consumer-subscription OAuth token aimed at
Anthropic's API is refused (as an account and as a client's own credential), in the
client's own error shape, without a byte sent upstream; the opt-out lets it through;
OAuth to another API keeps working; the gateway says so at start.

Anthropic's API is never reached: a refused request goes nowhere, and an allowed one
goes through an outbound proxy that is our fake upstream (curl sends the absolute URL
of http://api.anthropic.com to it).
"""
from __future__ import annotations

import logging
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Reply, fixture_bytes, simple_config

TIMEOUTS = {"connect": 2, "first_byte": 5, "idle": 5}
# Built from parts: never a key-looking literal in the source.
OAT = "-".join(["sk", "ant", "oat01", "FakeConsumerToken" + "0123456789abcdef"])
API_KEY = "-".join(["sk", "ant", "api03", "FakeApiKey" + "0123456789abcdef"])
MESSAGE = fixture_bytes("anthropic/message.json")


class ProxyUpstream(FakeUpstream):
    """The fake upstream, also answering absolute-URL requests (it is the outbound proxy)."""

    def app(self) -> Any:
        app = super().app()
        app.wildcard_router.add_rules([(r".*", app.wildcard_router.rules[0].target)])
        return app


def proxy_upstream(harness: LoopThread) -> ProxyUpstream:
    from tornado.httpserver import HTTPServer

    up = ProxyUpstream(harness)

    async def start() -> None:
        server = HTTPServer(up.app())
        server.listen(0, "127.0.0.1")
        up.port = next(iter(server._sockets.values())).getsockname()[1]
        harness._cleanups.append(server.stop)

    harness.run(start())
    return up


def anthropic_api(up: FakeUpstream, accounts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    # Anthropic's own host; the fake upstream stands in as the outbound proxy.
    return {"name": "claude", "type": "anthropic", "base_url": "http://api.anthropic.com", "proxy": up.url,
            "timeouts": TIMEOUTS, "accounts": accounts, **extra}


def models(provider: str = "claude") -> list[dict[str, Any]]:
    return [{"id": "claude-sonnet-4-5", "provider": provider}]


def ant(gw: Any, key: str = "k") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=20)


def ask(client: anthropic.Anthropic) -> Any:
    return client.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}])


def test_consumer_oauth_account_is_refused_and_not_used(harness: LoopThread,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    up = proxy_upstream(harness).push(Reply(200, {"Content-Type": "application/json"}, MESSAGE))
    with caplog.at_level(logging.WARNING, logger="tornado_proxy"):
        gw = harness.gateway(simple_config([anthropic_api(up, [{"id": "max-sub", "api_key": OAT}])], models()))
    assert any("max-sub" in r.getMessage() and "terms guard" in r.getMessage() for r in caplog.records)
    assert not any(OAT in r.getMessage() for r in caplog.records)
    with pytest.raises(anthropic.PermissionDeniedError) as ei:
        ask(ant(gw))
    assert ei.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert "consumer-subscription" in ei.value.message and OAT not in ei.value.message
    # the OpenAI route answers in OpenAI's shape
    with pytest.raises(openai.PermissionDeniedError) as oi:
        openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0).chat.completions.create(
            model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert oi.value.type == "permission_error"
    assert up.requests == []


def test_a_key_account_is_chosen_over_a_refused_one(harness: LoopThread) -> None:
    up = proxy_upstream(harness).push(Reply(200, {"Content-Type": "application/json"}, MESSAGE))
    gw = harness.gateway(simple_config([anthropic_api(up, [
        {"id": "max-sub", "claude_ai_oauth": True, "access_token": "opaque-token-1"},
        {"id": "api", "api_key": API_KEY}])], models()))
    ask(ant(gw))
    assert len(up.requests) == 1 and up.requests[0].headers["x-api-key"] == API_KEY


def test_client_consumer_token_passed_through_is_refused(harness: LoopThread) -> None:
    up = proxy_upstream(harness).push(Reply(200, {"Content-Type": "application/json"}, MESSAGE))
    conf = anthropic_api(up, [], scheduler={"allow_client_auth": True})
    gw = harness.gateway(simple_config([conf], models()))
    client = anthropic.Anthropic(base_url=gw.url, auth_token=OAT, max_retries=0, timeout=20)
    with pytest.raises(anthropic.PermissionDeniedError) as ei:
        ask(client)
    assert "Anthropic's own apps" in ei.value.message and OAT not in str(ei.value.body)
    assert up.requests == []
    # the client's API key still passes
    up.push(Reply(200, {"Content-Type": "application/json"}, MESSAGE))
    ask(anthropic.Anthropic(base_url=gw.url, auth_token=API_KEY, max_retries=0, timeout=20))
    assert len(up.requests) == 1


def test_opt_out_lets_it_through_with_a_warning(harness: LoopThread, caplog: pytest.LogCaptureFixture) -> None:
    up = proxy_upstream(harness).push(Reply(200, {"Content-Type": "application/json"}, MESSAGE))
    with caplog.at_level(logging.WARNING, logger="tornado_proxy"):
        gw = harness.gateway(simple_config(
            [anthropic_api(up, [{"id": "max-sub", "api_key": OAT}], allow_consumer_oauth=True)], models()))
    assert any("allowed by allow_consumer_oauth" in r.getMessage() for r in caplog.records)
    ask(ant(gw))
    assert len(up.requests) == 1 and OAT in up.requests[0].headers.values()


def test_oauth_to_another_api_keeps_working(harness: LoopThread) -> None:
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"}, MESSAGE))
    vendor = {"name": "vendor", "type": "anthropic", "base_url": up.url, "timeouts": TIMEOUTS,
              "accounts": [{"id": "vendor-oauth", "api_key": OAT}]}
    gw = harness.gateway(simple_config([vendor], models("vendor")))
    ask(ant(gw))
    assert len(up.requests) == 1
