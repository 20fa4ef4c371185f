"""Remote images a provider needs as bytes (Bedrock takes no URLs), fetched by the core.

A provider that can inline images names them (``urls_to_fetch(pivot, model)``,
only when its operator turned that on) and gives its limits
(``image_fetch_policy()``); the pipeline fetches them here before the upstream
request is built and hands the bytes back (``inline_fetched(pivot, fetched)``).
Providers do no I/O themselves.

The fetch is the gateway calling a URL a client chose, so it is fenced:

* ``http`` and ``https`` only, on every hop; redirects are followed by hand, each
  target checked again, at most ``max_redirects`` of them;
* the addresses a host resolves to are checked when the connection is made (the
  resolver below, so a name that resolves differently the second time gains
  nothing): loopback, link-local, private, shared, multicast, reserved and
  unspecified addresses are refused unless ``allow_private_networks``;
* at most ``max_bytes`` of body and ``timeout_seconds`` for all hops together;
* only image content types (or, for a generic type, bytes that are an image).

Any failure is the client's 400, naming the field and saying why; no account is
touched (nothing went upstream).
"""
from __future__ import annotations

import ipaddress
import socket
import time
import urllib.parse
from typing import Any

from tornado import httputil
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.netutil import DefaultLoopResolver
from tornado.simple_httpclient import HTTPStreamClosedError, HTTPTimeoutError, SimpleAsyncHTTPClient

from tornado_proxy.errors import ErrorKind, ProxyError

DEFAULT_POLICY: dict[str, Any] = {"max_bytes": 3_750_000, "timeout_seconds": 10.0, "max_redirects": 3,
                                  "allow_private_networks": False}
_REDIRECTS = (301, 302, 303, 307, 308)
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"))


class _Blocked(Exception):
    pass


def address_allowed(ip: str, allow_private: bool) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if allow_private:
        return not addr.is_unspecified and not addr.is_multicast
    return addr.is_global and not addr.is_multicast


class _GuardedResolver(DefaultLoopResolver):
    """Resolves as usual, then keeps only the addresses the policy allows."""

    def initialize(self, allow_private: bool = False) -> None:  # (Tornado's Configurable: no __init__)
        self.allow_private = allow_private

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC) -> Any:
        found = await super().resolve(host, port, family)
        ok = [(fam, addr) for fam, addr in found if address_allowed(addr[0], self.allow_private)]
        if not ok:
            raise _Blocked(host)
        return ok


def field_of(pivot: dict[str, Any], url: str) -> str:
    """Where ``url`` sits in the request (the first place), for the error."""
    for i, msg in enumerate(pivot.get("messages") or []):
        content = msg.get("content") if isinstance(msg, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            image = part.get("image_url") if isinstance(part, dict) else None
            if (image.get("url") if isinstance(image, dict) else image) == url:
                return f"messages[{i}].content[{j}].image_url.url"
    return "image_url.url"


async def fetch_images(pivot: dict[str, Any], urls: list[str], policy: dict[str, Any]) -> dict[str, tuple[str, bytes]]:
    """Each URL -> (content type, bytes); a ProxyError (400) at the first that fails."""
    pol = {**DEFAULT_POLICY, **(policy or {})}
    client = SimpleAsyncHTTPClient(force_instance=True, resolver=_GuardedResolver(allow_private=bool(pol["allow_private_networks"])),
                                   max_body_size=int(pol["max_bytes"]), max_buffer_size=int(pol["max_bytes"]))
    out: dict[str, tuple[str, bytes]] = {}
    try:
        for url in urls:
            out[url] = await _fetch(client, url, pol, field_of(pivot, url))
    finally:
        client.close()
    return out


def _refuse(field: str, url: str, why: str) -> ProxyError:
    shown = url if len(url) <= 120 else url[:117] + "..."
    return ProxyError(ErrorKind.INVALID_REQUEST, f"'{field}': the image at {shown!r} could not be fetched: {why}",
                      param=field)


async def _fetch(client: SimpleAsyncHTTPClient, url: str, pol: dict[str, Any], field: str) -> tuple[str, bytes]:
    deadline = time.monotonic() + float(pol["timeout_seconds"])
    current = url
    for _ in range(int(pol["max_redirects"]) + 1):
        parts = urllib.parse.urlsplit(current)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _refuse(field, url, "only http and https URLs are fetched")
        left = deadline - time.monotonic()
        if left <= 0:
            raise _refuse(field, url, f"it took longer than {pol['timeout_seconds']} s")
        head = httputil.HTTPHeaders()

        def on_header(line: str) -> None:
            # (with a header_callback Tornado leaves the response's headers empty)
            if line.strip() and not line.startswith("HTTP/"):
                try:
                    head.parse_line(line.rstrip("\r\n"))
                except Exception:
                    pass

        req = HTTPRequest(current, follow_redirects=False, request_timeout=left, connect_timeout=left,
                          headers={"Accept": "image/*"}, user_agent="tornado-proxy image fetch",
                          header_callback=on_header)
        try:
            resp = await client.fetch(req, raise_error=False)
        except _Blocked:
            raise _refuse(field, url, "its host is a loopback, link-local or private network address, which "
                                      "this gateway does not fetch from") from None
        except HTTPTimeoutError:
            raise _refuse(field, url, f"it took longer than {pol['timeout_seconds']} s") from None
        except HTTPStreamClosedError:
            cl = head.get("Content-Length", "")
            if (cl.isdigit() and int(cl) > int(pol["max_bytes"])) or "chunked" in head.get("Transfer-Encoding", ""):
                raise _refuse(field, url, f"it is larger than {pol['max_bytes']} bytes") from None
            raise _refuse(field, url, "its server closed the connection") from None
        except (OSError, ValueError, HTTPClientError) as exc:
            raise _refuse(field, url, f"the connection failed ({type(exc).__name__})") from None
        if resp.code in _REDIRECTS and head.get("Location"):
            current = urllib.parse.urljoin(current, head["Location"])
            continue
        if resp.code != 200:
            raise _refuse(field, url, f"its server answered HTTP {resp.code}")
        body = resp.body or b""
        if len(body) > int(pol["max_bytes"]):
            raise _refuse(field, url, f"it is larger than {pol['max_bytes']} bytes")
        ctype = head.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if not ctype.startswith("image/"):
            sniffed = _sniff(body)
            if sniffed is None:
                raise _refuse(field, url, f"it is not an image (content type {ctype or 'none'!r})")
            ctype = sniffed
        return ctype, body
    raise _refuse(field, url, f"it redirected more than {pol['max_redirects']} times")


def _sniff(body: bytes) -> str | None:
    for magic, mime in _MAGIC:
        if body.startswith(magic):
            return mime
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "image/webp"
    return None
