"""The boundary (issue #14, items 4 and 5): what a key holder can see and steer.

* ``/metrics`` can be closed with ``server.metrics_token`` (account ids, states, quotas);
* ``x-auth-id`` pinning can be turned off or granted to named access keys only
  (``server.account_pinning``);
* ``Authorization: Basic <our access key>`` is never forwarded as the client's credential;
* ``X-Forwarded-For`` / ``X-Real-Ip`` count only from ``server.trusted_proxies``.
"""
from __future__ import annotations

import io
import json
import logging
import socket
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest

from tests.e2e.harness import (FakeUpstream, LoopThread, Reply, fixture_bytes, openai_provider, sent_before_close,
                               simple_config)

MSGS = [{"role": "user", "content": "hi"}]


def gateway(harness: LoopThread, up: FakeUpstream, scheduler: dict[str, Any] | None = None, **server: Any) -> Any:
    p = openai_provider(up, accounts=[{"id": "a1", "api_key": "test-key-a1"}, {"id": "a2", "api_key": "test-key-a2"}])
    if scheduler:
        p["scheduler"] = scheduler
    return harness.gateway(simple_config([p], [{"id": "m", "provider": p["name"]}], **server))


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def ok_reply() -> Reply:
    return Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json"))


def test_metrics_token_closes_metrics(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = gateway(harness, up, metrics_token="test-metrics-token-9")
    status, body = get(gw.url + "/metrics")
    assert status == 401 and b"a1" not in body
    assert json.loads(body)["error"]["code"] == "missing_api_key"
    assert get(gw.url + "/metrics", {"Authorization": "Bearer wrong"})[0] == 401
    status, body = get(gw.url + "/metrics", {"Authorization": "Bearer test-metrics-token-9"})
    assert status == 200 and b'account="a1"' in body


def test_metrics_stay_open_without_a_token(harness: LoopThread) -> None:
    gw = gateway(harness, harness.upstream())
    assert get(gw.url + "/metrics")[0] == 200


@pytest.mark.parametrize("pinning,key,allowed", [
    (True, "gw-key-plain", True),
    (False, "gw-key-plain", False),
    (["gw-key-ops"], "gw-key-ops", True),
    (["gw-key-ops"], "gw-key-plain", False),
])
def test_account_pinning_is_granted_by_config(harness: LoopThread, pinning: Any, key: str, allowed: bool) -> None:
    up = harness.upstream()
    up.default = ok_reply()
    gw = gateway(harness, up, access_keys=["gw-key-plain", "gw-key-ops"], account_pinning=pinning)
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)
    if allowed:
        for _ in range(3):
            c.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-auth-id": "a2"})
        assert [r.headers["authorization"] for r in up.requests] == ["Bearer test-key-a2"] * 3
    else:
        with pytest.raises(openai.PermissionDeniedError) as exc:
            c.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-auth-id": "a2"})
        assert exc.value.body["param"] == "x-auth-id"
        assert up.requests == []
        c.chat.completions.create(model="m", messages=MSGS)  # without the header: served
        assert len(up.requests) == 1


@pytest.mark.parametrize("headers", [b"Authorization: Bearer wrong-key\r\n",
                                     b"Authorization: Bearer gw-key-plain\r\nx-auth-id: a2\r\n"])
def test_an_answer_before_the_body_says_whether_the_connection_stays(harness: LoopThread, headers: bytes) -> None:
    """A 401/403 decided on the head alone, before the client sent its body: a server that
    then closes the connection must say ``Connection: close`` in that answer, or a client
    that reuses it (httpx, the SDKs) fails its next request.  Either the answer says so and
    the connection closes, or the connection serves the next request."""
    up = harness.upstream()
    up.default = ok_reply()
    gw = gateway(harness, up, access_keys=["gw-key-plain"], account_pinning=False)
    body = json.dumps({"model": "m", "messages": MSGS}).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers
            + b"Content-Length: %d\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head)
        first = b""
        while b"\r\n\r\n" not in first:
            d = s.recv(65536)
            assert d, "closed before an answer"
            first += d
        status_head = first.split(b"\r\n\r\n", 1)[0].lower()
        assert status_head.startswith((b"http/1.1 401", b"http/1.1 403"))
        try:
            s.sendall(body + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:
            rest = b""
        else:
            rest = sent_before_close(s, timeout=3) or b""
        if b"\r\nconnection: close" in status_head:
            assert b"HTTP/1.1 200" not in rest
        else:
            assert b"HTTP/1.1 200" in rest, "the connection was closed after an answer that kept it alive"
    assert up.requests == []


def test_pinning_off_without_access_keys(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = gateway(harness, up, account_pinning=False)
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=10)
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="m", messages=MSGS, extra_headers={"x-auth-strict": "1"})


@pytest.mark.parametrize("auth", ["Basic gw-access-key-1", "Basic Z3ctYWNjZXNzLWtleS0xOg==", "Digest gw-access-key-1",
                                  "Bearer gw-access-key-1"])
def test_our_access_key_is_never_forwarded_as_the_clients_credential(harness: LoopThread, auth: str) -> None:
    """With allow_client_auth first, a client credential goes upstream as sent -- but only a
    Bearer token or bare key that is not one of ours; anything else falls to our accounts."""
    up = harness.upstream()
    up.default = ok_reply()
    gw = gateway(harness, up, {"allow_client_auth": True, "credential_order": ["client", "key"]},
                 access_keys=["gw-access-key-1"])
    req = urllib.request.Request(gw.url + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"model": "m", "messages": MSGS}).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": auth,
                                          "X-Proxy-Key": "gw-access-key-1"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    (rec,) = up.requests
    assert rec.headers["authorization"] in ("Bearer test-key-a1", "Bearer test-key-a2")


def test_clients_own_bearer_token_still_passes_through(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = ok_reply()
    gw = gateway(harness, up, {"allow_client_auth": True, "credential_order": ["client", "key"],
                               "client_auth_header": "x-upstream-authorization"},
                 access_keys=["gw-access-key-1"])
    req = urllib.request.Request(gw.url + "/v1/chat/completions", method="POST",
                                 data=json.dumps({"model": "m", "messages": MSGS}).encode(),
                                 headers={"Content-Type": "application/json",
                                          "X-Upstream-Authorization": "Bearer sk-clients-own",
                                          "Authorization": "Bearer gw-access-key-1"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    assert up.requests[0].headers["authorization"] == "Bearer sk-clients-own"


@pytest.mark.parametrize("trusted,logged", [(None, "127.0.0.1"), (["127.0.0.1/32"], "203.0.113.7")])
def test_forwarded_for_counts_only_from_trusted_proxies(harness: LoopThread, trusted: Any, logged: str) -> None:
    up = harness.upstream()
    server: dict[str, Any] = {"log_format": "json"}
    if trusted:
        server["trusted_proxies"] = trusted
    access = logging.getLogger("tornado_proxy.access")
    level = access.level
    access.setLevel(logging.INFO)
    try:
        gw = gateway(harness, up, **server)
    finally:
        access.setLevel(level)
    out = io.StringIO()
    gw.gw.access_log.stream = out
    assert get(gw.url + "/v1/models", {"X-Forwarded-For": "203.0.113.7"})[0] == 200
    harness.call(gw.gw.access_log.flush)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines and lines[-1]["remote"] == logged


def test_a_bad_trusted_proxy_entry_is_a_config_error() -> None:
    from tornado_proxy.config import ConfigError, build

    with pytest.raises(ConfigError) as exc:
        build({"server": {"trusted_proxies": ["10.0.0.0/8", "lb.example"]}}, "test", {})
    assert "$.server.trusted_proxies[1]" in str(exc.value)
