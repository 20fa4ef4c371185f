"""The one replay harness for every provider's stream tests (see tests/README.md).

A recorded upstream stream (``tests/fixtures/<provider>/<fixture>.<ext>``) is cut
into reads by :func:`splits`, driven through a decoder and a ``StreamTranslator`` by
:func:`replay`, and the result compared with a golden file
(``tests/golden/<provider>/<fixture>.<what>.<ext>``) read by :func:`golden`.
SSE and Bedrock's binary event stream have the same shape: ``decoder.feed(bytes)``
and ``decoder.finish()`` give events, ``translator.feed(event)`` gives pivot chunks.

    data = fixture("anthropic/text.sse")
    expected = golden("anthropic/text.chunks.json", result(*replay(SSEDecoder(), tr(), [data])))
    for mode in MODES:
        for reads in splits(data, mode):
            assert result(*replay(SSEDecoder(), tr(), reads)) == expected, cuts(reads)

``UPDATE_GOLDEN=1`` rewrites a golden whose stored value differs from what the code
gives now (then read ``git diff tests/golden``); it is the only switch.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Iterator

import pytest

from tornado_proxy.errors import ProxyError

ROOT = Path(__file__).resolve().parent
FIXTURES = ROOT / "fixtures"
GOLDEN = ROOT / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

#: whole; every byte its own read; five seeded random cuttings; every 2-piece split.
MODES = ("whole", "bytes", "seed-1", "seed-2", "seed-3", "seed-4", "seed-5", "pairs")


def fixture(path: str) -> bytes:
    """The bytes of ``tests/fixtures/<path>``."""
    return (FIXTURES / path).read_bytes()


def splits(data: bytes, mode: str) -> Iterator[list[bytes]]:
    """The ways ``mode`` cuts ``data`` into reads (each a list of pieces that join to it).

    ``whole``: one read.  ``bytes``: one read per byte.  ``events``: one read per SSE
    event (split after each blank line).  ``seed-N``: up to 64 cut points drawn from a
    generator seeded with N and the length, so a failure repeats.  ``pairs``: every
    2-piece split ``[data[:i], data[i:]]``, one way per cut point (the decoder must
    carry any partial line, field, frame header or UTF-8 sequence across the read).
    """
    n = len(data)
    if mode == "whole":
        yield [data]
    elif mode == "bytes":
        yield [data[i:i + 1] for i in range(n)]
    elif mode == "events":
        yield [p + b"\n\n" for p in data.split(b"\n\n") if p]
    elif mode.startswith("seed-"):
        if n < 2:
            yield [data]
            return
        rng = random.Random(f"{mode}:{n}")
        cut = sorted(rng.sample(range(1, n), rng.randint(1, min(64, n - 1))))
        yield [data[a:b] for a, b in zip([0, *cut], [*cut, n])]
    elif mode == "pairs":
        for i in range(1, n):
            yield [data[:i], data[i:]]
    else:
        raise ValueError(f"unknown split mode {mode!r}")


def cuts(reads: list[bytes]) -> str:
    """Where ``reads`` were cut, for an assertion message."""
    pos, out = 0, []
    for r in reads[:-1]:
        pos += len(r)
        out.append(pos)
    if len(out) > 12:
        return f"{len(reads)} reads"
    return f"reads cut at {out}"


def replay(decoder: Any, translator: Any, reads: list[bytes]) -> tuple[list[dict[str, Any]], ProxyError | None]:
    """Feed ``reads`` through ``decoder`` and each event it gives through ``translator``,
    as the pipeline does; then ``decoder.finish()`` and ``translator.finish()``.

    -> (the pivot chunks, in order; the ``ProxyError`` that ended the stream, or None).
    Chunks the translator gave before the error are kept; ``translator.fail`` is not
    called (a test that wants its chunks calls it).
    """
    chunks: list[dict[str, Any]] = []
    try:
        for piece in reads:
            for ev in decoder.feed(piece):
                chunks.extend(translator.feed(ev))
        for ev in decoder.finish():
            chunks.extend(translator.feed(ev))
        chunks.extend(translator.finish())
    except ProxyError as err:
        return chunks, err
    return chunks, None


def error_record(err: ProxyError | None) -> dict[str, Any] | None:
    """How goldens store the error a stream ended with."""
    return None if err is None else {"kind": err.kind.value, "message": err.message}


def _load(path: Path) -> Any:
    raw = path.read_bytes()
    if path.suffix == ".json":
        return json.loads(raw)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in raw.splitlines()]
    return raw


def _dump(path: Path, value: Any) -> bytes:
    if path.suffix == ".json":
        return (json.dumps(value, indent=1, ensure_ascii=False) + "\n").encode()
    if path.suffix == ".jsonl":
        return "".join(json.dumps(v, ensure_ascii=False, separators=(",", ":")) + "\n" for v in value).encode()
    assert isinstance(value, bytes), f"{path.name}: a golden that is not .json/.jsonl holds bytes"
    return value


def golden(path: str, actual: Any) -> Any:
    """The golden value stored at ``tests/golden/<path>``: a JSON value (``.json``), a
    list of JSON values one a line (``.jsonl``) or bytes (anything else).

    With ``UPDATE_GOLDEN=1`` the file is first written from ``actual`` if it is missing
    or its value differs (a file whose value is unchanged is left as it is, so the
    diff shows only real changes).  The caller asserts ``actual == golden(...)``.
    """
    p = GOLDEN / path
    if UPDATE and (not p.exists() or _load(p) != actual):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_dump(p, actual))
    if not p.exists():
        pytest.fail(f"no golden file tests/golden/{path}: run with UPDATE_GOLDEN=1, then read the diff",
                    pytrace=False)
    return _load(p)
