"""Issue #17's scheduler policies against the Scheduler and an injected clock.

Each test drives the scheduler as the request pipeline does (acquire, an outcome,
release) and reads what the admin API shows (``snapshot()``); no sleeps, no network.
"""
from __future__ import annotations

import collections

import pytest

from tests.unit.test_scheduler import WALL0, err429, fail, keys, make, pick, state
from providers.ratelimits import ANTHROPIC, CODEX as CODEX_SPEC, OPENAI as OPENAI_SPEC, RateLimitHeaders
from tornado_proxy.accounts import ratelimit
from tornado_proxy.accounts.scheduler import Scheduler
from tornado_proxy.errors import ErrorKind, ProxyError, from_status
from tornado_proxy.state.store import merge

UNREACHABLE = ProxyError(ErrorKind.UPSTREAM_UNREACHABLE, "connection refused")


def ok(sched, headers=None, account=None):
    lease = sched.acquire("p", headers={"x-auth-id": account} if account else None)
    lease.success(0.1, headers or {})
    lease.release()
    return lease.account.id


# -- 1. one account never bricks itself ------------------------------------------------------
def test_a_lone_account_in_error_backoff_still_serves_and_its_success_ends_the_backoff():
    sched, clock = make(keys("a"), {"errors_before_cooldown": 1, "backoff_base": 30})
    fail(sched, "a", UNREACHABLE)
    snap = state(sched, "a")
    assert (snap["state"], snap["cooldown_kind"]) == ("cooling", "health")
    lease = sched.acquire("p")  # not 503 no_usable_account
    assert lease.account.id == "a" and lease.rescue
    lease.success(0.2, {})
    lease.release()
    snap = state(sched, "a")
    assert (snap["state"], snap["cooldown_s"], snap["cooldown_kind"]) == ("active", 0.0, None)


def test_the_account_that_recovers_soonest_is_the_one_tried():
    sched, clock = make(keys("a", "b", "c"), {"errors_before_cooldown": 1, "backoff_base": 10})
    fail(sched, "a", UNREACHABLE)            # back in 10 s
    fail(sched, "b", from_status(529, "Overloaded", headers={"retry-after": "40"}))  # overloads: 40 s
    fail(sched, "c", from_status(529, "Overloaded", headers={"retry-after": "5"}))   # and 5 s
    assert [state(sched, x)["cooldown_kind"] for x in "abc"] == ["health"] * 3
    assert pick(sched) == "c"
    assert pick(sched, exclude=["c"]) == "a"


def test_a_lone_account_disabled_by_the_auth_counter_still_serves_and_a_success_enables_it():
    sched, clock = make(keys("a"), {"disable_after": 2})
    fail(sched, "a", from_status(401, "Invalid API key"))
    fail(sched, "a", from_status(401, "Invalid API key"))
    snap = state(sched, "a")
    assert (snap["state"], snap["disabled_by"]) == ("disabled", "auth")
    assert ok(sched) == "a"
    snap = state(sched, "a")
    assert (snap["state"], snap["disabled_reason"], snap["disabled_by"]) == ("active", None, None)


def test_a_failing_rescue_keeps_the_account_out():
    sched, clock = make(keys("a"), {"errors_before_cooldown": 1, "backoff_base": 30})
    fail(sched, "a", UNREACHABLE)
    lease = sched.acquire("p")
    lease.failure(UNREACHABLE)
    lease.release()
    snap = state(sched, "a")
    assert snap["state"] == "cooling" and snap["cooldown_s"] > 29


def disable_by_operator(sched):
    sched.disable("a", "rotating keys")


def disable_by_402(sched):
    fail(sched, "a", from_status(402, "Insufficient credit"))


def disable_by_revoked_key(sched):
    fail(sched, "a", from_status(401, "This API key has been revoked"))


def disable_in_config(sched):
    pass  # the account says enabled: false


@pytest.mark.parametrize("name,disable,extra,by", [
    ("operator", disable_by_operator, {}, "operator"),
    ("402 payment required", disable_by_402, {}, "payment"),
    ("revoked key", disable_by_revoked_key, {}, "revoked"),
    ("enabled: false", disable_in_config, {"enabled": False}, "config"),
])
def test_final_disables_are_never_used(name, disable, extra, by):
    accounts = keys("a")
    accounts[0].update(extra)
    sched, clock = make(accounts)
    disable(sched)
    assert state(sched, "a")["disabled_by"] == by
    with pytest.raises(ProxyError) as e:
        sched.acquire("p")
    assert e.value.kind is ErrorKind.NO_ACCOUNT and "1 disabled" in e.value.message


def test_a_rate_limited_account_is_not_rescued_but_a_health_judged_one_is():
    sched, clock = make(keys("a", "b"), {"errors_before_cooldown": 1, "backoff_base": 60})
    fail(sched, "a", err429(retry_after=30))
    assert state(sched, "a")["cooldown_kind"] == "rate"
    fail(sched, "b", UNREACHABLE)  # back later than a, and still the one tried
    assert {pick(sched) for _ in range(3)} == {"b"}


def test_operator_disabled_accounts_stay_out_while_a_health_judged_one_serves():
    sched, clock = make(keys("a", "b"), {"errors_before_cooldown": 1})
    sched.disable("a")
    fail(sched, "b", UNREACHABLE)
    assert {pick(sched) for _ in range(3)} == {"b"}


def test_a_strict_pin_to_a_health_judged_account_is_served():
    sched, clock = make(keys("a", "b"), {"errors_before_cooldown": 1})
    fail(sched, "a", UNREACHABLE)
    assert pick(sched, {"x-auth-id": "a", "x-auth-strict": "1"}) == "a"


@pytest.mark.parametrize("name,cur,new,replaced", [
    ("recovered ends a health cooldown", {"s": "cooling", "cu": 2e9, "ck": "health"},
     {"s": "active", "t": "recovered"}, True),
    ("recovered does not end a rate limit", {"s": "cooling", "cu": 2e9, "ck": "rate"},
     {"s": "active", "t": "recovered"}, False),
    ("recovered lifts the auth counter's disable", {"s": "disabled", "db": "auth"},
     {"s": "active", "t": "recovered"}, True),
    ("recovered does not lift an operator's disable", {"s": "disabled", "db": "operator"},
     {"s": "active", "t": "recovered"}, False),
    ("nor a 402's", {"s": "disabled", "db": "payment"}, {"s": "active", "t": "recovered"}, False),
    ("a plain write still cannot end a cooldown", {"s": "cooling", "cu": 2e9, "ck": "health"},
     {"s": "active", "t": ""}, False),
])
def test_what_the_shared_store_keeps(name, cur, new, replaced):
    assert merge(cur, new, 1.9e9) is replaced


# -- 2. a rate-limited pool answers 429 -----------------------------------------------------------
def test_a_pool_cooling_after_rate_limits_is_a_429_with_the_earliest_reset():
    sched, clock = make(keys("a", "b", "c"))
    fail(sched, "a", err429(retry_after=42.2))
    fail(sched, "b", err429(headers={"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "17.3s"}))
    sched.disable("c")  # out for good: it never comes back by itself, so it does not count
    with pytest.raises(ProxyError) as e:
        sched.acquire("p")
    err = e.value
    assert (err.kind, err.status, err.retry_after) == (ErrorKind.RATE_LIMITED, 429, 18.0)
    assert "all 2 of its accounts are cooling down after rate limits" in err.message
    assert "back in 18 s (at 2024-06-01T19:00:18Z)" in err.message


def test_a_lone_rate_limited_account_says_so():
    sched, clock = make(keys("a"), upstream="anthropic")
    fail(sched, "a", from_status(429, "slow down", headers={
        "anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": "2024-06-01T19:00:45Z"}))
    with pytest.raises(ProxyError) as e:
        sched.acquire("p")
    assert e.value.kind is ErrorKind.RATE_LIMITED and e.value.retry_after == 45.0
    assert "its account is cooling down after rate limits; the pool is back in 45 s" in e.value.message


@pytest.mark.parametrize("name,second", [
    ("one overloaded (a health judgement): it is tried", from_status(529, "Overloaded")),
    ("one rate limited, one active: the active one serves", None),
])
def test_a_mixed_pool_is_not_a_rate_limit(name, second):
    sched, clock = make(keys("a", "b"), {"errors_before_cooldown": 1})
    fail(sched, "a", err429(retry_after=30))
    if second is not None:
        fail(sched, "b", second)
    assert pick(sched) == "b"


def test_a_pool_of_disabled_accounts_stays_a_503():
    sched, clock = make(keys("a"))
    fail(sched, "a", from_status(402, "pay up"))
    with pytest.raises(ProxyError) as e:
        sched.acquire("p")
    assert e.value.kind is ErrorKind.NO_ACCOUNT and e.value.status == 503


# -- 3. accounts the 401/403 counter disabled are re-probed ------------------------------------------
def auth_disable(sched, account_id="a"):
    fail(sched, account_id, from_status(401, "Invalid API key"))
    assert state(sched, account_id)["disabled_by"] == "auth"


def test_an_auth_disabled_account_is_re_probed_after_a_minute_and_a_pass_enables_it():
    sched, clock = make(keys("a", "b"), {"strategy": "round_robin", "disable_after": 1})
    auth_disable(sched)
    assert state(sched, "a")["reprobe_in_s"] == 60.0
    clock.advance(59)
    assert {pick(sched) for _ in range(6)} == {"b"}
    clock.advance(1)
    leases = [sched.acquire("p") for _ in range(3)]
    probes = [lease for lease in leases if lease.account.id == "a"]
    assert len(probes) == 1 and probes[0].probe  # one request, not every one
    probes[0].success(0.1, {})
    for lease in leases:
        lease.release()
    snap = state(sched, "a")
    assert (snap["state"], snap["disabled_reason"], snap["reprobe_in_s"]) == ("active", None, None)
    assert "a" in {pick(sched) for _ in range(2)}


def test_each_failed_re_probe_doubles_the_wait_up_to_the_cap():
    sched, clock = make(keys("a", "b"), {"disable_after": 1, "auth_reprobe_base": 60, "auth_reprobe_max": 200})
    auth_disable(sched)
    waits = []
    for _ in range(4):
        waits.append(state(sched, "a")["reprobe_in_s"])
        clock.advance(waits[-1])
        fail(sched, "a", from_status(401, "Invalid API key"))  # the pinned request is the re-probe
        assert state(sched, "a")["state"] == "disabled"
    assert waits == [60.0, 120.0, 200.0, 200.0]


def test_a_re_probe_that_is_rate_limited_proves_the_key_and_cools_it():
    sched, clock = make(keys("a", "b"), {"disable_after": 1})
    auth_disable(sched)
    clock.advance(60)
    fail(sched, "a", err429(retry_after=30))
    snap = state(sched, "a")
    assert (snap["state"], snap["disabled_reason"], snap["cooldown_kind"]) == ("cooling", None, "rate")


def test_a_re_probe_without_a_verdict_lets_the_next_request_probe():
    sched, clock = make(keys("a"), {"disable_after": 1})
    auth_disable(sched)
    clock.advance(60)
    sched.acquire("p", headers={"x-auth-id": "a"}).release()  # the client went away
    assert state(sched, "a")["reprobe_in_s"] == 0.0
    lease = sched.acquire("p", headers={"x-auth-id": "a"})
    assert lease.probe
    lease.success(0.1, {})
    lease.release()
    assert state(sched, "a")["state"] == "active"


@pytest.mark.parametrize("name,disable", [
    ("operator", disable_by_operator),
    ("402 payment required", disable_by_402),
    ("revoked key", disable_by_revoked_key),
])
def test_final_disables_are_never_re_probed(name, disable):
    sched, clock = make(keys("a", "b"), {"strategy": "round_robin"})
    disable(sched)
    assert state(sched, "a")["reprobe_in_s"] is None
    for _ in range(5):
        clock.advance(7200)
        assert {pick(sched) for _ in range(4)} == {"b"}


def test_the_re_probe_wait_is_configurable_and_checked():
    sched, clock = make(keys("a", "b"), {"disable_after": 1, "auth_reprobe_base": 5})
    auth_disable(sched)
    assert state(sched, "a")["reprobe_in_s"] == 5.0
    with pytest.raises(ValueError, match="auth_reprobe_max must be positive"):
        make(keys("a"), {"auth_reprobe_max": 0})


# -- 4. passive quota headers ----------------------------------------------------------------------
# Header sets as the upstreams send them.  Anthropic's unified limits: as recorded from
# Claude Code's traffic (gist andrew-kramer-inno/34f9303a5cc29a14af7c2e729b676fc9;
# anthropics/claude-code#12829 for -status and -representative-claim).  Codex: the
# names openai/codex parses in codex-rs/codex-api/src/rate_limits.rs.
UNIFIED_OK = {
    "anthropic-ratelimit-unified-status": "allowed",
    "anthropic-ratelimit-unified-representative-claim": "five_hour",
    "anthropic-ratelimit-unified-reset": str(int(WALL0) + 3600),
    "anthropic-ratelimit-unified-5h-status": "allowed",
    "anthropic-ratelimit-unified-5h-reset": str(int(WALL0) + 3600),
    "anthropic-ratelimit-unified-5h-utilization": "0.042598363636363636",
    "anthropic-ratelimit-unified-7d-status": "allowed",
    "anthropic-ratelimit-unified-7d-reset": str(int(WALL0) + 86400),
    "anthropic-ratelimit-unified-7d-utilization": "0.3068459187383675",
    "anthropic-ratelimit-unified-fallback-percentage": "0.5",
}
UNIFIED_REJECTED = {
    "anthropic-ratelimit-unified-status": "rejected",
    "anthropic-ratelimit-unified-reset": str(int(WALL0) + 7200),
    "anthropic-ratelimit-unified-5h-status": "rejected",
    "anthropic-ratelimit-unified-5h-reset": str(int(WALL0) + 7200),
    "anthropic-ratelimit-unified-7d-status": "allowed",
    "anthropic-ratelimit-unified-7d-utilization": "0.5",
}
CODEX = {"x-codex-primary-used-percent": "82.5", "x-codex-primary-window-minutes": "300",
         "x-codex-primary-reset-at": str(int(WALL0) + 600),
         "x-codex-secondary-used-percent": "9", "x-codex-secondary-window-minutes": "10080",
         "x-codex-secondary-reset-at": str(int(WALL0) + 86400)}
CODEX_OLD = {"x-codex-primary-used-percent": "100", "x-codex-primary-reset-after-seconds": "1800"}
OPENAI = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
          "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "30000",
          "x-ratelimit-remaining-tokens": "12000", "x-ratelimit-reset-tokens": "24s"}
ANTHROPIC_KEY = {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
                 "anthropic-ratelimit-requests-reset": "2024-06-01T19:00:01Z",
                 "anthropic-ratelimit-input-tokens-limit": "30000",
                 "anthropic-ratelimit-input-tokens-remaining": "27000",
                 "anthropic-ratelimit-input-tokens-reset": "2024-06-01T19:00:06Z"}


QUOTA_CASES = [
    ("anthropic unified, allowed", ANTHROPIC, UNIFIED_OK, {"unified_5h": 0.0426, "unified_7d": 0.3068}, 0.6932,
     86400, None),
    ("anthropic unified, 5h rejected", ANTHROPIC, UNIFIED_REJECTED, {"unified_5h": 1.0, "unified_7d": 0.5}, 0.0,
     7200, 7200),
    ("codex", CODEX_SPEC, CODEX, {"codex_primary": 0.825, "codex_secondary": 0.09}, 0.175, 600, None),
    ("codex, relative reset, spent", CODEX_SPEC, CODEX_OLD, {"codex_primary": 1.0}, 0.0, 1800, 1800),
    ("openai counted limits", OPENAI_SPEC, OPENAI, {"requests": 0.002, "tokens": 0.6}, 0.4, 24, None),
    ("anthropic api key", ANTHROPIC, ANTHROPIC_KEY, {"requests": 0.02, "input_tokens": 0.1}, 0.9, 6, None),
]
EVERY_FAMILY = OPENAI_SPEC + ANTHROPIC + CODEX_SPEC


@pytest.mark.parametrize("name,spec,headers,used,headroom,valid_for,spent", QUOTA_CASES)
@pytest.mark.parametrize("specs", ["the vendor's", "every family"])
def test_quota_headers(name, spec, headers, used, headroom, valid_for, spent, specs):
    q = ratelimit.read(headers, lambda: WALL0, spec if specs == "the vendor's" else EVERY_FAMILY)
    assert {w: round(u, 4) for w, u in q.used.items()} == used
    assert q.headroom == pytest.approx(headroom, abs=1e-4)
    assert q.valid_for == pytest.approx(valid_for)
    assert q.spent == (pytest.approx(spent) if spent is not None else None)


@pytest.mark.parametrize("name,spec,headers", [(c[0], c[1], c[2]) for c in QUOTA_CASES])
def test_a_spec_reads_only_its_own_families(name, spec, headers):
    others = [s for s in (OPENAI_SPEC, ANTHROPIC, CODEX_SPEC) if s != spec]
    assert all(ratelimit.read(headers, lambda: WALL0, other) is None for other in others)


def test_no_quota_headers_no_clock():
    def wall():
        raise AssertionError("the clock is read only for a reset time")
    assert ratelimit.read({"content-type": "application/json", "x-request-id": "r1"}, wall, EVERY_FAMILY) is None


def answer(sched, account_id, headers):
    lease = sched.acquire("p", headers={"x-auth-id": account_id})
    lease.success(0.1, headers)
    lease.release()


def test_accounts_with_headroom_are_preferred_without_starving_the_others():
    sched, clock = make(keys("full", "roomy"), upstream="openai-responses")
    answer(sched, "full", {**CODEX, "x-codex-primary-used-percent": "90"})     # 10 % left
    answer(sched, "roomy", {**CODEX, "x-codex-primary-used-percent": "10"})    # 90 % left
    counts = {"full": 0, "roomy": 0}
    for _ in range(100):
        counts[pick(sched)] += 1
    # shares 0.1 + 0.9 x headroom: 0.19 against 0.91
    assert 15 <= counts["full"] <= 19 and counts["full"] + counts["roomy"] == 100
    snap = state(sched, "full")
    assert snap["headroom"] == pytest.approx(0.1) and snap["quota_used"]["codex_primary"] == 0.9


def test_headroom_is_forgotten_when_its_window_refills():
    sched, clock = make(keys("a", "b"), upstream="openai-responses")
    answer(sched, "a", {"x-codex-primary-used-percent": "95", "x-codex-primary-reset-after-seconds": "60"})
    answer(sched, "b", {})
    assert state(sched, "a")["headroom"] == pytest.approx(0.05)
    clock.advance(61)
    assert state(sched, "a")["headroom"] is None
    fail(sched, "a", from_status(400, "bad tool schema"))  # any outcome rescores it
    assert collections.Counter(pick(sched) for _ in range(10)) == {"a": 5, "b": 5}


@pytest.mark.parametrize("name,upstream,headers,cooldown", [
    ("unified window rejected on a 2xx", "anthropic", UNIFIED_REJECTED, 7200),
    ("codex window at 100 % on a 2xx", "openai-responses", CODEX_OLD, 1800),
])
def test_a_spent_window_cools_the_account_until_it_refills(name, upstream, headers, cooldown):
    sched, clock = make(keys("a", "b"), upstream=upstream)
    answer(sched, "a", headers)
    snap = state(sched, "a")
    assert (snap["state"], snap["cooldown_kind"]) == ("cooling", "rate")
    assert snap["cooldown_s"] == pytest.approx(cooldown)


def test_each_upstream_reads_its_own_rate_limit_headers():
    # Codex windows mean nothing on an OpenAI chat upstream (it never sends them)...
    sched, clock = make(keys("a", "b"))
    answer(sched, "a", CODEX_OLD)
    assert (state(sched, "a")["state"], state(sched, "a")["headroom"]) == ("active", None)
    # ...unless its Provider object says it sends them (the gateway passes every provider's spec)
    sched = Scheduler([{"name": "p", "type": "openai", "accounts": keys("a", "b")}], clock=clock,
                      wall_clock=clock.now_wall, rate_limits={"p": OPENAI_SPEC + CODEX_SPEC})
    answer(sched, "a", CODEX_OLD)
    assert (state(sched, "a")["state"], state(sched, "a")["cooldown_s"]) == ("cooling", pytest.approx(1800))
    assert state(sched, "a")["quota_used"] == {"codex_primary": 1.0}


def test_the_gateway_hands_the_scheduler_each_providers_spec():
    from tornado_proxy.config import build
    from tornado_proxy.gateway import Gateway

    conf = {"providers": [{"name": p, "type": p, "accounts": keys("a" + p), "base_url": "http://127.0.0.1:9"}
                          for p in ("openai", "anthropic", "openai-responses", "gemini")],
            "models": [{"id": "m", "provider": "openai"}]}
    gw = Gateway(build(conf, "test", {}))
    assert {n: pool.limits for n, pool in gw.scheduler._pools.items()} == {
        n: p.rate_limit_headers for n, p in gw.providers.items()}
    assert gw.scheduler._pools["openai-responses"].limits == OPENAI_SPEC + CODEX_SPEC
    # Google sends none; its per-day quotas reset at midnight Pacific
    assert gw.scheduler._pools["gemini"].limits == RateLimitHeaders(daily_reset_tz="America/Los_Angeles")
    gw.close()


def test_a_429_with_unified_headers_cools_until_the_window_resets():
    sched, clock = make(keys("a", "b"), upstream="anthropic")
    fail(sched, "a", from_status(429, "rate limited", headers=UNIFIED_REJECTED))
    snap = state(sched, "a")
    assert snap["cooldown_s"] == pytest.approx(7200) and snap["cooldown_reason"].startswith("quota reset")


# -- 6. prompt_cache_key pins ----------------------------------------------------------------------
def keyed(sched, key, headers=None):
    lease = sched.acquire("p", headers=headers, cache_key=key)
    lease.release()
    return lease.account.id


def test_a_prompt_cache_key_keeps_a_conversation_on_one_account():
    sched, clock = make(keys("a", "b", "c"))
    first = keyed(sched, "conv-1")
    assert {keyed(sched, "conv-1") for _ in range(6)} == {first}
    assert len({keyed(sched, f"conv-{i}") for i in range(2, 8)}) == 3  # other conversations spread
    clock.advance(3601)  # session_ttl after its last use: the pin is gone
    assert {keyed(sched, "conv-1") for _ in range(3)} <= {"a", "b", "c"}


def test_a_pin_to_an_unusable_account_falls_through_and_re_pins():
    sched, clock = make(keys("a", "b", "c"))
    first = keyed(sched, "conv-1")
    sched.disable(first)
    moved = keyed(sched, "conv-1")
    assert moved != first
    sched.enable(first)
    assert {keyed(sched, "conv-1") for _ in range(4)} == {moved}


def test_the_session_header_wins_and_the_key_pins_can_be_turned_off():
    sched, clock = make(keys("a", "b", "c"), {"session_header": "x-session-id"})
    by_header = keyed(sched, "conv-1", {"x-session-id": "s1"})
    assert {keyed(sched, f"conv-{i}", {"x-session-id": "s1"}) for i in range(5)} == {by_header}
    sched, clock = make(keys("a", "b", "c"), {"sticky_prompt_cache_key": False})
    assert len({keyed(sched, "conv-1") for _ in range(3)}) == 3


def test_a_rescue_that_succeeds_after_a_429_elsewhere_leaves_the_rate_limit_standing():
    sched, clock = make(keys("a"), {"errors_before_cooldown": 1})
    fail(sched, "a", UNREACHABLE)
    rescue = sched.acquire("p")
    other = sched.acquire("p")            # a second rescue, at the same time...
    other.failure(err429(retry_after=90))  # ...gets a 429: the account is rate limited now
    other.release()
    rescue.success(0.1, {})
    rescue.release()
    snap = state(sched, "a")
    assert (snap["state"], snap["cooldown_kind"]) == ("cooling", "rate") and snap["cooldown_s"] > 89
