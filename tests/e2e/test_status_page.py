"""The admin status page (GET /admin/): login, session cookie, CSRF-checked actions, escaping.

Plain HTTP first (http.client, redirects not followed, cookies by hand), then a real
headless Chromium that logs in, reads the page and clicks "Disable", and a forged
cross-page form that the gateway refuses.
"""
from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from typing import Any

import openai
import pytest

from tests.e2e.harness import FakeUpstream, LoopThread, Reply, fixture_bytes, openai_provider, simple_config
from tornado_proxy.config import schema_dir

ADMIN = "status-admin-token-0123456789"
KEY_1 = "sk-test-status-key-aaaa1111"
KEY_2 = "sk-test-status-key-bbbb2222"
# An account id that is also markup: the page must show it as text.
XSS_ID = "x\"><img src=x onerror=\"document.title='pwned'\">"


def gateway(harness: LoopThread, up: FakeUpstream, admin_token: str = ADMIN, extra_accounts: list[Any] = (),
            **server: Any) -> Any:
    accounts = [{"id": "acct-1", "api_key": KEY_1}, {"id": "acct-2", "api_key": KEY_2}, *extra_accounts]
    prov = openai_provider(up, accounts=accounts, timeouts={"connect": 2, "first_byte": 5, "idle": 5},
                           scheduler={"strategy": "round_robin", "max_tries": 1})
    return harness.gateway(simple_config([prov], [{"id": "m", "provider": "up", "upstream_model": "gpt-4o-mini"}],
                                         admin_token=admin_token, **server))


def call(gw: Any, method: str, path: str, form: dict[str, str] | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, str]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    h = dict(headers or {})
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        h["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    text = r.read().decode("utf-8")
    conn.close()
    return r.status, r.headers, text


def login(gw: Any, token: str = ADMIN, headers: dict[str, str] | None = None) -> tuple[str, str]:
    """-> (the Set-Cookie header, the cookie pair to send back)."""
    status, h, _ = call(gw, "POST", "/admin/login", {"token": token}, headers)
    assert status == 303, status
    assert h["Location"] == "./"
    set_cookie = h["Set-Cookie"]
    return set_cookie, set_cookie.split(";", 1)[0]


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert m, "no CSRF token in the page"
    return m.group(1)


def account(gw: Any, account_id: str) -> dict[str, Any]:
    """The account as the admin JSON API shows it."""
    path = "/admin/accounts/" + urllib.parse.quote(account_id, safe="")
    status, _, body = call(gw, "GET", path, headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 200, body
    return dict(json.loads(body)["account"])


def account_row(page: str, account_id: str) -> str:
    start = page.index(f'<tr data-account="{account_id}"')
    return page[start:page.index("</tr>", start)]


# -- authentication -----------------------------------------------------------------
def test_without_a_session_the_page_is_a_login_form(harness: LoopThread) -> None:
    gw = gateway(harness, harness.upstream())
    status, h, body = call(gw, "GET", "/admin/")
    assert status == 401
    assert h["Content-Type"].startswith("text/html")
    assert 'name="token"' in body and 'action="login"' in body
    assert "acct-1" not in body  # nothing about the accounts before a login
    assert h["Cache-Control"] == "no-store"
    assert "script-src" not in h["Content-Security-Policy"] and "default-src 'none'" in h["Content-Security-Policy"]
    # /admin without the slash: to the page, whose forms post to relative URLs
    status, h, _ = call(gw, "GET", "/admin")
    assert status == 301 and h["Location"] == "admin/"


def test_wrong_token_is_refused_and_gets_no_cookie(harness: LoopThread) -> None:
    gw = gateway(harness, harness.upstream())
    status, h, body = call(gw, "POST", "/admin/login", {"token": ADMIN + "x"})
    assert status == 401
    assert h.get("Set-Cookie") is None
    assert "That is not the admin token." in body
    status, _, _ = call(gw, "POST", "/admin/login", {"token": ""})
    assert status == 401
    # a wrong token in a header is refused too (scripts)
    status, _, body = call(gw, "GET", "/admin/", headers={"Authorization": "Bearer nope"})
    assert status == 401 and "acct-1" not in body


def test_login_sets_a_signed_http_only_strict_cookie(harness: LoopThread) -> None:
    gw = gateway(harness, harness.upstream())
    set_cookie, cookie = login(gw)
    attrs = [a.strip().lower() for a in set_cookie.split(";")]
    assert "httponly" in attrs and "samesite=strict" in attrs
    # no Path: browsers then scope it to /admin, the directory of /admin/login (RFC 6265 5.1.4)
    assert not any(a.startswith("path=") for a in attrs)
    assert "secure" not in attrs  # plain http: a Secure cookie would never come back
    assert any(a.startswith("max-age=") for a in attrs)
    value = cookie.split("=", 1)[1]
    assert ADMIN not in value and ADMIN[-8:] not in value  # a signature, never the token
    status, _, page = call(gw, "GET", "/admin/", headers={"Cookie": cookie})
    assert status == 200
    assert 'data-account="acct-1"' in page and 'data-account="acct-2"' in page


def test_the_cookie_is_secure_behind_an_https_proxy(harness: LoopThread) -> None:
    # X-Forwarded-Proto counts only from a trusted proxy where the config has that notion.
    server_props = json.loads((schema_dir() / "config.schema.json").read_text())["$defs"]["server"]["properties"]
    extra = {"trusted_proxies": ["127.0.0.1"]} if "trusted_proxies" in server_props else {}
    gw = gateway(harness, harness.upstream(), **extra)
    set_cookie, _ = login(gw, headers={"X-Forwarded-Proto": "https"})
    assert "secure" in [a.strip().lower() for a in set_cookie.split(";")]


def test_a_tampered_or_foreign_cookie_is_no_session(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = gateway(harness, up)
    _, cookie = login(gw)
    name, value = cookie.split("=", 1)
    forged = value[:-1] + ("0" if value[-1] != "0" else "1")
    status, _, body = call(gw, "GET", "/admin/", headers={"Cookie": f"{name}={forged}"})
    assert status == 401 and 'name="token"' in body
    # the same session on a gateway with another admin token: a rotated token ends sessions
    other = gateway(harness, up, admin_token=ADMIN + "-rotated")
    status, _, _ = call(other, "GET", "/admin/", headers={"Cookie": cookie})
    assert status == 401


def test_scripts_may_use_the_admin_token_header(harness: LoopThread) -> None:
    gw = gateway(harness, harness.upstream())
    for h in ({"Authorization": f"Bearer {ADMIN}"}, {"X-Admin-Token": ADMIN}):
        status, _, page = call(gw, "GET", "/admin/", headers=h)
        assert status == 200 and 'data-account="acct-2"' in page
    # and post an action without a CSRF token: a cross-site form cannot set a header
    status, _, _ = call(gw, "POST", "/admin/action", {"account": "acct-2", "action": "disable"},
                        headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 303
    assert account(gw, "acct-2")["state"] == "disabled"


def test_without_an_admin_token_the_page_is_off(harness: LoopThread) -> None:
    gw = gateway(harness, harness.upstream(), admin_token="")
    status, h, body = call(gw, "GET", "/admin/")
    assert status == 403 and h["Content-Type"].startswith("text/html")
    assert "admin_token" in body
    status, _, _ = call(gw, "POST", "/admin/login", {"token": ""})
    assert status == 403


# -- actions and CSRF ------------------------------------------------------------------
def test_actions_need_the_sessions_csrf_token(harness: LoopThread) -> None:
    gw = gateway(harness, harness.upstream())
    _, cookie = login(gw)
    _, _, page = call(gw, "GET", "/admin/", headers={"Cookie": cookie})
    csrf = csrf_of(page)
    _, cookie_b = login(gw)  # another browser's session
    _, _, page_b = call(gw, "GET", "/admin/", headers={"Cookie": cookie_b})
    csrf_b = csrf_of(page_b)
    assert csrf != csrf_b

    form = {"account": "acct-1", "action": "disable", "reason": "forged"}
    flipped = csrf[:-1] + ("1" if csrf[-1] == "0" else "0")
    for sent in ({}, {"csrf": ""}, {"csrf": csrf_b}, {"csrf": flipped}):
        status, _, body = call(gw, "POST", "/admin/action", {**form, **sent}, headers={"Cookie": cookie})
        assert status == 403, (sent, status)
        assert "CSRF" in body
    # no session at all: not logged in
    status, _, _ = call(gw, "POST", "/admin/action", {**form, "csrf": csrf})
    assert status == 401
    assert account(gw, "acct-1")["state"] == "active"

    status, h, _ = call(gw, "POST", "/admin/action", {**form, "reason": "maintenance", "csrf": csrf},
                        headers={"Cookie": cookie})
    assert status == 303 and h["Location"] == "./"
    a = account(gw, "acct-1")
    assert a["state"] == "disabled" and a["disabled_reason"] == "maintenance"
    for action in ("probe", "enable"):
        status, _, _ = call(gw, "POST", "/admin/action", {"account": "acct-1", "action": action, "csrf": csrf},
                            headers={"Cookie": cookie})
        assert status == 303
    assert account(gw, "acct-1")["state"] == "active"

    status, h, body = call(gw, "POST", "/admin/action", {"account": "nope<b>", "action": "disable", "csrf": csrf},
                           headers={"Cookie": cookie})
    assert status == 404 and "nope&lt;b&gt;" in body and "nope<b>" not in body
    assert h["Content-Type"].startswith("text/html") and "default-src 'none'" in h["Content-Security-Policy"]
    status, _, _ = call(gw, "POST", "/admin/action", {"account": "acct-1", "action": "delete", "csrf": csrf},
                        headers={"Cookie": cookie})
    assert status == 400


def test_logout_needs_csrf_and_clears_the_cookie(harness: LoopThread) -> None:
    gw = gateway(harness, harness.upstream())
    _, cookie = login(gw)
    _, _, page = call(gw, "GET", "/admin/", headers={"Cookie": cookie})
    status, _, _ = call(gw, "POST", "/admin/logout", {}, headers={"Cookie": cookie})
    assert status == 403
    status, h, _ = call(gw, "POST", "/admin/logout", {"csrf": csrf_of(page)}, headers={"Cookie": cookie})
    assert status == 303
    cleared = h["Set-Cookie"]
    assert cleared.startswith("tornado_proxy_admin=;") or 'tornado_proxy_admin="";' in cleared
    assert "expires=" in cleared.lower() or "max-age=0" in cleared.lower()


# -- what the page shows ---------------------------------------------------------------
def test_page_shows_state_errors_quota_and_never_a_key(harness: LoopThread) -> None:
    up = harness.upstream()
    gw = gateway(harness, up, extra_accounts=[{"id": XSS_ID, "api_key": "sk-test-status-key-cccc3333"}])
    ok = Reply(200, {"Content-Type": "application/json", "x-ratelimit-limit-requests": "100",
                     "x-ratelimit-remaining-requests": "45"}, fixture_bytes("openai/text.json"))
    broken = Reply.json({"error": {"message": "upstream <b>exploded</b>", "type": "server_error"}}, status=500)
    limited = Reply.json({"error": {"message": "Rate limit reached", "type": "requests"}}, status=429,
                         headers={"retry-after": "120"})
    up.push(ok, broken, limited)  # round robin: acct-1, acct-2, then the third account
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=20)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    for _ in range(2):
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

    status, _, page = call(gw, "GET", "/admin/", headers={"Authorization": f"Bearer {ADMIN}"})
    assert status == 200
    for key in (KEY_1, KEY_2, "sk-test-status-key-cccc3333"):
        assert key not in page and key[:-4] not in page
    row1 = account_row(page, "acct-1")
    assert "****1111" in row1
    assert "requests 45 of 100 (45%)" in row1  # quota headroom from the rate-limit headers
    assert "100%" in row1 and "1 ok of 1" in row1
    row2 = account_row(page, "acct-2")
    assert "upstream &lt;b&gt;exploded&lt;/b&gt;" in row2 and "<b>exploded" not in row2
    assert "HTTP 500" in row2 and "0%" in row2
    assert "Quota" not in row2 and row2.count("—") >= 2  # no quota, no latency yet: "—"
    # the markup-shaped account id is text, in the cell and in the form's hidden field
    escaped = "x&quot;&gt;&lt;img src=x onerror=&quot;document.title=&#x27;pwned&#x27;&quot;&gt;"
    row3 = account_row(page, escaped)
    assert 'data-state="cooling"' in row3 and "left" in row3 and "retry-after" in row3
    assert "<img" not in page
    assert f'name="account" value="{escaped}"' in page
    # the JSON API has the limit too
    assert account(gw, "acct-1")["quota_limit"] == {"requests": 100.0}


# -- a real browser ----------------------------------------------------------------------
@pytest.fixture
def browser(harness: LoopThread) -> Any:
    from tests.e2e.cdp import launch_or_skip

    b = launch_or_skip(harness)
    try:
        yield b
    finally:
        b.close()


def test_in_a_browser_login_read_and_disable(harness: LoopThread, browser: Any) -> None:
    up = harness.upstream()
    gw = gateway(harness, up, extra_accounts=[{"id": XSS_ID, "api_key": "sk-test-status-key-cccc3333"}])
    page = browser.new_page()
    page.goto(gw.url + "/admin/")
    assert page.eval("document.querySelector('#token') !== null")
    assert page.last_status("/admin/") == 401

    page.type("#token", "not-the-token")
    page.click("#login")
    page.wait_for("document.body.innerText.includes('That is not the admin token.')")
    assert browser.cookies() == []

    page.type("#token", ADMIN)
    page.click("#login")
    page.wait_for("document.querySelector('tr[data-account=\"acct-2\"]') !== null")
    assert page.eval("location.pathname") == "/admin/"
    text = page.text()
    assert "acct-1" in text and "acct-2" in text and "****2222" in text and KEY_2 not in text
    # the markup-shaped id is shown as text: no element made of it, no script run
    assert XSS_ID in text
    assert page.eval("document.querySelectorAll('img').length") == 0
    assert page.eval("document.title") != "pwned"
    (cookie,) = browser.cookies()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and ADMIN not in cookie["value"]
    assert cookie["path"] == "/admin" and cookie["secure"] is False
    assert page.eval("document.cookie") == ""  # HttpOnly: scripts cannot read the session

    row = 'tr[data-account="acct-2"]'
    page.type(f"{row} input[name=reason]", "maintenance <b>window</b>")
    page.click(f"{row} button.act-disable")
    page.wait_for(f"document.querySelector('{row}') && document.querySelector('{row}').dataset.state === 'disabled'")
    a = account(gw, "acct-2")
    assert a["state"] == "disabled" and a["disabled_reason"] == "maintenance <b>window</b>"
    assert "maintenance <b>window</b>" in page.text(row)
    assert page.eval(f"document.querySelector('{row} b')") is None
    assert account(gw, "acct-1")["state"] == "active"

    # A page elsewhere (the fake upstream's origin) with a form aimed at the gateway: the
    # browser sends the session cookie with it (same site), but there is no CSRF token.
    evil = (f'<!DOCTYPE html><form method="post" action="{gw.url}/admin/action">'
            '<input type="hidden" name="account" value="acct-1">'
            '<input type="hidden" name="action" value="disable">'
            '<button id="go" type="submit">Win a prize</button></form>').encode()
    up.push(Reply(200, {"Content-Type": "text/html"}, evil))
    page.goto(up.url + "/evil")
    page.click("#go")
    page.wait_for("location.pathname === '/admin/action' && document.readyState === 'complete'")
    assert page.last_status("/admin/action") == 403
    assert "CSRF" in page.text()
    assert account(gw, "acct-1")["state"] == "active"

    # enable again from the page
    page.goto(gw.url + "/admin/")
    page.click(f"{row} button.act-enable")
    page.wait_for(f"document.querySelector('{row}') && document.querySelector('{row}').dataset.state === 'active'")
    assert account(gw, "acct-2")["state"] == "active"
