"""SigV4 signing of Bedrock requests, Bedrock API keys, regions and endpoints.

The signer is botocore's; these tests pin it to AWS's published Signature Version 4
test suite vectors (credentials AKIDEXAMPLE, 2015-08-30T12:36:00Z, region
us-east-1, service "service"), and check a Bedrock request against a small
reference implementation written from the SigV4 specification (which itself is
checked against the same vectors first).
"""
from __future__ import annotations

import calendar
import hashlib
import hmac
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from providers.base import Account
from providers.bedrock import BedrockProvider, sigv4_sign
from tornado_proxy.errors import ErrorKind, ProxyError

SUITE_KEY = "AKIDEXAMPLE"
SUITE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"  # AWS's published example secret
SUITE_TIME = calendar.timegm((2015, 8, 30, 12, 36, 0))
SCOPE = "Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"

# (name, method, url, headers, body, expected Authorization) from the AWS SigV4 test suite
VECTORS = [
    ("get-vanilla", "GET", "https://example.amazonaws.com/", {}, b"",
     f"AWS4-HMAC-SHA256 {SCOPE}, SignedHeaders=host;x-amz-date, "
     "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
    ("post-vanilla", "POST", "https://example.amazonaws.com/", {}, b"",
     f"AWS4-HMAC-SHA256 {SCOPE}, SignedHeaders=host;x-amz-date, "
     "Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ("post-vanilla-query", "POST", "https://example.amazonaws.com/?Param1=value1", {}, b"",
     f"AWS4-HMAC-SHA256 {SCOPE}, SignedHeaders=host;x-amz-date, "
     "Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"),
    ("post-x-www-form-urlencoded", "POST", "https://example.amazonaws.com/",
     {"Content-Type": "application/x-www-form-urlencoded"}, b"Param1=value1",
     f"AWS4-HMAC-SHA256 {SCOPE}, SignedHeaders=content-type;host;x-amz-date, "
     "Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
]


def reference_authorization(method: str, url: str, headers: dict[str, str], body: bytes, key: str, secret: str,
                            region: str, service: str, amz_date: str, token: str | None = None) -> str:
    """SigV4 from the specification, independent of botocore."""
    parts = urlsplit(url)
    # Non-S3 services: each path segment is URI-encoded twice (the URL holds it once).
    path = "/".join(quote(seg, safe="-_.~") for seg in parts.path.split("/")) or "/"
    query = "&".join(sorted(parts.query.split("&"))) if parts.query else ""
    signed = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = amz_date
    if token:
        signed["x-amz-security-token"] = token
    names = sorted(signed)
    canonical = "\n".join([method, path, query, "".join(f"{n}:{signed[n]}\n" for n in names), ";".join(names),
                           hashlib.sha256(body).hexdigest()])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={';'.join(names)}, Signature={sig}"


@pytest.mark.parametrize("name,method,url,headers,body,expected", VECTORS)
def test_aws_sigv4_suite_vectors(name: str, method: str, url: str, headers: dict[str, str], body: bytes,
                                 expected: str) -> None:
    signed = sigv4_sign(method, url, headers, body, access_key=SUITE_KEY, secret_key=SUITE_SECRET,
                        session_token=None, region="us-east-1", when=SUITE_TIME, service="service")
    assert signed["X-Amz-Date"] == "20150830T123600Z"
    assert signed["Authorization"] == expected
    # the reference implementation agrees with AWS too, so it can judge Bedrock requests below
    assert reference_authorization(method, url, headers, body, SUITE_KEY, SUITE_SECRET, "us-east-1", "service",
                                   "20150830T123600Z") == expected


CLAUDE = {"id": "bedrock-claude", "provider": "bedrock", "upstream_model": "us.anthropic.claude-3-7-sonnet-20250219-v1:0"}
REQ = {"model": "bedrock-claude", "messages": [{"role": "user", "content": "Hi"}]}
FIXED_CLOCK = float(SUITE_TIME)


def provider(**conf: Any) -> BedrockProvider:
    return BedrockProvider({"name": "bedrock", "type": "bedrock", **conf}, clock=lambda: FIXED_CLOCK)


def keys(**extra: Any) -> Account:
    return Account("aws", extra={"aws_access_key_id": SUITE_KEY, "aws_secret_access_key": SUITE_SECRET, **extra})


# (name, provider conf, account, model, stream, expected URL, signing region)
SIGNED = [
    ("default endpoint from the account region", {}, keys(region="us-west-2"), CLAUDE, False,
     "https://bedrock-runtime.us-west-2.amazonaws.com/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse",
     "us-west-2"),
    ("options.region, stream", {"options": {"region": "eu-central-1"}}, keys(), CLAUDE, True,
     "https://bedrock-runtime.eu-central-1.amazonaws.com/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream",
     "eu-central-1"),
    ("VPC endpoint base_url keeps the signing region, ARN model id",
     {"base_url": "https://vpce-0abc.bedrock-runtime.us-east-1.vpce.amazonaws.com/", "options": {"region": "us-east-1"}},
     keys(), {**CLAUDE, "upstream_model": "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0"},
     False,
     "https://vpce-0abc.bedrock-runtime.us-east-1.vpce.amazonaws.com/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A"
     "123456789012%3Ainference-profile%2Fus.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse", "us-east-1"),
    ("loopback base_url with a port, session token", {"base_url": "http://127.0.0.1:8123", "options": {"region": "us-east-1"}},
     keys(aws_session_token="test-session-token-123"), CLAUDE, True,
     "http://127.0.0.1:8123/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream", "us-east-1"),
]


@pytest.mark.parametrize("name,conf,account,model,stream,url,region", SIGNED)
def test_build_request_is_signed(name: str, conf: dict[str, Any], account: Account, model: dict[str, Any],
                                 stream: bool, url: str, region: str) -> None:
    up = provider(**conf).build_request(REQ, model, account, stream)
    assert up.url == url
    assert up.headers["X-Amz-Date"] == "20150830T123600Z"
    token = account.extra.get("aws_session_token")
    if token:
        assert up.headers["X-Amz-Security-Token"] == token
        assert "x-amz-security-token" in up.headers["Authorization"]
    unsigned = {k: v for k, v in up.headers.items()
                if k not in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")}
    assert set(unsigned) == {"Content-Type", "Accept"}
    assert f"/20150830/{region}/bedrock/aws4_request" in up.headers["Authorization"]
    assert up.headers["Authorization"] == reference_authorization(
        "POST", url, unsigned, up.body or b"", SUITE_KEY, SUITE_SECRET, region, "bedrock", "20150830T123600Z", token)


def test_known_bedrock_signature() -> None:
    """One Bedrock request, pinned: a change in signing shows up here first."""
    up = provider(options={"region": "us-east-1"}).build_request(REQ, CLAUDE, keys(), False)
    assert up.body == b'{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}'
    expected = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/bedrock/aws4_request, "
                "SignedHeaders=accept;content-type;host;x-amz-date, "
                "Signature=b69a79003aaab92eafde56ff915ef224384685607b1d4459e634c7b3166c741d")
    assert up.headers["Authorization"] == expected
    assert reference_authorization("POST", up.url, {"Content-Type": "application/json", "Accept": "application/json"},
                                   up.body, SUITE_KEY, SUITE_SECRET, "us-east-1", "bedrock",
                                   "20150830T123600Z") == expected


def test_signature_covers_the_body_and_the_clock() -> None:
    p = provider(options={"region": "us-east-1"})
    a = p.build_request(REQ, CLAUDE, keys(), False).headers["Authorization"]
    b = p.build_request({**REQ, "temperature": 0.5}, CLAUDE, keys(), False).headers["Authorization"]
    later = BedrockProvider({"name": "b", "type": "bedrock", "options": {"region": "us-east-1"}},
                            clock=lambda: FIXED_CLOCK + 1).build_request(REQ, CLAUDE, keys(), False)
    assert len({a, b, later.headers["Authorization"]}) == 3
    assert later.headers["X-Amz-Date"] == "20150830T123601Z"


def test_api_key_account_is_a_bearer_token_and_needs_no_region_with_base_url() -> None:
    up = provider(base_url="http://127.0.0.1:9").build_request(REQ, CLAUDE, Account("k", api_key="test-key-123"), False)
    assert up.headers["Authorization"] == "Bearer test-key-123"
    assert "X-Amz-Date" not in up.headers
    assert up.url.startswith("http://127.0.0.1:9/model/")


@pytest.mark.parametrize("name,conf,account", [
    ("signing without a region", {"base_url": "http://127.0.0.1:9"}, keys()),
    ("default endpoint without a region", {}, Account("k", api_key="test-key-123")),
    ("no keys at all", {"options": {"region": "us-east-1"}}, Account("k")),
])
def test_build_request_account_problems(name: str, conf: dict[str, Any], account: Account) -> None:
    with pytest.raises(ProxyError) as exc:
        provider(**conf).build_request(REQ, CLAUDE, account, False)
    assert exc.value.kind is ErrorKind.INTERNAL


KEYS = {"aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "test-secret-123"}

# (name, provider conf, models, expected problems (substrings, in order))
VALIDATE = [
    ("fine", {"options": {"region": "us-east-1"}, "accounts": [KEYS, {"api_key": "test-key-123"}]},
     [CLAUDE, {"id": "bedrock-*", "provider": "bedrock", "reasoning": "high"}], []),
    ("region per account", {"accounts": [{**KEYS, "region": "ap-northeast-1"}]}, [], []),
    ("no region", {"accounts": [KEYS]}, [], ["accounts[0]: no region"]),
    ("bearer account with base_url needs no region", {"base_url": "http://127.0.0.1:1", "accounts": [{"api_key": "k"}]},
     [], []),
    ("half the keys", {"options": {"region": "us-east-1"}, "accounts": [{"aws_access_key_id": "AKIDEXAMPLE"}]}, [],
     ["accounts[0]: needs aws_access_key_id and aws_secret_access_key"]),
    ("both kinds", {"options": {"region": "us-east-1"}, "accounts": [{**KEYS, "api_key": "k"}]}, [],
     ["accounts[0]: give either api_key"]),
    ("unknown option, bad region", {"options": {"region": "Mars", "profile": "x"}}, [],
     ["options.region: 'Mars' does not match", "options: Additional properties"]),
    ("model options", {"options": {"region": "us-east-1"}}, [
        {**CLAUDE, "options": {"reasoning_style": "deepseek", "additional_model_request_fields": {"top_k": 5}}},
        {"id": "nova", "provider": "bedrock", "upstream_model": "amazon.nova-pro-v1:0", "reasoning": "low"}],
     ["model 'bedrock-claude': options.reasoning_style", "model 'nova': reasoning 'low' needs a Claude model"]),
]


@pytest.mark.parametrize("name,conf,models,expected", VALIDATE)
def test_validate(name: str, conf: dict[str, Any], models: list[dict[str, Any]], expected: list[str]) -> None:
    problems = provider(**conf).validate(models)
    assert len(problems) == len(expected), problems
    for got, want in zip(sorted(problems), sorted(expected)):
        assert want in got
