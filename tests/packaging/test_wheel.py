"""The built wheel is complete and, installed in a fresh venv, starts and serves.

The contents check builds the wheel (a few seconds) and runs in the normal suite.  The
full check (fresh venv, dependencies installed, every shipped config checked, one
request served, SIGTERM) takes about twenty seconds, so the normal suite leaves it to
CI, which runs ``tests/packaging/check_wheel.py`` after the suite (``.ci/run``); set
``TORNADO_PROXY_PACKAGING=1`` to run it here too.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.packaging.check_wheel import build_wheel, install_and_run, wheel_problems


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    work = tmp_path_factory.mktemp("wheel")
    yield build_wheel(work), work


def test_wheel_holds_every_package_schema_and_config(built: tuple[Path, Path]) -> None:
    wheel, _ = built
    assert wheel_problems(wheel) == []
    names = zipfile.ZipFile(wheel).namelist()
    # what a start needs most: the route handlers and a provider's options schema
    assert "tornado_proxy/handlers/__init__.py" in names
    assert "tornado_proxy/_data/schemas/providers/anthropic.options.json" in names
    assert "tornado_proxy/_data/conf/default.json" in names


@pytest.mark.skipif(os.environ.get("TORNADO_PROXY_PACKAGING") != "1",
                    reason="about 20 s; CI runs tests/packaging/check_wheel.py (TORNADO_PROXY_PACKAGING=1 to run)")
def test_installed_wheel_checks_configs_serves_and_stops_cleanly(built: tuple[Path, Path]) -> None:
    wheel, work = built
    install_and_run(wheel, work)
