"""One gateway with traffic per worker count, scraped once per test session."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from .support import Scraped, release_shared_builds, scrape_after_traffic


def pytest_sessionfinish(session: pytest.Session) -> None:
    release_shared_builds()


@pytest.fixture(scope="session")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Scraped]:
    cache: dict[int, Scraped] = {}

    def get(workers: int) -> Scraped:
        if workers not in cache:
            cache[workers] = scrape_after_traffic(workers, Path(tmp_path_factory.mktemp(f"scrape{workers}")))
        return cache[workers]
    return get
