"""``HEAD /`` and ``GET /``: the reachability check clients send before their first
request (Claude Code's preflight is ``HEAD /``), answered 2xx without an access key."""
from __future__ import annotations

import http.client

from tests.e2e.harness import LoopThread, openai_provider, simple_config


def test_head_and_get_root_answer_2xx_without_a_key(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = harness.gateway(simple_config([openai_provider(up)], [{"id": "gpt", "provider": "up"}],
                                       access_keys=["secret-access-key-0001"]))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("HEAD", "/")
    r = conn.getresponse()
    assert r.status == 200 and r.read() == b""
    conn.request("GET", "/")          # the same keep-alive connection still works
    r = conn.getresponse()
    assert r.status == 200 and b'"ok"' in r.read()
    conn.request("POST", "/", body=b"{}")
    r = conn.getresponse()
    assert r.status == 405 and r.getheader("Allow") == "GET, HEAD, OPTIONS"
    r.read()
    assert not up.requests
