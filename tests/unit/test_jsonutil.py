"""jsonutil: what it writes holds only its own bytes (orjson returns its whole write
buffer, 4 KiB at least, with the length shortened: kept, that is most of a held
stream's memory and of a stored response's)."""
from __future__ import annotations

import tracemalloc

import pytest

from tornado_proxy import jsonutil


@pytest.mark.parametrize("obj,limit", [("m", 200), ({"a": "x" * 3000}, 3300)])
def test_written_json_holds_only_its_bytes(obj: object, limit: int) -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [jsonutil.dumpb(obj) for _ in range(200)]
        per = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per < limit, f"{per:.0f} bytes held per {len(kept[0])}-byte document"


def test_round_trip_and_the_fallback_writer() -> None:
    obj = {"a": [1, 2.5, None, True], "é": "\u2028", "big": 2 ** 70}  # beyond 64 bits: ujson writes it
    assert jsonutil.loads(jsonutil.dumpb(obj)) == obj
    assert jsonutil.dumps({"k": "v"}) == '{"k":"v"}'
