"""Kept thin: one background loop per worker for e2e tests."""
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


class _ErrorLogs:
    """Log records at ERROR and above from the gateway, Tornado and asyncio (not
    ``tornado.access``: the fake upstreams' access lines, 5xx at ERROR by design)."""

    NAMES = ("tornado_proxy", "tornado.application", "tornado.general", "asyncio")

    def __init__(self) -> None:
        import logging

        self.records: list[logging.LogRecord] = []
        self.handler = logging.Handler(logging.ERROR)
        self.handler.emit = self.records.append  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def no_error_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test fails if the code it runs logs an error (a swallowed exception is a bug
    even when the response looked right), unless it is marked ``allow_error_log``."""
    import logging

    logs = _ErrorLogs()
    loggers = [logging.getLogger(n) for n in _ErrorLogs.NAMES]
    for lg in loggers:
        lg.addHandler(logs.handler)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeHandler(logs.handler)
    if logs.records and request.node.get_closest_marker("allow_error_log") is None:
        first = logs.records[0]
        text = logs.handler.format(first) if first.exc_info is None else \
            first.getMessage() + "\n" + "".join(__import__("traceback").format_exception(*first.exc_info))
        pytest.fail(f"{len(logs.records)} error log record(s), the first from {first.name}: {text}", pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_error_log: the test expects the code to log errors")


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's gateways get a state store of their own: the default ``local`` store
    lives under $XDG_STATE_HOME, and one test's cooldowns must not reach the next."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
