"""The ``application/vnd.amazon.eventstream`` decoder: binary frames (botocore's framing
and CRC checks) -> messages, for ``stream.BedrockStream``."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from tornado_proxy.errors import ErrorKind, ProxyError

from ..base import stream_cut

if TYPE_CHECKING:
    from botocore.eventstream import EventStreamMessage

# botocore (about 16 MiB once imported) is imported on first use, so a gateway with no
# Bedrock provider never loads it.


class EventStreamDecoder:
    """Bytes of ``application/vnd.amazon.eventstream`` -> messages, push-fed.

    Same shape as the SSE decoder: ``feed(bytes)`` returns the messages those bytes
    complete (botocore ``EventStreamMessage``: ``.headers`` dict, ``.payload``
    bytes).  Framing and both CRC32 checks are botocore's.  A corrupt frame raises
    ``UPSTREAM_BAD_RESPONSE``; ``finish()`` raises ``UPSTREAM_STREAM_CUT`` if the
    stream stopped inside a frame: a truncated frame is an error, never a silent stop.
    """

    __slots__ = ("_buf", "_pending", "_error")

    def __init__(self) -> None:
        from botocore.eventstream import EventStreamBuffer

        self._buf = EventStreamBuffer()
        self._pending = 0  # bytes fed but not yet part of a whole message
        self._error: ProxyError | None = None

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        if self._error is not None:
            raise self._error
        if not data:
            return []
        from botocore.eventstream import ParserError

        self._buf.add_data(data)
        self._pending += len(data)
        out: list[EventStreamMessage] = []
        try:
            for msg in self._buf:
                self._pending -= msg.prelude.total_length
                out.append(msg)
        except (ParserError, struct.error, KeyError, ValueError, IndexError) as exc:
            # After a bad frame the frame boundaries are lost: nothing after it can be
            # trusted, and every later call fails too.
            self._error = ProxyError(ErrorKind.UPSTREAM_BAD_RESPONSE,
                                     f"corrupt event-stream frame from Bedrock ({type(exc).__name__}: {exc})")
            if not out:
                raise self._error from None
            # Good frames before the bad one are delivered first, as they would have
            # been had the bad frame come in a later read: output must not depend on
            # where the reads split.
        return out

    def finish(self) -> list[EventStreamMessage]:
        if self._error is not None:
            raise self._error
        if self._pending:
            raise stream_cut(f"event stream ended inside a frame, {self._pending} bytes left over")
        return []
