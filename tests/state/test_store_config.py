"""state.timeout's default per store: a local (SQLite) store waits on another process's
write lock up to SQLite's busy timeout before it counts as down; Redis, 1 s."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tornado_proxy.state.config import LOCAL_TIMEOUT, make_store
from tornado_proxy.state.local import LocalBackend


@pytest.mark.parametrize("state,expected", [
    ({"store": "local"}, LOCAL_TIMEOUT),
    ({"store": "local", "timeout": 0.5}, 0.5),
    ({"store": "redis", "url": "redis://127.0.0.1:1/0"}, 1.0),
    ({"store": "redis", "url": "redis://127.0.0.1:1/0", "timeout": 3}, 3.0),
])
def test_the_store_timeout_default_follows_the_store(tmp_path: Path, state: dict, expected: float) -> None:
    if state["store"] == "local":
        state = {**state, "path": str(tmp_path)}
    st = make_store(SimpleNamespace(state=state))
    assert st.timeout == expected  # type: ignore[attr-defined]
    if state["store"] == "local":
        assert isinstance(st.backend, LocalBackend)  # type: ignore[attr-defined]
        assert LOCAL_TIMEOUT >= st.backend.busy_timeout  # type: ignore[attr-defined]
