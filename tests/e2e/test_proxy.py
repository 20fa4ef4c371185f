"""The outbound proxy is honoured on both paths, model requests and OAuth token
refreshes, for an HTTP forward proxy (absolute-URI requests) and a SOCKS5 proxy
(no auth, CONNECT): both tiny and real, on loopback, recording what went through."""
from __future__ import annotations

import asyncio
import socket
import struct
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.harness import LoopThread, Reply, fixture_bytes, openai_provider, simple_config
from tornado_proxy.accounts.file import AccountsFile

MSGS = [{"role": "user", "content": "Say hello"}]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _relay(cr: asyncio.StreamReader, cw: asyncio.StreamWriter, host: str, port: int,
                 first: bytes = b"") -> None:
    ur, uw = await asyncio.open_connection(host, port)
    if first:
        uw.write(first)
    await asyncio.gather(_pipe(cr, uw), _pipe(ur, cw))


class HTTPProxy:
    """A forward proxy: ``POST http://host:port/path HTTP/1.1`` in, origin-form out.

    One request per connection (it asks the origin to close after it), so every
    request the client makes is seen here."""

    scheme = "http"

    def __init__(self) -> None:
        self.seen: list[str] = []   # the request lines
        self.port = 0

    async def handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        head = await cr.readuntil(b"\r\n\r\n")
        line, _, rest = head.partition(b"\r\n")
        method, target, version = line.decode().split(" ")
        self.seen.append(f"{method} {target}")
        assert target.startswith("http://"), target  # absolute-URI form
        hostport, _, path = target[len("http://"):].partition("/")
        host, _, port = hostport.rpartition(":")
        headers = [h for h in rest.split(b"\r\n") if h and not h.lower().startswith((b"proxy-", b"connection:"))]
        head_out = b"\r\n".join([f"{method} /{path} {version}".encode(), *headers, b"Connection: close"])
        out = head_out + b"\r\n\r\n"
        await _relay(cr, cw, host, int(port), out)


class Socks5Proxy:
    """RFC 1928, no authentication, CONNECT only."""

    scheme = "socks5"

    def __init__(self) -> None:
        self.seen: list[str] = []   # host:port of each CONNECT
        self.port = 0

    async def handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ver, n = await cr.readexactly(2)
        methods = await cr.readexactly(n)
        assert ver == 5 and 0 in methods
        cw.write(b"\x05\x00")
        ver, cmd, _, atyp = await cr.readexactly(4)
        assert ver == 5 and cmd == 1, "CONNECT only"
        if atyp == 1:
            host = socket.inet_ntoa(await cr.readexactly(4))
        elif atyp == 3:
            host = (await cr.readexactly((await cr.readexactly(1))[0])).decode()
        else:
            host = socket.inet_ntop(socket.AF_INET6, await cr.readexactly(16))
        (port,) = struct.unpack("!H", await cr.readexactly(2))
        self.seen.append(f"{host}:{port}")
        cw.write(b"\x05\x00\x00\x01" + socket.inet_aton("0.0.0.0") + b"\x00\x00")
        await _relay(cr, cw, host, port)


def start(harness: LoopThread, proxy: Any) -> Any:
    async def go() -> None:
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        proxy.port = server.sockets[0].getsockname()[1]
        harness._cleanups.append(server.close)

    harness.run(go())
    return proxy


@pytest.mark.parametrize("kind", [HTTPProxy, Socks5Proxy], ids=["http", "socks5"])
def test_model_requests_and_token_refreshes_go_through_the_proxy(harness: LoopThread, tmp_path: Path,
                                                                  kind: Any) -> None:
    proxy = start(harness, kind())
    url = f"{proxy.scheme}://127.0.0.1:{proxy.port}"
    tok = harness.upstream()
    tok.default = Reply.json({"access_token": "at-via-proxy-1", "refresh_token": "rt-1", "expires_in": 3600})
    up = harness.upstream()
    up.default = Reply(200, {"Content-Type": "application/json"}, fixture_bytes("openai/text.json"))
    path = tmp_path / "accounts.json"
    AccountsFile(str(path)).upsert({"id": "o1", "provider": "up", "refresh_token": "rt-0",
                                    "access_token": "at-old", "expires_at": time.time() - 5})
    prov = openai_provider(up, proxy=url, timeouts={"connect": 2, "first_byte": 5, "idle": 5},
                           scheduler={"oauth": {"token_url": tok.url + "/oauth/token", "client_id": "c1"}})
    prov["accounts"] = []
    cfg = simple_config([prov], [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}])
    cfg["accounts_file"] = str(path)
    gw = harness.gateway(cfg)
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)
    assert c.chat.completions.create(model="m", messages=MSGS).choices  # refresh, then the request
    assert list(c.chat.completions.create(model="m", messages=MSGS, stream=False).choices)
    assert len(tok.requests) == 1 and up.requests[0].headers["authorization"] == "Bearer at-via-proxy-1"
    if kind is HTTPProxy:
        assert proxy.seen == [f"POST {tok.url}/oauth/token", f"POST {up.url}/v1/chat/completions",
                              f"POST {up.url}/v1/chat/completions"]
    else:
        hosts = [f"127.0.0.1:{tok.port}", f"127.0.0.1:{up.port}"]
        assert proxy.seen[:2] == hosts and set(proxy.seen) == set(hosts)  # (curl may reuse the tunnel)
    assert len(up.requests) == 2
