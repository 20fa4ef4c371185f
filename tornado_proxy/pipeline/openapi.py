"""The OpenAPI 3.1 document served at ``/openapi.json``.

Built from the route table (``app.ROUTES``): each entry is ``(path, method,
meta)`` with ``meta`` keys ``summary``, ``tags``, ``request_schema``,
``response_schema``, ``stream_schema`` (schema names from ``schemas/``) and,
optionally, ``description``, ``public`` (no access key needed),
``error_schema`` (for routes whose errors are not OpenAI-shaped; default
``error.v1``) and ``multipart`` (the body may also be ``multipart/form-data``;
on by default for the chat completions request schema, which the handlers
accept that way).

The JSON Schema files are embedded under ``components/schemas``.  OpenAPI 3.1
speaks JSON Schema 2020-12, so the files go in unchanged except for their
references: each file's ``$defs`` become components of their own
(``ChatCompletionsRequestV1_message``) and ``#/$defs/...`` references point
there.  ``$id`` is dropped from the embedded copy (kept as ``x-schema-id``),
because a schema with an ``$id`` resolves ``#/...`` against itself, and tools
such as Swagger UI do not follow ``$defs`` inside components.
"""
from __future__ import annotations

import copy
import re
from typing import Any

from tornado_proxy import __version__
from tornado_proxy.pipeline.validation import SCHEMA_BASE_URI, load_schema

ERROR_SCHEMA = "error.v1"
CHAT_REQUEST_SCHEMA = "chat_completions.request.v1"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Error responses every operation of a kind may answer (see tornado_proxy/errors.py).
_ERRORS = {
    "400": "Invalid request: bad JSON, a schema violation (error.param names the field) or an unsupported parameter.",
    "401": "Missing or invalid access key (only when the server is configured with access keys).",
    "404": "Unknown model or route.",
    "413": "Request body too large.",
    "429": "Rate limited; Retry-After says when to try again.",
    "500": "Internal error in the gateway.",
    "502": "The upstream failed or could not be reached.",
    "503": "No usable upstream account, or the server is draining.",
    "504": "The upstream timed out.",
}
# Which of those each kind of operation can answer.
_BODY_ERRORS = ("400", "413")
_UPSTREAM_ERRORS = ("404", "429", "502", "503", "504")


def component_name(schema_name: str) -> str:
    """``chat_completions.request.v1`` -> ``ChatCompletionsRequestV1``."""
    base = schema_name[:-5] if schema_name.endswith(".json") else schema_name
    words = re.split(r"[^0-9A-Za-z]+", base)
    return "".join(w[:1].upper() + w[1:] for w in words if w)


class _Embedder:
    """Copies schema files into ``components/schemas`` with their references rewritten."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def ref(self, schema_name: str) -> dict[str, str]:
        """A ``$ref`` to the component of ``schema_name``, embedding it (and what it uses) first."""
        name = schema_name[:-5] if schema_name.endswith(".json") else schema_name
        comp = component_name(name)
        if comp not in self.components:
            self.components[comp] = {}  # claim the name first: files may refer to each other
            schema = copy.deepcopy(load_schema(name))
            defs = schema.pop("$defs", {})
            schema_id = schema.pop("$id", None)
            schema.pop("$schema", None)
            if schema_id:
                schema["x-schema-id"] = schema_id
            self.components[comp] = self._rewrite(schema, comp)
            for def_name, sub in defs.items():
                self.components[f"{comp}_{def_name}"] = self._rewrite(sub, comp)
        return {"$ref": f"#/components/schemas/{comp}"}

    def _rewrite(self, node: Any, comp: str) -> Any:
        if isinstance(node, list):
            return [self._rewrite(x, comp) for x in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                out[key] = self._target(value, comp)
            elif key in ("const", "enum", "default", "examples", "example"):
                out[key] = value  # literal values, not schemas: leave a "$ref" key in them alone
            else:
                out[key] = self._rewrite(value, comp)
        return out

    def _target(self, ref: str, comp: str) -> str:
        doc, _, pointer = ref.partition("#")
        if doc:
            # another schema file, by full $id or by file name relative to this one
            name = doc[len(SCHEMA_BASE_URI):] if doc.startswith(SCHEMA_BASE_URI) else doc
            comp = self.ref(name)["$ref"].rsplit("/", 1)[1]
        if pointer.startswith("/$defs/"):
            head, _, rest = pointer[len("/$defs/"):].partition("/")
            return f"#/components/schemas/{comp}_{head}" + (f"/{rest}" if rest else "")
        return f"#/components/schemas/{comp}" + pointer


def build_openapi(routes: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` (``(path, method, meta)`` entries)."""
    emb = _Embedder()
    error_ref = emb.ref(ERROR_SCHEMA)
    paths: dict[str, dict[str, Any]] = {}
    tags: list[str] = []
    for path, method, meta in routes:
        method = method.lower()
        if method not in _METHODS:
            raise ValueError(f"{path}: {method!r} is not an HTTP method OpenAPI knows")
        item = paths.setdefault(path, {})
        if method in item:
            raise ValueError(f"{path}: {method} is listed twice")
        params = _path_parameters(path)
        if params and "parameters" not in item:
            item["parameters"] = params
        item[method] = _operation(emb, path, method, meta)
        for tag in meta.get("tags") or []:
            if tag not in tags:
                tags.append(tag)

    responses = {status: {"description": text,
                          "content": {"application/json": {"schema": error_ref}}}
                 for status, text in _ERRORS.items()}
    responses["429"]["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    responses["503"]["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tornado-proxy",
            "version": __version__,
            "description": ("An LLM API gateway. Clients speak OpenAI Chat Completions (and the other "
                            "formats listed here); the gateway forwards to the configured upstreams. "
                            "Request bodies are validated against the schemas below; a violation is a "
                            "400 whose error.param names the field."),
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "schemas": emb.components,
            "responses": {f"Error{status}": body for status, body in responses.items()},
            "headers": {
                "RetryAfter": {"description": "Seconds to wait before retrying.",
                               "schema": {"type": "integer", "minimum": 0}},
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "A gateway access key as 'Authorization: Bearer <key>'."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                           "description": "A gateway access key in the x-api-key header (or the header "
                                          "the server config names)."},
            },
        },
        # Either scheme; servers without access keys accept requests without one.
        "security": [{"bearer": []}, {"apiKey": []}],
    }


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{([^}/]+)}", path)]


def _operation(emb: _Embedder, path: str, method: str, meta: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": method + "_" + ("_".join(re.findall(r"[0-9A-Za-z]+", path)) or "root"),
        "summary": meta.get("summary") or f"{method.upper()} {path}",
    }
    if meta.get("description"):
        op["description"] = meta["description"]
    if meta.get("tags"):
        op["tags"] = list(meta["tags"])
    if meta.get("public"):
        op["security"] = []

    req_name = meta.get("request_schema")
    if req_name:
        req_ref = emb.ref(req_name)
        content: dict[str, Any] = {"application/json": {"schema": req_ref}}
        if meta.get("multipart", req_name.removesuffix(".json") == CHAT_REQUEST_SCHEMA):
            content["multipart/form-data"] = _multipart_media(req_ref)
        op["requestBody"] = {"required": True, "content": content}

    ok_content: dict[str, Any] = {}
    if meta.get("response_schema"):
        ok_content["application/json"] = {"schema": emb.ref(meta["response_schema"])}
    if meta.get("stream_schema"):
        chunk_ref = emb.ref(meta["stream_schema"])
        ok_content["text/event-stream"] = {
            "schema": {
                "type": "string",
                "description": ("Server-sent events, with the request's stream=true. Each event's "
                                f"data is a JSON {chunk_ref['$ref'].rsplit('/', 1)[1]} object; "
                                "the stream ends with 'data: [DONE]'. A failure after the stream "
                                "started is sent as a data event holding an error object instead."),
            },
            # the schema of each event's data, for tools that read it
            "x-sse-data-schema": {"oneOf": [chunk_ref, emb.ref(ERROR_SCHEMA)]},
        }
    ok: dict[str, Any] = {"description": "OK"}
    if ok_content:
        ok["content"] = ok_content
    responses: dict[str, Any] = {"200": ok}

    statuses: list[str] = []
    if req_name:
        statuses += _BODY_ERRORS
    if not meta.get("public"):
        statuses.append("401")
    if meta.get("stream_schema") or req_name:
        statuses += _UPSTREAM_ERRORS
    error_name = meta.get("error_schema") or ERROR_SCHEMA
    for status in sorted(set(statuses)) + ["default"]:
        code = "500" if status == "default" else status
        if error_name == ERROR_SCHEMA:
            responses[status] = {"$ref": f"#/components/responses/Error{code}"}
        else:
            # a route that answers errors in another shape (Anthropic's, say) says so itself
            responses[status] = {"description": _ERRORS[code],
                                 "content": {"application/json": {"schema": emb.ref(error_name)}}}
    op["responses"] = responses
    return op


def _multipart_media(req_ref: dict[str, str]) -> dict[str, Any]:
    return {
        "schema": {
            "type": "object",
            "description": ("The JSON request in the 'payload' field; every other field is a file, "
                            "added to the last user message: text files as text parts "
                            "('<filename>:' then the text), PNG/JPEG/GIF/WebP images as image_url "
                            "data URIs. Other files are refused."),
            "required": ["payload"],
            "properties": {
                "payload": {"type": "string", "contentMediaType": "application/json",
                            "contentSchema": req_ref},
            },
            "additionalProperties": {"type": "string", "contentMediaType": "application/octet-stream"},
        },
        "encoding": {"payload": {"contentType": "application/json"}},
    }
