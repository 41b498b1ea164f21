"""A PostgreSQL of a test's own, to stop and start again: database outages tried for real."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from callsense.database import EmbeddedPostgres, start_embedded_postgres


class StoppablePostgres:
    def __init__(self, root: Path) -> None:
        self._data = root / "data"
        self._pg: EmbeddedPostgres | None = start_embedded_postgres(self._data)
        self.uri = self._pg.uri

    def stop(self) -> None:
        if self._pg is not None:
            self._pg.stop()
            self._pg = None

    def start(self) -> None:
        if self._pg is None:
            self._pg = start_embedded_postgres(self._data)
            assert self._pg.uri == self.uri, "the server came back elsewhere"


@contextmanager
def stoppable_postgres() -> Iterator[StoppablePostgres]:
    # Under /var/tmp: pgserver chowns its data directory and opens up the parents (never the checkout).
    root = Path(tempfile.mkdtemp(prefix="callsense-pg-outage-", dir="/var/tmp"))
    pg = StoppablePostgres(root)
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
