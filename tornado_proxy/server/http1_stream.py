"""A connection after a WebSocket upgrade (101) on our HTTP/1.1 server (``http1.py``):
the stream Tornado's WebSocket protocol reads and writes, over the connection's own
transport (``http1_conn.HTTP1Connection.detach``).
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable, Protocol

from tornado.iostream import StreamClosedError


class _Connection(Protocol):
    """What the stream uses of its connection (``http1_conn.HTTP1Connection``)."""

    transport: Any
    writable: bool
    closed: bool

    def when_writable(self, callback: Callable[[], None]) -> None: ...

    def close(self) -> None: ...

    def _write_future(self) -> asyncio.Future[None]: ...

    def _closed_future(self) -> asyncio.Future[None]: ...


# A WebSocket peer that sends faster than its handler reads is paused past this.
STREAM_READ_HIGH = 1 << 20


class UpgradedStream:
    """What Tornado's ``WebSocketProtocol13`` uses of an ``IOStream`` (``read_bytes``,
    ``write``, ``close``, ``closed``, ``set_nodelay``, ``io_loop``), over the
    connection's transport: no second reader on the socket, the bytes that came
    with the head are not lost, and writes get the connection's flow control."""

    def __init__(self, conn: _Connection, rest: bytes) -> None:
        from tornado.ioloop import IOLoop

        self.conn = conn
        self.io_loop = IOLoop.current()
        self.error: BaseException | None = None
        self._buf = bytearray(rest)
        self._want = 0
        self._read: asyncio.Future[bytes] | None = None
        self._closed = False
        self._paused = False

    @property
    def writable(self) -> bool:
        return self.conn.writable

    def when_writable(self, callback: Callable[[], None]) -> None:
        self.conn.when_writable(callback)

    def feed(self, data: bytes) -> None:
        self._buf += data
        self._deliver()
        if len(self._buf) > STREAM_READ_HIGH and not self._paused and not self._closed:
            self._paused = True
            self.conn.transport.pause_reading()

    def _deliver(self) -> None:
        fut = self._read
        if fut is None or len(self._buf) < self._want:
            return
        self._read = None
        data = bytes(self._buf[:self._want])
        del self._buf[:self._want]
        if not fut.done():
            fut.set_result(data)
        if self._paused and len(self._buf) < STREAM_READ_HIGH // 2 and not self._closed:
            self._paused = False
            self.conn.transport.resume_reading()

    def read_bytes(self, num_bytes: int, partial: bool = False) -> "asyncio.Future[bytes]":
        if self._read is not None:
            raise RuntimeError("already reading")
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._read, self._want = fut, num_bytes
        self._deliver()
        if self._read is fut and self._closed:
            self._read = None
            fut.set_exception(StreamClosedError())
        return fut

    def write(self, data: bytes) -> "asyncio.Future[None]":
        conn = self.conn
        if self._closed or conn.closed:
            return conn._closed_future()
        conn.transport.write(data)
        return conn._write_future()

    def closed(self) -> bool:
        return self._closed

    def close(self, exc_info: Any = False) -> None:
        if not self._closed:
            self._closed = True
            self.conn.close()
            self._fail_read()

    def set_nodelay(self, value: bool) -> None:
        sock = self.conn.transport.get_extra_info("socket") if self.conn.transport is not None else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if value else 0)
            except OSError:
                pass

    def lost(self) -> None:
        """The connection is gone: a read in progress fails as a closed IOStream's would."""
        self._closed = True
        self._fail_read()

    def _fail_read(self) -> None:
        fut, self._read = self._read, None
        if fut is not None and not fut.done():
            fut.set_exception(StreamClosedError())
