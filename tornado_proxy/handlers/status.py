"""The admin status page: providers and accounts of this process, in a browser.

    GET  /admin/          the page (a login form until the browser has a session)
    POST /admin/login     form field ``token``: the admin token -> a session cookie
    POST /admin/logout    ends the session in this browser
    POST /admin/action    form fields ``account``, ``action`` (enable|disable|probe), ``reason``

A browser cannot send ``Authorization`` on a plain navigation, so the page has a
login: the admin token, posted once, buys a cookie holding a *signed session*
(issue time, a random nonce and an HMAC keyed by the admin token), never the token
itself.  Changing the admin token ends every session; no server-side state, so
every worker process accepts the same cookie.  The cookie is HttpOnly,
SameSite=Strict, Secure on https, and scoped to ``/admin`` (by the URL it is
set from, so a path prefix in front of the gateway works).

Every form that changes something carries a CSRF token, an HMAC of the session
cookie (so it is bound to the session and useless without it), checked in
constant time; a POST without it is a 403.  Scripts may send the admin token in
``Authorization: Bearer`` or ``X-Admin-Token`` instead of a cookie, and then need no
CSRF token (a cross-site form cannot set headers).

Everything shown goes through the template's autoescaping (account ids and error
messages come from config files and upstreams).  Keys are never shown: the
scheduler's snapshot holds a 4-character hint at most.  The page has no scripts;
the Content-Security-Policy allows none, and only its own stylesheet.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any

import tornado.template
import tornado.web

from tornado_proxy import __version__
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.handlers.admin import AdminHandler

COOKIE = "tornado_proxy_admin"
SESSION_SECONDS = 12 * 3600
ACTIONS = ("enable", "disable", "probe")

_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_loader = tornado.template.Loader(str(_TEMPLATES), autoescape="xhtml_escape")
_CSS = (_TEMPLATES / "status.css").read_text(encoding="utf-8")
_CSP = ("default-src 'none'; style-src 'sha256-"
        + base64.b64encode(hashlib.sha256(_CSS.encode("utf-8")).digest()).decode("ascii")
        + "'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


# -- sessions ----------------------------------------------------------------------
def _key(admin_token: str) -> bytes:
    # A key for this purpose only, derived from the token: neither a cookie nor a CSRF token
    # is a value that anything else computing an HMAC of the token would also produce.
    return hmac.new(admin_token.encode("utf-8"), b"tornado-proxy status page v1", hashlib.sha256).digest()


def _mac(admin_token: str, what: str) -> str:
    return hmac.new(_key(admin_token), what.encode("utf-8"), hashlib.sha256).hexdigest()


def new_session(admin_token: str, now: float) -> str:
    body = f"v1.{int(now)}.{os.urandom(12).hex()}"
    return f"{body}.{_mac(admin_token, 'session|' + body)}"


def session_valid(admin_token: str, value: str | None, now: float) -> bool:
    if not value or not admin_token:
        return False
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
        return False
    issued = int(parts[1])
    if not (now - SESSION_SECONDS <= issued <= now + 60):
        return False
    want = _mac(admin_token, "session|" + ".".join(parts[:3]))
    return hmac.compare_digest(parts[3].encode("ascii", "replace"), want.encode("ascii"))


def csrf_token(admin_token: str, session: str) -> str:
    return _mac(admin_token, "csrf|" + session)


# -- formatting helpers for the template -----------------------------------------------
def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def fmt_ago(wall: float | None, now: float) -> str:
    if not wall:
        return ""
    return fmt_duration(max(0.0, now - wall)) + " ago"


def fmt_number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,.2f}"


def quota_cells(acct: dict[str, Any]) -> list[str]:
    """'requests 45 of 100 (45%)' per limit the upstream reported."""
    out = []
    limits = acct.get("quota_limit") or {}
    for label, left in (acct.get("quota_remaining") or {}).items():
        total = limits.get(label)
        text = f"{label.replace('_', ' ')} {fmt_number(left)}"
        if total:
            text += f" of {fmt_number(total)} ({100.0 * left / total:.0f}%)"
        out.append(text)
    return out


def success_cell(acct: dict[str, Any]) -> tuple[str, str]:
    """(share of answers the account gave, the counts), or '—' before its first answer."""
    req = acct.get("requests") or {}
    total = sum(req.values())
    if not total:
        return "—", ""
    # a client_error is the request's fault: the account did answer
    good = req.get("success", 0) + req.get("client_error", 0)
    bad = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in req.items() if n and k not in ("success",))
    return f"{100.0 * good / total:.0f}%", f"{req.get('success', 0)} ok of {total}" + (f"; {bad}" if bad else "")


# -- handlers ------------------------------------------------------------------------
class StatusHandler(AdminHandler):
    """Shared by the page and its forms: who is asking (header, session, nobody), HTML errors."""

    route_name = "admin_status"

    def prepare(self) -> None:
        # Authentication is per method below: a GET without a session is a login form.
        self.security_headers()
        if not self.gw.admin_token:
            raise ProxyError(ErrorKind.FORBIDDEN, "the admin pages are off: set server.admin_token to use them")

    def security_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", _CSP)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")

    def header_auth(self) -> bool:
        """True for a good admin token in a header; raises for a wrong one; False without one."""
        h = self.request.headers
        if "Authorization" not in h and "X-Admin-Token" not in h:
            return False
        self.check_access()
        return True

    def session(self) -> str | None:
        value = self.get_cookie(COOKIE)
        return value if session_valid(self.gw.admin_token, value, time.time()) else None

    def form(self) -> dict[str, str]:
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise ProxyError(ErrorKind.INVALID_REQUEST, "expected a form (application/x-www-form-urlencoded)")
        try:
            pairs = urllib.parse.parse_qsl(self.request.body.decode("utf-8"), max_num_fields=16)
        except (UnicodeDecodeError, ValueError):
            raise ProxyError(ErrorKind.INVALID_REQUEST, "the form is not valid UTF-8 form data") from None
        return dict(pairs)

    def page(self, name: str, http_status: int = 200, **ns: Any) -> None:
        self.set_status(http_status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(_loader.load(name).generate(css=_CSS, version=__version__, **ns))

    def send_proxy_error(self, err: ProxyError) -> None:
        self.error_kind = err.kind
        self.clear()
        self.security_headers()
        if err.kind is ErrorKind.AUTH_MISSING and self.request.method == "GET":
            self.page("login.html", 401, message="")
            return
        self.page("error.html", err.status, code=err.status, message=err.message)


class StatusPageHandler(StatusHandler):
    def get(self) -> None:
        if not self.request.path.endswith("/"):
            self.redirect("admin/", status=301)  # the forms' relative URLs need the slash
            return
        session = None
        if not self.header_auth():
            session = self.session()
            if session is None:
                self.page("login.html", 401, message="")
                return
        refresh = self.get_query_argument("refresh", "")
        self.render_status(session, int(refresh) if refresh.isdigit() and 2 <= int(refresh) <= 3600 else 0)

    def render_status(self, session: str | None, refresh: int) -> None:
        gw = self.gw
        accounts = gw.scheduler.snapshot()
        by_provider: dict[str, list[dict[str, Any]]] = {}
        for a in accounts:
            by_provider.setdefault(a["provider"], []).append(a)
        providers = []
        for name, prov in gw.providers.items():
            mine = by_provider.get(name, [])
            states: dict[str, int] = {}
            for a in mine:
                states[a["state"]] = states.get(a["state"], 0) + 1
            providers.append({
                "name": name, "type": prov.conf.get("type", ""), "accounts": mine,
                "states": states, "usable": prov.local or gw.scheduler.usable(name),
                "local": prov.local, "inflight": sum(a["inflight"] for a in mine),
                "strategy": gw.scheduler.policy(name).strategy,
            })
        now = time.time()
        self.page("status.html", providers=providers, now=now, pid=os.getpid(),
                  uptime=fmt_duration(now - gw.started), active=gw.active_requests,
                  draining=gw.draining, refresh=refresh,
                  # header-authenticated scripts post without a CSRF token (no session to bind it to)
                  csrf=csrf_token(gw.admin_token, session) if session else "",
                  fmt_duration=fmt_duration, fmt_ago=fmt_ago, quota_cells=quota_cells,
                  success_cell=success_cell)


class StatusFormHandler(StatusHandler):
    def post(self, which: str) -> None:
        token = self.gw.admin_token
        f = self.form()
        if which == "login":
            given = f.get("token", "")
            if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8")):
                self.page("login.html", 401, message="That is not the admin token.")
                return
            # No Path: the browser scopes the cookie to this URL's directory, /admin, or
            # /prefix/admin behind a proxy that mounts the gateway under a prefix.
            self.set_cookie(COOKIE, new_session(token, time.time()), path="", httponly=True,
                            samesite="Strict", secure=self.request.protocol == "https",
                            max_age=SESSION_SECONDS)
            self.redirect("./", status=303)
            return
        if not self.header_auth():
            session = self.session()
            if session is None:
                raise ProxyError(ErrorKind.AUTH_INVALID, "not logged in, or the session expired: log in again")
            sent = f.get("csrf", "")
            if not hmac.compare_digest(sent.encode("utf-8", "surrogateescape"),
                                       csrf_token(token, session).encode("ascii")):
                raise ProxyError(ErrorKind.FORBIDDEN, "this form has no valid CSRF token: reload the page")
        if which == "logout":
            self.clear_cookie(COOKIE, path="", httponly=True, samesite="Strict",
                              secure=self.request.protocol == "https")
            self.redirect("./", status=303)
            return
        action, account_id = f.get("action", ""), f.get("account", "")
        if action not in ACTIONS:
            raise ProxyError(ErrorKind.INVALID_REQUEST, f"'action' must be one of {', '.join(ACTIONS)}",
                             param="action")
        self.one(account_id)  # 404 for an unknown id
        sched = self.gw.scheduler
        if action == "enable":
            sched.enable(account_id)
        elif action == "disable":
            sched.disable(account_id, f.get("reason", "").strip()[:200] or "disabled by an operator")
        else:
            sched.probe(account_id)
        self.redirect("./", status=303)


STATUS_ROUTES = (
    (r"/admin/?", StatusPageHandler, "/admin/",
     {"get": {"summary": "Status page (HTML): providers and accounts, with enable/disable/probe; "
                         "a login form without a session", "tags": ["admin"]}}),
    (r"/admin/(login|logout|action)", StatusFormHandler, "/admin/{form}",
     {"post": {"summary": "The status page's forms: login (admin token -> session cookie), logout, "
                          "action (enable/disable/probe an account; needs the page's CSRF token)",
               "tags": ["admin"]}}),
)
