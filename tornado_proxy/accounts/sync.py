"""The scheduler's accounts kept in step with where they are written down: config
entries and the accounts file become live account states (re-read when the file
changes, or on SIGHUP), and a disable or enable is written back to the file."""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from providers.base import Account

from tornado_proxy.accounts import oauth, terms
from tornado_proxy.accounts.file import AccountsFile, AccountsFileError, has_credential
from tornado_proxy.accounts.leases import Pool, proxy_for_id
from tornado_proxy.accounts.policy import rescore
from tornado_proxy.observability import redact
from tornado_proxy.state.accounts_state import DISABLED_BY, AccountState, StateStore, Status

log = logging.getLogger("tornado_proxy.accounts.scheduler")

DISABLED = Status.DISABLED


# Entry fields the scheduler keeps to itself (secrets, OAuth, state); the rest reaches
# the provider as ``Account.extra`` (region, headers, aws keys...).
_NOT_EXTRA = frozenset({"id", "weight", "api_key", "api_key_env", "refresh_token", "access_token", "expires_at",
                        "disabled", "disabled_reason", "disabled_at", "disabled_by", "provider", "enabled", "token_url",
                        "client_id", "client_secret", "token_format", "scope", "added_at"})
_OAUTH_FIELDS = (("token_url", "token_url"), ("client_id", "client_id"), ("token_format", "format"),
                 ("scope", "scope"), ("client_secret", "client_secret"))


def _oauth_for(base: oauth.OAuthConfig | None, entry: Mapping[str, Any]) -> oauth.OAuthConfig | None:
    """The provider's token endpoint settings, with the account's own fields on top."""
    over = {field_: entry[k] for k, field_ in _OAUTH_FIELDS if entry.get(k)}
    if base is not None:
        return dataclasses.replace(base, **over) if over else base
    if "token_url" in over and "client_id" in over:
        return oauth.OAuthConfig(**over)
    return None


def _note_secrets(st: AccountState) -> None:
    """Tell the scrubber this account's secrets (again after a refresh rotated them)."""
    a = st.account
    o = st.oauth
    redact.note(f"account:{st.provider}/{st.id}",
                (a.api_key, st.refresh_token, st.file_token, o.client_secret if o is not None else None,
                 *(a.extra.get(f) for f in ("aws_secret_access_key", "aws_session_token", "password"))))


def credential_kind(entry: Mapping[str, Any]) -> str:
    return "oauth" if entry.get("refresh_token") else "key"


class AccountsSync:
    """The scheduler's config and accounts-file part (a mixin of ``Scheduler``)."""

    store: StateStore
    _pools: dict[str, Pool]
    _anthropic: dict[str, dict[str, Any]]
    _file: AccountsFile | None
    _file_key: tuple[int, int, int] | None
    _poll_interval: float
    _next_poll: float
    _warned: set[str]
    _writer: concurrent.futures.ThreadPoolExecutor | None

    if TYPE_CHECKING:
        def _set_enabled(self, st: AccountState, *, persist: bool, transition: str = "enable") -> None: ...

        def _set_disabled(self, st: AccountState, reason: str, *, persist: bool, at: Any = None,
                          transition: str = "", by: str | None = "operator") -> None: ...

    def _share(self, pool: Pool, p: Mapping[str, Any]) -> None:
        """``accounts_from``: the pool serves with another provider's accounts.  They are the
        same account states, so one login is refreshed once, its rotated refresh token saved
        once, and a cooldown or a disable counts for every endpoint the login serves (a
        vendor limits the account, whichever of its endpoints is called)."""
        src = self._pools.get(str(p["accounts_from"]))
        where = f"providers[{pool.name}].accounts_from"
        if src is None:
            raise ValueError(f"{where}: no provider named {p['accounts_from']!r}")
        if src is pool or src.shared_from is not None:
            raise ValueError(f"{where}: '{src.name}' must be a provider with accounts of its own")
        if pool.states:
            raise ValueError(f"{where}: a provider that takes its accounts from '{src.name}' has none of its own")
        mine, theirs = self._anthropic.get(pool.name), self._anthropic.get(src.name)
        if mine is not None and (theirs is None or (terms.guarded(mine) and not terms.guarded(theirs))):
            # the terms guard screens an account where it is defined: it must hold here too
            raise ValueError(f"{where}: '{pool.name}' is aimed at Anthropic's API; it takes accounts only "
                             "from a provider aimed there too, with the same terms guard (docs/security.md)")
        pool.shared_from = src.name
        pool.states = src.states
        pool.rebuild()

    def _owned(self) -> Iterable[Pool]:
        """The pools that own their accounts (each account listed once)."""
        return (pool for pool in self._pools.values() if pool.shared_from is None)

    # -- building states ----------------------------------------------------------
    def _add(self, pool: Pool, entry: dict[str, Any], source: str) -> AccountState | None:
        aid = str(entry["id"])
        for other in self._owned():
            if any(st.id == aid for st in other.states):
                self._warn(f"dup:{aid}", "account id '%s' is defined twice; the second one is ignored", aid)
                return None
        kind = credential_kind(entry)
        account = Account(id=aid, weight=float(entry.get("weight", 1.0)))
        st = self.store.record(f"{pool.name}/{aid}",
                               lambda: AccountState(pool.name, account, credential=kind, source=source))
        self._update(pool, st, entry)
        if kind == "oauth" and st.oauth is None:
            self._set_disabled(st, f"no token endpoint: provider '{pool.name}' has no scheduler.oauth "
                               "and the account no token_url/client_id", persist=False, transition="config",
                               by="config")
        if entry.get("enabled") is False:
            self._set_disabled(st, "enabled: false in the config", persist=False, transition="config", by="config")
        pool.states.append(st)
        return st

    def _update(self, pool: Pool, st: AccountState, entry: Mapping[str, Any]) -> None:
        """Copy an entry's fields into the live account (in place: leases hold it)."""
        a = st.account
        a.weight = st.weight = float(entry.get("weight", 1.0))
        rescore(st, pool.policy)
        a.extra = {k: v for k, v in entry.items() if k not in _NOT_EXTRA}
        a.extra["credential"] = st.credential
        if st.credential == "key":
            key = entry.get("api_key")
            env = entry.get("api_key_env")
            if not key and env:
                key = os.environ.get(env)
                if not key and entry.get("aws_access_key_id") is None:
                    self._set_disabled(st, f"environment variable {env} is not set", persist=False,
                                       transition="config", by="config")
            a.api_key = key
        else:
            st.oauth = _oauth_for(pool.policy.oauth, entry)
            self._adopt_tokens(st, entry)
        verdict = terms.screen(self._anthropic.get(pool.name), entry)
        if verdict is not None:
            self._warn(f"terms:{st.id}", "%s", verdict[1])
            if verdict[0] and st.disabled_reason != terms.REASON:
                self._set_disabled(st, terms.REASON, persist=False, by="terms")
        own = entry.get("proxy")
        pol = pool.policy
        st.proxy = own if own else (proxy_for_id(st.id, pol.proxies) if pol.proxies and pol.proxy_mode == "hash"
                                    else None)
        _note_secrets(st)

    def _adopt_tokens(self, st: AccountState, entry: Mapping[str, Any]) -> bool:
        """Take the file's tokens when they differ from what we last saw there."""
        access = entry.get("access_token")
        if access == st.file_token and entry.get("refresh_token") == st.refresh_token:
            return False
        st.file_token = access
        st.account.api_key = access or None
        st.refresh_token = entry.get("refresh_token")
        exp = entry.get("expires_at")
        st.expires_at = float(exp) if isinstance(exp, (int, float)) else None
        st.needs_refresh = False
        _note_secrets(st)
        return True

    def _warn(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # -- the accounts file ----------------------------------------------------------
    def reload(self) -> None:
        """Re-read the accounts file now (SIGHUP)."""
        if self._file is None:
            return
        self._file_key = self._file.stat_key()
        try:
            self._apply_file(self._file.read())
        except AccountsFileError as e:
            log.error("accounts file not reloaded: %s", e)

    def install_sighup(self) -> None:
        """SIGHUP re-reads the accounts file (in-flight requests are not affected)."""
        from tornado.ioloop import IOLoop

        loop = IOLoop.current()
        signal.signal(signal.SIGHUP, lambda signum, frame: loop.add_callback_from_signal(self.reload))

    def _poll(self, now: float) -> None:
        self._next_poll = now + self._poll_interval
        assert self._file is not None
        key = self._file.stat_key()
        if key != self._file_key:
            self.reload()

    def _apply_file(self, doc: dict[str, Any]) -> None:
        seen: set[str] = set()
        changed: set[str] = set()
        for e in doc["accounts"]:
            pool = self._pools.get(e["provider"])
            aid = e["id"]
            if pool is None:
                self._warn(f"noprov:{aid}", "accounts file: account '%s' names unknown provider '%s'",
                           aid, e["provider"])
                continue
            if pool.shared_from is not None:
                self._warn(f"shared:{aid}", "accounts file: account '%s' names provider '%s', which takes "
                           "its accounts from '%s'; the account is ignored", aid, pool.name, pool.shared_from)
                continue
            seen.add(aid)
            st = pool.by_id.get(aid)
            if has_credential(e):
                if st is None:
                    st = self._add(pool, dict(e), "file")
                    if st is None:
                        continue
                    changed.add(pool.name)
                elif st.source == "config":
                    self._warn(f"shadow:{aid}", "accounts file: '%s' is defined in the config file; "
                               "its credentials in the accounts file are ignored", aid)
                else:
                    self._update(pool, st, e)
            elif st is None:
                self._warn(f"orphan:{aid}", "accounts file: '%s' has no credential and no account "
                           "in the config file", aid)
                continue
            self._apply_file_state(st, e)
        for pool in self._owned():
            gone = [st for st in pool.states if st.source == "file" and st.id not in seen]
            for st in gone:
                pool.states.remove(st)
                self.store.forget(f"{pool.name}/{st.id}")
                changed.add(pool.name)
        for pool in self._pools.values():
            if pool.name in changed or pool.shared_from in changed:
                pool.rebuild()

    def _apply_file_state(self, st: AccountState, e: Mapping[str, Any]) -> None:
        """A disable/enable written into the file (by a script or another process) applies here.

        Only a *change* relative to what we last saw in the file acts, so our own
        pending writes and an unchanged file never undo a newer state in memory.
        """
        if st.file_pending:
            return  # our own write is on its way; this is an older file
        disabled = bool(e.get("disabled"))
        prev = st.file_disabled
        st.file_disabled = disabled
        if prev == disabled:
            return
        if disabled and st.status is not DISABLED:
            by = e.get("disabled_by")
            self._set_disabled(st, str(e.get("disabled_reason") or "disabled in the accounts file"),
                               persist=False, at=e.get("disabled_at"), by=by if by in DISABLED_BY else "operator")
        elif not disabled and prev and st.status is DISABLED:
            self._set_enabled(st, persist=False)

    def _persist_disabled(self, st: AccountState) -> None:
        """Write a disable/enable to the file, off the event loop (one writer thread keeps order)."""
        f = self._file
        if f is None:
            return
        disabled = st.status is DISABLED
        args = (st.id, st.provider, disabled, st.disabled_reason, st.disabled_at, st.disabled_by)

        def write() -> None:
            try:
                f.set_disabled(*args)
            except Exception:
                log.exception("could not save the state of account '%s'", st.id)

        # what we write is what we hold: a later re-read must not look like an outside change
        st.file_disabled = disabled
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            write()
            return
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="accounts-file")
        st.file_pending += 1

        def landed(_: Any) -> None:
            st.file_pending -= 1
        loop.run_in_executor(self._writer, write).add_done_callback(landed)
