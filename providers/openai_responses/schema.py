"""JSON Schema checks shared by both halves of the Responses API: this upstream's
``options`` (``providers/openai-responses.options.json``) and, for the client API in
``tornado_proxy.apis.openai_responses``, the shape of a Responses request."""
from __future__ import annotations

import functools
from typing import Any, Iterable

from tornado_proxy.pipeline.validation import load_schema


@functools.lru_cache(maxsize=None)
def validator(name: str) -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(load_schema(name))


def json_path(prefix: str, parts: Iterable[Any]) -> str:
    out = prefix
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out
