"""The field policy: one table per client API of what becomes of each request field.

Clients add fields every month, and a gateway that refuses every field it does not
know breaks them the day they ship.  So each top-level field (and the few nested
ones that need their own decision) of each client API is one of:

* ``TRANSLATED``: mapped to the upstream's own field (or passed through);
* ``DROPPABLE``: losing it cannot change what the model answers (client ids and
  metadata, cache hints, no-op context edits, display and ordering hints): dropped
  when the upstream cannot take it, counted in
  ``tornado_proxy_dropped_fields_total{route,field}`` and logged at debug;
* ``EMULATED``: the upstream has no such field, the gateway does what it means
  (JSON mode through the prompt and a check, say);
* ``REJECTED``: losing it would change the answer and nothing faithful exists:
  refused in the client API's own error shape, naming the field.

The tables live here, in one module the client halves of ``providers/`` all read,
rather than spread over each provider: the decision is the client API's (what does
this field of *Anthropic's* API mean), the same for every upstream it is translated
to, and one place is what the unit table test (tests/unit/test_field_policy.py)
checks against the official SDKs' typed params.  A field of an API but not of its
table is rejected as unknown, so a new SDK field fails that test until someone
decides.  ``docs/field-policy.md`` explains every choice.

This module imports nothing from tornado (``providers/`` may import it).
"""
from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Callable

log = logging.getLogger("tornado_proxy.fields")

TRANSLATED = "translated"
DROPPABLE = "droppable"
EMULATED = "emulated"
REJECTED = "rejected"

# -- POST /v1/messages (anthropic: types/message_create_params.py, beta included) ----
MESSAGES: dict[str, str] = {
    "model": TRANSLATED,
    "messages": TRANSLATED,           # mid-conversation role "system" included (docs)
    "max_tokens": TRANSLATED,
    "system": TRANSLATED,
    "stream": TRANSLATED,
    "temperature": TRANSLATED,
    "top_p": TRANSLATED,
    "stop_sequences": TRANSLATED,
    "tools": TRANSLATED,
    "tool_choice": TRANSLATED,
    "thinking": TRANSLATED,           # enabled / adaptive -> the upstream's reasoning
    "thinking.display": DROPPABLE,    # how thinking is shown, not what is answered
    "output_config": TRANSLATED,      # effort -> reasoning level, format -> structured output
    "output_format": TRANSLATED,
    "top_k": REJECTED,                # OpenAI-style upstreams have no top-k sampling
    "mcp_servers": REJECTED,          # tools Anthropic's servers run
    "container": DROPPABLE,           # only code-execution server tools use it (those are rejected)
    "metadata": DROPPABLE,
    "service_tier": DROPPABLE,
    "cache_control": DROPPABLE,
    "inference_geo": DROPPABLE,
    "speed": DROPPABLE,
    "diagnostics": DROPPABLE,
    "user_profile_id": DROPPABLE,
    "workspace_id": DROPPABLE,
    "billing_policy": DROPPABLE,
    "fallback_credit_token": DROPPABLE,
    "betas": DROPPABLE,               # the SDK sends it as the anthropic-beta header
    # Only a no-op is droppable: clear_thinking_20251015 with keep "all" (what Claude
    # Code sends); any edit that clears something changes the context: rejected.
    "context_management": DROPPABLE,
    "compaction": REJECTED,           # server-side summarising of the history
    "fallbacks": REJECTED,            # other models on Anthropic's side
    "thread": REJECTED,               # a conversation stored on Anthropic's side
}

# -- POST /v1/responses (openai: types/responses/response_create_params.py) -----------
RESPONSES: dict[str, str] = {
    "model": TRANSLATED,
    "input": TRANSLATED,
    "instructions": TRANSLATED,
    "stream": TRANSLATED,
    "max_output_tokens": TRANSLATED,
    "temperature": TRANSLATED,
    "top_p": TRANSLATED,
    "tools": TRANSLATED,              # function; namespace flattened; custom as a string function
    # Codex's client-run tool search over its deferred tools: every tool goes upstream anyway.
    "tools.tool_search": DROPPABLE,
    # Hosted web search an upstream cannot run, when tool_choice does not force it:
    # dropped, not refused (docs/field-policy.md says why this one is a judgment call).
    "tools.web_search": DROPPABLE,
    "tool_choice": TRANSLATED,
    "parallel_tool_calls": TRANSLATED,
    "text": TRANSLATED,               # text.format -> structured output
    "text.verbosity": DROPPABLE,      # a length hint; the upstreams without it answer as asked
    "reasoning": TRANSLATED,          # effort -> the upstream's reasoning; summary -> shown or not
    "include": TRANSLATED,            # reasoning.encrypted_content only
    "previous_response_id": TRANSLATED,
    "store": TRANSLATED,
    "prompt_cache_key": DROPPABLE,    # also feeds account stickiness
    "prompt_cache_retention": DROPPABLE,
    "prompt_cache_options": DROPPABLE,
    "metadata": DROPPABLE,
    "client_metadata": DROPPABLE,     # Codex: installation, session and turn ids
    "user": DROPPABLE,
    "safety_identifier": DROPPABLE,
    "service_tier": DROPPABLE,
    "stream_options": DROPPABLE,
    "truncation": REJECTED,           # only "disabled" (the default) is served
    "top_logprobs": REJECTED,
    "background": REJECTED,
    "background_options": REJECTED,
    "conversation": REJECTED,
    "prompt": REJECTED,
    "max_tool_calls": REJECTED,
    "context_management": REJECTED,
    "moderation": REJECTED,
    "image": REJECTED,
    "access_programs": REJECTED,
}

# -- POST /v1/chat/completions (openai: types/chat/completion_create_params.py) -------
CHAT: dict[str, str] = {
    "model": TRANSLATED,
    "messages": TRANSLATED,
    "stream": TRANSLATED,
    "stream_options": TRANSLATED,
    "max_tokens": TRANSLATED,
    "max_completion_tokens": TRANSLATED,
    "temperature": TRANSLATED,
    "top_p": TRANSLATED,
    "stop": TRANSLATED,
    "tools": TRANSLATED,
    "tool_choice": TRANSLATED,
    "parallel_tool_calls": TRANSLATED,
    "response_format": TRANSLATED,    # json_object emulated for Anthropic and Bedrock (docs)
    "reasoning_effort": TRANSLATED,
    "verbosity": TRANSLATED,
    "seed": TRANSLATED,
    "presence_penalty": TRANSLATED,
    "frequency_penalty": TRANSLATED,
    "n": TRANSLATED,                  # 1 everywhere; more only where the upstream takes it
    "logprobs": TRANSLATED,
    "top_logprobs": TRANSLATED,
    "logit_bias": TRANSLATED,
    "modalities": TRANSLATED,
    "audio": TRANSLATED,
    "functions": TRANSLATED,
    "function_call": TRANSLATED,
    "prediction": TRANSLATED,
    "web_search_options": TRANSLATED,
    "store": DROPPABLE,
    "metadata": DROPPABLE,
    "prompt_cache_key": DROPPABLE,
    "prompt_cache_retention": DROPPABLE,
    "prompt_cache_options": DROPPABLE,
    "service_tier": DROPPABLE,
    "user": DROPPABLE,
    "safety_identifier": DROPPABLE,
    "moderation": REJECTED,
}

# -- POST /v1beta/models/{model}:generateContent (google-genai's GenerateContentConfig) -
GEMINI: dict[str, str] = {
    "contents": TRANSLATED,
    "systemInstruction": TRANSLATED,
    "tools": TRANSLATED,
    "toolConfig": TRANSLATED,
    "generationConfig": TRANSLATED,
    "safetySettings": DROPPABLE,      # the upstream's own filters apply either way
    "labels": DROPPABLE,
    "cachedContent": REJECTED,        # a cache stored on Google's side holds part of the prompt
    "store": DROPPABLE,
    "serviceTier": DROPPABLE,
}

TABLES: dict[str, dict[str, str]] = {
    "messages": MESSAGES,
    "responses": RESPONSES,
    "chat_completions": CHAT,
    "gemini_native": GEMINI,
}


def droppable(route: str) -> list[str]:
    """The field names of ``route`` that may be dropped: the metric's whole label set."""
    return [f for f, d in TABLES[route].items() if d == DROPPABLE]


_sink: Callable[[str, str], None] | None = None
# The client route of the request being served (set by the request handler): an
# upstream translator that drops a pivot field counts it under that route.
_route: ContextVar[str] = ContextVar("tornado_proxy_route", default="")
# Pivot (Chat Completions) names that a client route calls otherwise.
_CLIENT_NAMES: dict[str, dict[str, str]] = {
    "responses": {"verbosity": "text.verbosity", "max_tokens": "max_output_tokens",
                  "reasoning_effort": "reasoning.effort", "response_format": "text.format"},
    "messages": {"parallel_tool_calls": "tool_choice.disable_parallel_tool_use", "stop": "stop_sequences",
                 "reasoning_effort": "output_config.effort", "response_format": "output_config.format"},
}


def set_sink(sink: Callable[[str, str], None] | None) -> None:
    """Where drops are counted (the gateway's metrics; one gateway per process)."""
    global _sink
    _sink = sink


def drop(route: str, field: str) -> None:
    """Record that ``field`` (a name from ``route``'s table, never request data) was
    dropped on its way upstream."""
    assert TABLES[route].get(field) == DROPPABLE, (route, field)
    log.debug("dropped field %s on %s: the upstream does not take it and it cannot change the answer",
              field, route)
    sink = _sink
    if sink is not None:
        sink(route, field)


def set_route(route: str) -> None:
    """The client route of the request this task serves."""
    _route.set(route)


def drop_pivot(field: str) -> None:
    """An upstream translator dropped the pivot field ``field``: counted under the
    client's own name for it, when the client route's table says it is droppable."""
    route = _route.get()
    name = _CLIENT_NAMES.get(route, {}).get(field, field)
    table = TABLES.get(route)
    if table is not None and table.get(name) == DROPPABLE:
        drop(route, name)
    else:
        log.debug("dropped field %s: the upstream does not take it and it cannot change the answer", field)


def client_name(field: str) -> str:
    """What the client of the request being served calls the pivot field ``field``:
    an error must name a field the client sent."""
    route = _route.get()
    return _CLIENT_NAMES.get(route, {}).get(field, field)
