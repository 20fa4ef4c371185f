"""The access log: one line per request on stderr, written in batches.

Going through ``logging`` cost a ``LogRecord``, ``strftime``, a handler lock, a flush
and one ``write`` system call per request, a sizeable share of a request's CPU
(``bench/RESULTS.md``).
Here a line is formatted directly (the timestamp's second part is cached) and
appended to a buffer, which is written out every 100 ms, when it passes 64 KiB, and
when the server stops.  A crash can lose at most the last 100 ms of lines; the lines
themselves never carry headers or bodies (they hold keys).

Lines look as they did through ``logging``:
``2026-11-21 08:00:00,123 INFO tornado_proxy.access: method=POST path=/v1/... status=200 ...``
or, with ``log_format: "json"``, one JSON object per line with a ``ts`` field.
The access log follows the ``tornado_proxy.access`` logger's level: with
``log_level: "warning"`` it is off.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

from tornado_proxy import jsonutil

FLUSH_SECONDS = 0.1
MAX_BUFFER = 65536


class AccessLog:
    def __init__(self, fmt: str = "text", stream: IO[str] | None = None) -> None:
        self.json = fmt == "json"
        self.stream = stream
        self.enabled = logging.getLogger("tornado_proxy.access").isEnabledFor(logging.INFO)
        self._buf: list[str] = []
        self._size = 0
        self._sec = -1
        self._sec_text = ""
        self._timer: Any = None

    def _stamp(self, now: float) -> str:
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))
        return "%s,%03d" % (self._sec_text, int((now - sec) * 1000))

    def line(self, fields: dict[str, Any], now: float | None = None) -> str:
        """``fields``: name -> value (None values are left out)."""
        stamp = self._stamp(time.time() if now is None else now)
        if self.json:
            out = {"ts": stamp}
            for k, v in fields.items():
                if v is not None:
                    out[k] = v
            return jsonutil.dumps(out) + "\n"
        return "%s INFO tornado_proxy.access: %s\n" % (
            stamp, " ".join([f"{k}={v}" for k, v in fields.items() if v is not None]))

    def record(self, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = self.line(fields)
        self._buf.append(text)
        self._size += len(text)
        if self._size >= MAX_BUFFER:
            self.flush()
        elif self._timer is None:
            try:
                import asyncio

                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._tick)
            except RuntimeError:  # no loop running (tests, tools): write at once
                self.flush()

    def _tick(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        data = "".join(self._buf)
        self._buf = []
        self._size = 0
        stream = self.stream or sys.stderr
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (closed pipe): nothing better to do with a log line

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
