"""Fixtures for the real-CLI tests: the installed CLIs (or a skip saying how to get them),
and the gateway in front of a scripted upstream of each type."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.clients.harness import CLI, ClaudeCode, Codex, find_cli, gateway_config
from tests.clients.scripted import ScriptedModel
from tests.e2e.harness import FakeUpstream, GatewayHandle, LoopThread, Recorded


def _cli(name: str) -> CLI:
    cli = find_cli(name)
    if cli is None:
        pytest.skip(f"{name} is not installed: run `bash tests/clients/install.sh` (needs node and npm)")
    return cli


@pytest.fixture(scope="session")
def claude_cli() -> CLI:
    return _cli("claude-code")


@pytest.fixture(scope="session")
def codex_cli() -> CLI:
    return _cli("codex")


@dataclass
class Stack:
    """The gateway, its one upstream (of type ``kind``) and the scripted model behind it."""
    kind: str
    gw: GatewayHandle
    up: FakeUpstream
    model: ScriptedModel

    @property
    def requests(self) -> list[Recorded]:
        """What the upstream received, in order."""
        return self.model.seen


@pytest.fixture
def stack(harness: LoopThread) -> Callable[..., Stack]:
    """``stack(kind)``: the gateway with every model name routed to one ``kind`` upstream."""
    def start(kind: str, **model: Any) -> Stack:
        up = harness.upstream()
        up.handler = scripted = ScriptedModel()
        return Stack(kind, harness.gateway(gateway_config(kind, up.url, **model)), up, scripted)
    return start


@pytest.fixture
def claude(claude_cli: CLI, tmp_path: Path) -> Callable[[Stack], ClaudeCode]:
    """``claude(stack)``: Claude Code in a fresh HOME, pointed at that gateway."""
    return lambda s: ClaudeCode(claude_cli, tmp_path / "home", tmp_path / "home" / "project", s.gw.url)


@pytest.fixture
def codex(codex_cli: CLI, tmp_path: Path) -> Callable[..., Codex]:
    """``codex(stack, **kw)``: Codex in a fresh HOME / CODEX_HOME, its provider at that gateway's /v1."""
    return lambda s, **kw: Codex(codex_cli, tmp_path / "home", tmp_path / "home" / "project",
                                 s.gw.url + "/v1", **kw)
