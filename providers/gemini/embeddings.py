"""OpenAI ``POST /v1/embeddings`` <-> Gemini ``batchEmbedContents``."""
from __future__ import annotations

import base64
import math
import struct
from typing import Any

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import bad_request, unsupported

_EMBED_KEYS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def embedding_inputs(req: dict[str, Any]) -> list[str]:
    """The texts of an OpenAI embeddings request (token arrays are rejected)."""
    value = req.get("input")
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        texts = list(value)
    elif isinstance(value, list) and value:
        raise unsupported("input", "token arrays cannot be sent to Gemini; send text")
    else:
        raise bad_request("'input' must be a non-empty string or list of strings", "input")
    for i, text in enumerate(texts):
        if not text:
            raise bad_request(f"'input[{i}]' must not be empty", f"input[{i}]" if isinstance(value, list) else "input")
    return texts


def build_embeddings_body(req: dict[str, Any], upstream_model: str, opts: dict[str, Any]) -> dict[str, Any]:
    """OpenAI embeddings request -> ``batchEmbedContents`` body (``user`` is dropped)."""
    for key in req:
        if key not in _EMBED_KEYS:
            raise unsupported(key, "Gemini embeddings have no equivalent")
    fmt = req.get("encoding_format", "float")
    if fmt not in ("float", "base64", None):
        raise bad_request("'encoding_format' must be float or base64", "encoding_format")
    dims = req.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or dims < 1):
        raise bad_request("'dimensions' must be a positive integer", "dimensions")
    name = "models/" + upstream_model.removeprefix("models/")
    requests = []
    for text in embedding_inputs(req):
        item: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
        if opts.get("embedding_task_type"):
            item["taskType"] = opts["embedding_task_type"]
        if dims is not None:
            item["outputDimensionality"] = dims
        requests.append(item)
    return {"requests": requests}


# "A token is equivalent to about 4 characters" for Gemini models (Google's
# token-counting guide): the estimate when an embeddings answer has no usage.
EMBED_CHARS_PER_TOKEN = 4


def translate_embeddings(body: bytes, req: dict[str, Any]) -> dict[str, Any]:
    """``batchEmbedContents`` answer -> OpenAI embeddings response.

    base64 is the little-endian float32 array OpenAI sends.  Usage is Gemini's
    ``usageMetadata.promptTokenCount`` when the answer has it; the Gemini API's
    ``batchEmbedContents`` answers without one, and then the count is estimated
    the way Google documents Gemini tokens, about four characters each
    (``EMBED_CHARS_PER_TOKEN``, at least one token per input), never 0.
    """
    try:
        obj = jsonutil.loads(body)
    except (ValueError, jsonutil.JSONDecodeError):
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini embeddings answer is not JSON")
    embeddings = obj.get("embeddings") if isinstance(obj, dict) else None
    if not isinstance(embeddings, list) or len(embeddings) != len(embedding_inputs(req)):
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, "Gemini embeddings answer does not match the input")
    b64 = req.get("encoding_format") == "base64"
    data = []
    for i, emb in enumerate(embeddings):
        values = [float(v) for v in (emb or {}).get("values") or []]
        vector: Any = values
        if b64:
            vector = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": vector})
    meta = obj.get("usageMetadata")
    tokens = meta.get("promptTokenCount") if isinstance(meta, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens <= 0:
        tokens = sum(max(1, math.ceil(len(t) / EMBED_CHARS_PER_TOKEN)) for t in embedding_inputs(req))
    return {"object": "list", "data": data, "model": req.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
