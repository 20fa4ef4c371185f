"""The curl driver of tornado_proxy/pipeline/upstream.py: our transfers' lean path through the curl
client, side by side with Tornado's own requests.

Each test runs on a fresh event loop (bounded by ``run``) with a tiny HTTP/1.1 upstream on
127.0.0.1 in the same loop: ``/json`` answers a small JSON body (keep-alive), ``/hang``
sends the headers and one SSE event and then nothing more, ``/sse`` sends a whole chunked
SSE body in one write.
"""
from __future__ import annotations

import asyncio
import socket
import time
from typing import Any, Awaitable, Callable, Iterator

import pycurl
import pytest
from tornado.curl_httpclient import CurlError
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from providers.base import UpstreamRequest
from tornado_proxy.errors import ErrorKind
from tornado_proxy.pipeline import upstream as upstream_mod
from tornado_proxy.pipeline.upstream import Upstream

JSON_BODY = b'{"id":"x","choices":[{"message":{"role":"assistant","content":"hi"}}]}'
EVENT = b'data: {"choices":[{"delta":{"content":"hello"}}]}\n\n'


class FakeUpstream:
    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> "FakeUpstream":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(w)
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":", 1)[1])
                if n:
                    await r.readexactly(n)
                self.requests += 1
                path = head.split(b" ", 2)[1]
                if path == b"/hang":
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(EVENT), EVENT))
                    await w.drain()
                    await r.read(1)  # until the client goes away (bounded by the test's timeout)
                    return
                if path in (b"/big", b"/big-error"):
                    # 1 MiB, announced with its length, written in 64 KiB pieces
                    w.write(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                            % (b"200 OK" if path == b"/big" else b"500 Internal Server Error", 1 << 20))
                    for _ in range(16):
                        w.write(b"z" * 65536)
                        await w.drain()
                    continue
                if path == b"/sse":
                    chunk = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 5 + b"0\r\n\r\n")
                else:
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                            % (len(JSON_BODY), JSON_BODY))
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


@pytest.fixture(autouse=True)
def _keep_client_config() -> Iterator[None]:
    """Upstream() configures AsyncHTTPClient globally: put back what was there."""
    saved = AsyncHTTPClient._save_configuration()
    try:
        yield
    finally:
        AsyncHTTPClient._restore_configuration(saved)


def run(body: Callable[[FakeUpstream, Upstream], Awaitable[Any]], max_clients: int = 100, **kw: Any) -> Any:
    async def main() -> Any:
        fake = await FakeUpstream().start()
        up = Upstream(max_clients=max_clients, **kw)
        try:
            return await body(fake, up)
        finally:
            up.close()
            up.http.close()
            await fake.stop()

    return asyncio.run(asyncio.wait_for(main(), 20))


def post(url: str, stream: bool = False) -> UpstreamRequest:
    return UpstreamRequest("POST", url, {"Content-Type": "application/json", "Authorization": "Bearer k"},
                           b'{"model":"m"}', stream=stream)


def test_many_sequential_fetches_share_one_keepalive_connection() -> None:
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        req = post(fake.url("/json"))
        for _ in range(300):
            r = await up.fetch(req)
            assert r.error is None and r.status == 200
            assert r.body == JSON_BODY
            assert r.headers["content-type"] == "application/json"
            assert r.ttfb is not None and r.ttfb >= 0
        assert fake.requests == 300 and fake.connections == 1
        http = up.http
        assert len(http._curls) == 1 and len(http._free_list) == 1
        assert not up.active and not http._requests
        assert all(c.transfer is None for c in http._curls)

    run(body)


def test_concurrent_fetches_beyond_max_clients_queue_and_all_finish() -> None:
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        rs = await asyncio.gather(*(up.fetch(post(fake.url("/json"))) for _ in range(20)))
        assert all(r.error is None and r.status == 200 and r.body == JSON_BODY for r in rs)
        assert len(up.http._curls) == 3 and len(up.http._free_list) == 3

    run(body, max_clients=3)


def test_handles_a_burst_left_idle_are_closed_down_to_what_traffic_needs() -> None:
    """Each idle handle keeps libcurl's 16 KiB send buffer until it is closed: the ones
    no transfer needed for a whole trim period go, down to ``keep`` beyond the period's
    peak; the longest idle first; traffic after a trim makes handles again as needed."""
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        http = up.http

        async def burst(n: int) -> None:
            rs = await asyncio.gather(*(up.fetch(post(fake.url("/json"))) for _ in range(n)))
            assert all(r.error is None and r.status == 200 for r in rs)

        await burst(60)
        assert len(http._curls) == 60 and len(http._free_list) == 60
        assert http.trim_idle(keep=8) == 0, "all 60 were needed in this period"
        # A quiet period: all but 8 go, the longest idle first.
        newest = http._free_list[-8:]
        assert http.trim_idle(keep=8) == 52
        assert http._free_list == newest and http._curls == newest
        # A period that needed 20 at once: 20 + 8 stay (the pool grows back as needed).
        await burst(20)
        assert len(http._curls) == 20
        assert http.trim_idle(keep=8) == 0
        await burst(5)
        assert http.trim_idle(keep=8) == 20 - 5 - 8
        assert len(http._free_list) == len(http._curls) == 13
        await burst(40)
        assert len(http._curls) == 40 and not up.active
        # The sweeper trims once per TRIM_SECONDS, keeping IDLE_HANDLES_KEPT.
        await burst(100)
        period = upstream_mod.TRIM_SECONDS * upstream_mod.TICKS_PER_SECOND
        for _ in range(2 * period - up.tick % period):
            up._sweep()
        assert len(http._curls) == len(http._free_list) == upstream_mod.IDLE_HANDLES_KEPT

    run(body)


def test_streaming_transfer_hands_bytes_to_on_data() -> None:
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        got: list[bytes] = []
        r = await up.fetch(post(fake.url("/sse"), stream=True), on_data=lambda b: got.append(b) or True)
        assert r.error is None and r.status == 200 and r.body == b""
        assert b"".join(got) == EVENT * 5

    run(body)


def test_a_held_stream_keeps_its_parsed_headers_not_the_raw_lines() -> None:
    """Once the status is read, the raw header lines go (a stream held for minutes keeps
    only the parsed dict); the result still has the status and the headers."""
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        seen: list[tuple[int, dict[str, str]]] = []
        box: list[Any] = []

        def on_data(b: bytes) -> bool:
            t = box[0]
            seen.append((len(t.head), dict(t.headers)))
            return True

        t = up.start(post(fake.url("/sse"), stream=True), on_data=on_data)
        box.append(t)
        r = await up.wait(t)
        assert r.error is None and r.status == 200
        assert seen and all(n == 0 for n, _ in seen)
        assert seen[0][1]["content-type"] == "text/event-stream"
        assert r.headers["content-type"] == "text/event-stream"

    run(body)


def test_abort_running_transfer_frees_its_handle() -> None:
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        got: list[bytes] = []
        t = up.start(post(fake.url("/hang"), stream=True), on_data=lambda b: got.append(b) or True)
        for _ in range(200):  # until the first event arrived
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [EVENT]
        assert t.curl is not None and t.curl.transfer is t
        t.abort(ErrorKind.INTERNAL)
        r = await up.wait(t)
        assert r.error is not None and r.error.kind is ErrorKind.INTERNAL
        assert r.error.message == "transfer aborted: the client went away"
        assert r.status == 200
        http = up.http
        assert t.curl is None and len(http._free_list) == len(http._curls) == 1
        r2 = await up.fetch(post(fake.url("/json")))
        assert r2.error is None and r2.body == JSON_BODY

    run(body, max_clients=1)


def test_abort_queued_transfer_and_the_queue_still_moves() -> None:
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        http = up.http
        got: list[bytes] = []
        hang = up.start(post(fake.url("/hang"), stream=True), on_data=lambda b: got.append(b) or True)
        queued = up.start(post(fake.url("/json")))
        behind = up.start(post(fake.url("/json")))
        assert queued.curl is None and [item[0] for item in http._requests] == [queued, behind]
        queued.abort(ErrorKind.INTERNAL)
        r = await up.wait(queued)
        assert r.error is not None and r.error.kind is ErrorKind.INTERNAL and r.status == 0
        assert [item[0] for item in http._requests] == [behind]
        for _ in range(200):  # the stream is under way
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [EVENT]
        # freeing the one handle starts the next in line
        hang.abort(ErrorKind.IDLE_TIMEOUT)
        r = await up.wait(hang)
        assert r.error is not None and r.error.kind is ErrorKind.IDLE_TIMEOUT
        r = await up.wait(behind)
        assert r.error is None and r.body == JSON_BODY
        assert not http._requests and len(http._free_list) == len(http._curls) == 1
        assert fake.requests == 2  # the aborted queued transfer never went out

    run(body, max_clients=1)


def test_on_data_refusal_when_the_body_completes_in_the_same_read() -> None:
    # The whole chunked body arrives in one read: curl has queued the transfer's completion
    # message when _deliver aborts it; info_read must not hand that handle back afterwards.
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        for _ in range(20):
            r = await up.fetch(post(fake.url("/sse"), stream=True), on_data=lambda b: False)
            assert r.error is not None and r.error.kind is ErrorKind.INTERNAL
            r2 = await up.fetch(post(fake.url("/json")))
            assert r2.error is None and r2.body == JSON_BODY
        assert len(up.http._free_list) == len(up.http._curls) == 1

    run(body, max_clients=1)


def test_connection_refused_is_unreachable() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()

    async def body(fake: FakeUpstream, up: Upstream) -> None:
        r = await up.fetch(post(f"http://127.0.0.1:{dead}/v1"))
        assert r.error is not None and r.error.kind is ErrorKind.UPSTREAM_UNREACHABLE
        assert r.error.message == f"cannot connect to upstream 127.0.0.1:{dead}"
        assert r.status == 0 and r.ttfb is not None

    run(body)


def test_connect_timeout_is_curls_and_maps_to_connect_timeout() -> None:
    # A listener whose accept queue is full drops SYNs: connect() hangs until curl's
    # connect timeout.  A first transfer leaves a 10 s curl timer pending: the short
    # deadline must still replace it.
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    port = ls.getsockname()[1]
    fill = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fill.append(c)

    async def body(fake: FakeUpstream, up: Upstream) -> None:
        r = await up.fetch(post(fake.url("/json")))
        assert r.error is None
        t0 = time.monotonic()
        r = await up.fetch(post(f"http://127.0.0.1:{port}/v1"), connect_timeout=0.3)
        took = time.monotonic() - t0
        assert r.error is not None and r.error.kind is ErrorKind.CONNECT_TIMEOUT, r.error
        assert r.error.message == f"timed out connecting to upstream 127.0.0.1:{port}"
        assert 0.25 <= took < 2.5
        assert len(up.http._free_list) == len(up.http._curls)

    try:
        run(body)
    finally:
        for c in fill:
            c.close()
        ls.close()


def test_first_byte_and_idle_timeouts_are_the_sweepers() -> None:
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        # /hang sends one event then stalls: idle
        t0 = time.monotonic()
        r = await up.fetch(post(fake.url("/hang"), stream=True), on_data=lambda b: True, idle=0.5)
        assert r.error is not None and r.error.kind is ErrorKind.IDLE_TIMEOUT
        assert time.monotonic() - t0 < 2.5

    run(body)

    async def body2(fake: FakeUpstream, up: Upstream) -> None:
        # a listener that never answers: first byte
        srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        t0 = time.monotonic()
        r = await up.fetch(post(f"http://127.0.0.1:{port}/"), first_byte=0.5)
        assert r.error is not None and r.error.kind is ErrorKind.FIRST_BYTE_TIMEOUT
        assert time.monotonic() - t0 < 2.5
        srv.close()

    run(body2)


def test_curl_timer_is_not_recreated_per_timer_callback() -> None:
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        http = up.http
        io_loop = http.io_loop
        made = [0]
        curl_calls = [0]
        add_timeout = io_loop.add_timeout
        set_timeout = http._set_timeout

        def counting_add_timeout(*a: Any, **kw: Any) -> object:
            made[0] += 1
            return add_timeout(*a, **kw)

        def counting_set_timeout(ms: int) -> None:
            curl_calls[0] += 1
            set_timeout(ms)

        io_loop.add_timeout = counting_add_timeout  # type: ignore[method-assign]
        http._multi.setopt(pycurl.M_TIMERFUNCTION, counting_set_timeout)
        try:
            req = post(fake.url("/json"))
            for _ in range(100):
                r = await up.fetch(req)
                assert r.error is None
        finally:
            del io_loop.add_timeout
        assert curl_calls[0] >= 100   # libcurl asks about every transfer...
        assert made[0] <= 5           # ...but the one timer is rarely replaced

    run(body)


def test_tornado_requests_alongside_our_transfers() -> None:
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        http = up.http
        # the only handle is busy with a stream: Tornado's request waits in the same queue
        hang = up.start(post(fake.url("/hang"), stream=True), on_data=lambda b: True)
        req = HTTPRequest(fake.url("/json"), method="POST", body=b"grant_type=x",
                          headers={"Content-Type": "application/x-www-form-urlencoded"},
                          request_timeout=5, connect_timeout=2)
        fut = http.fetch(req, raise_error=False)
        await asyncio.sleep(0.05)
        assert not fut.done() and len(http._requests) == 1
        hang.abort(ErrorKind.INTERNAL)
        resp = await fut
        assert resp.code == 200 and resp.body == JSON_BODY and resp.time_info
        # and mixed with ours once the handle is free
        rs = await asyncio.gather(http.fetch(req, raise_error=False), up.fetch(post(fake.url("/json"))),
                                  http.fetch(req, raise_error=False), up.fetch(post(fake.url("/json"))))
        assert [rs[0].code, rs[2].code] == [200, 200]
        assert rs[1].error is None and rs[3].error is None and rs[1].body == JSON_BODY
        # a Tornado error still comes back as Tornado's 599
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
        s.close()
        with pytest.raises(CurlError) as e:  # (raise_error=False does not cover transport errors)
            await http.fetch(HTTPRequest(f"http://127.0.0.1:{dead}/", connect_timeout=2), raise_error=False)
        assert e.value.code == 599 and e.value.errno == pycurl.E_COULDNT_CONNECT
        # the OAuth code's own client instance
        own = AsyncHTTPClient(force_instance=True)
        try:
            resp = await own.fetch(req, raise_error=False)
        finally:
            own.close()
        assert resp.code == 200 and resp.body == JSON_BODY
        assert len(http._free_list) == len(http._curls) == 1

    run(body, max_clients=1)


def test_stale_fd_is_registered_afresh() -> None:
    # libcurl closed a socket and the fd came back as a new one that epoll does not know:
    # an update on it fails, and the fd is registered from scratch.
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        http = up.http
        fired: list[tuple[int, int]] = []
        http._on_socket = lambda fd, action: fired.append((fd, action))  # type: ignore[method-assign]

        async def until_fired() -> None:
            for _ in range(100):
                if fired:
                    return
                await asyncio.sleep(0.01)
        a, b = socket.socketpair()
        fd = a.fileno()
        http._handle_socket(pycurl.POLL_INOUT, fd, http._multi, None)
        a.close()  # epoll forgets it; http._fds does not
        c, d = socket.socketpair()
        try:
            if fd not in (c.fileno(), d.fileno()):
                pytest.skip("the fd was not reused")
            new, peer = (c, d) if c.fileno() == fd else (d, c)
            http._handle_socket(pycurl.POLL_IN, fd, http._multi, None)
            assert http._fds[fd] == pycurl.POLL_IN
            peer.send(b"x")
            await until_fired()
            assert (fd, pycurl.CSELECT_IN) in fired
            # the same events again for a known fd: re-registered, still watched
            fired.clear()
            http._handle_socket(pycurl.POLL_IN, fd, http._multi, None)
            await until_fired()
            assert fired and fired[0] == (fd, pycurl.CSELECT_IN)
            # POLL_NONE: still known, not watched; then watched again
            http._handle_socket(pycurl.POLL_NONE, fd, http._multi, None)
            assert http._fds[fd] == 0
            await asyncio.sleep(0.05)
            fired.clear()
            await asyncio.sleep(0.05)
            assert not fired  # (the byte is still unread: a watched fd would fire)
            http._handle_socket(pycurl.POLL_IN, fd, http._multi, None)
            await until_fired()
            assert fired and fired[0] == (fd, pycurl.CSELECT_IN)
            http._handle_socket(pycurl.POLL_REMOVE, fd, http._multi, None)
            assert fd not in http._fds
            fired.clear()
            await asyncio.sleep(0.05)
            assert not fired
        finally:
            c.close()
            d.close()
            b.close()

    run(body)


@pytest.mark.parametrize("path,stream,words", [
    ("/big", False, "upstream answer is larger than the gateway's limit of 65536 bytes"),
    ("/big-error", False, "upstream error body (status 500) is larger than the gateway's limit of 4096 bytes"),
    ("/big-error", True, "upstream error body (status 500) is larger than the gateway's limit of 4096 bytes"),
])
def test_a_buffered_body_over_its_cap_ends_the_transfer(path: str, stream: bool, words: str) -> None:
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        got: list[bytes] = []
        on_data = (lambda b: got.append(b) or True) if stream else None
        r = await up.fetch(post(fake.url(path), stream=stream), on_data=on_data)
        assert r.error is not None and r.error.kind is ErrorKind.UPSTREAM_BAD_RESPONSE
        assert r.error.message == words
        assert r.body == b"" and got == []
        # the handle is free again and the next transfer goes through
        http = up.http
        assert len(http._free_list) == len(http._curls) == 1
        r2 = await up.fetch(post(fake.url("/json")))
        assert r2.error is None and r2.body == JSON_BODY

    run(body, max_clients=1, max_body_bytes=65536, max_error_bytes=4096)


def test_a_body_under_its_cap_is_whole() -> None:
    async def body(fake: FakeUpstream, up: Upstream) -> None:
        r = await up.fetch(post(fake.url("/big")))
        assert r.error is None and r.status == 200 and r.body == b"z" * (1 << 20)

    run(body, max_body_bytes=1 << 20)


def test_tornado_curl_client_closes_twice_without_raising() -> None:
    # A worker's drain and the gateway's own close both close the upstream client; Tornado's
    # CurlAsyncHTTPClient.close() raises on a second call, which killed the drain task.
    from tornado_proxy.pipeline.tornado_upstream import TornadoCurl

    async def main() -> None:
        c = TornadoCurl(4)
        c.close()
        c.close()
        assert c.client._multi is None  # closed, once

    asyncio.run(main())
