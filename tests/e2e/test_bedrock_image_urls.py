"""An http(s) image URL to Bedrock (which takes only bytes): fetched and inlined when
the operator allows it (``options.image_urls.fetch``), within its limits and never
from a private address unless that is allowed too; else a 400 naming the field.

The image server here is on loopback, so the tests that fetch allow private
networks explicitly; the one that does not shows the default refusing it."""
from __future__ import annotations

import base64
import json
from typing import Any

import openai
import pytest

from tests.clients.harness import provider_config
from tests.e2e.harness import FakeUpstream, LoopThread, Reply, fixture_bytes

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def gateway(harness: LoopThread, **image_urls: Any) -> tuple[openai.OpenAI, FakeUpstream]:
    up = harness.upstream().push(Reply(200, {"Content-Type": "application/json"},
                                       fixture_bytes("bedrock/text.converse.json")))
    prov = provider_config("bedrock", up.url)
    if image_urls:
        prov["options"] = {**prov["options"], "image_urls": image_urls}
    gw = harness.gateway({"server": {}, "providers": [prov],
                          "models": [{"id": "claude", "provider": "up",
                                      "upstream_model": "anthropic.claude-3-haiku-20240307-v1:0"}]})
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20), up


def ask(c: openai.OpenAI, url: str) -> Any:
    return c.chat.completions.create(model="claude", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}])


def test_fetched_and_sent_as_bytes_when_allowed(harness: LoopThread) -> None:
    img = harness.upstream().push(Reply(200, {"Content-Type": "image/png"}, PNG))
    c, up = gateway(harness, fetch=True, allow_private_networks=True)
    r = ask(c, img.url + "/cat.png")
    assert r.choices[0].message.content
    [got] = img.requests
    assert got.path == "/cat.png" and got.headers["accept"] == "image/*"
    block = up.requests[0].json()["messages"][0]["content"][1]
    assert block == {"image": {"format": "png", "source": {"bytes": base64.b64encode(PNG).decode()}}}


def test_off_by_default_a_400_naming_the_field(harness: LoopThread) -> None:
    img = harness.upstream().push(Reply(200, {"Content-Type": "image/png"}, PNG))
    c, up = gateway(harness)
    with pytest.raises(openai.BadRequestError) as e:
        ask(c, img.url + "/cat.png")
    assert e.value.body["param"] == "messages[0].content[1].image_url.url"
    assert "options.image_urls.fetch" in e.value.body["message"]
    assert not img.requests and not up.requests


def test_private_addresses_are_refused_unless_allowed(harness: LoopThread) -> None:
    img = harness.upstream().push(Reply(200, {"Content-Type": "image/png"}, PNG))
    c, up = gateway(harness, fetch=True)
    for url in (img.url + "/cat.png", f"http://localhost:{img.port}/cat.png", "http://169.254.169.254/latest/meta-data"):
        with pytest.raises(openai.BadRequestError) as e:
            ask(c, url)
        assert e.value.body["param"] == "messages[0].content[1].image_url.url"
        assert "private network" in e.value.body["message"]
    assert not img.requests and not up.requests


@pytest.mark.parametrize("reply,why", [
    (Reply(200, {"Content-Type": "image/png"}, PNG * 200), "larger than 1000 bytes"),
    (Reply(200, {"Content-Type": "text/html"}, b"<html>not an image</html>"), "not an image"),
    (Reply(404, {"Content-Type": "text/plain"}, b"gone"), "answered HTTP 404"),
])
def test_limits_and_bad_answers(harness: LoopThread, reply: Reply, why: str) -> None:
    img = harness.upstream().push(reply)
    c, up = gateway(harness, fetch=True, allow_private_networks=True, max_bytes=1000)
    with pytest.raises(openai.BadRequestError) as e:
        ask(c, img.url + "/x")
    assert why in e.value.body["message"] and not up.requests


def test_redirects_are_capped_and_each_hop_checked(harness: LoopThread) -> None:
    img = harness.upstream()
    img.default = Reply(302, {"Location": "/again"})
    c, up = gateway(harness, fetch=True, allow_private_networks=True, max_redirects=2)
    with pytest.raises(openai.BadRequestError) as e:
        ask(c, img.url + "/start")
    assert "redirected more than 2 times" in e.value.body["message"]
    assert len(img.requests) == 3 and not up.requests
    # a redirect to another scheme is refused too
    img.default = Reply(302, {"Location": "file:///etc/passwd"})
    with pytest.raises(openai.BadRequestError) as e:
        ask(c, img.url + "/start")
    assert "only http and https" in e.value.body["message"]


def test_slow_image_hits_the_time_limit(harness: LoopThread) -> None:
    img = harness.upstream().push(Reply(200, {"Content-Type": "image/png"}, PNG, first_delay=3))
    c, up = gateway(harness, fetch=True, allow_private_networks=True, timeout_seconds=0.5)
    with pytest.raises(openai.BadRequestError) as e:
        ask(c, img.url + "/slow.png")
    assert "longer than 0.5 s" in e.value.body["message"] and not up.requests
