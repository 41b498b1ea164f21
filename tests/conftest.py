"""Shared fixtures. Suites that need ../shared/data skip loudly (a reason `-ra` prints) where it is absent.

The fixture modules are plugins, registered here once: a session-scoped fixture (the embedded
PostgreSQL, the chopper, scorer and post-call processes) is then set up once per run, never once per
test module that imports it (pytest-dev/pytest#12727). The layout under tests/ mirrors the packages;
tests/e2e/ runs the whole mesh; `pytest -m "not slow"` (./dev.sh fast) is the quick loop.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import shared_data_dir

pytest_plugins = ["tests.support.mesh", "tests.support.delivery", "tests.support.checkpoints"]

TEST_DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "sentiment").is_dir():
        pytest.skip(f"SHARED DATA ABSENT: {path} not found; evaluation suites need ../shared/data")
    return path
