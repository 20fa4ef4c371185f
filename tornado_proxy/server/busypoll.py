"""Busy polling: the event loop polls for a few microseconds before it sleeps.

In a virtual machine, waking a process that sleeps in ``epoll_wait`` is slow: the
sender's kernel has to interrupt another virtual CPU, and the sleeper's CPU has to
come back out of its idle state.  Each such wake-up costs tens of microseconds, and a
request at concurrency 1 has two of them in the gateway's path (the upstream's answer,
the client's next request).  When the loop is about to sleep and an event is due
within microseconds, polling for it without sleeping is quicker (what it was worth:
``bench/RESULTS.md``, Session 4).
HAProxy's ``busy-polling`` option is the same idea for the same reason.

Polling costs CPU, so it is bounded and adaptive, as KVM's halt polling is:

* the loop polls (``epoll_wait`` with a zero timeout) for at most ``window`` seconds
  before it blocks, and never past the timeout the loop asked for;
* when an event ends the poll, the window stays;
* when the loop had to block anyway, the wait is looked at: an event that came soon
  after (within twice the longest window) means polling a little longer would have
  caught it, and the window doubles (up to ``max_spin``); a long wait halves it, down
  to no polling at all.

So a gateway that sees sparse traffic sleeps as it always did (its window is 0), and
polling only goes on while events follow each other within tens of microseconds.
``server.busy_poll_us`` sets ``max_spin``; 0 turns it off (the standard selector).
"""
from __future__ import annotations

import selectors
import time
from typing import Any

_now = time.monotonic


class SpinningSelector(selectors.EpollSelector):
    """``selectors.EpollSelector`` whose blocking ``select`` polls first (see above)."""

    def __init__(self, max_spin: float) -> None:
        super().__init__()
        self.max_spin = max_spin
        self.grow_from = max_spin / 4   # the first window after none
        self.window = 0.0               # seconds polled before blocking, now
        self.polled = 0                 # blocking selects that polled first (for tests, stats)
        self.caught = 0                 # ... and were answered while polling

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return super().select(0)
        window = self.window
        start = _now()
        if window > 0:
            self.polled += 1
            limit = window if timeout is None or timeout > window else timeout
            end = start + limit
            poll = super().select
            while True:
                ready = poll(0)
                if ready:
                    self.caught += 1
                    return ready
                now = _now()
                if now >= end:
                    break
            if timeout is not None:
                timeout -= now - start
        # A timer may be due already (the poll was preempted past it): then nothing is
        # waited for, but the window is judged the same way, so a slow machine does not
        # keep a window that caught nothing.
        ready = super().select(timeout) if timeout is None or timeout > 0 else []
        waited = _now() - start
        if waited <= 2 * self.max_spin:
            self.window = min(self.max_spin, max(self.grow_from, 2 * window))
        elif window:
            half = window / 2
            self.window = half if half >= self.grow_from else 0.0
        return ready


def run(main: Any, busy_poll_us: float) -> Any:
    """``asyncio.run(main)`` on a loop with a spinning selector when ``busy_poll_us`` > 0
    (and epoll and ``asyncio.Runner``, Python 3.11+, are there; else the standard loop)."""
    import asyncio

    runner = getattr(asyncio, "Runner", None)
    if busy_poll_us <= 0 or runner is None or not hasattr(selectors, "EpollSelector"):
        return asyncio.run(main)
    spin = busy_poll_us / 1e6
    with runner(loop_factory=lambda: asyncio.SelectorEventLoop(SpinningSelector(spin))) as r:
        return r.run(main)
