"""JSON Schema -> the OpenAPI 3.0 subset Gemini's ``Schema`` takes (:func:`clean_schema`)."""
from __future__ import annotations

from typing import Any

from tornado_proxy import jsonutil

from ..base import bad_request, unsupported


# Formats Gemini's Schema (an OpenAPI 3.0 subset) accepts per type; others are a 400.
_FORMATS = {"STRING": {"enum", "date-time"}, "NUMBER": {"float", "double"},
            "INTEGER": {"int32", "int64"}}
_TYPES = {"string": "STRING", "number": "NUMBER", "integer": "INTEGER", "boolean": "BOOLEAN",
          "array": "ARRAY", "object": "OBJECT", "null": "NULL"}


def clean_schema(schema: Any, param: str = "schema") -> dict[str, Any]:
    """A JSON Schema -> what Gemini's ``Schema`` accepts.

    ``$ref`` is inlined from ``$defs``/``definitions`` (a recursive schema is
    rejected: Gemini's Schema cannot express it); ``const`` becomes a one-value
    ``enum``; a type list or ``anyOf`` with ``null`` becomes ``nullable``;
    ``oneOf`` becomes ``anyOf``; ``allOf`` of objects is merged; ``examples``
    gives its first item to ``example``; enums become strings (Gemini's enums
    are string-only); ``required`` keeps only declared properties; formats
    Gemini rejects and keys it does not know (``additionalProperties``,
    ``$schema``, ``exclusiveMinimum``...) are removed.
    """
    if not isinstance(schema, dict):
        raise bad_request(f"'{param}' must be a JSON Schema object", param)
    defs: dict[str, Any] = {}
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update({f"#/{key}/{k}": v for k, v in schema[key].items()})
    return _clean(schema, defs, (), param, 0, [MAX_SCHEMA_NODES])


# A tool schema deeper or bigger than this is no tool a model can fill in.  Both limits
# bound the walk whatever the client sends: nesting cannot reach Python's recursion
# limit, and ``$ref``s that each use the next twice (2**n inlined nodes) stop early.
MAX_SCHEMA_DEPTH = 48
MAX_SCHEMA_NODES = 5000


def _clean(node: Any, defs: dict[str, Any], seen: tuple[str, ...], param: str,
           depth: int, budget: list[int]) -> dict[str, Any]:
    if depth > MAX_SCHEMA_DEPTH:
        raise bad_request(f"'{param}' nests more than {MAX_SCHEMA_DEPTH} levels deep; Gemini's Schema "
                          "cannot take it", param)
    budget[0] -= 1
    if budget[0] < 0:
        raise bad_request(f"'{param}': the schema expands to more than {MAX_SCHEMA_NODES} subschemas "
                          "(with its $refs inlined); Gemini's Schema cannot take it", param)
    if not isinstance(node, dict):
        if node is True or node == {}:
            return {}
        raise bad_request(f"'{param}' must be a JSON Schema object", param)
    ref = node.get("$ref")
    if isinstance(ref, str):
        if ref in seen:
            raise unsupported(param, f"recursive schema ({ref}) cannot be expressed in Gemini's Schema")
        if ref not in defs:
            raise bad_request(f"'{param}' refers to unknown definition {ref}", param)
        merged = {**defs[ref], **{k: v for k, v in node.items() if k != "$ref"}}
        return _clean(merged, defs, seen + (ref,), param, depth + 1, budget)
    node = dict(node)
    if "allOf" in node:
        for i, sub in enumerate(node.pop("allOf") or []):
            part = _clean(sub, defs, seen, f"{param}.allOf[{i}]", depth + 1, budget)
            for k, v in part.items():
                if k == "properties":
                    node.setdefault("properties", {}).update(v)
                elif k == "required":
                    node["required"] = list(node.get("required") or []) + [r for r in v if r not in (node.get("required") or [])]
                else:
                    node.setdefault(k, v)
    if "oneOf" in node and "anyOf" not in node:
        node["anyOf"] = node.pop("oneOf")
    if "const" in node and "enum" not in node:
        node["enum"] = [node.pop("const")]
    if "examples" in node and "example" not in node:
        examples = node.get("examples")
        if isinstance(examples, list) and examples:
            node["example"] = examples[0]

    out: dict[str, Any] = {}
    nullable = bool(node.get("nullable"))
    typ = node.get("type")
    if isinstance(typ, list):
        kinds = [t for t in typ if t != "null"]
        nullable = nullable or len(kinds) < len(typ)
        if len(kinds) == 1:
            typ = kinds[0]
        elif kinds:
            # Several non-null types: Gemini needs anyOf for that.
            node["anyOf"] = [{"type": t} for t in kinds] + list(node.get("anyOf") or [])
            typ = None
        else:
            typ = "null"
    if "anyOf" in node:
        subs = []
        for i, sub in enumerate(node.get("anyOf") or []):
            if isinstance(sub, dict) and sub.get("type") == "null" and len(sub) == 1:
                nullable = True
                continue
            subs.append(_clean(sub, defs, seen, f"{param}.anyOf[{i}]", depth + 1, budget))
        if len(subs) == 1 and typ is None:
            # anyOf [X, null] is just a nullable X.
            out.update(subs[0])
        elif subs:
            out["anyOf"] = subs
    if isinstance(typ, str):
        gtype = _TYPES.get(typ.lower())
        if gtype is None:
            raise bad_request(f"'{param}.type' has unknown type {typ!r}", f"{param}.type")
        out["type"] = gtype
    for key in ("title", "description", "example", "default", "pattern", "minItems", "maxItems",
                "minLength", "maxLength", "minProperties", "maxProperties", "minimum", "maximum",
                "propertyOrdering"):
        if key in node:
            out[key] = node[key]
    fmt = node.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS.get(out.get("type", ""), set()):
        out["format"] = fmt
    if "enum" in node and isinstance(node["enum"], list):
        values = [v for v in node["enum"] if v is not None]
        if len(values) < len(node["enum"]):
            nullable = True
        out["enum"] = [v if isinstance(v, str) else jsonutil.dumps(v) for v in values]
        # Gemini only has string enums; a number enum is sent as strings.
        out["type"] = "STRING"
        out.pop("format", None)
    if isinstance(node.get("properties"), dict):
        props = {k: _clean(v, defs, seen, f"{param}.properties.{k}", depth + 1, budget)
                 for k, v in node["properties"].items()}
        out["properties"] = props
        if isinstance(node.get("required"), list):
            req = [r for r in node["required"] if r in props]
            if req:
                out["required"] = req
        if "type" not in out:
            out["type"] = "OBJECT"
    if "items" in node:
        items = node["items"]
        if isinstance(items, list):  # tuple form: Gemini has one item schema
            items = {"anyOf": items} if len(items) > 1 else (items[0] if items else {})
        out["items"] = _clean(items, defs, seen, f"{param}.items", depth + 1, budget)
        if "type" not in out:
            out["type"] = "ARRAY"
    if nullable:
        out["nullable"] = True
    if out.get("type") == "NULL":
        # {"type": "null"} alone: Gemini has no null-only type; a nullable
        # string that must be null is the closest it can say.
        out["type"] = "STRING"
        out["nullable"] = True
    return out
