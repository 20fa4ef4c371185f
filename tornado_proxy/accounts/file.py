"""The accounts file: credentials that change at run time, shared by processes.

Layout (JSON, mode 0600)::

    {"version": 1, "generation": 12, "accounts": [
        {"id": "claude-1", "provider": "anthropic", "api_key": "...", "weight": 2},
        {"id": "codex-1", "provider": "openai", "refresh_token": "...",
         "access_token": "...", "expires_at": 1767225600},
        {"id": "openai-main", "provider": "openai", "disabled": true,
         "disabled_reason": "402 payment required"}]}

The last form, an entry without a credential, is a *state overlay* for an account
defined in the config file: it keeps a disabled flag across restarts.

Why it is written the way it is:

* Refresh tokens are often single-use.  Losing the rotated one loses the account, so
  every write is atomic (temp file in the same directory, fsync, rename, fsync of the
  directory) and a write that was killed after its temp file was complete is
  *recovered* by the next writer (the temp file carries ``generation + 1``).
* Several worker processes share one file.  ``<file>.lock`` (``fcntl.flock``) guards
  every read-modify-write; ``<file>.locks/<hash>`` guards the refresh of one account,
  so only one process spends a refresh token and the others re-read the file and
  pick up its result.
* Readers never lock: they see either the old or the new file, never half of one.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import time
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

from tornado_proxy import jsonutil

from tornado_proxy.observability import redact

T = TypeVar("T")

# Fields that are secrets: never printed, never in a snapshot.
SECRET_FIELDS = frozenset({"api_key", "refresh_token", "access_token", "aws_secret_access_key",
                           "aws_session_token", "client_secret", "password"})
CREDENTIAL_FIELDS = ("api_key", "api_key_env", "refresh_token", "aws_access_key_id")


class AccountsFileError(Exception):
    pass


def mask(secret: str | None) -> str:
    """A hint that tells keys apart without revealing them."""
    if not secret:
        return ""
    return "****" + secret[-4:] if len(secret) >= 16 else "****"


def doc_secrets(doc: dict[str, Any]) -> list[str]:
    """Every secret value in an accounts document."""
    return [v for a in doc.get("accounts") or () if isinstance(a, dict)
            for k, v in a.items() if k in SECRET_FIELDS and isinstance(v, str)]


def scrub_reasons(doc: dict[str, Any]) -> None:
    """Mask any secret of the document (or known to the scrubber) in its free text."""
    secrets = None
    for a in doc["accounts"]:
        r = a.get("disabled_reason")
        if isinstance(r, str) and r:
            if secrets is None:
                secrets = doc_secrets(doc)
            a["disabled_reason"] = redact.scrub_with(r, secrets)


def clip(text: str, n: int = 300) -> str:
    """A message scrubbed of secrets and cut to ``n`` characters, as it is shown and saved."""
    # scrubbed before the cut: half a secret would no longer match it
    text = redact.text(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def has_credential(entry: dict[str, Any]) -> bool:
    return any(entry.get(f) for f in CREDENTIAL_FIELDS)


def empty_doc() -> dict[str, Any]:
    return {"version": 1, "generation": 0, "accounts": []}


def check_doc(doc: Any) -> dict[str, Any]:
    """Raise AccountsFileError unless ``doc`` is a well-formed accounts document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("accounts"), list):
        raise AccountsFileError("an accounts file is an object with an 'accounts' list")
    if not isinstance(doc.get("generation", 0), int):
        raise AccountsFileError("'generation' must be an integer")
    seen: set[str] = set()
    for i, a in enumerate(doc["accounts"]):
        if not isinstance(a, dict):
            raise AccountsFileError(f"accounts[{i}] is not an object")
        aid = a.get("id")
        if not isinstance(aid, str) or not aid:
            raise AccountsFileError(f"accounts[{i}].id is missing")
        if aid in seen:
            raise AccountsFileError(f"accounts[{i}].id '{aid}' appears twice")
        seen.add(aid)
        if not isinstance(a.get("provider"), str) or not a["provider"]:
            raise AccountsFileError(f"accounts[{i}].provider is missing")
        if "weight" in a and (not isinstance(a["weight"], (int, float)) or a["weight"] <= 0):
            raise AccountsFileError(f"accounts[{i}].weight must be a positive number")
    return doc


def find(doc: dict[str, Any], account_id: str) -> dict[str, Any] | None:
    for a in doc["accounts"]:
        if a.get("id") == account_id:
            return a  # type: ignore[no-any-return]
    return None


class AccountsFile:
    """One accounts file on disk.  Safe across processes; see the module docstring."""

    def __init__(self, path: str, *, lock_poll: float = 0.05, lock_timeout: float = 60.0) -> None:
        self.path = os.path.abspath(path)
        self.dir = os.path.dirname(self.path)
        base = os.path.basename(self.path)
        self.tmp_path = os.path.join(self.dir, f".{base}.tmp")
        self.lock_path = self.path + ".lock"
        self.locks_dir = self.path + ".locks"
        self.lock_poll = lock_poll
        self.lock_timeout = lock_timeout

    # -- reading ----------------------------------------------------------------
    def stat_key(self) -> tuple[int, int, int] | None:
        """Changes whenever the file is replaced or edited (inode, size, mtime)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self) -> dict[str, Any]:
        """The current document, without locking (writes are atomic renames)."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return empty_doc()
        try:
            doc = jsonutil.loads(raw)
        except ValueError as e:
            raise AccountsFileError(f"{self.path}: not valid JSON ({e})") from None
        return check_doc(doc)

    def load(self) -> dict[str, Any]:
        """Read under the write lock, recovering a write that was killed half-way."""
        with self.write_lock():
            self._recover()
            return self.read()

    # -- writing ----------------------------------------------------------------
    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """The cross-process lock for a read-modify-write (held for milliseconds)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def modify(self, fn: Callable[[dict[str, Any]], T]) -> T:
        """Run ``fn(doc)`` on the freshest document and write the result atomically."""
        with self.write_lock():
            self._recover()
            doc = self.read()
            result = fn(doc)
            check_doc(doc)
            scrub_reasons(doc)  # the file is read by people and scripts, and backed up
            doc["version"] = 1
            doc["generation"] = int(doc.get("generation", 0)) + 1
            self._write(doc)
            return result

    def _write(self, doc: dict[str, Any]) -> None:
        data = jsonutil.dumpb(doc)
        fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)  # the data is on disk before the name points at it
        finally:
            os.close(fd)
        os.replace(self.tmp_path, self.path)
        self._fsync_dir()  # and the rename itself survives a power cut

    def _fsync_dir(self) -> None:
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _recover(self) -> None:
        """Finish or discard the temp file of a writer that died (caller holds the write lock).

        Holding the lock, no live writer can own the temp file.  It is adopted when it
        is a complete document one generation ahead of the file: that writer had
        everything (perhaps a rotated refresh token nobody else has) and only failed
        to rename.  Anything else (truncated, stale) is removed.
        """
        try:
            with open(self.tmp_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return
        adopt = False
        try:
            tmp = check_doc(jsonutil.loads(raw))
            cur_gen = int(self.read().get("generation", 0))
            adopt = int(tmp.get("generation", 0)) == cur_gen + 1
        except (ValueError, AccountsFileError):
            adopt = False
        if adopt:
            fd = os.open(self.tmp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp_path, self.path)
            self._fsync_dir()
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp_path)

    # -- per-account refresh lock ---------------------------------------------
    @contextlib.asynccontextmanager
    async def refresh_lock(self, account_id: str) -> AsyncIterator[None]:
        """Only one process refreshes an account at a time.

        ``flock`` would block the event loop, so it is tried without blocking and
        retried on a short timer.
        """
        os.makedirs(self.locks_dir, mode=0o700, exist_ok=True)
        name = hashlib.sha256(account_id.encode("utf-8")).hexdigest()[:24] + ".lock"
        fd = os.open(os.path.join(self.locks_dir, name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() > deadline:
                    raise AccountsFileError(f"timed out waiting for the refresh lock of account '{account_id}'")
                await asyncio.sleep(self.lock_poll)
            yield
        finally:
            os.close(fd)

    # -- edits used by the admin API and the bin/ scripts -----------------------
    def upsert(self, entry: dict[str, Any]) -> None:
        def fn(doc: dict[str, Any]) -> None:
            cur = find(doc, entry["id"])
            if cur is None:
                doc["accounts"].append(dict(entry))
            else:
                cur.update(entry)
        self.modify(fn)

    def set_disabled(self, account_id: str, provider: str, disabled: bool, reason: str | None = None,
                     at: float | None = None, by: str | None = None) -> None:
        """Record a disable or enable; creates a state overlay for a config-file account."""
        def fn(doc: dict[str, Any]) -> None:
            cur = find(doc, account_id)
            if cur is None:
                if not disabled:
                    return  # a config account with no overlay is enabled already
                cur = {"id": account_id, "provider": provider}
                doc["accounts"].append(cur)
            cur["disabled"] = disabled
            if disabled:
                cur["disabled_reason"] = reason or "disabled"
                cur["disabled_at"] = at if at is not None else time.time()
                if by:  # who: an automatic disable (the 401/403 counter) is re-probed, an operator's never
                    cur["disabled_by"] = by
                else:
                    cur.pop("disabled_by", None)
            else:
                cur.pop("disabled_reason", None)
                cur.pop("disabled_at", None)
                cur.pop("disabled_by", None)
        self.modify(fn)

    def save_tokens(self, account_id: str, access_token: str, refresh_token: str, expires_at: float) -> None:
        def fn(doc: dict[str, Any]) -> None:
            cur = find(doc, account_id)
            if cur is None:
                raise AccountsFileError(f"account '{account_id}' is no longer in {self.path}")
            cur["access_token"] = access_token
            cur["refresh_token"] = refresh_token
            cur["expires_at"] = expires_at
        self.modify(fn)
