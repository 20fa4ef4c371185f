"""Validate request bodies against the JSON Schemas in ``schemas/``.

This runs on every request.  jsonschema walks a schema with a new validator
object per keyword and subschema, which is slow for a small request and grows with
the conversation (an agent's long history would hold the IO loop; figures in
``bench/RESULTS.md``).  So each schema is compiled once into plain
Python predicates (:class:`_Compiler`, for the keywords our schemas use; any
other keyword makes it fall back to jsonschema) and the happy path is one call
of that predicate.  jsonschema stays the reference: only a body the predicate
rejects goes through ``iter_errors``/``best_match`` for the message, and if
jsonschema finds nothing wrong after all, the body is accepted.

Errors become ``ProxyError(INVALID_REQUEST)`` whose ``param`` is the path of
the offending field (``messages[1].content[0].type``) and whose message says
what was expected, in the style of OpenAI's own 400s, so clients that show
``error.message`` to a person show something useful.

Schemas are read from ``tornado_proxy.resources.data_dir("schemas")``: the
repository's ``schemas/`` in a checkout, the copy inside the package once installed.
:func:`load_schema` is the one reader; the providers' options schemas come through it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import unquote

from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError, format_path
from tornado_proxy.resources import data_dir

# Every schema's $id starts with this; a $ref to another file resolves to the file
# of the same relative name in the schema directory.
SCHEMA_BASE_URI = "https://tornado-proxy.dev/schemas/"

_SUFFIX = ".json"


def schema_dir() -> Path:
    """The directory the schemas are read from (see ``tornado_proxy.resources``)."""
    return data_dir("schemas")


def _normalise(name: str) -> str:
    return name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name


_schemas: dict[str, dict[str, Any]] = {}


def load_schema(name: str) -> dict[str, Any]:
    """The parsed schema ``name`` (``chat_completions.request.v1``, with or without ``.json``).

    The dict is shared and cached: callers must not modify it.
    """
    key = _normalise(name)
    schema = _schemas.get(key)
    if schema is None:
        root = schema_dir()
        path = (root / (key + _SUFFIX)).resolve()
        # names come from code, but keep them inside the schema dir all the same
        if root.resolve() not in path.parents:
            raise KeyError(f"bad schema name {name!r}")
        if not path.is_file():
            raise KeyError(f"no schema named {name!r} in {root}")
        loaded = jsonutil.loads(path.read_bytes())
        if not isinstance(loaded, dict):
            raise ValueError(f"schema {name!r} is not a JSON object")
        schema = loaded
        _schemas[key] = schema
    return schema


def _retrieve(uri: str) -> Resource[Any]:
    """Resolve a cross-file ``$ref`` to a file of the schema dir."""
    if not uri.startswith(SCHEMA_BASE_URI):
        # no network fetches, ever
        raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # an attrs class mypy cannot see into
    try:
        return Resource.from_contents(load_schema(uri[len(SCHEMA_BASE_URI):]))
    except KeyError:
        raise NoSuchResource(ref=uri) from None  # type: ignore[call-arg]


_registry: Registry[Any] = Registry(retrieve=_retrieve)  # type: ignore[call-arg]
_validators: dict[str, Validator] = {}
_fast: dict[str, Callable[[Any], bool]] = {}
_slow: set[str] = set()  # schemas the compiler could not take: plain jsonschema
_compilers: dict[str, "_Compiler"] = {}  # their memo gives the checks of subschemas


def validator(name: str) -> Validator:
    """The jsonschema validator of schema ``name`` (checked against its metaschema once)."""
    key = _normalise(name)
    v = _validators.get(key)
    if v is None:
        schema = load_schema(key)
        cls = validator_for(schema)
        cls.check_schema(schema)
        # format_checker=None: "format" stays an annotation, as in 2020-12, and costs nothing
        v = cls(schema, registry=_registry, format_checker=None)
        _validators[key] = v
    return v


def _predicate(schema_name: str) -> Callable[[Any], bool]:
    key = _normalise(schema_name)
    check = _fast.get(key)
    if check is None:
        v = validator(key)
        compiler = _Compiler(v.schema, set(v.VALIDATORS))
        try:
            check = compiler.compile(v.schema)
            _compilers[key] = compiler
        except _Unsupported:
            check = v.is_valid
            _slow.add(key)
        _fast[key] = check
    return check


def is_valid(schema_name: str, instance: Any) -> bool:
    """Does ``instance`` match the schema?  The compiled predicate where there is one."""
    return _predicate(schema_name)(instance)


def has_fast_path(schema_name: str) -> bool:
    """Is schema ``schema_name`` checked by a compiled predicate (not by plain jsonschema)?"""
    _predicate(schema_name)
    return _normalise(schema_name) not in _slow


def validate_body(schema_name: str, body: Any) -> None:
    """Raise ``ProxyError(INVALID_REQUEST, param=<path>)`` unless ``body`` matches the schema."""
    try:
        if is_valid(schema_name, body):
            return
        v = validator(schema_name)
        shrunk, index_maps = _shrink(_normalise(schema_name), v.schema, body)
        errors = list(v.iter_errors(shrunk))
        if errors:
            raise error_from(errors, index_maps, DIALECTS.get(schema_name, describe))
    except RecursionError:
        # Bodies from the wire are cut at jsonutil.MAX_DEPTH before they get here; this
        # is for any other caller: jsonschema (and repr in its messages) recurse per level.
        path = jsonutil.too_deep_path(body) or []
        param = format_path(path, 12) or None
        raise ProxyError(ErrorKind.INVALID_REQUEST,
                         f"Invalid '{param or 'body'}': nested more than {jsonutil.MAX_DEPTH} levels deep.",
                         param=param) from None
    # The predicate and jsonschema disagree: jsonschema is the reference (a test
    # keeps them in step; this is the safe way out if they ever drift).


def _shrink(key: str, schema: Any, body: Any) -> tuple[Any, dict[str, list[int]]]:
    """``body`` with its long top-level arrays cut down to the items that fail.

    jsonschema is slow per message (``bench/RESULTS.md``), so finding the one bad
    message of an agent's 1,000-message history would hold the IO loop for a long
    time, on a request anyone can send.  The compiled item check finds the failing items
    cheaply; jsonschema then sees only those (or the first item, if none fails,
    to keep the array non-empty), and the index map puts the original
    positions back into the error's path.  Only plain arrays are cut: a schema
    that counts items (``maxItems``, ``minItems`` above 1, ``contains``...)
    would see a different array.
    """
    compiler = _compilers.get(key)
    props = schema.get("properties") if isinstance(schema, dict) else None
    if compiler is None or not isinstance(body, dict) or not isinstance(props, dict):
        return body, {}
    shrunk: dict[str, Any] = {}
    maps: dict[str, list[int]] = {}
    for name, value in body.items():
        sub = props.get(name)
        if (isinstance(value, list) and len(value) > 1 and isinstance(sub, dict) and "items" in sub
                and set(sub) <= _CUTTABLE and sub.get("minItems", 0) <= 1):
            item_ok = compiler.compile(sub["items"])
            keep = [i for i, item in enumerate(value) if not item_ok(item)] or [0]
            shrunk[name] = [value[i] for i in keep]
            maps[name] = keep
        else:
            shrunk[name] = value
    return shrunk, maps


# keywords of an array schema that do not care how many items there are
_CUTTABLE = {"type", "items", "minItems", "description", "title", "$comment"}


# -- the compiled fast path ----------------------------------------------------

Check = Callable[[Any], bool]


class _Unsupported(Exception):
    """A schema uses a keyword the compiler does not know: use jsonschema instead."""


def _true(_: Any) -> bool:
    return True


def _false(_: Any) -> bool:
    return False


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# keywords that only annotate, or that change nothing for a plain local schema
_NOT_VALIDATING = {"then", "else", "$schema", "$defs", "definitions", "$comment"}
_SIMPLE_TYPES: dict[str, type] = {"string": str, "object": dict, "array": list, "boolean": bool,
                                  "null": type(None)}


class _Compiler:
    """JSON Schema (the subset our schemas use) -> a predicate with jsonschema's semantics.

    Same meaning as jsonschema's 2020-12 keywords: ``integer`` takes 1.0, booleans
    are not numbers, ``enum``/``const`` tell ``true`` from ``1``, a keyword that
    does not apply to the instance's type passes.  Local ``$ref`` only.
    """

    def __init__(self, root: Any, known_keywords: set[str]) -> None:
        self.root = root
        self.known = known_keywords
        self.memo: dict[int, Check] = {}

    def compile(self, schema: Any) -> Check:
        if schema is True:
            return _true
        if schema is False:
            return _false
        if not isinstance(schema, dict):
            raise _Unsupported(f"schema {schema!r}")
        key = id(schema)
        done = self.memo.get(key)
        if done is not None:
            return done
        # a recursive $ref meets this cell before the real check exists
        cell: list[Check] = []
        self.memo[key] = lambda x: cell[0](x)
        check = self._build(schema)
        cell.append(check)
        self.memo[key] = check
        return check

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            raise _Unsupported(f"$ref {ref!r}")
        node = self.root
        for token in ref[1:].split("/")[1:] if ref != "#" else []:
            token = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(node, list):
                node = node[int(token)]
            elif isinstance(node, dict) and token in node:
                node = node[token]
            else:
                raise _Unsupported(f"$ref {ref!r}")
        return node

    def _build(self, schema: dict[str, Any]) -> Check:
        checks: list[Check] = []
        for kw, val in schema.items():
            if kw in ("$id", "$anchor", "$dynamicAnchor") and schema is not self.root:
                raise _Unsupported(kw)  # a new base URI or anchor: leave resolution to jsonschema
            if kw in _NOT_VALIDATING or kw == "format" or kw.startswith("x-"):
                continue
            if kw not in self.known:
                continue  # annotations (title, description...) and unknown words: ignored, as jsonschema does
            build = getattr(self, "_kw_" + kw.replace("$", "dollar_"), None)
            if build is None:
                raise _Unsupported(kw)
            made = build(val, schema)
            if made is not None:
                checks.append(made)
        if not checks:
            return _true
        if len(checks) == 1:
            return checks[0]
        # the type check (usually first in our files) fails fastest
        all_checks = tuple(checks)

        def all_of(x: Any) -> bool:
            for c in all_checks:
                if not c(x):
                    return False
            return True
        return all_of

    # -- keywords ----------------------------------------------------------------
    def _kw_type(self, val: Any, schema: dict[str, Any]) -> Check:
        names = [val] if isinstance(val, str) else list(val)
        simple = tuple(_SIMPLE_TYPES[n] for n in names if n in _SIMPLE_TYPES)
        want_number = "number" in names
        want_integer = "integer" in names
        if any(n not in _SIMPLE_TYPES and n not in ("number", "integer") for n in names):
            raise _Unsupported(f"type {val!r}")
        if not want_number and not want_integer:
            return lambda x: isinstance(x, simple)

        def check(x: Any) -> bool:
            if isinstance(x, simple):
                return True
            if isinstance(x, bool):
                return False
            if want_number:
                return isinstance(x, (int, float))
            return isinstance(x, int) or (isinstance(x, float) and x.is_integer())
        return check

    @staticmethod
    def _literal_set(values: list[Any]) -> Check:
        # strings, null and booleans compare by identity/type exactly as jsonschema's equal()
        if not all(v is None or isinstance(v, (str, bool)) for v in values):
            raise _Unsupported(f"enum {values!r}")
        strings = frozenset(v for v in values if isinstance(v, str))
        singletons = tuple(v for v in values if not isinstance(v, str))

        def check(x: Any) -> bool:
            if isinstance(x, str):
                return x in strings
            return any(x is v for v in singletons)
        return check

    def _kw_enum(self, val: Any, schema: dict[str, Any]) -> Check:
        return self._literal_set(list(val))

    def _kw_const(self, val: Any, schema: dict[str, Any]) -> Check:
        return self._literal_set([val])

    def _kw_required(self, val: Any, schema: dict[str, Any]) -> Check:
        names = tuple(val)

        def check(x: Any) -> bool:
            if isinstance(x, dict):
                for n in names:
                    if n not in x:
                        return False
            return True
        return check

    def _kw_properties(self, val: Any, schema: dict[str, Any]) -> Check:
        if "patternProperties" in schema:
            raise _Unsupported("patternProperties")
        props = {k: self.compile(v) for k, v in val.items()}
        extra = schema.get("additionalProperties", True)
        other = None if extra is True else self.compile(extra)
        return self._object_walk(props, other)

    def _kw_additionalProperties(self, val: Any, schema: dict[str, Any]) -> Check | None:
        if "properties" in schema:
            return None  # done together with properties, in one pass over the keys
        if "patternProperties" in schema:
            raise _Unsupported("patternProperties")
        return None if val is True else self._object_walk({}, self.compile(val))

    @staticmethod
    def _object_walk(props: dict[str, Check], other: Check | None) -> Check:
        get = props.get

        def check(x: Any) -> bool:
            if not isinstance(x, dict):
                return True
            for k, v in x.items():
                c = get(k, other)
                if c is not None and not c(v):
                    return False
            return True
        return check

    def _kw_items(self, val: Any, schema: dict[str, Any]) -> Check:
        if "prefixItems" in schema:
            raise _Unsupported("prefixItems")
        item = self.compile(val)

        def check(x: Any) -> bool:
            if isinstance(x, list):
                for i in x:
                    if not item(i):
                        return False
            return True
        return check

    def _kw_propertyNames(self, val: Any, schema: dict[str, Any]) -> Check:
        name = self.compile(val)
        return lambda x: not isinstance(x, dict) or all(name(k) for k in x)

    def _kw_minItems(self, val: Any, schema: dict[str, Any]) -> Check:
        return lambda x: not isinstance(x, list) or len(x) >= val

    def _kw_maxItems(self, val: Any, schema: dict[str, Any]) -> Check:
        return lambda x: not isinstance(x, list) or len(x) <= val

    def _kw_minLength(self, val: Any, schema: dict[str, Any]) -> Check:
        return lambda x: not isinstance(x, str) or len(x) >= val

    def _kw_maxLength(self, val: Any, schema: dict[str, Any]) -> Check:
        return lambda x: not isinstance(x, str) or len(x) <= val

    def _kw_minProperties(self, val: Any, schema: dict[str, Any]) -> Check:
        return lambda x: not isinstance(x, dict) or len(x) >= val

    def _kw_maxProperties(self, val: Any, schema: dict[str, Any]) -> Check:
        return lambda x: not isinstance(x, dict) or len(x) <= val

    def _kw_minimum(self, val: Any, schema: dict[str, Any]) -> Check:
        return lambda x: not _is_number(x) or x >= val

    def _kw_maximum(self, val: Any, schema: dict[str, Any]) -> Check:
        return lambda x: not _is_number(x) or x <= val

    def _kw_exclusiveMinimum(self, val: Any, schema: dict[str, Any]) -> Check:
        return lambda x: not _is_number(x) or x > val

    def _kw_exclusiveMaximum(self, val: Any, schema: dict[str, Any]) -> Check:
        return lambda x: not _is_number(x) or x < val

    def _kw_pattern(self, val: Any, schema: dict[str, Any]) -> Check:
        rx = re.compile(val)
        return lambda x: not isinstance(x, str) or rx.search(x) is not None

    def _kw_allOf(self, val: Any, schema: dict[str, Any]) -> Check:
        dispatch = self._dispatch(val)
        if dispatch is not None:
            return dispatch
        subs = tuple(self.compile(s) for s in val)
        return lambda x: all(c(x) for c in subs)

    def _dispatch(self, branches: Any) -> Check | None:
        """``allOf: [{if: {required: [k], properties: {k: {const: v}}}, then: S}, ...]`` -> a lookup.

        This is how our schemas pick a message's shape by ``role`` and a part's by
        ``type`` (plain 2020-12, so any client's validator reads it).  Evaluating
        every ``if`` costs a walk per branch; the tag can select at most one
        branch, so look it up instead.  Same result: for an object only the branch
        whose constant equals the tag applies (none if the tag is missing), and a
        non-object passes every ``if``, so then every ``then`` applies.
        """
        if not isinstance(branches, list) or not branches:
            return None
        tag_key: str | None = None
        table: dict[str, Any] = {}
        for b in branches:
            if not isinstance(b, dict) or set(b) != {"if", "then"}:
                return None
            cond = b["if"]
            if not isinstance(cond, dict) or set(cond) != {"required", "properties"}:
                return None
            req, props = cond["required"], cond["properties"]
            if not (isinstance(req, list) and len(req) == 1 and isinstance(props, dict)
                    and list(props) == req and isinstance(props[req[0]], dict)
                    and set(props[req[0]]) == {"const"} and isinstance(props[req[0]]["const"], str)):
                return None
            if tag_key is None:
                tag_key = req[0]
            if req[0] != tag_key or props[tag_key]["const"] in table:
                return None
            table[props[tag_key]["const"]] = b["then"]
        assert tag_key is not None
        key = tag_key
        compiled = {tag: self.compile(then) for tag, then in table.items()}
        every = tuple(compiled.values())
        get = compiled.get

        def check(x: Any) -> bool:
            if isinstance(x, dict):
                tag = x.get(key)
                if isinstance(tag, str):
                    c = get(tag)
                    if c is not None:
                        return c(x)
                return True
            return all(c(x) for c in every)
        return check

    def _kw_anyOf(self, val: Any, schema: dict[str, Any]) -> Check:
        subs = tuple(self.compile(s) for s in val)
        return lambda x: any(c(x) for c in subs)

    def _kw_oneOf(self, val: Any, schema: dict[str, Any]) -> Check:
        subs = tuple(self.compile(s) for s in val)
        return lambda x: sum(1 for c in subs if c(x)) == 1

    def _kw_not(self, val: Any, schema: dict[str, Any]) -> Check:
        sub = self.compile(val)
        return lambda x: not sub(x)

    def _kw_if(self, val: Any, schema: dict[str, Any]) -> Check:
        cond = self.compile(val)
        then = self.compile(schema["then"]) if "then" in schema else _true
        other = self.compile(schema["else"]) if "else" in schema else _true
        return lambda x: then(x) if cond(x) else other(x)

    def _kw_dollar_ref(self, val: Any, schema: dict[str, Any]) -> Check:
        target = self._resolve(val)
        if isinstance(target, dict) and "$id" in target and target is not self.root:
            raise _Unsupported("$ref into a resource with its own $id")
        # the target is compiled lazily so that recursive schemas work
        return self.compile(target)


def error_from(errors: Iterable[ValidationError],
               index_maps: dict[str, list[int]] | None = None,
               describer: Callable[[ValidationError], tuple[str | None, str]] | None = None) -> ProxyError:
    """The ProxyError for the most relevant of a body's validation errors.

    ``index_maps`` (from :func:`_shrink`) maps the item positions of cut-down
    top-level arrays back to the client's positions.
    """
    err = best_match(errors)
    if err is None:  # pragma: no cover - only called with a failing body
        return ProxyError(ErrorKind.INVALID_REQUEST, "Invalid request body.")
    err = _descend(err)
    if index_maps:
        _restore_index(err, index_maps)
    param, message = (describer or describe)(err)
    return ProxyError(ErrorKind.INVALID_REQUEST, message, param=param)


def _restore_index(err: ValidationError, index_maps: dict[str, list[int]]) -> None:
    """Put the client's item position back into ``err``'s path (see :func:`_shrink`).

    An error's absolute path is its ancestors' relative paths joined, so the
    position is rewritten in whichever of them holds the path's second step.
    """
    absolute = list(err.absolute_path)
    if len(absolute) < 2 or absolute[0] not in index_maps or not isinstance(absolute[1], int):
        return
    chain: list[ValidationError] = []
    node: ValidationError | None = err
    while node is not None:
        chain.append(node)
        node = node.parent
    offset = 0
    for e in reversed(chain):
        rel = e.relative_path
        if offset <= 1 < offset + len(rel):
            rel[1 - offset] = index_maps[absolute[0]][absolute[1]]
            return
        offset += len(rel)


def _descend(err: ValidationError) -> ValidationError:
    """Pick the useful sub-error of an ``anyOf``/``oneOf`` that best_match left undecided.

    best_match stops when the alternatives' errors tie.  The alternative whose
    ``type`` matches the instance is the one the client meant (an object sent
    where "object or null" is allowed failed inside the object branch), so
    follow the deepest error among the branches that matched the type.
    """
    while err.validator in ("anyOf", "oneOf") and err.context:
        # a schema author's message wins over any guess
        if isinstance(err.schema, dict) and "x-error" in err.schema:
            return err
        typed = [e for e in err.context if e.validator != "type"]
        if not typed:
            return err
        err = max(typed, key=lambda e: len(e.absolute_path))
    return err


# -- messages ------------------------------------------------------------------

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}


def json_type(value: Any) -> str:
    """The JSON type of a decoded value, as a phrase ("an integer")."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _one_of_words(words: list[str]) -> str:
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _show(value: Any, limit: int = 60) -> str:
    """A short rendering of a client value: long content must not be echoed whole."""
    if isinstance(value, str):
        text = value if len(value) <= limit else value[:limit] + "..."
        return "'" + text + "'"
    try:
        text = jsonutil.dumps(value)
    except (TypeError, OverflowError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def describe(err: ValidationError) -> tuple[str | None, str]:
    """``(param, message)`` for one validation error."""
    path = list(err.absolute_path)
    param = format_path(path) or None
    where = f"'{param}'" if param else "the request body"
    kw = err.validator
    value = err.validator_value
    inst = err.instance

    if kw == "required" and isinstance(inst, dict):
        missing = [p for p in value if p not in inst] if isinstance(value, list) else []
        name = str(missing[0]) if missing else "?"
        param = format_path(path + [name])
        return param, f"Missing required parameter: '{param}'."
    if kw == "type":
        expected = [value] if isinstance(value, str) else list(value)
        words = [_TYPE_NAMES.get(t, t) for t in expected]
        return param, (f"Invalid type for {where}: expected {_one_of_words(words)}, "
                       f"but got {json_type(inst)} instead.")
    if kw in ("enum", "const"):
        allowed = list(value) if kw == "enum" else [value]
        shown = [_show(a) for a in allowed]
        return param, (f"Invalid value for {where}: {_show(inst)}. "
                       f"Supported values are: {_one_of_words(shown)}.")
    if kw in ("minimum", "exclusiveMinimum"):
        bound = "at least" if kw == "minimum" else "greater than"
        return param, f"Invalid {where}: expected a value {bound} {value}, but got {_show(inst)} instead."
    if kw in ("maximum", "exclusiveMaximum"):
        bound = "at most" if kw == "maximum" else "less than"
        return param, f"Invalid {where}: expected a value {bound} {value}, but got {_show(inst)} instead."
    if kw == "minItems":
        if isinstance(inst, list) and not inst:
            return param, f"Invalid {where}: empty array. Expected an array with at least {_count(value, 'item')}."
        return param, f"Invalid {where}: expected an array with at least {_count(value, 'item')}."
    if kw == "maxItems":
        count = len(inst) if isinstance(inst, list) else "?"
        return param, f"Invalid {where}: expected an array with at most {_count(value, 'item')}, but got {count}."
    if kw == "minLength":
        if inst == "":
            return param, f"Invalid {where}: empty string. Expected a string with at least {_count(value, 'character')}."
        return param, f"Invalid {where}: expected a string with at least {_count(value, 'character')}."
    if kw == "maxLength":
        return param, f"Invalid {where}: string too long. Expected a string with at most {_count(value, 'character')}."
    if kw == "maxProperties":
        count = len(inst) if isinstance(inst, dict) else "?"
        return param, f"Invalid {where}: expected an object with at most {value} keys, but got {count}."
    if kw == "propertyNames":
        return param, f"Invalid key {_show(inst)} in {where}: {err.message}."
    if kw == "pattern":
        return param, (f"Invalid {where}: {_show(inst)} does not match the pattern '{value}'.")
    if kw == "additionalProperties" and isinstance(inst, dict):
        known = err.schema.get("properties", {}) if isinstance(err.schema, dict) else {}
        extra = [k for k in inst if k not in known]
        if extra:
            param = format_path(path + [extra[0]])
            return param, f"Unrecognized parameter: '{param}'."
    if kw in ("anyOf", "oneOf"):
        hint = err.schema.get("x-error") if isinstance(err.schema, dict) else None
        if isinstance(hint, str):
            return param, f"Invalid {where}: {hint}."
        return param, f"Invalid {where}: {_show(inst)} matches none of the allowed forms."
    return param, f"Invalid {where}: {err.message}."


# -- Anthropic's words ---------------------------------------------------------------
# Anthropic's API words a bad body as pydantic does ("messages.1.role: Input should be
# 'user' or 'assistant'"), and clients match on those words (Claude Code falls back
# from mid-conversation system turns on them), so /v1/messages says the same.

_PYDANTIC_TYPES = {"string": "a valid string", "integer": "a valid integer", "number": "a valid number",
                   "boolean": "a valid boolean", "object": "a valid dictionary", "array": "a valid list",
                   "null": "None"}


def _pydantic_value(v: Any) -> str:
    return "None" if v is None else f"'{v}'" if isinstance(v, str) else jsonutil.dumps(v)


def describe_anthropic(err: ValidationError) -> tuple[str | None, str]:
    """``(param, message)`` for one validation error, in Anthropic's API's wording."""
    path = list(err.absolute_path)
    kw, value, inst = err.validator, err.validator_value, err.instance
    param = format_path(path) or None
    if kw == "required" and isinstance(inst, dict):
        missing = [p for p in value if p not in inst] if isinstance(value, list) else []
        path = path + [str(missing[0]) if missing else "?"]
        param, text = format_path(path), "Field required"
    elif kw == "type":
        expected = [value] if isinstance(value, str) else list(value)
        text = "Input should be " + " or ".join(_PYDANTIC_TYPES.get(t, t) for t in expected)
    elif kw in ("enum", "const"):
        allowed = list(value) if kw == "enum" else [value]
        text = "Input should be " + _one_of_words([_pydantic_value(a) for a in allowed])
    elif kw in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        rel = {"minimum": "greater than or equal to", "exclusiveMinimum": "greater than",
               "maximum": "less than or equal to", "exclusiveMaximum": "less than"}[kw]
        text = f"Input should be {rel} {value}"
    elif kw == "minLength":
        text = f"String should have at least {_count(value, 'character')}"
    elif kw == "minItems":
        text = f"List should have at least {_count(value, 'item')} after validation, not " \
               f"{len(inst) if isinstance(inst, list) else '?'}"
    elif kw == "additionalProperties" and isinstance(inst, dict):
        known = err.schema.get("properties", {}) if isinstance(err.schema, dict) else {}
        extra = [k for k in inst if k not in known]
        path = path + extra[:1]
        param, text = format_path(path), "Extra inputs are not permitted"
    else:
        return describe(err)
    loc = ".".join(str(p) for p in path)
    return param, f"{loc}: {text}" if loc else text


DIALECTS: dict[str, Callable[[ValidationError], tuple[str | None, str]]] = {
    "messages.request.v1": describe_anthropic,
}
