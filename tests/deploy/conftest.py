"""One gateway with traffic per worker count, scraped once per test session."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from .support import Scraped, scrape_after_traffic


@pytest.fixture(scope="session")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Scraped]:
    cache: dict[int, Scraped] = {}

    def get(workers: int) -> Scraped:
        if workers not in cache:
            cache[workers] = scrape_after_traffic(workers, Path(tmp_path_factory.mktemp(f"scrape{workers}")))
        return cache[workers]
    return get
