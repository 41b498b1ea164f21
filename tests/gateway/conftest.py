"""Fixtures of the gateway's store tests, registered once: a database of the module's own on the test
PostgreSQL (tests/support/mesh.py's gateway_pg, never `callsense up`'s) and a Store open on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from callsense.database import EmbeddedPostgres
from gateway.store import Store
from tests.support.mesh import fresh_database


@pytest.fixture(scope="module")
def db_url(gateway_pg: EmbeddedPostgres) -> Iterator[str]:
    """A database of this module's own, dropped after it."""
    yield from fresh_database(gateway_pg)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    store = await Store.open(db_url, min_size=1, max_size=4)
    yield store
    await store.close()
