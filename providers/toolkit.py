"""Helpers every upstream adapter shares, written once.

* ``REASONING_BUDGETS`` / ``reasoning_budget``: the thinking-token budget a reasoning level
  stands for (Anthropic, Bedrock's Claude, Gemini 2.5), with the model entry's
  ``reasoning_budgets`` over the defaults.
* ``parse_data_uri``: a base64 ``data:`` URI as (media type, base64 data), for every
  upstream that takes inline bytes.
* ``parse_retry_after``: when an upstream says to try again (``retry-after-ms``, then
  ``Retry-After`` as delta seconds or an HTTP date), for the error classifiers and the
  scheduler's rate-limit reading alike.
* ``resolve_reasoning``: the one precedence of a request's reasoning (the core's
  ``reasoning_level``, the model's fixed ``reasoning``, the client's ``reasoning_effort``,
  the ``-thinking`` alias); each upstream maps the answer to its own wire shape.
* ``iter_messages``, ``iter_parts``, ``add_turn``, ``text_of``: walking pivot messages and
  content parts, merging same-role turns, text-only content as one string;
  ``upstream_json``: an upstream's JSON or an ``UPSTREAM_BAD_RESPONSE``.
* ``assistant_message``, ``tool_call``, ``completion``, ``chunk``, ``delta_chunk``,
  ``usage_chunk``: the pivot's answer and chunk shapes, built in one place
  (``base.text_chunk`` is the text lane's twin of ``delta_chunk``); ``usage_in``: where
  an answer or a stream event keeps its usage (``Provider.usage_of``).
* ``options_problems``, ``json_path``: a provider's ``options`` checked against its JSON
  Schema (read by ``tornado_proxy.pipeline.validation.load_schema``).

Pure functions, no tornado: like ``providers.base``, tested without a network.
"""
from __future__ import annotations

import datetime
import email.utils
import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from tornado_proxy import jsonutil
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.pipeline.validation import load_schema

from .base import StreamContext, bad_request, unsupported

JSON = dict[str, Any]

# Thinking tokens per reasoning level.  ``minimal`` is Anthropic's floor (1024, also
# Bedrock's); Anthropic's own effort table never resolves to it.
REASONING_BUDGETS: dict[str, int] = {"minimal": 1024, "low": 4096, "medium": 12288, "high": 24576}


def reasoning_budget(level: str, model: Mapping[str, Any]) -> int:
    """The token budget for ``level``: the model entry's ``reasoning_budgets`` first."""
    own = model.get("reasoning_budgets") or {}
    return int(own[level] if level in own else REASONING_BUDGETS[level])


def parse_data_uri(uri: str, param: str) -> tuple[str, str]:
    """``data:<type>[;<param>=<value>...];base64,<data>`` -> (type, base64 data).

    The type is lower-cased (``text/plain`` when absent).  Every upstream here takes inline
    bytes as base64, and so does OpenAI's API for the same fields: a URI without ``;base64``
    (percent-encoded bytes) or anything else is the client's error, naming ``param``."""
    head, sep, data = uri.partition(",")
    meta = head[5:].split(";")
    if not sep or head[:5].lower() != "data:" or len(meta) < 2 or meta[-1].strip().lower() != "base64":
        raise bad_request(f"'{param}' is not a base64 data URI: expected 'data:<type>;base64,<data>'", param)
    return meta[0].strip().lower() or "text/plain", data.strip()


def _seconds(value: str, scale: float) -> float | None:
    try:
        s = float(value) * scale
    except ValueError:
        return None
    return max(0.0, s) if math.isfinite(s) else None


def parse_retry_after(headers: Mapping[str, str], wall_now: float | None = None) -> float | None:
    """Seconds until a retry: ``retry-after-ms`` (OpenAI), else ``Retry-After`` in delta
    seconds or an HTTP date (against ``wall_now``, the wall clock by default).  None when
    absent or unreadable (``nan``, ``inf`` included); never negative."""
    ms = headers.get("retry-after-ms")
    if ms:
        s = _seconds(ms, 0.001)
        if s is not None:
            return s
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    s = _seconds(value, 1.0)
    if s is not None:
        return s
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if wall_now is None else wall_now))


# ---------------------------------------------------------------------------
# Reasoning: one precedence for every upstream
# ---------------------------------------------------------------------------

# The levels a request's reasoning resolves to (``reasoning_level``, the model's ``reasoning``).
REASONING_LEVELS = ("off", "minimal", "low", "medium", "high")
# Chat Completions ``reasoning_effort`` -> level; ``xhigh`` and ``max`` (Anthropic clients'
# effort scale) are the highest level there is.
EFFORT_LEVELS = {"none": "off", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
                 "xhigh": "high", "max": "high"}


@dataclass(frozen=True)
class ReasoningAsk:
    """What decided a request's reasoning, and the level it asks for.

    ``by``: ``"level"`` (the core's ``reasoning_level``), ``"model"`` (the operator's fixed
    ``reasoning``), ``"client"`` (``reasoning_effort``), ``"alias"`` (the router's
    ``-thinking`` alias: ``high``) or None (nothing asked: the upstream's default).
    ``effort``: the client's ``reasoning_effort`` as sent, when ``by`` is ``"client"``
    (an upstream with its own effort scale sends it on)."""

    by: str | None
    level: str | None
    effort: str | None = None


def resolve_reasoning(req: Mapping[str, Any], model: Mapping[str, Any], *, any_effort: bool = False) -> ReasoningAsk:
    """A request's reasoning by the precedence every upstream follows (docs/upstreams/*.md).

    A ``reasoning_level`` the core resolved wins; else a fixed model ``reasoning``
    (``off``/``low``/``medium``/``high``: the client's ``reasoning_effort`` is then a
    documented drop); else the client's ``reasoning_effort``; else the router's
    ``-thinking`` alias (``high``).  An unknown level or effort is the client's error,
    naming the field; ``any_effort`` passes an unknown effort string on (level None)."""
    level = req.get("reasoning_level")
    if level is not None:
        if level not in REASONING_LEVELS:
            raise bad_request(f"'reasoning_level' must be one of {', '.join(REASONING_LEVELS)}", "reasoning_level")
        return ReasoningAsk("level", str(level))
    conf = model.get("reasoning") or "auto"
    if conf != "auto":
        return ReasoningAsk("model", str(conf))
    effort = req.get("reasoning_effort")
    if effort is not None:
        known = EFFORT_LEVELS.get(effort) if isinstance(effort, str) else None
        if known is None and not (any_effort and isinstance(effort, str)):
            raise bad_request(f"'reasoning_effort' must be one of {', '.join(EFFORT_LEVELS)}", "reasoning_effort")
        return ReasoningAsk("client", known, str(effort))
    if model.get("_thinking_alias"):
        return ReasoningAsk("alias", "high")
    return ReasoningAsk(None, None)


# ---------------------------------------------------------------------------
# Pivot requests: messages and text content
# ---------------------------------------------------------------------------

def _objects(items: list[Any], param: str) -> Iterator[tuple[str, JSON]]:
    for i, item in enumerate(items):
        path = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"'{path}' must be an object", path)
        yield path, item


def iter_messages(messages: Any) -> Iterator[tuple[str, JSON]]:
    """(path, message) of each pivot message; not a non-empty list of objects is the client's error."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    return _objects(messages, "messages")


def iter_parts(content: Any, param: str) -> Iterator[tuple[str, JSON]]:
    """(path, part) of each part of a ``content`` list (the caller takes a string first);
    content of another shape or a part that is not an object is the client's error."""
    if not isinstance(content, list):
        raise bad_request(f"'{param}' must be a string or a list of content parts", param)
    return _objects(content, param)


def add_turn(turns: list[JSON], role: str, blocks: list[Any], key: str = "content") -> None:
    """Append a turn, or extend the last one when it has the same role: Anthropic, Converse
    and Gemini want user and assistant turns to alternate, so consecutive messages of one
    role (tool results followed by a user message, for one) become one turn."""
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(blocks)
    else:
        turns.append({"role": role, key: blocks})


def text_of(content: Any, param: str, kinds: tuple[str, ...] = ("text",)) -> str:
    """Content that can only be text here (a system prompt, a tool result...) as one string.

    ``None`` is empty; a string is itself; a list of parts of ``kinds`` (``text``, and
    ``refusal`` where an upstream takes it as text) is their text joined.  A part of
    another kind is not supported here, naming the part (``param[i]``); a part's text that
    is not a string, or content of another shape, is the client's error naming it."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"'{param}' must be a string or a list of text parts", param)
    out: list[str] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise unsupported(f"{param}[{i}]", f"only {' and '.join(kinds)} parts are allowed here")
        text = part.get(kind)
        if not isinstance(text, str):
            raise bad_request(f"'{param}[{i}].{kind}' must be a string", f"{param}[{i}].{kind}")
        out.append(text)
    return "".join(out)


# ---------------------------------------------------------------------------
# Pivot answers and chunks
# ---------------------------------------------------------------------------

def upstream_json(data: str | bytes, what: str, *, obj: bool = True) -> Any:
    """``data`` from upstream parsed as JSON (an object, with ``obj``); else an
    ``UPSTREAM_BAD_RESPONSE`` saying "upstream sent <what> that is not JSON"."""
    try:
        value = jsonutil.loads(data)
    except ValueError:
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"upstream sent {what} that is not JSON") from None
    if obj and not isinstance(value, dict):
        raise ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE, f"upstream sent {what} that is not an object")
    return value


def assistant_message(content: str | None, *, refusal: str = "", reasoning: str = "",
                      thinking_blocks: Iterable[JSON] = (), tool_calls: Iterable[JSON] = ()) -> JSON:
    """A pivot assistant message; the optional fields only when they hold something."""
    message: JSON = {"role": "assistant", "content": content}
    if refusal:
        message["refusal"] = refusal
    if reasoning:
        message["reasoning_content"] = reasoning
    blocks = list(thinking_blocks)
    if blocks:
        message["thinking_blocks"] = blocks
    calls = list(tool_calls)
    if calls:
        message["tool_calls"] = calls
    return message


def tool_call(call_id: Any, name: Any, arguments: str) -> JSON:
    """A pivot function tool call (``arguments`` as JSON text)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def completion(ctx: StreamContext, choices: list[JSON], usage: JSON | None = None) -> JSON:
    """A pivot ``chat.completion`` (``usage`` only when the upstream reported it)."""
    out: JSON = {"id": ctx.id, "object": "chat.completion", "created": ctx.created, "model": ctx.model,
                 "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def chunk(ctx: StreamContext, choices: list[JSON]) -> JSON:
    """A pivot ``chat.completion.chunk`` of ``choices``."""
    return {"id": ctx.id, "object": "chat.completion.chunk", "created": ctx.created, "model": ctx.model,
            "choices": choices}


def delta_chunk(ctx: StreamContext, delta: JSON, finish: str | None = None, index: int = 0) -> JSON:
    """The pivot chunk of one choice's ``delta`` (and its ``finish_reason``)."""
    return chunk(ctx, [{"index": index, "delta": delta, "finish_reason": finish}])


def usage_in(obj: Any, outer: str) -> JSON | None:
    """The ``usage`` object of an answer or stream event: its own, or its ``outer``
    member's (Anthropic's message_start ``message``, a Responses event's ``response``)."""
    if not isinstance(obj, dict):
        return None
    u = obj.get("usage")
    if not isinstance(u, dict):
        inner = obj.get(outer)
        u = inner.get("usage") if isinstance(inner, dict) else None
    return u if isinstance(u, dict) else None


def usage_chunk(ctx: StreamContext, usage: JSON) -> JSON:
    """The last pivot chunk of a stream: no choices, the usage (``stream_options.include_usage``)."""
    return {**chunk(ctx, []), "usage": usage}


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _options_validator(schema_name: str, part: str | None) -> Any:
    import jsonschema  # only at start, when the config is checked

    schema = load_schema(schema_name)
    if part is not None:
        schema = {**schema["$defs"][part], "$defs": schema["$defs"]}
    return jsonschema.Draft202012Validator(schema)


def json_path(prefix: str, parts: Iterable[Any]) -> str:
    """``prefix`` and a JSON path as the config and our 400s name it: ``options.drop_params[0]``."""
    out = prefix
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def options_problems(schema_name: str, options: Any, where: str, part: str | None = None) -> list[str]:
    """``options`` checked against the providers' schema ``schema_name`` (its
    ``$defs[part]`` when given: provider and model options may differ), read through
    ``tornado_proxy.pipeline.validation.load_schema``: one "<where>.<path>: <message>"
    a problem, in the order of the paths."""
    errors = sorted(_options_validator(schema_name, part).iter_errors(options),
                    key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{json_path(where, e.absolute_path)}: {e.message}" for e in errors]
