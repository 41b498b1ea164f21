"""A PostgreSQL of a test's own, to stop and start again, or to freeze and thaw: database outages tried for
real. Freezing (SIGSTOP to the postmaster and every backend) makes the server stop answering, as a
crashed host or a network partition would: connections hang instead of being refused. It also needs no
fork from the test process, which matters when that process runs gRPC threads (pgserver's pg_ctl start
forks with a preexec function, which has crashed in such a process)."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

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

    def _processes(self) -> list[psutil.Process]:
        postmaster = psutil.Process(int((self._data / "postmaster.pid").read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> None:
        """The server stops answering (every process SIGSTOPped) without anything being closed."""
        for process in self._processes():
            process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for process in self._processes():
            process.send_signal(signal.SIGCONT)

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
