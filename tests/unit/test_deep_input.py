"""The recursive walkers behind the parse stay safe on their own: deep or exploding input
is a 400 naming the field, never a RecursionError (a 500) or a walk of 2**n nodes.

Bodies from the wire are cut at ``jsonutil.MAX_DEPTH`` first (tests/e2e/test_bad_input.py);
these feed the walkers directly, as any other caller could.
"""
from __future__ import annotations

import time
from typing import Any

import pytest

from providers.gemini import clean_schema
from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.validation import validate_body


def nested(levels: int, leaf: Any = 1) -> Any:
    for _ in range(levels):
        leaf = {"a": leaf}
    return leaf


def deep_schema(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        node = {"type": "object", "properties": {"a": node}}
    return node


def ref_chain(n: int, uses: int) -> dict[str, Any]:
    """d0 -> d1 -> ... -> dn, each definition using the next ``uses`` times."""
    defs: dict[str, Any] = {f"d{n}": {"type": "string"}}
    for i in range(n):
        defs[f"d{i}"] = {"type": "object",
                         "properties": {f"p{j}": {"$ref": f"#/$defs/d{i + 1}"} for j in range(uses)}}
    return {"$ref": "#/$defs/d0", "$defs": defs}


@pytest.mark.parametrize("schema", ["chat_completions.request.v1", "responses.request.v1"])
def test_validation_of_a_body_nested_5000_deep_is_a_400(schema: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "input": "hi",
            "metadata": nested(5000)}
    with pytest.raises(ProxyError) as e:
        validate_body(schema, body)
    assert e.value.kind is ErrorKind.INVALID_REQUEST
    assert e.value.param is not None and e.value.param.startswith("metadata.a")


# (name, schema, field the error names)
CASES = [
    ("5000 levels", deep_schema(5000), "schema.properties.a"),
    ("49 levels", deep_schema(49), "schema.properties.a"),
    ("a $ref chain 60 long", ref_chain(60, 1), "schema"),
    ("$refs doubling 30 times", ref_chain(30, 2), "schema"),
]


@pytest.mark.parametrize("name,schema,field", CASES, ids=[c[0] for c in CASES])
def test_gemini_schema_cleaner_refuses_what_it_cannot_walk(name: str, schema: dict[str, Any], field: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ProxyError) as e:
        clean_schema(schema)
    assert time.monotonic() - t0 < 5  # 2**30 nodes would take hours: the budget stops it
    assert e.value.status == 400
    assert e.value.param is not None and e.value.param.startswith(field)


def test_gemini_schema_cleaner_takes_real_depth_and_shared_refs() -> None:
    assert clean_schema(deep_schema(40))["type"] == "OBJECT"
    out = clean_schema(ref_chain(8, 2))  # 2**8 leaves, well within the budget
    assert out["properties"]["p0"]["properties"]["p1"]["type"] == "OBJECT"


def test_too_deep_path_names_the_deepest_branch() -> None:
    body = {"model": "m", "ok": nested(3), "tools": [{"p": nested(200)}]}
    path = jsonutil.too_deep_path(body)
    assert path is not None and path[:3] == ["tools", 0, "p"] and len(path) == jsonutil.MAX_DEPTH
    assert jsonutil.too_deep_path({"a": nested(100)}) is None
