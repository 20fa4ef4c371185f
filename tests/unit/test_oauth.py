"""OAuth refresh: the request and answer shapes (pure), and refreshes against a real
token endpoint on 127.0.0.1 that rotates single-use refresh tokens."""
from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import urllib.parse
from typing import Any

import pytest
import tornado.web
from tornado.httpserver import HTTPServer

from tests.e2e.harness import LoopThread
from tornado_proxy.accounts import oauth
from tornado_proxy.accounts.file import AccountsFile
from tornado_proxy.errors import ErrorKind, ProxyError, from_status
from tornado_proxy.accounts.scheduler import Scheduler

WALL = 1_717_000_000.0


class TokenServer:
    """A token endpoint that rotates refresh tokens: each one works exactly once.

    Like WorkOS and most OAuth servers with rotation, the access tokens it issued stay
    valid until they expire, so ``valid_access`` holds every one handed out.
    """

    def __init__(self, first_refresh: str = "rt-0", fmt: str = "form", delay: float = 0.0,
                 ttl: int = 3600, with_expires_in: bool = True) -> None:
        self.current = first_refresh
        self.fmt = fmt
        self.delay = delay
        self.ttl = ttl
        self.with_expires_in = with_expires_in
        self.calls = 0
        self.bodies: list[dict[str, Any]] = []
        self.valid_access: set[str] = {"at-initial"}
        self.fail_with: tuple[int, dict[str, Any]] | None = None
        self.port = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth/token"

    def app(self) -> tornado.web.Application:
        srv = self

        class H(tornado.web.RequestHandler):
            async def post(self) -> None:
                if srv.delay:
                    await asyncio.sleep(srv.delay)
                if self.request.headers.get("Content-Type", "").startswith("application/json"):
                    body = json.loads(self.request.body)
                else:
                    body = {k: v[0] for k, v in urllib.parse.parse_qs(self.request.body.decode()).items()}
                with srv._lock:
                    srv.calls += 1
                    srv.bodies.append(body)
                    if srv.fail_with is not None:
                        self.set_status(srv.fail_with[0])
                        self.finish(srv.fail_with[1])
                        return
                    if body.get("grant_type") != "refresh_token" or body.get("refresh_token") != srv.current:
                        self.set_status(400)
                        self.finish({"error": "invalid_grant", "error_description": "refresh token already used"})
                        return
                    n = int(srv.current.split("-")[1]) + 1
                    srv.current = f"rt-{n}"
                    access = f"at-{n}"
                    srv.valid_access.add(access)
                answer: dict[str, Any] = {"access_token": access, "refresh_token": srv.current,
                                          "token_type": "Bearer"}
                if srv.with_expires_in:
                    answer["expires_in"] = srv.ttl
                self.finish(answer)

        return tornado.web.Application([(r"/oauth/token", H)])

    def start(self, lt: LoopThread) -> "TokenServer":
        async def go() -> None:
            server = HTTPServer(self.app())
            server.listen(0, "127.0.0.1")
            self.port = next(iter(server._sockets.values())).getsockname()[1]
            lt._cleanups.append(server.stop)
        lt.run(go())
        return self


def jwt(claims: dict[str, Any]) -> str:
    def b64(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{b64({'alg': 'RS256'})}.{b64(claims)}.c2ln"


FORM = oauth.OAuthConfig(token_url="https://auth.example/oauth/token", client_id="client-1")
JSONF = oauth.OAuthConfig(token_url="https://auth.example/user_management/authenticate", client_id="client_01",
                          format="json")


# -- the request -----------------------------------------------------------------------------
@pytest.mark.parametrize("name,conf,env,headers,body", [
    ("form grant (RFC 6749 6)", FORM, {}, {"Content-Type": "application/x-www-form-urlencoded"},
     "grant_type=refresh_token&refresh_token=rt-secret&client_id=client-1"),
    ("json grant (WorkOS-style)", JSONF, {}, {"Content-Type": "application/json"},
     {"grant_type": "refresh_token", "refresh_token": "rt-secret", "client_id": "client_01"}),
    ("scope, secret from env, extra fields",
     oauth.OAuthConfig(token_url="https://a/t", client_id="c", format="json", client_secret_env="TP_TEST_SECRET",
                       scope="openid offline_access", extra={"organization_id": "org_1"}),
     {"TP_TEST_SECRET": "test-client-secret"}, {"Content-Type": "application/json"},
     {"grant_type": "refresh_token", "refresh_token": "rt-secret", "client_id": "c",
      "client_secret": "test-client-secret", "scope": "openid offline_access", "organization_id": "org_1"}),
])
def test_build_request(monkeypatch, name, conf, env, headers, body):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    h, b = oauth.build_request(conf, "rt-secret")
    assert h["Content-Type"] == headers["Content-Type"]
    assert (json.loads(b) if isinstance(body, dict) else b.decode()) == body


def test_missing_client_secret_env_is_an_error(monkeypatch):
    monkeypatch.delenv("TP_TEST_NOPE", raising=False)
    conf = oauth.OAuthConfig(token_url="https://a/t", client_id="c", client_secret_env="TP_TEST_NOPE")
    with pytest.raises(oauth.RefreshError, match="TP_TEST_NOPE"):
        oauth.build_request(conf, "rt")


# -- the answer --------------------------------------------------------------------------------
@pytest.mark.parametrize("name,status,body,expected", [
    ("rotated, expires_in", 200, {"access_token": "at-1", "refresh_token": "rt-1", "expires_in": 3600},
     ("at-1", "rt-1", WALL + 3600)),
    ("not rotated: the old refresh token stays", 200, {"access_token": "at-1", "expires_in": "60"},
     ("at-1", "rt-old", WALL + 60)),
    ("WorkOS: no expires_in, JWT exp", 200, {"access_token": jwt({"exp": WALL + 300, "sub": "u"}),
                                            "refresh_token": "rt-2", "user": {"id": "u"}},
     (jwt({"exp": WALL + 300, "sub": "u"}), "rt-2", WALL + 300)),
    ("no expiry anywhere: token_ttl", 200, {"access_token": "opaque", "refresh_token": "rt-3"},
     ("opaque", "rt-3", WALL + 3600)),
])
def test_parse_response(name, status, body, expected):
    ts = oauth.parse_response(FORM, status, json.dumps(body).encode(), "rt-old", WALL)
    assert (ts.access_token, ts.refresh_token, ts.expires_at) == expected


@pytest.mark.parametrize("name,status,body,dead,text", [
    ("invalid_grant is final", 400, b'{"error":"invalid_grant","error_description":"Refresh token revoked"}',
     True, "400 invalid_grant: Refresh token revoked"),
    ("invalid_client is final", 401, b'{"error":"invalid_client"}', True, "401 invalid_client"),
    ("a 500 is worth another try", 500, b"upstream exploded", False, "token endpoint answered 500"),
    ("a 429 is worth another try", 429, b'{"error":"slow_down"}', False, "429 slow_down"),
    ("200 without a token", 200, b'{"token_type":"Bearer"}', False, "without an access_token"),
])
def test_parse_response_errors(name, status, body, dead, text):
    with pytest.raises(oauth.RefreshError) as e:
        oauth.parse_response(FORM, status, body, "rt-old", WALL)
    assert e.value.dead is dead and text in e.value.message
    assert "rt-old" not in e.value.message


# -- against a real endpoint ------------------------------------------------------------------------
@pytest.fixture
def lt(harness):
    return harness


@pytest.mark.parametrize("fmt", ["form", "json"])
def test_refresh_against_a_rotating_endpoint(lt, fmt):
    srv = TokenServer(fmt=fmt).start(lt)
    conf = oauth.OAuthConfig(token_url=srv.url, client_id="client-1", format=fmt)
    ts = lt.run(oauth.refresh(conf, "rt-0", WALL))
    assert (ts.access_token, ts.refresh_token, ts.expires_at) == ("at-1", "rt-1", WALL + 3600)
    with pytest.raises(oauth.RefreshError) as e:  # single use
        lt.run(oauth.refresh(conf, "rt-0", WALL))
    assert e.value.dead
    assert srv.bodies[0] == {"grant_type": "refresh_token", "refresh_token": "rt-0", "client_id": "client-1"}


def test_unreachable_endpoint_is_not_final(lt):
    conf = oauth.OAuthConfig(token_url="http://127.0.0.1:1/token", client_id="c", timeout=2)
    with pytest.raises(oauth.RefreshError) as e:
        lt.run(oauth.refresh(conf, "rt-0", WALL))
    assert not e.value.dead and "unreachable" in e.value.message


# -- the scheduler's OAuth accounts -------------------------------------------------------------------
def oauth_setup(lt, tmp_path, *, expires_in: float, srv: TokenServer | None = None, refresh_ahead: float = 300,
                extra_accounts=()):
    srv = srv or TokenServer().start(lt)
    path = tmp_path / "accounts.json"
    entry = {"id": "o1", "provider": "p", "refresh_token": "rt-0", "access_token": "at-initial",
             "expires_at": time.time() + expires_in}
    AccountsFile(str(path)).modify(lambda doc: doc["accounts"].extend([entry, *extra_accounts]))
    conf = [{"name": "p", "accounts": [], "scheduler": {
        "oauth": {"token_url": srv.url, "client_id": "client-1", "refresh_ahead": refresh_ahead}}}]
    sched = lt.call(lambda: Scheduler(conf, accounts_file=str(path)))
    return sched, srv, path


def prepared(lt, sched, headers=None):
    async def go():
        lease = sched.acquire("p", headers=headers)
        try:
            await lease.prepare()
            return lease.account.api_key
        finally:
            lease.release()
    return lt.run(go())


def file_entry(path, account_id="o1"):
    return next(a for a in json.loads(path.read_text())["accounts"] if a["id"] == account_id)


def test_a_fresh_token_is_used_as_is(lt, tmp_path):
    sched, srv, _ = oauth_setup(lt, tmp_path, expires_in=3600)
    assert prepared(lt, sched) == "at-initial"
    assert srv.calls == 0


def test_refresh_ahead_of_expiry_saves_the_rotated_token_at_once(lt, tmp_path):
    sched, srv, path = oauth_setup(lt, tmp_path, expires_in=100)  # inside the 300 s refresh-ahead window
    assert prepared(lt, sched) == "at-1"
    e = file_entry(path)
    assert (e["access_token"], e["refresh_token"]) == ("at-1", "rt-1")
    assert e["expires_at"] == pytest.approx(time.time() + 3600, abs=5)
    assert prepared(lt, sched) == "at-1" and srv.calls == 1
    snap = lt.call(sched.snapshot)[0]
    assert snap["refresh"] == {"ok": 1, "failed": 0} and snap["credential"] == "oauth"
    assert "rt-1" not in json.dumps(snap) and "at-1" not in json.dumps(snap)


def test_a_401_refreshes_before_the_next_request(lt, tmp_path):
    sched, srv, path = oauth_setup(lt, tmp_path, expires_in=3600)

    async def go():
        lease = sched.acquire("p")
        await lease.prepare()
        lease.failure(from_status(401, "token expired"))
        lease.release()
    lt.run(go())
    assert srv.calls == 0
    assert prepared(lt, sched) == "at-1" and srv.calls == 1


def test_concurrent_requests_share_one_refresh(lt, tmp_path):
    srv = TokenServer(delay=0.2).start(lt)
    sched, srv, path = oauth_setup(lt, tmp_path, expires_in=-10, srv=srv)

    async def go():
        async def one():
            lease = sched.acquire("p")
            try:
                await lease.prepare()
                return lease.account.api_key
            finally:
                lease.release()
        return await asyncio.gather(*(one() for _ in range(5)))
    assert lt.run(go()) == ["at-1"] * 5
    assert srv.calls == 1


def test_a_rejected_refresh_token_disables_the_account_and_says_why(lt, tmp_path):
    srv = TokenServer(first_refresh="rt-7").start(lt)  # the file's rt-0 is stale
    sched, srv, path = oauth_setup(lt, tmp_path, expires_in=-10, srv=srv)
    with pytest.raises(ProxyError) as e:
        prepared(lt, sched)
    assert e.value.kind is ErrorKind.UPSTREAM_AUTH
    snap = lt.call(sched.snapshot)[0]
    assert snap["state"] == "disabled" and "invalid_grant" in snap["disabled_reason"]
    assert snap["refresh"] == {"ok": 0, "failed": 1}
    deadline = time.time() + 3  # written by the writer thread
    while not file_entry(path).get("disabled") and time.time() < deadline:
        time.sleep(0.02)
    assert file_entry(path)["disabled"] is True


@pytest.mark.parametrize("name,expires_in,expect_error", [
    ("token still valid: keep serving on it", 100, False),
    ("token expired: fail over", -10, True),
])
def test_endpoint_down(lt, tmp_path, name, expires_in, expect_error):
    srv = TokenServer().start(lt)
    srv.fail_with = (503, {"error": "temporarily_unavailable"})
    sched, srv, path = oauth_setup(lt, tmp_path, expires_in=expires_in, srv=srv)
    if expect_error:
        with pytest.raises(ProxyError) as e:
            prepared(lt, sched)
        assert e.value.kind is ErrorKind.UPSTREAM_UNREACHABLE and e.value.info.retryable
        assert lt.call(sched.snapshot)[0]["state"] == "active"  # not the account's fault
    else:
        assert prepared(lt, sched) == "at-initial"
    assert lt.call(sched.snapshot)[0]["refresh"]["failed"] == 1


def test_another_process_rotated_token_is_picked_up(lt, tmp_path):
    sched, srv, path = oauth_setup(lt, tmp_path, expires_in=3600)
    assert prepared(lt, sched) == "at-initial"
    # another worker refreshed and saved: we must use its token, not spend rt-0 again
    AccountsFile(str(path)).save_tokens("o1", "at-9", "rt-9", time.time() + 3600)
    sched._next_poll = 0  # the next poll is due
    assert prepared(lt, sched) == "at-9"
    assert srv.calls == 0


def test_tokens_taken_from_a_poll_while_waiting_for_the_lock_are_not_refreshed_again(lt, tmp_path):
    # The Redis-workers flake: worker A waited for the refresh lock while worker B
    # rotated; A's poll of the file took B's tokens meanwhile, so under the lock the
    # file told A nothing new, and A refreshed the fresh tokens again.
    sched, srv, path = oauth_setup(lt, tmp_path, expires_in=100)  # due for a refresh

    async def go():
        other = AccountsFile(str(path))
        async with other.refresh_lock("o1"):  # another process is refreshing
            lease = sched.acquire("p")
            task = asyncio.ensure_future(lease.prepare())
            await asyncio.sleep(0.2)
            assert not task.done()  # waiting for the lock
            other.save_tokens("o1", "at-9", "rt-9", time.time() + 3600)
            sched._next_poll = 0
            sched.acquire("p").release()  # a poll of the file: we hold rt-9 now
        await asyncio.wait_for(task, 5)
        lease.release()
        return lease.account.api_key

    assert lt.run(go()) == "at-9"
    assert srv.calls == 0
    assert file_entry(path)["refresh_token"] == "rt-9"


def test_invalid_grant_for_a_token_rotated_elsewhere_takes_the_newer_one(lt, tmp_path):
    # Our refresh token was spent by another holder, which saved its rotation to the
    # file after we read it: that is not a dead account.
    srv = TokenServer(first_refresh="rt-5").start(lt)
    sched, _, path = oauth_setup(lt, tmp_path, expires_in=100, srv=srv)  # holds rt-0, which the server refuses

    real = oauth.refresh

    async def refresh_after_rotation(conf, token, wall, proxy=None):
        AccountsFile(str(path)).save_tokens("o1", "at-5", "rt-5", time.time() + 3600)
        return await real(conf, token, wall, proxy)

    oauth.refresh = refresh_after_rotation
    try:
        assert prepared(lt, sched) == "at-5"
    finally:
        oauth.refresh = real
    assert [b["refresh_token"] for b in srv.bodies] == ["rt-0"]
    snap = lt.call(sched.snapshot)[0]
    assert snap["state"] == "active", snap
    assert file_entry(path)["refresh_token"] == "rt-5"


def test_invalid_grant_with_no_newer_token_anywhere_still_disables(lt, tmp_path):
    srv = TokenServer(first_refresh="rt-5").start(lt)
    sched, _, path = oauth_setup(lt, tmp_path, expires_in=1, srv=srv)
    with pytest.raises(ProxyError):
        prepared(lt, sched)
    snap = lt.call(sched.snapshot)[0]
    assert snap["state"] == "disabled" and "invalid_grant" in snap["disabled_reason"]
