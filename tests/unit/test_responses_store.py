"""The previous_response_id store: bounded by entries and bytes, expiring, LRU."""
from __future__ import annotations

from typing import Any

import pytest

from tornado_proxy.state.responses import ResponseStore, StoredResponse


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(rid: str, text: str = "x") -> StoredResponse:
    return StoredResponse(id=rid, messages=[{"role": "user", "content": text}], response={"id": rid})


# (name, store kwargs, steps, expected ids present at the end)
# steps: ("put", id, text) | ("get", id) | ("tick", seconds) | ("delete", id)
CASES: list[tuple[str, dict[str, Any], list[tuple[Any, ...]], list[str]]] = [
    ("keeps what fits", {"max_entries": 3}, [("put", "a"), ("put", "b")], ["a", "b"]),
    ("evicts least recently used", {"max_entries": 2},
     [("put", "a"), ("put", "b"), ("get", "a"), ("put", "c")], ["a", "c"]),
    ("expires after ttl", {"ttl_seconds": 10}, [("put", "a"), ("tick", 5), ("put", "b"), ("tick", 6)], ["b"]),
    ("reading does not extend life", {"ttl_seconds": 10},
     [("put", "a"), ("tick", 9), ("get", "a"), ("tick", 2)], []),
    ("byte budget pushes out old entries", {"max_bytes": 250},
     [("put", "a", "x" * 60), ("put", "b", "y" * 60), ("put", "c", "z" * 60)], ["b", "c"]),
    ("an entry larger than the budget is not kept", {"max_bytes": 100}, [("put", "a", "x" * 200)], []),
    ("delete", {}, [("put", "a"), ("put", "b"), ("delete", "a")], ["b"]),
    ("overwrite keeps one copy", {"max_entries": 2}, [("put", "a"), ("put", "a"), ("put", "b")], ["a", "b"]),
    ("disabled keeps nothing", {"enabled": False}, [("put", "a")], []),
    ("zero entries disables", {"max_entries": 0}, [("put", "a")], []),
]


@pytest.mark.parametrize("name,kwargs,steps,present", CASES, ids=[c[0] for c in CASES])
def test_store(name: str, kwargs: dict[str, Any], steps: list[tuple[Any, ...]], present: list[str]) -> None:
    clock = Clock()
    store = ResponseStore(clock=clock, **kwargs)
    for step in steps:
        if step[0] == "put":
            store.put(entry(step[1], *step[2:]))
        elif step[0] == "get":
            store.get(step[1])
        elif step[0] == "tick":
            clock.now += step[1]
        elif step[0] == "delete":
            assert store.delete(step[1])
    assert sorted(k for k in ["a", "b", "c"] if store.get(k) is not None) == present
    assert store.bytes_used == sum(e.size for e in store._items.values())
    assert store.bytes_used <= store.max_bytes and len(store) <= max(store.max_entries, 0)


def test_from_config() -> None:
    store = ResponseStore.from_config({"max_entries": 5, "ttl_seconds": 60})
    assert (store.enabled, store.max_entries, store.ttl) == (True, 5, 60.0)
    assert ResponseStore.from_config(None).enabled
    assert not ResponseStore.from_config({"enabled": False}).enabled
    with pytest.raises(ValueError, match="unknown key"):
        ResponseStore.from_config({"max_entrys": 5})
