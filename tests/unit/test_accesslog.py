"""The batched access log (tornado_proxy/observability/accesslog.py)."""
from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from tornado_proxy.observability.accesslog import AccessLog

FIELDS = {"method": "POST", "path": "/v1/chat/completions", "status": 200, "ms": 1.25, "model": "m",
          "provider": None, "error": None, "remote": "127.0.0.1", "ttfb_ms": 0.5}


@pytest.fixture(autouse=True)
def access_logger_on() -> None:
    lg = logging.getLogger("tornado_proxy.access")
    old = lg.level
    lg.setLevel(logging.INFO)
    yield
    lg.setLevel(old)


def test_text_line_matches_the_logging_layout_and_skips_empty_fields() -> None:
    line = AccessLog("text").line(FIELDS, now=1700000000.0421)
    stamp, rest = line[:23], line[24:]
    assert stamp[4] == "-" and stamp[19:] == ",042"
    assert rest == ("INFO tornado_proxy.access: method=POST path=/v1/chat/completions status=200 ms=1.25 "
                    "model=m remote=127.0.0.1 ttfb_ms=0.5\n")


def test_json_line_is_one_object_with_a_timestamp() -> None:
    obj = json.loads(AccessLog("json").line(FIELDS, now=1700000000.5))
    assert obj["ts"].endswith(",500") and obj["status"] == 200 and obj["model"] == "m"
    assert "provider" not in obj and "error" not in obj


def test_lines_are_batched_and_written_once() -> None:
    out = io.StringIO()
    writes = []
    orig = out.write
    out.write = lambda s: writes.append(s) or orig(s)  # type: ignore[method-assign]

    async def run() -> None:
        log = AccessLog("text", stream=out)
        for i in range(50):
            log.record({**FIELDS, "status": 200 + i})
        assert writes == []  # nothing yet: the batch goes out on the timer
        await asyncio.sleep(0.25)
        assert len(writes) == 1 and writes[0].count("\n") == 50
        log.record(FIELDS)
        log.close()  # stopping writes what is left
        assert len(writes) == 2

    asyncio.run(run())


def test_a_big_batch_is_written_before_the_timer() -> None:
    out = io.StringIO()

    async def run() -> None:
        log = AccessLog("text", stream=out)
        for _ in range(1000):  # ~ 130 bytes each: past 64 KiB
            log.record(FIELDS)
        assert out.getvalue().count("\n") >= 400
        log.close()
        assert out.getvalue().count("\n") == 1000

    asyncio.run(run())


def test_off_below_info() -> None:
    logging.getLogger("tornado_proxy.access").setLevel(logging.WARNING)
    out = io.StringIO()
    log = AccessLog("text", stream=out)
    log.record(FIELDS)
    log.close()
    assert out.getvalue() == ""
