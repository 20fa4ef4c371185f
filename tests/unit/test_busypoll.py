"""The event loop's spinning selector (tornado_proxy/server/busypoll.py): it polls before it
blocks, never past the loop's timeout, and its window follows how soon events come."""
from __future__ import annotations

import asyncio
import selectors
import socket
import sys
import threading
import time

import pytest

from tornado_proxy.server import busypoll
from tornado_proxy.server.busypoll import SpinningSelector

pytestmark = pytest.mark.skipif(not hasattr(selectors, "EpollSelector"), reason="epoll only")


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def select_sent_after(sel: SpinningSelector, peer: socket.socket, delay: float) -> list:
    """``sel.select(5.0)`` while ``peer`` sends a byte after ``delay`` seconds."""
    timer = threading.Timer(delay, peer.send, (b"x",))
    timer.start()
    try:
        return sel.select(5.0)
    finally:
        timer.join()


def make(max_spin: float, sock: socket.socket) -> SpinningSelector:
    sel = SpinningSelector(max_spin)
    sel.register(sock, selectors.EVENT_READ)
    return sel


class World:
    """A fake clock and one scripted event: the selector's timing rules without real time,
    so a loaded machine (a timer thread woken late) cannot change what the test sees."""

    POLL_COST = 0.0001  # what one non-blocking poll costs on the fake clock

    def __init__(self) -> None:
        self.t = 0.0
        self.at: float | None = None  # when the next event arrives

    def now(self) -> float:
        return self.t

    def event_in(self, delay: float) -> None:
        self.at = self.t + delay


class _Scripted(selectors.EpollSelector):
    """The epoll underneath, answered from the World instead of the kernel."""

    world: World

    def select(self, timeout: float | None = None) -> list:
        w = self.world
        if w.at is not None and (w.at <= w.t or (timeout is None or timeout > 0) and
                                 (timeout is None or w.at <= w.t + timeout)):
            w.t, w.at = max(w.t, w.at), None
            return [(key, selectors.EVENT_READ) for key in self.get_map().values()]
        w.t += w.POLL_COST if not timeout or timeout <= 0 else timeout
        return []


class ScriptedSpin(SpinningSelector, _Scripted):
    def __init__(self, max_spin: float, world: World) -> None:
        super().__init__(max_spin)
        self.world = world


def test_events_come_back_at_once_and_soon_events_open_the_window(pair, monkeypatch) -> None:
    a, _ = pair
    world = World()
    monkeypatch.setattr(busypoll, "_now", world.now)
    sel = ScriptedSpin(0.1, world)
    sel.register(a, selectors.EVENT_READ)

    def fds(ready: list) -> list:
        return [k.fileobj for k, _ in ready]

    assert sel.window == 0.0
    world.event_in(0)
    assert fds(sel.select(5.0)) == [a]
    assert sel.window == pytest.approx(0.025)  # max/4: the first window after none
    # An event just after the window: polling a little longer would have caught it.
    world.event_in(0.035)
    assert fds(sel.select(5.0)) == [a]
    assert sel.window == pytest.approx(0.05)
    assert (sel.polled, sel.caught) == (1, 0)
    # Now polling catches it, and the window stays.
    world.event_in(0.01)
    assert fds(sel.select(5.0)) == [a]
    assert sel.window == pytest.approx(0.05)
    assert (sel.polled, sel.caught) == (2, 1)
    sel.window = 0.08
    world.event_in(0)
    sel.select(5.0)
    assert sel.window == 0.08 and sel.caught == 2
    sel.window = 0.075
    world.event_in(0.085)
    assert fds(sel.select(5.0)) == [a]
    assert sel.window == pytest.approx(0.1)  # doubled, capped at max_spin
    # A long wait (past twice max_spin) halves it; nothing at all within the timeout too.
    world.event_in(1.0)
    assert fds(sel.select(5.0)) == [a]
    assert sel.window == pytest.approx(0.05)
    assert sel.select(0.5) == []
    assert sel.window == pytest.approx(0.025)


def test_long_waits_close_the_window(pair) -> None:
    a, _ = pair
    sel = make(0.0004, a)
    sel.window = 0.0004
    assert sel.select(0.01) == []  # nothing comes: polled, then blocked until the timeout
    assert sel.window == pytest.approx(0.0002)
    sel.select(0.01)
    assert sel.window == pytest.approx(0.0001)
    sel.select(0.01)
    assert sel.window == 0.0  # below the first window: no polling at all
    sel.select(0.01)
    assert sel.window == 0.0
    assert sel.polled == 3 and sel.caught == 0


def test_polling_never_outlasts_the_loops_timeout(pair) -> None:
    a, _ = pair
    sel = make(0.5, a)
    sel.window = 0.5
    t0 = time.monotonic()
    assert sel.select(0.02) == []
    assert time.monotonic() - t0 < 0.25
    t0 = time.monotonic()
    assert sel.select(0) == []  # a zero timeout never polls or blocks
    assert sel.select(-1) == []
    assert time.monotonic() - t0 < 0.05
    assert sel.polled == 1


def test_an_event_during_the_poll_ends_it(pair) -> None:
    a, b = pair
    sel = make(2.0, a)
    sel.window = 2.0
    timer = threading.Timer(0.05, b.send, (b"x",))
    timer.start()
    t0 = time.monotonic()
    ready = sel.select(10.0)
    took = time.monotonic() - t0
    timer.join()
    assert [k.fileobj for k, _ in ready] == [a]
    assert 0.03 < took < 1.5
    assert sel.caught == 1 and sel.window == 2.0  # caught while polling: the window stays


def test_a_long_wait_with_no_window_leaves_it_shut(pair) -> None:
    a, b = pair
    sel = make(0.0001, a)
    assert [k.fileobj for k, _ in select_sent_after(sel, b, 0.02)] == [a]
    assert sel.window == 0.0 and sel.polled == 0


async def _ping_pong(rounds: int) -> tuple[type, int]:
    loop = asyncio.get_running_loop()

    ended = loop.create_future()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
            await writer.drain()
        writer.close()
        ended.set_result(None)

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = 0
    for i in range(rounds):
        writer.write(b"%d" % i)
        await writer.drain()
        got += len(await reader.read(100))
    writer.close()
    await ended
    server.close()
    await server.wait_closed()
    return type(loop._selector), got  # type: ignore[attr-defined]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner")
def test_run_serves_on_a_spinning_loop_and_zero_turns_it_off() -> None:
    kind, got = busypoll.run(_ping_pong(200), 50)
    assert kind is SpinningSelector
    assert got == sum(len(b"%d" % i) for i in range(200))
    kind, got = busypoll.run(_ping_pong(5), 0)
    assert kind is not SpinningSelector and got == 5


def test_a_poll_preempted_past_the_timeout_still_closes_the_window(pair, monkeypatch) -> None:
    """On a loaded machine the poll itself can outlast the loop's timeout (the process was
    preempted): nothing came, so the window halves as after any long wait."""
    a, _ = pair
    sel = make(0.0004, a)
    sel.window = 0.0004
    clock = iter([0.0, 0.5, 0.5, 0.5])  # start, then preempted for half a second
    monkeypatch.setattr(busypoll, "_now", lambda: next(clock))
    assert sel.select(0.01) == []
    assert sel.window == pytest.approx(0.0002)
    assert sel.polled == 1 and sel.caught == 0
