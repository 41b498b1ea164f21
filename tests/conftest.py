"""Shared fixtures. Suites that need ../shared/data skip loudly (a reason `-ra` prints) where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import shared_data_dir

TEST_DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "sentiment").is_dir():
        pytest.skip(f"SHARED DATA ABSENT: {path} not found; evaluation suites need ../shared/data")
    return path
