"""The HTTP/1.1 server (tornado_proxy/server/http1.py) on raw sockets: framing, keep-alive,
pipelining, limits, timeouts, forwarded headers, drain."""
from __future__ import annotations

import json
import socket
import time
from typing import Any, Iterator

import pytest
import tornado.web
from tornado.netutil import bind_sockets

from tests.e2e.harness import LoopThread, sent_before_close
from tornado_proxy.server.http1 import HTTP1Server


class Echo(tornado.web.RequestHandler):
    def post(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"body": self.request.body.decode(), "ip": self.request.remote_ip,
                                "proto": self.request.protocol, "path": self.request.path}))

    def get(self) -> None:
        self.finish({"ip": self.request.remote_ip, "proto": self.request.protocol})


class Headers(tornado.web.RequestHandler):
    def get(self) -> None:
        h = self.request.headers
        self.finish({"key": h.get("X-Api-Key"), "multi": h.get_list("X-Multi"), "joined": h.get("x-multi"),
                     "has": "CONTENT-TYPE" in h, "all": sorted(k for k, _ in h.get_all())})


class Stream(tornado.web.RequestHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        for i in range(3):
            self.write(f"data: {i}\n\n")
            await self.flush()
        self.finish()


class Slow(tornado.web.RequestHandler):
    async def get(self) -> None:
        import asyncio

        await asyncio.sleep(0.3)
        self.finish("late")


class Wait(tornado.web.RequestHandler):
    async def get(self) -> None:
        import asyncio

        await asyncio.sleep(float(self.get_argument("s")))
        self.finish("waited")


@tornado.web.stream_request_body
class Upload(tornado.web.RequestHandler):
    def initialize(self) -> None:
        self.parts: list[bytes] = []

    def data_received(self, chunk: bytes) -> None:
        self.parts.append(chunk)

    def put(self) -> None:
        self.finish({"size": sum(map(len, self.parts))})


class Server:
    def __init__(self, lt: LoopThread, **kw: Any) -> None:
        self.lt = lt
        app = tornado.web.Application([(r"/echo", Echo), (r"/headers", Headers), (r"/stream", Stream), (r"/slow", Slow),
                                       (r"/upload", Upload), (r"/wait", Wait)], log_function=lambda h: None)
        self.srv = HTTP1Server(app, **kw)

        async def start() -> None:
            await self.srv.add_sockets(bind_sockets(0, "127.0.0.1"))

        lt.run(start())
        self.port = self.srv.port

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return s

    def stop(self) -> None:
        async def stop() -> None:
            self.srv.stop()
            await self.srv.close_all_connections()

        self.lt.run(stop())


@pytest.fixture
def server(harness: LoopThread) -> Iterator[Server]:
    s = Server(harness)
    yield s
    s.stop()


def read_response(s: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response off the socket (Content-Length or chunked); leftover stays in buf."""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise EOFError(bytes(buf))
        buf += d
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    buf[:] = rest
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if status == 100:
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += s.recv(65536)
            size_line, _, rest = bytes(buf).partition(b"\r\n")
            size = int(size_line, 16)
            while len(rest) < size + 2:
                rest += s.recv(65536)
            body += rest[:size]
            buf[:] = rest[size + 2:]
            if size == 0:
                return status, headers, body
    n = int(headers.get("content-length", "0"))
    while len(buf) < n:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    body = bytes(buf[:n])
    buf[:] = buf[n:]
    return status, headers, body


def closed(s: socket.socket, timeout: float = 3) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        return False


def post(path: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def test_keep_alive_serves_many_requests_on_one_connection(server: Server) -> None:
    s = server.connect()
    buf = bytearray()
    for i in range(20):
        s.sendall(post("/echo", f"req {i}".encode()))
        status, headers, body = read_response(s, buf)
        assert status == 200 and json.loads(body)["body"] == f"req {i}"
        assert "connection" not in headers
    s.close()


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    s = server.connect()
    # A slow answer first: the two behind it must wait for it, not overtake it.
    s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + post("/echo", b"two") + post("/echo", b"three"))
    buf = bytearray()
    got = [read_response(s, buf) for _ in range(3)]
    assert [g[0] for g in got] == [200, 200, 200]
    assert got[0][2] == b"late"
    assert [json.loads(g[2])["body"] for g in got[1:]] == ["two", "three"]


def test_streamed_answer_is_chunked(server: Server) -> None:
    s = server.connect()
    s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = bytearray()
    status, headers, body = read_response(s, buf)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    s.sendall(post("/echo", b"after"))  # the connection is still good
    assert json.loads(read_response(s, buf)[2])["body"] == "after"


def test_http10_closes_unless_keep_alive_asked(server: Server) -> None:
    s = server.connect()
    s.sendall(post("/echo", b"a", version="1.0"))
    status, headers, body = read_response(s, bytearray())
    assert status == 200 and json.loads(body)["body"] == "a"
    assert closed(s)
    s = server.connect()
    buf = bytearray()
    s.sendall(post("/echo", b"b", "Connection: keep-alive\r\n", version="1.0"))
    status, headers, _ = read_response(s, buf)
    assert headers["connection"] == "Keep-Alive"
    s.sendall(post("/echo", b"c", "Connection: keep-alive\r\n", version="1.0"))
    assert json.loads(read_response(s, buf)[2])["body"] == "c"
    # A streamed answer to HTTP/1.0 cannot be chunked: it ends with the connection.
    s = server.connect()
    s.sendall(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    assert data.endswith(b"data: 2\n\n") and b"chunked" not in data.lower()


def test_connection_close_is_honoured(server: Server) -> None:
    s = server.connect()
    s.sendall(post("/echo", b"x", "Connection: close\r\n"))
    status, headers, _ = read_response(s, bytearray())
    assert status == 200 and headers["connection"] == "close"
    assert closed(s)


@pytest.mark.parametrize("raw,status", [
    (b"NOT A REQUEST\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET /echo HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    # a WebSocket upgrade to a route without one: 426, what clients read as "use plain HTTP"
    (b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 426),
    (b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", 400),
])
def test_bad_requests_get_a_json_error_and_the_connection_closes(server: Server, raw: bytes, status: int) -> None:
    s = server.connect()
    s.sendall(raw)
    got, headers, body = read_response(s, bytearray())
    assert got == status
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert json.loads(body)["error"]["message"]
    assert closed(s)


def test_body_over_the_server_limit_is_413_before_it_is_read(harness: LoopThread) -> None:
    srv = Server(harness, max_body_size=1000)
    try:
        s = srv.connect()
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        status, _, body = read_response(s, bytearray())
        assert status == 413 and b"too large" in body
        # Chunked: no length up front, so it is cut off once it passes the limit.
        s = srv.connect()
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"400\r\n" + b"a" * 1024 + b"\r\n")
        status, _, _ = read_response(s, bytearray())
        assert status == 413
    finally:
        srv.stop()


@pytest.mark.parametrize("path,shape", [
    ("/v1/chat/completions", "openai"),
    ("/v1/messages?beta=true", "anthropic"),
    ("/v1beta/models/gemini-2.5-flash:generateContent", "google"),
])
def test_errors_before_any_handler_are_in_the_routes_client_format(harness: LoopThread, path: str,
                                                                    shape: str) -> None:
    # 413 (body over the limit) and 431 (head too large) are answered by the server side,
    # before a handler exists: still in the shape the client's SDK parses.
    srv = Server(harness, max_body_size=1000)
    try:
        for raw, status in [
            (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".encode(), 413),
            (f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode() + b"a" * 70000 + b"\r\n\r\n", 431),
        ]:
            s = srv.connect()
            s.sendall(raw)
            got, _, body = read_response(s, bytearray())
            assert got == status
            doc = json.loads(body)
            if shape == "anthropic":
                assert doc["type"] == "error"
                assert doc["error"]["type"] == ("request_too_large" if status == 413 else "invalid_request_error")
                assert "too large" in doc["error"]["message"]
            elif shape == "google":
                assert doc["error"]["code"] == status and doc["error"]["status"] == "INVALID_ARGUMENT"
                assert "too large" in doc["error"]["message"]
            else:
                assert doc["error"]["type"] == "invalid_request_error" and "too large" in doc["error"]["message"]
    finally:
        srv.stop()


def test_chunked_request_body_is_streamed_to_the_handler(server: Server) -> None:
    s = server.connect()
    s.sendall(b"PUT /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(5):
        s.sendall(b"1000\r\n" + b"z" * 4096 + b"\r\n")
        time.sleep(0.01)
    s.sendall(b"0\r\n\r\n")
    status, _, body = read_response(s, bytearray())
    assert status == 200 and json.loads(body) == {"size": 5 * 4096}


def test_expect_100_continue(server: Server) -> None:
    s = server.connect()
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    buf = bytearray()
    status, _, _ = read_response(s, buf)
    assert status == 100
    s.sendall(b"hello")
    status, _, body = read_response(s, buf)
    assert status == 200 and json.loads(body)["body"] == "hello"


def test_head_has_length_and_no_body(server: Server) -> None:
    s = server.connect()
    s.sendall(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(2)
    data = s.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405") or head.startswith(b"HTTP/1.1 200")
    assert rest == b""


def test_forwarded_headers_set_the_client_address_and_scheme(harness: LoopThread) -> None:
    server = Server(harness, trusted_proxies=["127.0.0.0/8"])  # the peer is a configured load balancer
    try:
        s = server.connect()
        buf = bytearray()
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9, 198.51.100.7\r\n"
                  b"X-Forwarded-Proto: https\r\n\r\n")
        assert json.loads(read_response(s, buf)[2]) == {"ip": "198.51.100.7", "proto": "https"}
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Real-Ip: not-an-ip\r\n\r\n")
        assert json.loads(read_response(s, buf)[2]) == {"ip": "127.0.0.1", "proto": "http"}  # per request
        # Hops added by other trusted proxies are skipped: the client is the right-most other one.
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6, 198.51.100.7, 127.0.0.9\r\n\r\n")
        assert json.loads(read_response(s, buf)[2])["ip"] == "198.51.100.7"
    finally:
        server.stop()


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(server: Server) -> None:
    """Without server.trusted_proxies, anyone could write the address we log."""
    s = server.connect()
    buf = bytearray()
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\nX-Real-Ip: 203.0.113.10\r\n"
              b"X-Forwarded-Proto: https\r\n\r\n")
    assert json.loads(read_response(s, buf)[2]) == {"ip": "127.0.0.1", "proto": "http"}


timed_out = sent_before_close


def test_idle_connections_are_closed_and_a_stalled_body_gets_408(harness: LoopThread) -> None:
    srv = Server(harness, idle_timeout=0.3, header_timeout=0.3, body_timeout=0.3, sweep_seconds=0.1)
    try:
        fresh = srv.connect()  # never sends a byte: its first head is due header_timeout after the accept
        idle = srv.connect()   # keep-alive, after one request
        idle.sendall(post("/echo", b"one"))
        read_response(idle, bytearray())
        stalled = srv.connect()
        stalled.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part")
        busy = srv.connect()
        busy.sendall(b"GET /wait?s=0.8 HTTP/1.1\r\nHost: x\r\n\r\n")  # an answer longer than every timeout
        assert timed_out(fresh, 3) == b"" and timed_out(idle, 3) == b""  # closed, nothing said
        got = timed_out(stalled, 3)
        assert got is not None and got.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in got
        assert read_response(busy, bytearray())[2] == b"waited"
    finally:
        srv.stop()


def test_slowloris_head_is_cut_at_the_header_deadline_however_often_it_sends(harness: LoopThread) -> None:
    srv = Server(harness, idle_timeout=30, header_timeout=0.5, body_timeout=30, sweep_seconds=0.1)
    try:
        s = srv.connect()
        s.settimeout(0.05)
        start = time.monotonic()
        got = b""
        head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        for i in range(len(head)):  # a byte every 50 ms: never idle, never done
            try:
                s.sendall(head[i:i + 1])
                d = s.recv(65536)
                got += d
                if not d:
                    break
            except socket.timeout:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if time.monotonic() - start > 4:
                break
        assert got.startswith(b"HTTP/1.1 408 "), got
        assert time.monotonic() - start < 2.5
    finally:
        srv.stop()


def test_a_body_that_keeps_coming_is_read_however_long_it_takes(harness: LoopThread) -> None:
    """client_body_timeout is about progress (no byte for that long), not the whole body."""
    srv = Server(harness, idle_timeout=30, header_timeout=0.3, body_timeout=0.3, sweep_seconds=0.1)
    try:
        s = srv.connect()
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        for b in b"12345678":  # 8 x 0.1 s: longer than the body timeout, and each wait shorter
            time.sleep(0.1)
            s.sendall(bytes([b]))
        status, _, body = read_response(s, bytearray())
        assert status == 200 and json.loads(body)["body"] == "12345678"
    finally:
        srv.stop()


def test_keep_alive_wait_counts_from_the_end_of_the_answer(harness: LoopThread) -> None:
    srv = Server(harness, idle_timeout=1.0, header_timeout=10, sweep_seconds=0.1)
    try:
        s = srv.connect()
        buf = bytearray()
        s.sendall(b"GET /wait?s=1.5 HTTP/1.1\r\nHost: x\r\n\r\n")  # longer than the idle timeout
        assert read_response(s, buf)[2] == b"waited"
        time.sleep(0.5)  # idle for less than the timeout since the answer
        s.sendall(post("/echo", b"again"))
        assert json.loads(read_response(s, buf)[2])["body"] == "again"
    finally:
        srv.stop()


def test_at_max_connections_the_longest_idle_is_shed_for_a_new_one(harness: LoopThread) -> None:
    srv = Server(harness, max_connections=4, sweep_seconds=0.1)
    try:
        idle = []
        for i in range(4):
            c = srv.connect()
            c.sendall(post("/echo", b"warm %d" % i))
            read_response(c, bytearray())
            idle.append(c)
            time.sleep(0.15)  # (one sweep tick apart: the first is the longest idle)
        new = srv.connect()
        new.sendall(post("/echo", b"new"))
        status, _, body = read_response(new, bytearray())
        assert status == 200 and json.loads(body)["body"] == "new"
        assert timed_out(idle[0], 2) == b""  # shed
        for c in idle[1:]:  # the others are still good
            c.sendall(post("/echo", b"still"))
            assert json.loads(read_response(c, bytearray())[2])["body"] == "still"
        assert srv.srv.shed == 1
    finally:
        srv.stop()


def test_at_max_connections_with_none_idle_a_new_one_gets_503_at_once(harness: LoopThread) -> None:
    srv = Server(harness, max_connections=2, sweep_seconds=0.1)
    try:
        busy = [srv.connect() for _ in range(2)]
        for c in busy:
            c.sendall(b"GET /wait?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        extra = srv.connect()
        extra.settimeout(3)
        status, headers, body = read_response(extra, bytearray())
        assert status == 503 and json.loads(body)["error"]["code"] == "server_overloaded"
        assert headers["connection"] == "close"
        for c in busy:  # the busy ones are not touched
            assert read_response(c, bytearray())[2] == b"waited"
    finally:
        srv.stop()


def test_drain_closes_idle_connections_and_finishes_the_busy_ones(server: Server) -> None:
    idle = server.connect()
    idle.sendall(post("/echo", b"warm"))
    read_response(idle, bytearray())
    busy = server.connect()
    busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.05)
    server.lt.call(server.srv.start_drain)
    assert closed(idle)
    status, headers, body = read_response(busy, bytearray())
    assert body == b"late" and headers["connection"] == "close"
    assert closed(busy)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).sendall(post("/echo", b"x"))
        raise ConnectionRefusedError  # connect may succeed on some stacks; it must not be served


def test_request_headers_are_case_insensitive_and_keep_repeats(server: Server) -> None:
    s = server.connect()
    s.sendall(b"GET /headers HTTP/1.1\r\nhost: x\r\nx-api-key: k1\r\nX-MULTI: a\r\nx-multi: b\r\n"
              b"content-type: text/plain\r\n\r\n")
    status, headers, body = read_response(s, bytearray())
    assert json.loads(body) == {"key": "k1", "multi": ["a", "b"], "joined": "a,b", "has": True,
                                "all": ["Content-Type", "Host", "X-Api-Key", "X-Multi", "X-Multi"]}
    assert headers["date"].endswith(" GMT")


class Which(tornado.web.RequestHandler):
    def initialize(self, name: str) -> None:
        self.name = name

    def get(self, *args: str) -> None:
        self.finish({"name": self.name, "args": list(args)})


def test_literal_paths_find_the_same_handler_as_tornado(harness: LoopThread) -> None:
    from tornado_proxy.server.http1 import exact_routes

    app = tornado.web.Application([
        (r"/items/([a-z]+)", Which, {"name": "pattern"}),   # matches /items/new first: Tornado picks it
        (r"/items/new", Which, {"name": "literal-shadowed"}),
        (r"/items/1", Which, {"name": "literal"}),
        (r"/file.json", Which, {"name": "dot"}),             # "." is any character to the regex
        (r"/opt/?", Which, {"name": "optional-slash"}),
    ], log_function=lambda h: None)
    exact = exact_routes(app)
    assert set(exact) == {"/items/1", "/file.json"}
    assert exact["/items/1"][1] == {"name": "literal"}
    srv = HTTP1Server(app)

    async def start() -> None:
        await srv.add_sockets(bind_sockets(0, "127.0.0.1"))

    harness.run(start())
    want = {"/items/new": ("pattern", ["new"]), "/items/1": ("literal", []), "/file.json": ("dot", []),
            "/fileXjson": ("dot", []), "/opt": ("optional-slash", []), "/opt/": ("optional-slash", []),
            "/items/1?x=2": ("literal", [])}
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        for path, (name, args) in want.items():
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, _, body = read_response(s, buf)
            assert status == 200, path
            assert json.loads(body) == {"name": name, "args": args}, path
        s.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, buf)[0] == 404


def test_lean_request_has_the_fields_tornado_gives() -> None:
    from tornado import httputil

    from tornado_proxy.server.http1_request import _HOSTS, _Context, _ServerRequest

    class Conn:
        context = _Context("192.0.2.1", "https", ("192.0.2.1", 5))

        def set_close_callback(self, cb: Any) -> None:
            pass

    def headers(host: str | None) -> httputil.HTTPHeaders:
        h = httputil.HTTPHeaders()
        if host is not None:
            h["Host"] = host
        h["Content-Type"] = "application/json"
        return h

    fields = ("method", "uri", "version", "body", "remote_ip", "protocol", "host", "host_name", "files", "path",
              "query", "arguments", "query_arguments", "body_arguments")
    for uri, host in (("/v1/chat/completions", "Example.COM:8080"), ("/v1/chat/completions", "Example.COM:8080"),
                      ("/a?b=1&b=2&c", "h"), ("/a?b=1", "h"), ("/plain", "[::1]:80")):
        line = httputil.RequestStartLine("POST", uri, "HTTP/1.1")
        ours = _ServerRequest(line, headers(host), Conn(), None)  # type: ignore[arg-type]
        theirs = httputil.HTTPServerRequest(start_line=line, headers=headers(host), connection=Conn())  # type: ignore[arg-type]
        assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}, (uri, host)
        assert isinstance(ours, httputil.HTTPServerRequest) and ours.request_time() >= 0
    assert _HOSTS.get("Example.COM:8080") == "example.com"
    for bad in (None, "a,b", "bad host"):  # refused exactly as Tornado refuses them, never remembered
        with pytest.raises(httputil.HTTPInputError):
            _ServerRequest(httputil.RequestStartLine("GET", "/", "HTTP/1.1"), headers(bad), Conn(), None)  # type: ignore[arg-type]
        assert bad not in _HOSTS
