"""Secrets are never quoted back: the real gateway against fake upstreams and token
endpoints that quote the credentials they were sent (as real ones do in their error
messages), with every log record captured at DEBUG, the admin API, the accounts
file, the accounts CLI and the bytes a client receives all searched for them."""
from __future__ import annotations

import json
import logging
import socket
import time
import urllib.parse
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Reply, fixture_bytes, openai_provider, simple_config
from tests.unit.test_accounts_cli import ACCOUNTS
from tornado_proxy.accounts.file import AccountsFile

ADMIN = "admin-token-Zq8sW3e4R5t6Y7u8"
ACCESS = "gw-access-key-Hj2kL3m4N5b6V7c8"
MSGS = [{"role": "user", "content": "Say hello"}]
# Characters a form body percent-encodes: the encoded token is not byte-equal to it.
RT = "rt-Secret/Refresh+Token=Ab12Cd34Ef56"
AT = "at-Expired-Access-Token-Gh78Ij90Kl12"
CS = "cs-Client-Secret-Mn34Op56Qr78"
# Fake keys in real keys' shapes (split so no scanner mistakes the source for a leak).
KEY_A = "sk-ant-" + "api03-AccountOneKey-Aa11Bb22Cc33Dd44"
FAKE_AWS_ID = "AKIA" + "IOSFODNN7EXAMPLE"  # AWS's documentation example
KEY_B = "sk-proj-AccountTwoKey-Ee55Ff66Gg77Hh88"
FOREIGN = "sk-proj-SomebodyElsesKey-Ii99Jj00Kk11"


def masked(secret: str) -> str:
    return "****" + secret[-4:]


def assert_clean(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text, f"{s!r} leaked"
        assert urllib.parse.quote_plus(s) not in text, f"{s!r} leaked form-encoded"
        assert s[:-4] not in text, f"{s!r} leaked but for its last characters"


def admin_get(gw: Any, path: str) -> str:
    import urllib.request

    req = urllib.request.Request(gw.url + path, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req) as r:
        return r.read().decode()


def oauth_gateway(harness: LoopThread, tmp_path: Path, token_endpoint: FakeUpstream, up: FakeUpstream,
                  **server: Any) -> tuple[Any, Path]:
    path = tmp_path / "accounts.json"
    AccountsFile(str(path)).upsert({"id": "o1", "provider": "up", "refresh_token": RT, "access_token": AT,
                                    "expires_at": time.time() - 5, "client_secret": CS})
    prov = openai_provider(up, timeouts={"connect": 2, "first_byte": 5, "idle": 5}, scheduler={"oauth": {
        "token_url": token_endpoint.url + "/oauth/token", "client_id": "client-1"}})
    prov["accounts"] = []
    cfg = simple_config([prov], [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}],
                        admin_token=ADMIN, **server)
    cfg["accounts_file"] = str(path)
    return harness.gateway(cfg), path


def test_a_rejected_refresh_token_is_masked_in_logs_admin_file_and_cli(
        harness: LoopThread, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    tok = harness.upstream()
    # like endpoints that repeat what they refused, in the description
    tok.default = Reply.json({"error": "invalid_grant", "error_description":
                              f"refresh token {RT} was revoked (client {CS}, last access token {AT})"}, 400)
    up = harness.upstream()
    gw, path = oauth_gateway(harness, tmp_path, tok, up)
    with pytest.raises(openai.APIStatusError) as e:
        openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0).chat.completions.create(
            model="m", messages=MSGS)
    assert tok.requests and not up.requests
    assert_clean(e.value.response.text, RT, AT, CS)

    body = admin_get(gw, "/admin/accounts")
    acc = json.loads(body)["accounts"][0]
    assert acc["state"] == "disabled" and "invalid_grant" in acc["disabled_reason"]
    assert masked(RT) in acc["disabled_reason"]  # still tells the operator which token it was
    assert_clean(body, RT, AT, CS)

    deadline = time.time() + 5  # the disable is written by the accounts-file thread
    while not json.loads(path.read_text())["accounts"][0].get("disabled") and time.time() < deadline:
        time.sleep(0.02)
    entry = json.loads(path.read_text())["accounts"][0]
    assert entry["disabled"] is True and entry["refresh_token"] == RT  # the token itself is kept
    assert_clean(entry["disabled_reason"], RT, AT, CS)

    monkeypatch.setenv("TORNADO_PROXY_ADMIN_TOKEN", ADMIN)
    capsys.readouterr()
    assert ACCOUNTS.main(["list", "--json", "--url", gw.url]) == 0
    assert ACCOUNTS.main(["list", "--json", "--accounts-file", str(path)]) == 0
    assert ACCOUNTS.main(["list", "--accounts-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "invalid_grant" in out
    assert_clean(out, RT, AT, CS)

    assert "refresh token was spent; re-authorise" in caplog.text
    assert_clean(caplog.text, RT, AT, CS, ADMIN)


def test_a_reason_in_an_old_accounts_file_is_masked_by_the_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file written before the scrubber existed still lists clean (the CLI knows its secrets)."""
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps({"version": 1, "generation": 1, "accounts": [
        {"id": "o1", "provider": "up", "refresh_token": RT, "disabled": True,
         "disabled_reason": f"refresh token rejected: token endpoint answered 400 invalid_grant: {RT} revoked"}]}))
    assert ACCOUNTS.main(["list", "--json", "--accounts-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)[0]["disabled_reason"].endswith(f"{masked(RT)} revoked")
    assert_clean(out, RT)


def test_debug_logs_of_a_refresh_never_carry_its_body(harness: LoopThread, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    new_rt, new_at = "rt-Rotated/Refresh+Tok=Zz98Yy76Xx54", "at-Fresh-Access-Token-Ww32Vv10"
    tok = harness.upstream()
    tok.default = Reply.json({"access_token": new_at, "refresh_token": new_rt, "expires_in": 3600})
    up = harness.upstream()
    up.default = Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json"))
    gw, _ = oauth_gateway(harness, tmp_path, tok, up, log_level="debug")
    r = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0).chat.completions.create(
        model="m", messages=MSGS)
    assert r.choices and up.requests[0].headers["authorization"] == f"Bearer {new_at}"
    assert urllib.parse.parse_qs(tok.requests[0].body.decode())["refresh_token"] == [RT]
    # Tornado's curl client did log this refresh at DEBUG (its connection, its headers)...
    assert any(rec.name == "tornado.curl_httpclient" for rec in caplog.records)
    # ...but never the body it sent, nor any token in any other line
    assert_clean(caplog.text, RT, CS, new_rt, new_at, AT)


def bedrock_gateway(harness: LoopThread, up: FakeUpstream) -> Any:
    prov = {"name": "bedrock", "type": "bedrock", "base_url": up.url, "options": {"region": "us-east-1"},
            "timeouts": {"connect": 2, "first_byte": 5, "idle": 5},
            "accounts": [{"id": "aws-1", "aws_access_key_id": "ASIAEXAMPLEKEYID0001",
                          "aws_secret_access_key": "aws-Secret-Access-Key-Ll22Mm33Nn44",
                          "aws_session_token": SESSION}]}
    return harness.gateway(simple_config([prov], [{"id": "b", "provider": "bedrock",
                                                   "upstream_model": "us.anthropic.claude-3-7-sonnet-20250219-v1:0"}],
                                         admin_token=ADMIN))


SESSION = "IQoJb3JpZ2luX2VjEXAMPLE-Session-Token-Oo55Pp66Qq77Rr88"


def test_an_aws_session_token_quoted_by_bedrock_is_masked(harness: LoopThread,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    up = harness.upstream()
    up.default = Reply(403, {"Content-Type": "application/json",
                             "x-amzn-ErrorType": "UnrecognizedClientException:http://internal.amazon.com/"},
                       json.dumps({"message": f"The security token included in the request is invalid: {SESSION} "
                                              "(secret aws-Secret-Access-Key-Ll22Mm33Nn44)"}).encode())
    gw = bedrock_gateway(harness, up)
    with pytest.raises(openai.APIStatusError) as e:
        openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0).chat.completions.create(
            model="b", messages=MSGS)
    assert up.requests and up.requests[0].headers["x-amz-security-token"] == SESSION
    assert masked(SESSION) in e.value.response.text
    everything = e.value.response.text + admin_get(gw, "/admin/accounts") + caplog.text
    assert_clean(everything, SESSION, "aws-Secret-Access-Key-Ll22Mm33Nn44")


def two_keys(up: FakeUpstream, name: str, ptype: str = "openai") -> dict[str, Any]:
    p = openai_provider(up, name=name, accounts=[{"id": f"{name}-a", "api_key": KEY_A},
                                                {"id": f"{name}-b", "api_key": KEY_B}],
                        timeouts={"connect": 2, "first_byte": 5, "idle": 5},
                        scheduler={"strategy": "round_robin", "max_tries": 1})
    p["type"] = ptype
    if ptype == "anthropic":
        p["base_url"] = up.url
    return p


def anthropic_midstream_error(quote: str) -> Reply:
    good = fixture_bytes("anthropic/error_midstream.sse").split(b"event: error")[0]
    err = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": quote}}).encode()
    return Reply.sse(good + b"event: error\ndata: " + err + b"\n\n", delay=0.05)  # text first, then the error


def test_an_error_after_the_first_byte_of_a_translated_stream_is_scrubbed(
        harness: LoopThread, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    up = harness.upstream()
    quote = f"Overloaded; key {KEY_A}, other key {KEY_B}, someone's {FOREIGN}, admin {ADMIN}, access {ACCESS}"
    up.default = anthropic_midstream_error(quote)
    model = {"id": "claude", "provider": "anth", "upstream_model": "claude-sonnet-4-20250514", "max_tokens": 256}
    gw = harness.gateway(simple_config([two_keys(up, "anth", "anthropic")], [model],
                                       admin_token=ADMIN, access_keys=[ACCESS]))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:  # the raw bytes the client gets
        body = json.dumps({"model": "claude", "messages": MSGS, "stream": True}).encode()
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + ACCESS.encode() + b"\r\nConnection: close\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        raw = b""
        try:
            while chunk := s.recv(65536):
                raw += chunk
        except TimeoutError:
            raise AssertionError(f"the stream stopped before its end; got {raw!r}") from None
    text = raw.decode()
    assert "The answer begins" in text and "Overloaded; key" in text  # the text, then the error frame
    assert masked(KEY_A) in text and "sk-****" in text
    assert_clean(text, KEY_A, KEY_B, FOREIGN, ADMIN, ACCESS)
    acc = admin_get(gw, "/admin/accounts")
    assert "Overloaded; key" in acc
    assert_clean(acc + caplog.text, KEY_A, KEY_B, FOREIGN, ADMIN, ACCESS)


@pytest.mark.parametrize("split", [None, 7], ids=["one-read-per-event", "7-byte-reads"])
def test_a_pass_through_stream_quoting_keys_is_masked(harness: LoopThread, split: int | None) -> None:
    up = harness.upstream()
    good = fixture_bytes("openai/text.sse")
    events = good.split(b"\n\n")
    quoting = (b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","choices":[{"index":0,'
               b'"delta":{"content":"the key is ' + KEY_A.encode() + b" and " + KEY_B.encode() + b'"}}]}')
    stream = b"\n\n".join([events[0], quoting, *events[1:]])
    up.default = Reply.sse(stream, split=split, delay=0.002 if split else 0.0)
    gw = harness.gateway(simple_config([two_keys(up, "up")], [{"id": "gpt-4o-mini", "provider": "up"}]))
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
    with c.chat.completions.with_streaming_response.create(model="gpt-4o-mini", messages=MSGS, stream=True) as r:
        got = r.read()
    assert up.requests and up.requests[0].headers["authorization"] == f"Bearer {KEY_A}"
    want = stream.replace(KEY_A.encode(), masked(KEY_A).encode()).replace(KEY_B.encode(), masked(KEY_B).encode())
    assert got == want  # every other byte as the upstream sent it
    assert_clean(got.decode(), KEY_A, KEY_B)


def test_a_foreign_key_shape_in_an_upstream_error_is_masked(harness: LoopThread,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    up = harness.upstream()
    up.default = Reply.json({"error": {"message": f"Incorrect API key provided: {FOREIGN}. Also tried "
                                                  "'Bearer eyJhbGciOi.JIUzI1NiJ9eyJzdWIi.OiIxMjM0NTY3ODkwIn0' and "
                                                  f"{FAKE_AWS_ID}", "type": "invalid_request_error",
                                       "code": "invalid_api_key"}}, 401)
    gw = harness.gateway(simple_config([two_keys(up, "up")], [{"id": "m", "provider": "up",
                                                              "upstream_model": "gpt-4o-mini"}], admin_token=ADMIN))
    with pytest.raises(openai.APIStatusError) as e:
        openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0).chat.completions.create(
            model="m", messages=MSGS)
    msg = e.value.message
    assert "Incorrect API key provided: sk-****Kk11" in msg and "AKIA****MPLE" in msg
    everything = e.value.response.text + admin_get(gw, "/admin/accounts") + caplog.text
    assert_clean(everything, FOREIGN, "eyJhbGciOi.JIUzI1NiJ9eyJzdWIi.OiIxMjM0NTY3ODkwIn0", FAKE_AWS_ID)
