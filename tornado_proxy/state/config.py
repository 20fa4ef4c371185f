"""The top-level ``state`` config key -> the process's state store.

    "state": {"store": "local", "path": "/var/lib/tornado-proxy"}
    "state": {"store": "redis", "url": "redis://127.0.0.1:6379/0"}

Without a ``state`` key the store is ``local``.  Where its file goes (docs/state.md):
``<path>/state.db`` when ``path`` is set; else next to the accounts file when there
is one (``<accounts file>.state.db``); else ``$XDG_STATE_HOME/tornado-proxy/state.db``
(``~/.local/state/tornado-proxy/state.db`` when XDG_STATE_HOME is unset).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from tornado_proxy.state.accounts_state import MemoryStateStore, StateStore

STORES = ("memory", "local", "redis")
DEFAULT_PREFIX = "{tornado-proxy}:"


def problems(raw: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say about ``state`` (field names in every message)."""
    st = raw.get("state")
    if not isinstance(st, dict):
        return []
    out = []
    store = st.get("store", "local")
    if store == "redis":
        url = st.get("url")
        if not url:
            out.append("$.state.url: is required when state.store is 'redis'")
        elif not str(url).startswith(("redis://", "rediss://", "unix://")):
            # the value is not quoted: a Redis URL may carry a password
            out.append("$.state.url: expected a redis://, rediss:// or unix:// URL")
        if "path" in st:
            out.append("$.state.path: only for state.store 'local'")
    else:
        if "url" in st:
            out.append(f"$.state.url: only for state.store 'redis', not {store!r}")
        if store == "memory" and "path" in st:
            out.append("$.state.path: only for state.store 'local'")
    return out


def default_path(config: Any) -> str:
    conf = getattr(config, "state", None) or {}
    if conf.get("path"):
        return os.path.join(os.path.expanduser(str(conf["path"])), "state.db")
    accounts = getattr(config, "accounts_file", None)
    if accounts:
        source = getattr(config, "source", "")
        if not os.path.isabs(accounts) and source and os.path.isfile(source):
            accounts = os.path.join(os.path.dirname(os.path.abspath(source)), accounts)
        return os.path.abspath(accounts) + ".state.db"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "tornado-proxy", "state.db")


LOCAL_TIMEOUT = 5.0  # the local store's default ``state.timeout``: its SQLite busy_timeout


def make_store(config: Any) -> StateStore:
    conf = getattr(config, "state", None) or {}
    kind = conf.get("store", "local")
    if kind == "memory":
        return MemoryStateStore()
    from tornado_proxy.state.store import SharedStateStore

    # A local store's operation waits on SQLite's lock while another process of this
    # machine writes (busy_timeout 5 s): on a loaded machine that is slow, not down.
    # Redis is across the network: down after 1 s.
    sync = float(conf.get("sync_interval", 0.25))
    timeout = float(conf.get("timeout", 1.0 if kind == "redis" else LOCAL_TIMEOUT))
    if kind == "redis":
        from tornado_proxy.observability import redact
        from tornado_proxy.state.redis_store import RedisBackend

        url = str(conf["url"])
        redact.note("state:url", [_password(url)])
        return SharedStateStore(RedisBackend(url, str(conf.get("prefix") or DEFAULT_PREFIX), timeout),
                                sync_interval=sync, timeout=timeout)
    from tornado_proxy.state.local import LocalBackend

    return SharedStateStore(LocalBackend(default_path(config)), sync_interval=sync, timeout=timeout)


def _password(url: str) -> str | None:
    import urllib.parse

    try:
        return urllib.parse.urlsplit(url).password
    except ValueError:
        return None
