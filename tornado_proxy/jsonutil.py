"""One place for JSON options, so the bytes we send are stable.

orjson (Rust) parses and serialises a stream chunk several times faster than ujson
(figures: ``bench/RESULTS.md``), and every chunk of a translated stream is parsed once
and serialised once.  Its output is
compact UTF-8 with forward slashes unescaped, as ours always was.  ujson stays for
what orjson refuses: it reads NaN, Infinity and lone surrogates, and writes integers
beyond 64 bits, so nothing that parsed or serialised before fails now.  One
difference remains: orjson reads an integer beyond 64 bits as a float.
"""
from __future__ import annotations

from typing import Any

import orjson
import ujson

JSONDecodeError = ValueError  # both libraries' decode errors are ValueErrors

_OPTS = orjson.OPT_NON_STR_KEYS
_dumps = orjson.dumps
_loads = orjson.loads


def _write(obj: Any) -> bytes:
    try:
        return _dumps(obj, option=_OPTS)
    except TypeError:  # an integer beyond 64 bits, or a type neither library writes
        return ujson.dumps(obj, ensure_ascii=False, escape_forward_slashes=False).encode("utf-8")


def dumpb(obj: Any) -> bytes:
    # orjson hands back its whole write buffer (4 KiB at least, growing in steps: a
    # 3 KB document holds 32 KiB) with only the length shortened.  What we write is often
    # kept (a stream's upstream body for the whole stream, the model name a pass-through
    # rewrites, stored responses): a copy holds just the bytes, for a memcpy.
    return bytes(memoryview(_write(obj)))


def dumps(obj: Any) -> str:
    return _write(obj).decode("utf-8")  # (the str is a copy already)


def loads(data: str | bytes) -> Any:
    try:
        return _loads(data)
    except orjson.JSONDecodeError:
        return ujson.loads(data)  # NaN, Infinity, lone surrogates; raises ValueError if not JSON


# -- client request bodies -------------------------------------------------------

#: Deepest nesting a client body may have.  Real requests stay far below it (a tool's
#: JSON Schema ten levels deep is about twenty here); every walker behind the parse
#: (validation, translators, schema cleaners, serialisers) is then far from Python's
#: recursion limit, which a body of ``[[[[...`` would otherwise reach from any of them.
MAX_DEPTH = 128


class BadRequestJSON(ValueError):
    """A client body that parsed but cannot be served: ``reason`` is ``"depth"`` or
    ``"surrogate"``; ``path`` (keys and indexes) leads to the offending value."""

    def __init__(self, reason: str, path: list[str | int], detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.path = path


def loads_request(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """A client's JSON body: as :func:`loads`, but refused (``BadRequestJSON``) when it is
    nested deeper than ``max_depth`` or holds a lone surrogate (``"\\ud800"``): such a
    string cannot be UTF-8 encoded, so no upstream could be sent it; strict parsers
    (OpenAI's, Anthropic's) reject it too.  ``ValueError`` if it is not JSON at all."""
    try:
        obj = _loads(data)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # deeper than orjson (and ujson) go
            raise BadRequestJSON("depth", [], f"nested more than {max_depth} levels deep") from None
        obj = ujson.loads(data)  # raises ValueError if not JSON
        # orjson refuses lone surrogates; ujson took it (NaN, a huge integer, or that)
        bad = _surrogate_path(obj)
        if bad is not None:
            raise BadRequestJSON("surrogate", bad, "lone surrogate in string") from None
    # A document of n bytes nests at most n/2 deep: small bodies need no walk.
    if len(data) > 2 * max_depth and _too_deep(obj, max_depth):
        raise BadRequestJSON("depth", _deep_path(obj, max_depth),
                             f"nested more than {max_depth} levels deep") from None
    return obj


def _too_deep(obj: Any, limit: int) -> bool:
    """Does ``obj`` nest deeper than ``limit``?  Level by level, no recursion, containers
    only (the strings and numbers that make up most of a body are not looked at twice)."""
    if obj.__class__ is not dict and obj.__class__ is not list:
        return False
    level = [obj]
    depth = 1
    while True:
        below: list[Any] = []
        add = below.append
        for c in level:
            for v in (c.values() if c.__class__ is dict else c):
                if v.__class__ is dict or v.__class__ is list:
                    add(v)
        if not below:
            return False
        depth += 1
        if depth > limit:
            return True
        level = below


def too_deep_path(obj: Any, limit: int = MAX_DEPTH) -> list[str | int] | None:
    """The path to a container nested deeper than ``limit`` in ``obj``, or None."""
    return _deep_path(obj, limit) if _too_deep(obj, limit) else None


def _deep_path(obj: Any, limit: int) -> list[str | int]:
    """The path to the first container below ``limit`` levels (only on the error path)."""
    stack: list[tuple[Any, list[str | int]]] = [(obj, [])]
    while stack:
        node, path = stack.pop()
        if len(path) >= limit:
            return path
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in reversed(list(items)):
            if isinstance(v, (dict, list)):
                stack.append((v, path + [k]))
    return []


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _surrogate_path(obj: Any) -> list[str | int] | None:
    """The path to the first key or string holding a lone surrogate, or None."""
    stack: list[tuple[Any, list[str | int]]] = [(obj, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if _has_surrogate(node):
                return path
        elif isinstance(node, dict):
            for k, v in reversed(list(node.items())):
                if _has_surrogate(k):
                    return path + [k]
                stack.append((v, path + [k]))
        elif isinstance(node, list):
            for i in range(len(node) - 1, -1, -1):
                stack.append((node[i], path + [i]))
    return None
