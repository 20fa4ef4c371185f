"""OAuth refresh grants for accounts that hold a refresh token instead of a key.

Two body formats, chosen per provider (``scheduler.oauth.format``):

* ``form``: the standard OAuth 2 refresh grant (RFC 6749 section 6),
  ``application/x-www-form-urlencoded`` with ``grant_type=refresh_token``.
* ``json``: the same fields as a JSON object, as WorkOS' ``/user_management/authenticate``
  and similar identity providers take them.

Building the request and reading the answer are pure functions so they are tested
without a network; :func:`refresh` is the one function that does I/O.  It uses
tornado's ``AsyncHTTPClient``: the core configures the curl backend once for the
whole process.

Expiry comes from ``expires_in``; WorkOS-style answers carry none, so the JWT's
``exp`` claim is read (unverified: we only need to know when to refresh, the
upstream is the one that checks the signature), and failing both ``token_ttl``.
"""
from __future__ import annotations

import base64
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from tornado_proxy import jsonutil

from tornado_proxy.observability import redact

# OAuth 2 error codes (RFC 6749 section 5.2) that mean the refresh token itself is dead:
# retrying cannot help, so the account is disabled at once.
_DEAD_GRANT_CODES = frozenset({"invalid_grant", "unauthorized_client", "invalid_client"})


@dataclass(frozen=True)
class OAuthConfig:
    token_url: str
    client_id: str
    format: str = "form"                   # "form" | "json"
    client_secret_env: str | None = None   # the secret is read from the environment, never config
    client_secret: str | None = None       # or kept with the account in the accounts file
    scope: str | None = None
    refresh_ahead: float = 300.0           # refresh this many seconds before expiry
    token_ttl: float = 3600.0              # when the answer says nothing about expiry
    max_token_age: float | None = None     # refresh at least this often (a vendor's own schedule)
    timeout: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)  # more body fields (organization_id...)


def parse_config(conf: dict[str, Any]) -> OAuthConfig:
    fmt = conf.get("format", "form")
    if fmt not in ("form", "json"):
        raise ValueError(f"oauth.format must be 'form' or 'json', not {fmt!r}")
    return OAuthConfig(
        token_url=str(conf["token_url"]),
        client_id=str(conf["client_id"]),
        format=fmt,
        client_secret_env=conf.get("client_secret_env"),
        client_secret=conf.get("client_secret"),
        scope=conf.get("scope"),
        refresh_ahead=float(conf.get("refresh_ahead", 300.0)),
        token_ttl=float(conf.get("token_ttl", 3600.0)),
        max_token_age=float(conf["max_token_age"]) if conf.get("max_token_age") is not None else None,
        timeout=float(conf.get("timeout", 30.0)),
        extra={str(k): str(v) for k, v in (conf.get("extra") or {}).items()},
    )


@dataclass(frozen=True)
class TokenSet:
    access_token: str
    refresh_token: str     # the rotated one, or the old one when the endpoint does not rotate
    expires_at: float      # unix seconds


class RefreshError(Exception):
    """A refresh failed.  ``dead`` means the refresh token was rejected for good."""

    def __init__(self, message: str, *, dead: bool = False, status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.dead = dead
        self.status = status
        self.code = code  # the OAuth error code (RFC 6749 section 5.2), e.g. "invalid_grant"


def build_request(conf: OAuthConfig, refresh_token: str) -> tuple[dict[str, str], bytes]:
    """The headers and body of the refresh grant."""
    fields: dict[str, str] = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                              "client_id": conf.client_id}
    if conf.client_secret:
        fields["client_secret"] = conf.client_secret
    elif conf.client_secret_env:
        secret = os.environ.get(conf.client_secret_env)
        if not secret:
            raise RefreshError(f"environment variable {conf.client_secret_env} (oauth client secret) is not set")
        redact.note(f"env:{conf.client_secret_env}", [secret])
        fields["client_secret"] = secret
    if conf.scope:
        fields["scope"] = conf.scope
    fields.update(conf.extra)
    if conf.format == "json":
        return ({"Content-Type": "application/json", "Accept": "application/json"},
                jsonutil.dumpb(fields))
    return ({"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
            urllib.parse.urlencode(fields).encode("ascii"))


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, unverified; None if the token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = jsonutil.loads(base64.urlsafe_b64decode(payload))
    except Exception:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) else None


def parse_response(conf: OAuthConfig, status: int, body: bytes, old_refresh_token: str,
                   wall_now: float) -> TokenSet:
    """The token endpoint's answer -> a TokenSet, or RefreshError."""
    try:
        obj = jsonutil.loads(body) if body else None
    except Exception:
        obj = None
    if not 200 <= status < 300:
        code, desc = "", ""
        if isinstance(obj, dict):
            err = obj.get("error")
            code = err if isinstance(err, str) else str(obj.get("code") or "")
            desc = str(obj.get("error_description") or obj.get("message") or "")
        # Never echo the body itself: some endpoints repeat the token they rejected, in
        # the description too (masked before it is cut, or half a token would be left).
        desc = redact.scrub_with(desc, (old_refresh_token, conf.client_secret))
        code = redact.scrub_with(code, (old_refresh_token, conf.client_secret))
        msg = f"token endpoint answered {status}" + (f" {code}" if code else "") + (f": {desc[:200]}" if desc else "")
        dead = code in _DEAD_GRANT_CODES or (status in (400, 401) and not code)
        raise RefreshError(msg, dead=dead, status=status, code=code or None)
    if not isinstance(obj, dict) or not isinstance(obj.get("access_token"), str) or not obj["access_token"]:
        raise RefreshError(f"token endpoint answered {status} without an access_token", status=status)
    access = obj["access_token"]
    rotated = obj.get("refresh_token")
    expires_in = obj.get("expires_in")
    if isinstance(expires_in, (int, float)) or (isinstance(expires_in, str) and expires_in.isdigit()):
        expires_at = wall_now + float(expires_in)
    else:
        expires_at = jwt_expiry(access) or wall_now + conf.token_ttl
    if conf.max_token_age is not None:
        # Some vendors' own clients refresh on a fixed schedule, well before the token's
        # expiry (a token revoked server-side then stops working within that time).
        expires_at = min(expires_at, wall_now + conf.max_token_age)
    return TokenSet(access_token=access,
                    refresh_token=rotated if isinstance(rotated, str) and rotated else old_refresh_token,
                    expires_at=expires_at)


def proxy_args(proxy: str | None) -> dict[str, Any]:
    """A proxy URL (``http://``, ``https://``, ``socks5://``, ``socks5h://``..., with
    ``user:pass@``) -> tornado HTTPRequest arguments for the curl client.

    Tornado's own ``proxy_host``/``proxy_port`` drop the scheme, so a SOCKS proxy would
    be spoken to as an HTTP one: the whole URL goes to libcurl instead (as our own
    upstream transfers do), which reads the scheme and the credentials from it.
    """
    if not proxy:
        return {}
    url = proxy if "://" in proxy else "http://" + proxy

    def use_proxy(curl: Any) -> None:
        import pycurl

        curl.setopt(pycurl.PROXY, url)

    return {"prepare_curl_callback": use_proxy}


async def refresh(conf: OAuthConfig, refresh_token: str, wall_now: float,
                  proxy: str | None = None) -> TokenSet:
    """Run the refresh grant against the token endpoint."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    headers, body = build_request(conf, refresh_token)
    req = HTTPRequest(conf.token_url, method="POST", headers=headers, body=body,
                      request_timeout=conf.timeout, connect_timeout=min(conf.timeout, 10.0),
                      **proxy_args(proxy))
    # A client of our own (of the globally configured class, curl in the server), closed
    # after: AsyncHTTPClient() would otherwise cache one per event loop, and a refresh
    # that ran before the core configured its client would leave it the wrong kind.
    client = AsyncHTTPClient(force_instance=True)
    if proxy and not hasattr(client, "_curl_setup_request"):
        client.close()  # Tornado's simple client would ignore the proxy: never go around it
        raise RefreshError("an outbound proxy needs the curl HTTP client (pycurl)")
    try:
        resp = await client.fetch(req, raise_error=False)
    except Exception as e:  # DNS, refused, TLS: the endpoint was not reached
        raise RefreshError(f"token endpoint unreachable: {type(e).__name__}: {e}") from None
    finally:
        client.close()
    if resp.code == 599:
        raise RefreshError(f"token endpoint unreachable: {resp.error}")
    return parse_response(conf, resp.code, resp.body or b"", refresh_token, wall_now)
