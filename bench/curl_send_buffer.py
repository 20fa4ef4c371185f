"""What libcurl itself keeps per held transfer: a GET against a POST, by send buffer size.

A held slow stream costs the gateway ~41 KiB (bench/RESULTS.md, session 13). This
measures the part below Python: N pycurl transfers to a loopback server that answers
each with a response head and one chunk and then holds the connection; once every
transfer has its chunk, what malloc holds per transfer (``mallinfo2``, glibc).

    python bench/curl_send_buffer.py            # get, post, post at 16 KiB, 1000 each

libcurl 8.x sends a request that has a body through a send buffer of
CURLOPT_UPLOAD_BUFFERSIZE (default 64 KiB, at least 16 KiB) and keeps it for the
whole transfer, after the body has gone: a held POST stream holds that much more
than a GET.  Loopback only; bounded in time (30 s per case at most).
"""
from __future__ import annotations

import ctypes
import socket
import subprocess
import sys
import threading
import time

BODY = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}' * 3
CHUNK = b'data: {"a":1}\n\n'


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def _in_use() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    m = libc.mallinfo2()
    return int(m.uordblks + m.hblkhd)


def _holding_server() -> tuple[int, list[socket.socket]]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    held: list[socket.socket] = []

    def answer(c: socket.socket) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += c.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(rest) < length:
            rest += c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))

    def accept() -> None:
        while True:
            c, _ = srv.accept()
            held.append(c)  # never closed: the transfer stays open, as a slow stream's does
            threading.Thread(target=answer, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1], held


def case(mode: str, n: int, upload_buffer: int) -> None:
    import pycurl

    port, _ = _holding_server()
    multi = pycurl.CurlMulti()
    got = [0]

    def write(data: bytes) -> None:
        got[0] += 1

    base = _in_use()
    curls = []
    for _ in range(n):
        c = pycurl.Curl()
        c.setopt(pycurl.URL, f"http://127.0.0.1:{port}/v1/chat/completions")
        c.setopt(pycurl.WRITEFUNCTION, write)
        c.setopt(pycurl.HTTPHEADER, [b"Content-Type: application/json", b"Authorization: Bearer sk-test"])
        if upload_buffer:
            c.setopt(pycurl.UPLOAD_BUFFERSIZE, upload_buffer)
        if mode == "post":
            c.setopt(pycurl.POSTFIELDS, BODY)
        multi.add_handle(c)
        curls.append(c)
    deadline = time.monotonic() + 30
    while got[0] < n and time.monotonic() < deadline:
        multi.perform()
        multi.select(0.01)
    per = (_in_use() - base) / n / 1024
    size = f"{upload_buffer // 1024} KiB" if upload_buffer else "default"
    print(f"{mode:4s} send buffer {size:8s} {got[0]}/{n} held: {per:5.1f} KiB malloc per transfer "
          f"(libcurl {pycurl.version_info()[1]})", flush=True)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    for mode, ub in (("get", 0), ("post", 0), ("post", 16384)):
        # each case in a fresh process: what an earlier case freed stays in malloc's arenas
        subprocess.run([sys.executable, __file__, "--case", mode, str(n), str(ub)], check=True, timeout=60)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--case":
        case(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
