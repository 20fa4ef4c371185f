"""OpenAI embeddings requests -> Gemini batchEmbedContents, and back."""
from __future__ import annotations

import base64
import json
import pathlib
import struct
from typing import Any

import jsonschema
import pytest

from providers.base import Account
from providers.gemini import GeminiProvider
from tornado_proxy.errors import ErrorKind, ProxyError

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "gemini"
SCHEMA = json.loads((ROOT / "schemas" / "embeddings.request.v1.json").read_text())
ACCOUNT = Account(id="k1", api_key="test-key-123")
EMBED = {"id": "text-embedding", "provider": "gem", "upstream_model": "gemini-embedding-001"}


def gem() -> GeminiProvider:
    return GeminiProvider({"name": "gem", "type": "gemini"})


def item(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": text}]}, **extra}


@pytest.mark.parametrize("name,req,model,expected", [
    ("one string", {"model": "text-embedding", "input": "hello"}, EMBED, {"requests": [item("hello")]}),
    ("list, dimensions, user dropped",
     {"model": "text-embedding", "input": ["a", "b"], "dimensions": 256, "encoding_format": "float", "user": "u"},
     EMBED, {"requests": [item("a", outputDimensionality=256), item("b", outputDimensionality=256)]}),
    ("task type from options", {"model": "text-embedding", "input": "q"},
     {**EMBED, "options": {"embedding_task_type": "RETRIEVAL_QUERY"}},
     {"requests": [item("q", taskType="RETRIEVAL_QUERY")]}),
])
def test_build(name: str, req: dict[str, Any], model: dict[str, Any], expected: dict[str, Any]) -> None:
    jsonschema.validate(req, SCHEMA)
    up = gem().build_embeddings_request(req, model, ACCOUNT)
    assert up.url == "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert up.headers["x-goog-api-key"] == "test-key-123"
    assert json.loads(up.body or b"") == expected


@pytest.mark.parametrize("name,req,kind,param", [
    ("token arrays", {"model": "m", "input": [[1, 2, 3]]}, ErrorKind.UNSUPPORTED, "input"),
    ("empty list", {"model": "m", "input": []}, ErrorKind.INVALID_REQUEST, "input"),
    ("empty string in list", {"model": "m", "input": ["a", ""]}, ErrorKind.INVALID_REQUEST, "input[1]"),
    ("bad encoding", {"model": "m", "input": "a", "encoding_format": "int8"}, ErrorKind.INVALID_REQUEST,
     "encoding_format"),
    ("bad dimensions", {"model": "m", "input": "a", "dimensions": 0}, ErrorKind.INVALID_REQUEST, "dimensions"),
    ("unknown field", {"model": "m", "input": "a", "truncate": True}, ErrorKind.UNSUPPORTED, "truncate"),
])
def test_build_rejects(name: str, req: dict[str, Any], kind: ErrorKind, param: str) -> None:
    with pytest.raises(ProxyError) as info:
        gem().build_embeddings_request(req, EMBED, ACCOUNT)
    assert (info.value.kind, info.value.param) == (kind, param)


def test_translate_float() -> None:
    req = {"model": "text-embedding", "input": ["a", "b"]}
    out = gem().translate_embeddings((FIXTURES / "embeddings.json").read_bytes(), req)
    assert out == {"object": "list", "model": "text-embedding",
                   "data": [{"object": "embedding", "index": 0,
                             "embedding": [0.013168523, -0.008711934, -0.046782676, 0.00069968984]},
                            {"object": "embedding", "index": 1, "embedding": [-0.0265, 0.0125, 0.5, -1.0]}],
                   # no usageMetadata: counted, at least one token per input
                   "usage": {"prompt_tokens": 2, "total_tokens": 2}}


def test_translate_base64_is_little_endian_float32() -> None:
    req = {"model": "text-embedding", "input": ["a", "b"], "encoding_format": "base64"}
    out = gem().translate_embeddings((FIXTURES / "embeddings.json").read_bytes(), req)
    raw = base64.b64decode(out["data"][1]["embedding"])
    assert struct.unpack("<4f", raw) == (pytest.approx(-0.0265), pytest.approx(0.0125), 0.5, -1.0)


@pytest.mark.parametrize("name,body", [
    ("count mismatch", b'{"embeddings": [{"values": [1.0]}]}'),
    ("not JSON", b"oops"),
    ("no embeddings", b"{}"),
])
def test_translate_bad_answers(name: str, body: bytes) -> None:
    with pytest.raises(ProxyError) as info:
        gem().translate_embeddings(body, {"model": "m", "input": ["a", "b"]})
    assert info.value.kind is ErrorKind.UPSTREAM_BAD_RESPONSE


@pytest.mark.parametrize("name,req,valid", [
    ("string", {"model": "m", "input": "x"}, True),
    ("tokens", {"model": "m", "input": [1, 2]}, True),
    ("base64 with dimensions", {"model": "m", "input": ["x"], "encoding_format": "base64", "dimensions": 8}, True),
    ("no input", {"model": "m"}, False),
    ("no model", {"input": "x"}, False),
    ("bad format", {"model": "m", "input": "x", "encoding_format": "hex"}, False),
    ("extra field (for openai upstreams)", {"model": "m", "input": "x", "foo": 1}, True),
    ("null input", {"model": "m", "input": None}, False),
])
def test_request_schema(name: str, req: dict[str, Any], valid: bool) -> None:
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(req))
    assert (not errors) is valid
