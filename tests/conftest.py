"""Kept thin (pytest-tornado needs pytest<10): one background loop per worker for e2e tests."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.e2e.harness import LoopThread

_LOOP: LoopThread | None = None


@pytest.fixture
def harness() -> Iterator[LoopThread]:
    """The e2e loop thread; every gateway and fake upstream a test starts is stopped after it."""
    global _LOOP
    if _LOOP is None:
        _LOOP = LoopThread()
    try:
        yield _LOOP
    finally:
        _LOOP.cleanup()
