"""``accounts_from``: a provider block that serves with another block's accounts (one
login for several endpoints of one vendor), and the 401 a client gets when only its own
key could serve and it sent none."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tornado_proxy.accounts.check import check_config
from tornado_proxy.accounts.scheduler import Scheduler
from tornado_proxy.errors import ErrorKind, ProxyError, from_status


def key(i: str) -> dict:
    return {"id": i, "api_key": f"test-key-{i}-0123456789"}


def providers(**sharing: dict) -> list[dict]:
    owner = {"name": "owner", "type": "openai", "accounts": [key("a"), key("b")]}
    return [owner] + [{"name": n, "type": "openai", **conf} for n, conf in sharing.items()]


def pick(s: Scheduler, provider: str, **kw) -> str:
    lease = s.acquire(provider, **kw)
    lease.release()
    return lease.account.id


def test_a_sharing_provider_serves_with_the_owners_account_states() -> None:
    s = Scheduler(providers(chat={"accounts_from": "owner"}))
    assert {pick(s, "chat") for _ in range(4)} == {"a", "b"}
    # a rate limit learnt on one endpoint holds on the other: it is the same account
    lease = s.acquire("chat", headers={"x-auth-id": "a"})
    lease.failure(from_status(429, "rate limited", headers={"retry-after": "60"}))
    lease.release()
    assert {pick(s, "owner") for _ in range(4)} == {"b"}
    # admin: one account, listed once under its owner, disabled for both
    s.disable("b")
    snap = s.snapshot()
    assert [(a["provider"], a["id"]) for a in snap] == [("owner", "a"), ("owner", "b")]
    with pytest.raises(ProxyError) as info:
        s.acquire("chat")
    assert info.value.kind is ErrorKind.RATE_LIMITED  # the one account left cools after a 429


@pytest.mark.parametrize("conf, words", [
    ({"accounts_from": "nobody"}, "no provider named 'nobody'"),
    ({"accounts_from": "chat"}, "must be a provider with accounts of its own"),
    ({"accounts_from": "owner", "accounts": [key("c")]}, "has none of its own"),
])
def test_bad_sharing_is_refused_at_start_and_by_check_config(conf: dict, words: str) -> None:
    confs = providers(chat=conf)
    with pytest.raises(ValueError, match=words):
        Scheduler(confs)
    assert any("accounts_from" in p or "none of its own" in p for p in check_config(confs))


def test_a_provider_aimed_at_anthropic_shares_only_with_one_aimed_there_too() -> None:
    confs = [{"name": "vendor", "type": "openai", "accounts": [key("a")]},
             {"name": "claude", "type": "anthropic", "accounts_from": "vendor"}]
    with pytest.raises(ValueError, match="aimed at Anthropic's API"):
        Scheduler(confs)


def test_accounts_file_entries_go_to_the_owner(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps({"version": 1, "accounts": [
        {"id": "f1", "provider": "owner", "api_key": "test-key-f1-0123456789"},
        {"id": "f2", "provider": "chat", "api_key": "test-key-f2-0123456789"}]}))
    confs = providers(chat={"accounts_from": "owner"})
    s = Scheduler(confs, accounts_file=str(path))
    assert {pick(s, "chat", exclude=("a", "b")) for _ in range(3)} == {"f1"}
    assert [a["id"] for a in s.snapshot()] == ["a", "b", "f1"]
    problems = check_config(confs, json.loads(path.read_text()))
    assert problems == ["accounts file: accounts[1] ('f2') names provider 'chat', which takes its accounts "
                        "from 'owner': name 'owner'"]


def client_pool(accounts: list[dict]) -> Scheduler:
    return Scheduler([{"name": "v", "type": "openai", "accounts": accounts,
                       "scheduler": {"allow_client_auth": True, "client_auth_header": "x-vendor-key"}}],
                     access_keys=["pk-gateway-own-key"])


@pytest.mark.parametrize("headers", [{}, {"x-vendor-key": "pk-gateway-own-key"}, {"x-vendor-key": "Basic dXNlcg=="}])
def test_only_the_clients_key_could_serve_and_it_sent_none_401(headers: dict) -> None:
    s = client_pool([])
    with pytest.raises(ProxyError) as info:
        s.acquire("v", headers=headers)
    err = info.value
    assert err.kind is ErrorKind.AUTH_MISSING and err.param == "x-vendor-key"
    assert "send your own API key in the x-vendor-key header" in str(err)
    assert pick(s, "v", headers={"x-vendor-key": "vk-clients-own-0123"}) == "client"


def test_accounts_that_come_back_by_themselves_still_answer_503_or_429() -> None:
    s = client_pool([key("a")])
    lease = s.acquire("v")
    lease.failure(from_status(503, "overloaded", headers={}))
    lease.release()
    with pytest.raises(ProxyError) as info:
        s.acquire("v", exclude=("a",))
    assert info.value.kind is not ErrorKind.AUTH_MISSING
    s.disable("a")
    with pytest.raises(ProxyError) as info:
        s.acquire("v")
    assert info.value.kind is ErrorKind.AUTH_MISSING
