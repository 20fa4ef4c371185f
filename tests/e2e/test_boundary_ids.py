"""The boundary (issue #14, items 1, 2 and 4): a client value never steers or breaks the
request we forward upstream.

``/v1/responses/{id}`` forwards unknown ids to the ``openai-responses`` upstream with the
operator's key.  A decoded id with ``/``, ``?`` or dots would reach other upstream
resources (the model list, files, batches); an id libcurl cannot send would count as the
account's transport error and cool it down for everyone.  Both are refused here, before
anything is sent, and only the endpoint's own query parameters go upstream.
"""
from __future__ import annotations

import http.client
import json
from typing import Any

import pytest

from providers.openai_responses import ResponsesProvider
from providers.base import Account
from tests.e2e.harness import FakeUpstream, LoopThread, Reply, simple_config

ADMIN = "test-admin-token-ids"
TIMEOUTS = {"connect": 2, "first_byte": 5, "idle": 5}


def gateway(harness: LoopThread, up: FakeUpstream, **server: Any) -> Any:
    provider = {"name": "oai-resp", "type": "openai-responses", "base_url": up.url + "/v1", "timeouts": TIMEOUTS,
                "accounts": [{"id": "r1", "api_key": "test-key-r1"}]}
    server.setdefault("admin_token", ADMIN)
    return harness.gateway(simple_config([provider], [{"id": "gpt-5", "provider": "oai-resp"}], **server))


def call(gw: Any, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A raw request: the path goes out exactly as written (no client-side quoting)."""
    host = gw.url.split("://", 1)[1]
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if method == "POST":
            conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def account_state(gw: Any) -> str:
    status, body = call(gw, "GET", "/admin/accounts", {"Authorization": f"Bearer {ADMIN}"})
    assert status == 200
    (acct,) = [a for p in body["providers"] for a in p["accounts"]] if "providers" in body else body["accounts"]
    return acct["state"]


TRAVERSALS = [
    ("GET", "/v1/responses/..%2Fmodels"),
    ("GET", "/v1/responses/..%2F..%2Fv1%2Fmodels"),
    ("DELETE", "/v1/responses/..%2Ffiles%2Ffile-abc"),
    ("POST", "/v1/responses/..%2Fbatches%2Fb/cancel"),
    ("GET", "/v1/responses/x%3F/input_items"),
    ("GET", "/v1/responses/%2E%2E"),
    ("GET", "/v1/responses/resp_1%23frag"),
    ("GET", "/v1/responses/resp_1%25252F"),
]


@pytest.mark.parametrize("method,path", TRAVERSALS)
def test_ids_that_would_leave_the_resource_never_reach_the_upstream(harness: LoopThread, method: str,
                                                                     path: str) -> None:
    up = harness.upstream()
    gw = gateway(harness, up)
    status, body = call(gw, method, path)
    assert status == 400
    assert body["error"]["param"] == "response_id"
    assert body["error"]["type"] == "invalid_request_error"
    assert up.requests == []


UNSENDABLE = ["/v1/responses/a%20b", "/v1/responses/a%00b", "/v1/responses/r%C3%A9sp", "/v1/responses/a%0D%0Ab",
              "/v1/responses/" + "a" * 300]


def test_unsendable_ids_are_the_clients_fault_and_never_cool_the_account(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = Reply.json({"id": "resp_ok", "object": "response", "status": "completed", "output": []})
    gw = gateway(harness, up)
    for _ in range(3):  # three rounds: more than errors_before_cooldown bad requests in a row
        for path in UNSENDABLE:
            status, body = call(gw, "GET", path)
            assert status == 400, path
            assert body["error"]["param"] == "response_id"
        status, body = call(gw, "GET", "/v1/responses/resp_ok")
        assert status == 200 and body["id"] == "resp_ok"
    assert [r.path for r in up.requests] == ["/v1/responses/resp_ok"] * 3
    assert account_state(gw) == "active"


def test_only_the_endpoints_query_parameters_go_upstream(harness: LoopThread) -> None:
    up = harness.upstream()
    up.default = Reply.json({"object": "list", "data": [], "has_more": False})
    gw = gateway(harness, up)
    status, _ = call(gw, "GET", "/v1/responses/resp_1?key=gw-access-key-secret&include[]=message.output_text.logprobs"
                                "&x=1&stream=false")
    assert status == 200
    status, _ = call(gw, "GET", "/v1/responses/resp_1/input_items?limit=5&order=asc&after=msg_1&key=k2&api-version=9")
    assert status == 200
    first, second = up.requests
    assert first.path == "/v1/responses/resp_1"
    assert "key=" not in first.query and "x=" not in first.query
    assert "include%5B%5D=message.output_text.logprobs" in first.query and "stream=false" in first.query
    assert second.path == "/v1/responses/resp_1/input_items"
    assert sorted(second.query.split("&")) == ["after=msg_1", "limit=5", "order=asc"]


def test_resource_requests_quote_every_segment() -> None:
    """The provider's own guard, below the handler's id check: a segment is one segment."""
    provider = ResponsesProvider({"name": "oai-resp", "type": "openai-responses", "base_url": "http://127.0.0.1:9/v1"})
    req = provider.build_resource_request("GET", ["../files/x?y#z", "input_items"], "", Account("a", api_key="k"))
    assert req.url == "http://127.0.0.1:9/v1/responses/..%2Ffiles%2Fx%3Fy%23z/input_items"
