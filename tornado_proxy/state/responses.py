"""A bounded, expiring in-memory store of Responses conversations.

OpenAI's Responses API lets a client continue a conversation with
``previous_response_id`` instead of resending it.  An ``openai-responses``
upstream keeps that state itself; every other upstream (Anthropic, Gemini,
Bedrock, OpenAI chat) is stateless, so for those the gateway keeps it here: for
each response it answered, the whole conversation up to and including that
response's output, as pivot messages, plus the rendered Response object (for
``GET /v1/responses/{id}``) and its input items.

Why the whole conversation per entry and not a linked list: a chain then never
needs a walk, and an entry stays usable after its ancestors expired or were
evicted.  The price is memory, which is why the store is bounded by entry count
and by (estimated) bytes, and every entry expires ``ttl`` seconds after it was
written.  Eviction is least-recently-used.

The store is pure: no I/O and no clock of its own (``clock`` is injected), so it
is tested without sleeping.  It lives in one process: with ``workers > 1`` a
chain must come back to the same worker, which is why the README says to run
one worker (or none of this) when clients rely on ``previous_response_id``.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from tornado_proxy import jsonutil

DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "max_entries": 1000,
    "ttl_seconds": 3600.0,
    "max_bytes": 64 * 1024 * 1024,
}


@dataclass
class StoredResponse:
    id: str
    # The conversation through this response's output, in pivot form, *without*
    # the system message made from ``instructions``: OpenAI does not carry a
    # previous response's instructions over to the next one, so neither do we.
    messages: list[dict[str, Any]]
    # The Response object as the client received it (GET /v1/responses/{id}).
    response: dict[str, Any]
    # The input items of this request (GET /v1/responses/{id}/input_items).
    input_items: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0
    expires: float = 0.0


class ResponseStore:
    """LRU + TTL + byte budget.  ``max_entries == 0`` or ``enabled = False`` disables it."""

    def __init__(self, *, enabled: bool = True, max_entries: int = 1000, ttl_seconds: float = 3600.0,
                 max_bytes: int = 64 * 1024 * 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = bool(enabled) and max_entries > 0 and max_bytes > 0
        self.max_entries = max_entries
        self.ttl = float(ttl_seconds)
        self.max_bytes = max_bytes
        self.clock = clock
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    @classmethod
    def from_config(cls, conf: dict[str, Any] | None,
                    clock: Callable[[], float] = time.monotonic) -> "ResponseStore":
        """From ``server.response_store`` (see DEFAULTS); unknown keys raise ValueError."""
        merged = {**DEFAULTS, **(conf or {})}
        unknown = set(merged) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"server.response_store: unknown key(s) {sorted(unknown)}; "
                             f"expected {sorted(DEFAULTS)}")
        return cls(enabled=bool(merged["enabled"]), max_entries=int(merged["max_entries"]),
                   ttl_seconds=float(merged["ttl_seconds"]), max_bytes=int(merged["max_bytes"]), clock=clock)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def put(self, entry: StoredResponse) -> bool:
        """Keep ``entry``; False if disabled or the entry alone is larger than the budget."""
        if not self.enabled:
            return False
        # The size is an estimate (the JSON length): what matters is that it grows
        # with the conversation, so long chains push old entries out.
        entry.size = len(jsonutil.dumpb([entry.messages, entry.response, entry.input_items]))
        if entry.size > self.max_bytes:
            return False
        entry.expires = self.clock() + self.ttl
        self._remove(entry.id)
        self._items[entry.id] = entry
        self._bytes += entry.size
        self._evict()
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        entry = self._items.get(response_id)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            self._remove(response_id)
            return None
        self._items.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        return self.get(response_id) is not None and self._remove(response_id)

    def _remove(self, response_id: str) -> bool:
        old = self._items.pop(response_id, None)
        if old is None:
            return False
        self._bytes -= old.size
        return True

    def _evict(self) -> None:
        now = self.clock()
        # Expired entries first (oldest writes are at the front only if never read,
        # so scan them all: the store is small and this runs once per write).
        for key in [k for k, e in self._items.items() if e.expires <= now]:
            self._remove(key)
        while self._items and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
            key = next(iter(self._items))
            self._remove(key)
