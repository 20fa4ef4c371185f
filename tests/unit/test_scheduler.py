"""The account scheduler against an injected clock: no sleeps, no network."""
from __future__ import annotations

import collections
import datetime
import email.utils
import json

import pytest

from tornado_proxy.errors import ErrorKind, ProxyError, from_status
from tornado_proxy.accounts.check import check_config
from tornado_proxy.accounts.leases import proxy_for_id
from tornado_proxy.accounts.policy import parse_policy
from tornado_proxy.accounts.ratelimit import parse_duration, parse_reset, until_midnight
from tornado_proxy.accounts.scheduler import Scheduler

# 2024-06-01 12:00:00 in Los Angeles (PDT, UTC-7): 12 hours before Google's daily quota reset
WALL0 = datetime.datetime(2024, 6, 1, 19, 0, 0, tzinfo=datetime.timezone.utc).timestamp()


class Clock:
    """Monotonic and wall clocks that move together, by hand."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = WALL0

    def __call__(self) -> float:
        return self.mono

    def now_wall(self) -> float:
        return self.wall

    def advance(self, s: float) -> None:
        self.mono += s
        self.wall += s


def make(accounts, scheduler=None, clock=None, proxy=None, upstream="openai"):
    """A scheduler with one provider "p" of type ``upstream`` (whose rate-limit headers it reads)."""
    clock = clock or Clock()
    conf = {"name": "p", "type": upstream, "accounts": accounts, "scheduler": scheduler or {}}
    if proxy:
        conf["proxy"] = proxy
    return Scheduler([conf], clock=clock, wall_clock=clock.now_wall), clock


def keys(*ids, **weights):
    return [{"id": i, "api_key": f"test-key-{i}-0123456789", "weight": weights.get(i, 1)} for i in ids]


def pick(sched, headers=None, exclude=()):
    lease = sched.acquire("p", headers=headers, exclude=exclude)
    lease.release()
    return lease.account.id


def err429(headers=None, retry_after=None, message="rate limited"):
    return from_status(429, message, headers=headers or {}, retry_after=retry_after)


def fail(sched, account_id, err):
    lease = sched.acquire("p", headers={"x-auth-id": account_id})
    assert lease.account.id == account_id
    lease.failure(err)
    lease.release()


def state(sched, account_id):
    return next(s for s in sched.snapshot() if s["id"] == account_id)


# -- pure parsers -------------------------------------------------------------------------
@pytest.mark.parametrize("name,text,expected", [
    ("minutes and seconds", "6m0s", 360.0),
    ("fractional seconds", "1.5s", 1.5),
    ("milliseconds", "20ms", 0.02),
    ("hours minutes seconds", "1h2m3.5s", 3723.5),
    ("zero", "0s", 0.0),
    ("bare seconds", "30", 30.0),
    ("microseconds", "250us", 0.00025),
    ("garbage", "soon", None),
    ("empty", "", None),
    ("unit without number", "ms", None),
])
def test_parse_duration(name, text, expected):
    got = parse_duration(text)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize("name,value,expected", [
    ("go duration", "6m0s", 360.0),
    ("rfc3339 Z", "2024-06-01T19:00:45Z", 45.0),
    ("rfc3339 offset + fraction", "2024-06-01T12:01:00.500-07:00", 60.5),
    ("rfc3339 in the past", "2024-06-01T18:00:00Z", 0.0),
    ("epoch seconds", str(int(WALL0) + 90), 90.0),
    ("epoch milliseconds", str(int(WALL0 * 1000) + 2500), 2.5),
    ("bad", "tomorrow-ish T", None),
])
def test_parse_reset(name, value, expected):
    got = parse_reset(value, WALL0)
    assert got == (pytest.approx(expected) if expected is not None else None)


# -- cooldowns from each header kind ------------------------------------------------------
HTTP_DATE = email.utils.formatdate(WALL0 + 120, usegmt=True)
GEMINI_DAILY = ("You exceeded your current quota. Quota exceeded for metric: "
                "generativelanguage.googleapis.com/generate_content_free_tier_requests, "
                "quotaId: GenerateRequestsPerDayPerProjectPerModel-FreeTier")


@pytest.mark.parametrize("name,status,headers,retry_after,message,expected", [
    ("retry-after seconds", 429, {"retry-after": "30"}, None, "slow down", 30.0),
    ("retry-after http date", 429, {"retry-after": HTTP_DATE}, None, "slow down", 120.0),
    ("retry-after-ms", 429, {"retry-after-ms": "1500"}, None, "slow down", 1.5),
    ("openai requests spent", 429, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s",
                                    "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "1.5s"},
     None, "slow down", 360.0),
    ("openai tokens spent", 429, {"x-ratelimit-remaining-requests": "10", "x-ratelimit-reset-requests": "6m0s",
                                  "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.5s"},
     None, "slow down", 1.5),
    ("openai milliseconds", 429, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"},
     None, "slow down", 0.02),
    ("openai, none marked spent: the latest", 429, {"x-ratelimit-reset-requests": "2s",
                                                    "x-ratelimit-reset-tokens": "7s"}, None, "slow down", 7.0),
    ("anthropic tokens rfc3339", 429, {"anthropic-ratelimit-tokens-remaining": "0",
                                       "anthropic-ratelimit-tokens-reset": "2024-06-01T19:00:45Z",
                                       "anthropic-ratelimit-requests-remaining": "40",
                                       "anthropic-ratelimit-requests-reset": "2024-06-01T19:00:05Z"},
     None, "slow down", 45.0),
    ("anthropic input tokens", 429, {"anthropic-ratelimit-input-tokens-remaining": "0",
                                     "anthropic-ratelimit-input-tokens-reset": "2024-06-01T19:01:00Z"},
     None, "slow down", 60.0),
    ("retry-after wins over resets", 429, {"retry-after": "9", "x-ratelimit-remaining-requests": "0",
                                           "x-ratelimit-reset-requests": "6m0s"}, None, "slow down", 9.0),
    ("gemini RetryInfo, parsed by the provider", 429, {}, 17.5, "Resource exhausted", 17.5),
    ("gemini per-day quota: until midnight Pacific", 429, {}, 39.0, GEMINI_DAILY, 12 * 3600.0),
    ("anthropic 529, nothing said: backoff", 529, {}, None, "Overloaded", 1.0),
    ("429, nothing said: backoff", 429, {}, None, "slow down", 1.0),
])
def test_cooldown_follows_the_upstream(name, status, headers, retry_after, message, expected):
    # each vendor's headers on an upstream of its type: a provider reads its own family
    upstream = next((t for t in ("anthropic", "gemini") if name.startswith(t)), "openai")
    sched, clock = make(keys("a", "b"), upstream=upstream)
    fail(sched, "a", from_status(status, message, headers=headers, retry_after=retry_after))
    snap = state(sched, "a")
    assert snap["state"] == "cooling"
    assert snap["cooldown_s"] == pytest.approx(expected, abs=1e-6)
    # nothing goes to a cooling account...
    assert {pick(sched) for _ in range(6)} == {"b"}
    # ...until its reset, when exactly one request probes it
    clock.advance(expected + 0.001)
    assert state(sched, "a")["state"] == "probing"
    assert "a" in {pick(sched) for _ in range(3)}


@pytest.mark.parametrize("upstream,scheduler,expected", [
    ("gemini", {}, 12 * 3600.0),                                      # Google's: midnight Pacific
    ("openai", {}, 5 * 3600.0),                                       # a vendor that does not say: UTC
    ("anthropic", {}, 5 * 3600.0),
    ("openai", {"daily_reset_tz": "Asia/Shanghai"}, 21 * 3600.0),     # the operator's zone, for every upstream
    ("gemini", {"daily_reset_tz": "UTC"}, 5 * 3600.0),
])
def test_a_per_day_quota_resets_where_its_upstream_says(upstream, scheduler, expected):
    """The zone of a per-day quota's midnight is the upstream's own knowledge
    (``RateLimitHeaders.daily_reset_tz``), not the core's; the operator may set one."""
    sched, clock = make(keys("a", "b"), scheduler, upstream=upstream)
    fail(sched, "a", err429(message="You exceeded your daily quota: requests per day"))
    assert state(sched, "a")["cooldown_s"] == pytest.approx(expected, abs=1e-6)


def test_exponential_backoff_until_a_success():
    sched, clock = make(keys("a"), {"backoff_base": 1, "backoff_max": 10})
    seen = []
    for _ in range(6):
        fail(sched, "a", err429())
        seen.append(state(sched, "a")["cooldown_s"])
        clock.advance(seen[-1])
    assert seen == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    lease = sched.acquire("p")
    lease.success(0.1, {})
    lease.release()
    fail(sched, "a", err429())
    assert state(sched, "a")["cooldown_s"] == 1.0


def test_spent_quota_on_a_success_cools_down_before_the_429():
    sched, clock = make(keys("a", "b"))
    lease = sched.acquire("p", headers={"x-auth-id": "a"})
    lease.success(0.2, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s",
                        "x-ratelimit-remaining-tokens": "100"})
    lease.release()
    snap = state(sched, "a")
    assert (snap["state"], snap["cooldown_s"], snap["quota_remaining"]) == (
        "cooling", 20.0, {"requests": 0.0, "tokens": 100.0})


def test_until_midnight_handles_the_dst_change():
    # 2024-11-03 in Los Angeles has 25 hours: 00:30 PDT -> next midnight PST
    t = datetime.datetime(2024, 11, 3, 7, 30, tzinfo=datetime.timezone.utc).timestamp()
    assert until_midnight(t, "America/Los_Angeles") == 24.5 * 3600


# -- half-open probe -------------------------------------------------------------------------
def test_half_open_lets_one_probe_through_and_its_outcome_decides():
    sched, clock = make(keys("a", "b"))
    fail(sched, "a", err429(retry_after=10))
    clock.advance(10)
    probe = sched.acquire("p", headers={"x-auth-id": "a"})
    assert probe.probe and state(sched, "a")["state"] == "probing"
    # while the probe is out, "a" gets nothing else
    others = [sched.acquire("p") for _ in range(4)]
    assert {lease.account.id for lease in others} == {"b"}
    for lease in others:
        lease.release()
    probe.failure(err429())  # probe failed: back to cooling, longer
    probe.release()
    assert state(sched, "a")["state"] == "cooling"
    clock.advance(60)
    probe = sched.acquire("p", headers={"x-auth-id": "a"})
    probe.success(0.1, {})
    probe.release()
    assert state(sched, "a")["state"] == "active"
    assert collections.Counter(pick(sched) for _ in range(10)) == {"a": 5, "b": 5}


def test_a_probe_that_never_answered_frees_the_slot():
    sched, clock = make(keys("a"))
    fail(sched, "a", err429(retry_after=1))
    clock.advance(1)
    sched.acquire("p").release()  # client went away before any verdict
    assert pick(sched) == "a"


def test_single_account_probing_is_not_reused_concurrently():
    sched, clock = make(keys("a"))
    fail(sched, "a", err429(retry_after=5))
    with pytest.raises(ProxyError) as e:
        sched.acquire("p")
    assert e.value.kind is ErrorKind.RATE_LIMITED and e.value.retry_after == 5
    clock.advance(5)
    probe = sched.acquire("p")
    with pytest.raises(ProxyError) as e:
        sched.acquire("p")
    assert e.value.retry_after == 1.0 and "being probed" in e.value.message
    probe.release()


# -- selection shares ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,weights,n,expected", [
    ("equal", {"a": 1, "b": 1}, 100, {"a": 50, "b": 50}),
    ("1:2:3", {"a": 1, "b": 2, "c": 3}, 600, {"a": 100, "b": 200, "c": 300}),
    ("fractional", {"a": 0.5, "b": 1.5}, 40, {"a": 10, "b": 30}),
])
def test_weighted_shares_are_exact(name, weights, n, expected):
    sched, _ = make(keys(*weights, **weights))
    assert collections.Counter(pick(sched) for _ in range(n)) == expected


def test_weighted_shares_interleave():
    sched, _ = make(keys("a", "b", "c", a=1, b=1, c=2))
    assert [pick(sched) for _ in range(4)] == ["c", "a", "b", "c"]


def test_health_lowers_the_share_of_a_failing_account():
    sched, clock = make(keys("a", "b"), {"errors_before_cooldown": 10})
    for _ in range(4):
        lease = sched.acquire("p", headers={"x-auth-id": "a"})
        lease.failure(from_status(500, "boom"))
        lease.release()
        clock.advance(0.01)
    lease = sched.acquire("p", headers={"x-auth-id": "b"})
    lease.success(0.5, {})
    lease.release()
    counts = collections.Counter(pick(sched) for _ in range(100))
    # a: (0+1)/(4+1) = 0.2; b: (1+1)/(1+1) x 2/(2+0.5) = 0.8
    assert 19 <= counts["a"] <= 21 and counts["a"] + counts["b"] == 100


def test_latency_lowers_the_share():
    sched, _ = make(keys("fast", "slow"), {"latency_ref": 2})
    for aid, lat in (("fast", 0.0), ("slow", 2.0)):
        lease = sched.acquire("p", headers={"x-auth-id": aid})
        lease.success(lat, {})
        lease.release()
    assert collections.Counter(pick(sched) for _ in range(30)) == {"fast": 20, "slow": 10}


def test_in_flight_requests_spread_the_load():
    sched, _ = make(keys("a", "b"))
    held = [sched.acquire("p") for _ in range(4)]
    assert collections.Counter(lease.account.id for lease in held) == {"a": 2, "b": 2}
    for lease in held:
        lease.release()
    assert all(s["inflight"] == 0 for s in sched.snapshot())


def test_round_robin_skips_cooling_accounts():
    sched, _ = make(keys("a", "b", "c", a=5), {"strategy": "round_robin"})
    assert [pick(sched) for _ in range(4)] == ["a", "b", "c", "a"]
    fail(sched, "b", err429(retry_after=30))
    assert [pick(sched) for _ in range(4)] == ["c", "a", "c", "a"]


def test_exclude_and_no_account_error():
    sched, clock = make(keys("a", "b"))
    assert pick(sched, exclude=["a"]) == "b"
    fail(sched, "b", err429(retry_after=42))
    with pytest.raises(ProxyError) as e:
        sched.acquire("p", exclude={"a"})
    assert e.value.kind is ErrorKind.NO_ACCOUNT
    assert e.value.retry_after == 42
    assert "1 cooling down" in e.value.message and "1 already tried" in e.value.message


def test_consecutive_transport_errors_cool_an_account_down():
    sched, _ = make(keys("a", "b"), {"errors_before_cooldown": 3})
    for i in range(3):
        assert state(sched, "a")["state"] == "active", i
        fail(sched, "a", ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, "connection refused"))
    snap = state(sched, "a")
    assert snap["state"] == "cooling" and snap["requests"]["error"] == 3


def test_client_errors_do_not_hurt_the_account():
    sched, _ = make(keys("a"))
    fail(sched, "a", from_status(400, "bad tool schema"))
    snap = state(sched, "a")
    assert (snap["state"], snap["success_rate"], snap["requests"]["client_error"]) == ("active", 1.0, 1)


# -- disabling ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,errors,gap,expected_state", [
    ("three 401s in the window", [401, 401, 401], 10, "disabled"),
    ("three 403s in the window", [403, 403, 403], 10, "disabled"),
    ("two are not enough", [401, 401], 10, "active"),
    ("spread beyond the window", [401, 401, 401], 400, "active"),
    ("402 at once", [402], 0, "disabled"),
])
def test_disable_window(name, errors, gap, expected_state):
    sched, clock = make(keys("a", "b"), {"disable_after": 3, "disable_window": 600})
    for status in errors:
        fail(sched, "a", from_status(status, "nope"))
        clock.advance(gap)
    assert state(sched, "a")["state"] == expected_state


def test_revoked_key_is_disabled_at_once_and_kept_visible_until_enabled():
    sched, _ = make(keys("a", "b"))
    fail(sched, "a", from_status(401, "upstream returned 401: This API key has been revoked"))
    snap = state(sched, "a")
    assert snap["state"] == "disabled" and "revoked" in snap["disabled_reason"]
    assert {pick(sched) for _ in range(5)} == {"b"}
    sched.enable("a")
    assert state(sched, "a")["state"] == "active" and state(sched, "a")["disabled_reason"] is None
    assert "a" in {pick(sched) for _ in range(2)}


def test_admin_probe_of_a_disabled_account():
    sched, _ = make(keys("a", "b"))
    sched.disable("a", "operator says so")
    assert state(sched, "a")["disabled_reason"] == "operator says so"
    assert sched.probe("a")["state"] == "probing"
    lease = sched.acquire("p", headers={"x-auth-id": "a"})
    lease.success(0.1, {})
    lease.release()
    snap = state(sched, "a")
    assert (snap["state"], snap["disabled_reason"]) == ("active", None)


def test_a_failed_probe_of_a_disabled_account_keeps_it_disabled():
    sched, clock = make(keys("a", "b"))
    sched.disable("a", "operator says so")
    sched.probe("a")
    fail(sched, "a", err429(retry_after=5))
    clock.advance(10)
    snap = state(sched, "a")
    assert (snap["state"], snap["disabled_reason"]) == ("disabled", "operator says so")
    assert {pick(sched) for _ in range(4)} == {"b"}


def test_usable():
    sched, _ = make(keys("a"))
    assert sched.usable("p")
    fail(sched, "a", err429(retry_after=30))
    assert sched.usable("p")  # cooling comes back by itself
    fail_disabled = from_status(402, "pay up")
    sched.probe("a")
    fail(sched, "a", fail_disabled)
    assert not sched.usable("p") and not sched.usable("nope")


# -- pinning and stickiness ---------------------------------------------------------------------
def test_pinning():
    sched, _ = make(keys("a", "b", "c"))
    assert {pick(sched, {"x-auth-id": "b"}) for _ in range(5)} == {"b"}
    fail(sched, "b", err429(retry_after=20))
    assert pick(sched, {"x-auth-id": "b"}) in {"a", "c"}  # fails over
    with pytest.raises(ProxyError) as e:
        sched.acquire("p", headers={"x-auth-id": "b", "x-auth-strict": "1"})
    assert e.value.kind is ErrorKind.NO_ACCOUNT and e.value.retry_after == 20
    assert "pinned account 'b'" in e.value.message
    with pytest.raises(ProxyError) as e:
        sched.acquire("p", headers={"x-auth-id": "zzz"})
    assert e.value.kind is ErrorKind.INVALID_REQUEST and e.value.param == "x-auth-id"


def test_session_stickiness():
    sched, clock = make(keys("a", "b", "c"), {"session_header": "X-Session-Id", "session_ttl": 60})
    first = pick(sched, {"x-session-id": "s1"})
    assert {pick(sched, {"x-session-id": "s1"}) for _ in range(5)} == {first}
    other = pick(sched, {"x-session-id": "s2"})
    assert other != first
    fail(sched, first, err429(retry_after=30))
    moved = pick(sched, {"x-session-id": "s1"})
    assert moved != first
    clock.advance(31)  # first is back, but the session stays where it moved
    assert {pick(sched, {"x-session-id": "s1"}) for _ in range(3)} == {moved}
    clock.advance(61)  # pin expired
    assert pick(sched, {"x-session-id": "s1"}) in {"a", "b", "c"}


# -- credential priority ---------------------------------------------------------------------------
def test_client_credential_is_the_last_resort():
    sched, _ = make(keys("a"), {"allow_client_auth": True})
    hdrs = {"authorization": "Bearer test-client-key-123"}
    assert pick(sched, hdrs) == "a"
    fail(sched, "a", err429(retry_after=30))
    lease = sched.acquire("p", headers=hdrs)
    assert (lease.account.id, lease.account.api_key, lease.account.extra) == (
        "client", "test-client-key-123", {"credential": "client"})
    lease.failure(err429())  # not tracked: the client's own key
    lease.release()
    with pytest.raises(ProxyError):
        sched.acquire("p", headers=hdrs, exclude=["client"])
    with pytest.raises(ProxyError):
        sched.acquire("p")  # no client key sent


def test_client_credential_first_when_ordered_first():
    sched, _ = make(keys("a"), {"allow_client_auth": True, "credential_order": ["client", "key"],
                                "client_auth_header": "x-upstream-key"})
    assert pick(sched, {"x-upstream-key": "test-client-key-123"}) == "client"
    assert pick(sched, {}) == "a"


def test_client_credential_refused_unless_allowed():
    sched, _ = make(keys("a"))
    fail(sched, "a", err429(retry_after=30))
    with pytest.raises(ProxyError):
        sched.acquire("p", headers={"authorization": "Bearer test-client-key-123"})


def test_environment_keys(monkeypatch):
    monkeypatch.setenv("TP_TEST_KEY", "test-env-key-0123456789")
    sched, _ = make([{"id": "env", "api_key_env": "TP_TEST_KEY"}, {"id": "missing", "api_key_env": "TP_NOPE"}])
    lease = sched.acquire("p")
    assert lease.account.api_key == "test-env-key-0123456789"
    lease.release()
    assert state(sched, "missing")["state"] == "disabled"
    assert "TP_NOPE" in state(sched, "missing")["disabled_reason"]


# -- proxies -----------------------------------------------------------------------------------------
PROXIES = ["http://p0:3128", "http://p1:3128", "http://p2:3128"]


def test_proxy_hash_is_stable_across_processes():
    ids = ["acct-1", "acct-2", "acct-3", "acct-4", "acct-5", "acct-6"]
    # Pinned values: every process and every restart must agree.  A salted hash()
    # (PYTHONHASHSEED differs per process) could not produce a fixed list.
    assert [proxy_for_id(i, tuple(PROXIES)) for i in ids] == [
        "http://p1:3128", "http://p0:3128", "http://p1:3128", "http://p0:3128", "http://p1:3128", "http://p2:3128"]
    assert proxy_for_id("acct-1", tuple(PROXIES[:1])) == PROXIES[0]


def test_proxy_modes():
    sched, _ = make(keys("acct-1", "acct-6"), {"proxies": PROXIES, "proxy_mode": "hash"})
    for _ in range(3):
        for aid, want in (("acct-1", PROXIES[1]), ("acct-6", PROXIES[2])):
            lease = sched.acquire("p", headers={"x-auth-id": aid})
            assert lease.proxy == want
            lease.release()
    sched, _ = make(keys("a"), {"proxies": PROXIES})
    got = []
    for _ in range(4):
        lease = sched.acquire("p")
        got.append(lease.proxy)
        lease.release()
    assert got == [PROXIES[1], PROXIES[2], PROXIES[0], PROXIES[1]]
    own = keys("a")
    own[0]["proxy"] = "http://user:secret@own:1"
    sched, _ = make(own, {"proxies": PROXIES}, proxy="http://default:1")
    lease = sched.acquire("p")
    assert lease.proxy == "http://user:secret@own:1"
    lease.release()
    assert state(sched, "a")["proxy"] == "http://****@own:1"
    sched, _ = make(keys("a"), proxy="http://default:1")
    assert sched.acquire("p").proxy == "http://default:1"


# -- reporting ---------------------------------------------------------------------------------------
def test_snapshot_never_shows_a_secret():
    sched, _ = make(keys("a", "b"), upstream="anthropic")
    fail(sched, "a", from_status(401, "key test-key-a-0123456789 is wrong"))
    lease = sched.acquire("p", headers={"x-auth-id": "b"})
    lease.success(0.25, {"anthropic-ratelimit-requests-remaining": "49"})
    lease.record_usage({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15})
    lease.release()
    snap = state(sched, "b")
    assert snap["key_hint"] == "****6789"
    assert snap["tokens"] == {"prompt": 12, "completion": 3}
    assert snap["quota_remaining"] == {"requests": 49.0}
    assert (snap["latency_count"], snap["latency_sum_s"]) == (1, 0.25)
    text = json.dumps(sched.snapshot())
    assert "test-key-b-0123456789" not in text


def test_policy_and_config_checks():
    assert sched_policy({"max_tries": 5, "max_seconds": 20}).max_tries == 5
    with pytest.raises(ValueError, match="unknown option 'max_trys'"):
        parse_policy({"max_trys": 5})
    with pytest.raises(ValueError, match="strategy"):
        parse_policy({"strategy": "random"})
    with pytest.raises(ValueError, match="own"):
        parse_policy({"credential_order": [["client", "key"]]})
    problems = check_config(
        [{"name": "p", "accounts": [{"id": "x", "api_key": "test-key-1"}]},
         {"name": "q", "accounts": [{"id": "x", "api_key": "test-key-2"}, {"refresh_token": "r"}]}],
        {"accounts": [{"id": "y", "provider": "nope", "api_key": "k"},
                      {"id": "z", "provider": "p", "refresh_token": "r"}]})
    assert len(problems) == 4, problems


def sched_policy(conf):
    sched, _ = make(keys("a"), conf)
    return sched.policy("p")
