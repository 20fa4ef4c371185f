"""From a parsed request head to Tornado's request and handler, on our HTTP/1.1
server (``http1.py``): the lean ``HTTPServerRequest``, the exact-path route table, the
connection context a request reads (peer address, scheme) and the forwarding headers
believed from trusted proxies (``server.trusted_proxies``, also used by
``tornado_http.py``).
"""
from __future__ import annotations

import ipaddress
import time
from typing import Any, Callable, Protocol

from tornado import httputil
from tornado.netutil import is_valid_ip


class _Connection(Protocol):
    """What a request reads off its connection (``http1_conn.HTTP1Connection``)."""

    context: _Context | None


class _ServerRequest(httputil.HTTPServerRequest):
    """``HTTPServerRequest``, built without the per-request work that the usual request
    does not need: a request without a query string skips Tornado's query parsing and
    its deep copy, and a Host header seen before skips the Host checks (their outcome is
    kept per distinct value).  Anything else is built by Tornado's own constructor."""

    def __init__(self, start_line: httputil.RequestStartLine, headers: httputil.HTTPHeaders,
                 connection: _Connection, server_connection: Any) -> None:
        uri = start_line.path
        host = headers.get("Host")
        host_name = _HOSTS.get(host) if host is not None else None
        if host_name is None or "?" in uri:
            super().__init__(headers=headers, connection=connection,  # type: ignore[arg-type]  # a duck HTTPConnection
                             start_line=start_line, server_connection=server_connection)
            if host is not None and len(_HOSTS) < 256:
                _HOSTS[host] = self.host_name  # (Tornado accepted it: it raises otherwise)
            return
        self.method, self.uri, self.version = start_line
        self.headers = headers
        self.body = b""
        ctx = connection.context
        assert ctx is not None  # set in connection_made, before any request
        self.remote_ip = ctx.remote_ip
        self.protocol = ctx.protocol
        self.host = host  # type: ignore[assignment]  # not None: host_name was found for it
        self.host_name = host_name
        self.files = {}
        self.connection = connection  # type: ignore[assignment]  # a duck HTTPConnection
        self.server_connection = server_connection
        self._start_time = time.time()
        self._finish_time = None
        self.path = uri
        self.query = ""
        self.arguments = {}
        self.query_arguments = {}
        self.body_arguments = {}


# Host header value -> host name, for values Tornado's request constructor accepted.
_HOSTS: dict[str, str] = {}


def exact_routes(app: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Paths of ``app``'s routes without groups -> (handler class, its kwargs).

    Tornado finds a handler by trying each route's regular expression in turn, through
    two routers.  For the path a route's pattern spells (``/v1/chat/completions``), if
    that route matches it and no earlier route does, Tornado's answer is that route,
    and a dict lookup gives it.  Empty unless ``app`` is a plain
    ``tornado.web.Application`` (no host-specific rules).
    """
    import tornado.routing
    import tornado.web

    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    if not isinstance(app, tornado.web.Application) or len(app.default_router.rules) != 1:
        return out
    # Routes for WebSocket upgrades only (app.WebSocketUpgrade) take no plain request:
    # upgrades are routed by Tornado's routing (_upgrade_delegate), never through here.
    rules = [r for r in app.wildcard_router.rules if not getattr(r.matcher, "upgrade_only", False)]
    for i, rule in enumerate(rules):
        m = rule.matcher
        if not isinstance(m, tornado.routing.PathMatches) or m.regex.groups:
            continue
        # A route whose pattern, read as a path, is matched by the route itself.
        path = m.regex.pattern[:-1] if m.regex.pattern.endswith("$") else ""
        if not path.startswith("/") or m.regex.match(path) is None:
            continue
        if not (isinstance(rule.target, type) and issubclass(rule.target, tornado.web.RequestHandler)):
            continue
        if any(r.matcher.match(_Probe(path)) is not None for r in rules[:i]):  # type: ignore[arg-type]
            continue
        out.setdefault(path, (rule.target, rule.target_kwargs))
    return out


class _Probe:
    """Just enough of a request for a route matcher."""

    def __init__(self, path: str) -> None:
        self.path = path


class _Context:
    """What ``HTTPServerRequest`` reads off ``connection.context``."""

    __slots__ = ("remote_ip", "protocol", "address")

    def __init__(self, remote_ip: str, protocol: str, address: Any) -> None:
        self.remote_ip = remote_ip
        self.protocol = protocol
        self.address = address

    def __str__(self) -> str:
        return self.remote_ip


class TrustedProxies:
    """``trusts(ip)``: is the peer ``ip`` one of ``server.trusted_proxies``?

    X-Forwarded-For / X-Real-Ip / X-Forwarded-Proto are believed only from these (IPs
    or CIDRs): from anyone else they are the client's own words."""

    def __init__(self, networks: list[str] | tuple[str, ...]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._cache: dict[str, bool] = {}

    def __call__(self, ip: str) -> bool:
        if not self.networks:
            return False
        hit = self._cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return False
            hit = any(addr in net for net in self.networks)
            if len(self._cache) < 4096:
                self._cache[ip] = hit
        return hit


def forwarded_context(base: _Context, headers: httputil.HTTPHeaders,
                       trusts: Callable[[str], bool]) -> _Context:
    """For a request from a trusted proxy: the client address from X-Real-Ip or, in
    X-Forwarded-For, the right-most hop that is not itself a trusted proxy (hops to its
    left were written by whoever sent the request and prove nothing); the scheme from
    X-Scheme or X-Forwarded-Proto."""
    ip = base.remote_ip
    fwd = headers.get("X-Forwarded-For")
    if fwd:
        for hop in reversed(fwd.split(",")):
            hop = hop.strip()
            if not is_valid_ip(hop):
                break
            ip = hop
            if not trusts(hop):
                break
    ip = headers.get("X-Real-Ip", ip)
    if not is_valid_ip(ip):
        ip = base.remote_ip
    proto = headers.get("X-Scheme", headers.get("X-Forwarded-Proto", base.protocol))
    if proto:
        proto = proto.split(",")[-1].strip()
    if proto not in ("http", "https"):
        proto = base.protocol
    return _Context(ip, proto, base.address)
