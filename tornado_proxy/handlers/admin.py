"""The admin API: see and steer the accounts of a running gateway.

    GET  /admin/accounts                      every account, masked (never a key)
    GET  /admin/accounts/{id}                 one account
    POST /admin/accounts/{id}/enable          back to full traffic (clears the disable)
    POST /admin/accounts/{id}/disable         out of rotation; body {"reason": "..."} optional
    POST /admin/accounts/{id}/probe           end a cooldown or disable: the next request probes it

Protected by ``server.admin_token`` (``Authorization: Bearer <token>`` or
``X-Admin-Token``), *not* by the access keys: whoever may send prompts may not
switch accounts off.  Without an admin token the API answers 403 to everyone.
Enable and disable are written to the accounts file when there is one, so they
survive a restart and reach the other worker processes.
"""
from __future__ import annotations

import hmac
from typing import Any

from tornado_proxy import jsonutil

from tornado_proxy.observability import redact
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.handlers.base import BaseHandler


class AdminHandler(BaseHandler):
    route_name = "admin"

    def check_access(self) -> None:
        token = self.gw.admin_token
        if not token:
            raise ProxyError(ErrorKind.FORBIDDEN, "the admin API is off: set server.admin_token to use it")
        h = self.request.headers
        auth = h.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else h.get("X-Admin-Token", "")
        if not given:
            raise ProxyError(ErrorKind.AUTH_MISSING,
                             "missing admin token: send 'Authorization: Bearer <admin token>' or 'X-Admin-Token'")
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8")):
            raise ProxyError(ErrorKind.AUTH_INVALID, "invalid admin token")

    def send_json(self, obj: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        # Reasons and errors were scrubbed when recorded; this is the last look, for a
        # secret the scrubber learnt only later (a token rotated after its error).
        self.finish(redact.text(jsonutil.dumps(obj)).encode("utf-8"))

    def one(self, account_id: str) -> dict[str, Any]:
        for a in self.gw.scheduler.snapshot():
            if a["id"] == account_id:
                return a
        raise ProxyError(ErrorKind.NOT_FOUND, f"no account '{account_id}'")


class AdminAccountsHandler(AdminHandler):
    def get(self) -> None:
        self.send_json({"accounts": self.gw.scheduler.snapshot()})


class AdminAccountHandler(AdminHandler):
    def get(self, account_id: str) -> None:
        self.send_json({"account": self.one(account_id)})


class AdminAccountActionHandler(AdminHandler):
    def post(self, account_id: str, action: str) -> None:
        self.one(account_id)  # 404 for an unknown id
        sched = self.gw.scheduler
        if action == "enable":
            snap = sched.enable(account_id)
        elif action == "disable":
            reason = "disabled by an operator"
            if self.request.body:
                body = self.json_body()
                r = body.get("reason") if isinstance(body, dict) else None
                if r is not None and not isinstance(r, str):
                    raise ProxyError(ErrorKind.INVALID_REQUEST, "'reason' must be a string", param="reason")
                reason = r or reason
            snap = sched.disable(account_id, reason[:200])
        else:
            snap = sched.probe(account_id)
        self.send_json({"account": snap})


ADMIN_ROUTES = (
    (r"/admin/accounts", AdminAccountsHandler, "/admin/accounts",
     {"get": {"summary": "List accounts (masked) with state, cooldown, last error and usage", "tags": ["admin"]}}),
    (r"/admin/accounts/([^/]+)", AdminAccountHandler, "/admin/accounts/{id}",
     {"get": {"summary": "One account (masked)", "tags": ["admin"]}}),
    (r"/admin/accounts/([^/]+)/(enable|disable|probe)", AdminAccountActionHandler, "/admin/accounts/{id}/{action}",
     {"post": {"summary": "Enable, disable or probe an account", "tags": ["admin"]}}),
)
