"""/openapi.json: a valid OpenAPI 3.1 document whose embedded schemas mean what the files mean."""
from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.unit.test_validation import CHUNKS, INVALID_REQUESTS, RESPONSES, VALID_REQUESTS
from tornado_proxy.pipeline.openapi import build_openapi, component_name
from tornado_proxy.pipeline.validation import is_valid

CHAT = {"summary": "Create a chat completion", "tags": ["openai"],
        "request_schema": "chat_completions.request.v1", "response_schema": "chat_completions.response.v1",
        "stream_schema": "chat_completions.chunk.v1"}
ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("/v1/chat/completions", "post", CHAT),
    ("/chat/completions", "post", CHAT),
    ("/v1/models", "get", {"summary": "List models", "tags": ["openai"], "response_schema": "models.list.v1"}),
    ("/v1/models/{model}", "get", {"summary": "Retrieve a model", "tags": ["openai"]}),
    ("/health", "get", {"summary": "Liveness", "tags": ["operations"], "public": True}),
    ("/health", "HEAD", {"summary": "Liveness", "tags": ["operations"], "public": True}),
    ("/openapi.json", "get", {"summary": "This document", "tags": ["operations"], "public": True}),
]


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return build_openapi(ROUTES)


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert doc["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for k, v in node.items() if k not in ("const", "enum") for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _pointer(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def test_every_reference_resolves_inside_the_document(doc: dict[str, Any]) -> None:
    refs = _refs(doc)
    assert "#/components/schemas/ChatCompletionsRequestV1_message" in refs
    for ref in refs:
        assert _pointer(doc, ref) is not None, ref
    # no schema keeps its own $id or $defs: Swagger-style tools resolve "#/..." against the document
    for name, schema in doc["components"]["schemas"].items():
        assert "$id" not in schema and "$defs" not in schema, name


# (name, path, method, what the operation must say)
OPERATIONS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("chat_json_and_multipart", "/v1/chat/completions", "post", {
        "request": ["application/json", "multipart/form-data"], "ok": ["application/json", "text/event-stream"],
        "errors": ["400", "401", "404", "413", "429", "502", "503", "504"], "public": False}),
    ("chat_alias", "/chat/completions", "post", {
        "request": ["application/json", "multipart/form-data"], "ok": ["application/json", "text/event-stream"],
        "errors": ["400", "401", "404", "413", "429", "502", "503", "504"], "public": False}),
    ("models", "/v1/models", "get", {"request": None, "ok": ["application/json"], "errors": ["401"], "public": False}),
    ("model", "/v1/models/{model}", "get", {"request": None, "ok": [], "errors": ["401"], "public": False}),
    ("health_get", "/health", "get", {"request": None, "ok": [], "errors": [], "public": True}),
    ("health_head", "/health", "head", {"request": None, "ok": [], "errors": [], "public": True}),
]


@pytest.mark.parametrize("name,path,method,expected", OPERATIONS, ids=[o[0] for o in OPERATIONS])
def test_operations(doc: dict[str, Any], name: str, path: str, method: str, expected: dict[str, Any]) -> None:
    op = doc["paths"][path][method]
    if expected["request"] is None:
        assert "requestBody" not in op
    else:
        assert list(op["requestBody"]["content"]) == expected["request"]
    assert list(op["responses"]["200"].get("content", {})) == expected["ok"]
    errors = [s for s in op["responses"] if s not in ("200", "default")]
    assert errors == expected["errors"]
    for status in errors + ["default"]:
        target = _pointer(doc, op["responses"][status]["$ref"])
        assert target["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorV1"}
    assert (op.get("security") == []) is expected["public"]


def test_document_details(doc: dict[str, Any]) -> None:
    ids = [op["operationId"] for item in doc["paths"].values() for k, op in item.items() if k != "parameters"]
    assert len(ids) == len(set(ids)) == len(ROUTES)
    assert doc["paths"]["/v1/models/{model}"]["parameters"] == [
        {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]
    assert [t["name"] for t in doc["tags"]] == ["openai", "operations"]
    assert doc["components"]["responses"]["Error429"]["headers"]["Retry-After"]
    stream = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    assert stream["x-sse-data-schema"]["oneOf"] == [{"$ref": "#/components/schemas/ChatCompletionsChunkV1"},
                                                    {"$ref": "#/components/schemas/ErrorV1"}]
    multipart = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert multipart["schema"]["properties"]["payload"]["contentSchema"] == {
        "$ref": "#/components/schemas/ChatCompletionsRequestV1"}


def _embedded(doc: dict[str, Any], component: str) -> Draft202012Validator:
    uri = "urn:tornado-proxy:openapi"
    # the whole document is one resource: "#/components/..." references resolve in it
    registry: Registry[Any] = Registry().with_resource(uri, Resource.from_contents(
        doc, default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{uri}#/components/schemas/{component}"}, registry=registry)


@pytest.mark.parametrize("schema,samples", [
    ("chat_completions.request.v1", [b for _, b in VALID_REQUESTS] + [c[1] for c in INVALID_REQUESTS]),
    ("chat_completions.response.v1", [json.loads(t) for _, t in RESPONSES]),
    ("chat_completions.chunk.v1", [json.loads(t) for _, t in CHUNKS]),
])
def test_embedded_schemas_mean_what_the_files_mean(doc: dict[str, Any], schema: str, samples: list[Any]) -> None:
    embedded = _embedded(doc, component_name(schema))
    outcomes = set()
    for sample in samples:
        outcome = is_valid(schema, sample)
        assert embedded.is_valid(sample) == outcome, sample
        outcomes.add(outcome)
    if schema.endswith("request.v1"):
        assert outcomes == {True, False}


@pytest.mark.parametrize("routes,problem", [
    ([("/x", "fetch", {})], "not an HTTP method"),
    ([("/x", "get", {}), ("/x", "GET", {})], "listed twice"),
])
def test_bad_route_tables_are_refused(routes: list[tuple[str, str, dict[str, Any]]], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        build_openapi(routes)


def test_a_route_with_its_own_error_shape() -> None:
    # any schema file stands in for, say, an Anthropic error schema
    doc = build_openapi([("/v1/messages", "post", {"summary": "Messages", "error_schema": "models.list.v1"})])
    responses = doc["paths"]["/v1/messages"]["post"]["responses"]
    assert set(responses) == {"200", "401", "default"}
    for status in ("401", "default"):
        assert responses[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ModelsListV1"}


def test_multipart_can_be_switched_off() -> None:
    doc = build_openapi([("/v1/chat/completions", "post", {**CHAT, "multipart": False})])
    assert list(doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]) == ["application/json"]


@pytest.mark.parametrize("name,component", [
    ("chat_completions.request.v1", "ChatCompletionsRequestV1"),
    ("models.list.v1.json", "ModelsListV1"),
    ("providers/anthropic.options", "ProvidersAnthropicOptions"),
])
def test_component_names(name: str, component: str) -> None:
    assert component_name(name) == component
