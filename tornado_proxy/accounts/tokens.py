"""OAuth orchestration: an account's access token refreshed before a lease uses it.

One refresh at a time per account (in this process: a shared future; across processes:
the accounts file's lock; across replicas: the state store's fenced lock), and a rotated
refresh token saved, fsynced, before the access token it came with is used.  The token
endpoint itself is ``oauth.py``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping

from tornado_proxy.accounts import oauth
from tornado_proxy.accounts.file import AccountsFile, AccountsFileError, clip, find
from tornado_proxy.accounts.leases import Lease
from tornado_proxy.errors import ErrorKind, ProxyError
from tornado_proxy.observability import redact
from tornado_proxy.state.accounts_state import AccountState, StateStore
from tornado_proxy.state.store import LockTimeout

log = logging.getLogger("tornado_proxy.accounts.scheduler")

# What an account whose refresh token the token endpoint refuses as invalid_grant says.
SPENT = "refresh token was spent; re-authorise"


class TokenRefresh:
    """The scheduler's OAuth part (a mixin of ``Scheduler``)."""

    wall_clock: Callable[[], float]
    store: StateStore
    _file: AccountsFile | None

    if TYPE_CHECKING:
        def _adopt_tokens(self, st: AccountState, entry: Mapping[str, Any]) -> bool: ...

        def _set_disabled(self, st: AccountState, reason: str, *, persist: bool, at: Any = None,
                          transition: str = "", by: str | None = "operator") -> None: ...

    # -- OAuth --------------------------------------------------------------------------
    async def _ensure_token(self, lease: Lease) -> None:
        st = lease.state
        assert st is not None and st.oauth is not None
        if not st.needs_refresh and st.account.api_key and st.expires_at is not None \
                and st.expires_at - st.oauth.refresh_ahead > self.wall_clock():
            return
        pending = st.refreshing
        if pending is not None:  # one refresh at a time per account: wait for it
            await asyncio.shield(pending)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        st.refreshing = fut
        try:
            await self._refresh(st, lease)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        else:
            fut.set_result(None)
        finally:
            st.refreshing = None

    async def _refresh(self, st: AccountState, lease: Lease) -> None:
        assert st.oauth is not None
        f = self._file
        if f is None:
            raise ProxyError(ErrorKind.INTERNAL, f"account '{st.id}': OAuth accounts need an accounts_file")
        key = f"{st.provider}/{st.id}"
        shared_lock = getattr(self.store, "refresh_lock", None)
        try:
            # Across replicas (Redis: a lock with a TTL and a fencing token), then across
            # this machine's processes (the accounts file's flock).
            # The lock outlives the slowest refresh (its timeout) with room to spare: a
            # holder that outlived its lock would rotate beside the next one.
            hold = st.oauth.timeout + 30.0
            async with (shared_lock(key, hold, hold) if shared_lock is not None else contextlib.nullcontext()) \
                    as fence, f.refresh_lock(st.id):
                doc = f.load()  # recovers a write that a killed process left half-done
                entry = find(doc, st.id)
                if entry is None or not entry.get("refresh_token"):
                    raise ProxyError(ErrorKind.UPSTREAM_AUTH,
                                     f"account '{st.id}' is no longer in the accounts file")
                if fence is not None:
                    # another replica may have rotated the tokens: then its refresh token is
                    # the only valid one, and it is in the store, not in our file
                    theirs = await self.store.load_tokens(key)  # type: ignore[attr-defined]
                    if theirs and theirs.get("refresh_token") and \
                            theirs.get("refresh_token") != entry.get("refresh_token"):
                        if _newer(theirs, entry):
                            f.save_tokens(st.id, theirs.get("access_token"), theirs["refresh_token"],
                                          theirs.get("expires_at"))
                            entry = {**entry, **theirs}
                        else:
                            # a process of ours rotated while it could not reach the store:
                            # the file's tokens are the valid ones; the other replicas hear now
                            await self.store.save_tokens(key, fence, {  # type: ignore[attr-defined]
                                "access_token": entry.get("access_token"),
                                "refresh_token": entry["refresh_token"], "expires_at": entry.get("expires_at")})
                held = st.unsaved_tokens
                if held is not None:
                    # an earlier rotation could not be saved: its refresh token is the only
                    # valid one, so it is saved before anything is refreshed with the old one
                    f.save_tokens(st.id, held["access_token"], held["refresh_token"], held["expires_at"])
                    st.unsaved_tokens = None
                    entry = {**entry, **held}
                    log.warning("account '%s': the rotated refresh token is saved now", st.id)
                wall = self.wall_clock()
                # Another process may have refreshed while we waited for the lock: its
                # token is in the file, and its refresh token is the only valid one now.
                # (We may have taken it already, from a poll of the file while we waited:
                # it is just as fresh then, and refreshing again would rotate for nothing.)
                self._adopt_tokens(st, entry)
                if not st.needs_refresh and st.account.api_key and st.expires_at is not None \
                        and st.expires_at - st.oauth.refresh_ahead > wall:
                    return
                spent = str(entry["refresh_token"])
                try:
                    tokens = await oauth.refresh(st.oauth, spent, wall, lease.proxy)
                except oauth.RefreshError as e:
                    st.refresh_failed += 1
                    if e.dead and e.code == "invalid_grant" and await self._rotated_meanwhile(st, key, spent):
                        # not spent by a lost answer: another holder rotated it (a lock it
                        # outlived); its tokens are the valid ones, and we now hold them
                        log.warning("account '%s': its refresh token had been rotated elsewhere; "
                                    "using the newer one", st.id)
                        return
                    if e.dead:
                        # invalid_grant for the refresh token we hold: it was used already (a
                        # rotation whose answer was lost) or revoked; only a new login helps
                        why = (f"{SPENT}: {e.message}" if e.code == "invalid_grant"
                               else f"refresh token rejected: {e.message}")
                        self._set_disabled(st, clip(why, 200), persist=True, by="refresh")
                    # keep serving on the current token while it is still valid
                    if not e.dead and not st.needs_refresh and st.account.api_key \
                            and st.expires_at is not None and st.expires_at > self.wall_clock() + 5:
                        log.warning("account '%s': refresh failed, current token still valid: %s",
                                    st.id, e.message)
                        return
                    kind = ErrorKind.UPSTREAM_AUTH if e.dead else ErrorKind.UPSTREAM_UNREACHABLE
                    raise ProxyError(kind, f"account '{st.id}': token refresh failed: {e.message}") from None
                saved = {"access_token": tokens.access_token, "refresh_token": tokens.refresh_token,
                         "expires_at": tokens.expires_at}
                if fence is not None and not await self.store.save_tokens(key, fence, saved):  # type: ignore[attr-defined]
                    # we stalled past the lock's TTL and a newer holder saved: its tokens win
                    theirs = await self.store.load_tokens(key)  # type: ignore[attr-defined]
                    if theirs:
                        self._adopt_tokens(st, theirs)
                    return
                # Saved at once, under the lock, and fsynced before the access token is used:
                # a rotated refresh token exists nowhere else.
                try:
                    f.save_tokens(st.id, tokens.access_token, tokens.refresh_token, tokens.expires_at)
                except (AccountsFileError, OSError) as e:
                    st.unsaved_tokens = saved  # not lost with this request: saved on the next
                    redact.note(f"account:{key}:unsaved", (tokens.access_token, tokens.refresh_token))
                    log.error("account '%s': could not save the rotated refresh token (%s); it is kept in "
                              "memory and saved before the next refresh", st.id, redact.text(str(e)))
                    raise ProxyError(ErrorKind.UPSTREAM_ERROR,
                                     f"account '{st.id}': could not save the rotated tokens") from None
                self._adopt_tokens(st, {"access_token": tokens.access_token,
                                        "refresh_token": tokens.refresh_token,
                                        "expires_at": tokens.expires_at})
                st.refresh_ok += 1
                log.info("account '%s': token refreshed", st.id)
        except (AccountsFileError, LockTimeout, OSError) as e:
            # not the request's fault: another account may serve it
            raise ProxyError(ErrorKind.UPSTREAM_ERROR, f"account '{st.id}': {redact.text(str(e))}") from None

    async def _rotated_meanwhile(self, st: AccountState, key: str, spent: str) -> bool:
        """After invalid_grant for ``spent``: do the file or the store hold another
        refresh token (then it is the valid one: we take it, and the account is fine)?"""
        f = self._file
        assert f is not None
        entry = find(f.load(), st.id)
        if entry is not None and entry.get("refresh_token") and entry["refresh_token"] != spent:
            self._adopt_tokens(st, entry)
            return True
        theirs = await self.store.load_tokens(key) if hasattr(self.store, "load_tokens") else None  # type: ignore[attr-defined]
        if theirs and theirs.get("refresh_token") and theirs["refresh_token"] != spent:
            f.save_tokens(st.id, theirs.get("access_token"), theirs["refresh_token"], theirs.get("expires_at"))
            self._adopt_tokens(st, theirs)
            return True
        return False


def _newer(theirs: Mapping[str, Any], ours: Mapping[str, Any]) -> bool:
    """Are the store's tokens a later rotation than the file's?  A rotation issues an
    access token that expires later; tokens without an expiry count as newer (the store
    is where replicas hear of each other's rotations)."""
    a, b = theirs.get("expires_at"), ours.get("expires_at")
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return True
    return a >= b
