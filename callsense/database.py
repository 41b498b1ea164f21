"""The embedded PostgreSQL behind `callsense up` and the tests, and the choice between it and `DATABASE_URL`.

pgserver ships a PostgreSQL 16 build and runs it on a Unix socket with trust auth. Measured on the 2-core
dev box while a training job held both cores: cold start (initdb + start + CREATE DATABASE) 3.3-4.3 s;
warm start (data dir exists, server stopped) 0.13-0.14 s; attaching to a server another process already
runs 0.01 s; stop 0.1 s (about 1 s for the first stop after initdb, which checkpoints the new cluster).

Its quirks, and what this module does about them:
- As root it runs the server as a system user `pgserver`, chowns the data dir to it and adds read/execute
  for everyone on every parent directory up to `/`. So the default data dir lives under /var/tmp, never in
  the repository or a home directory.
- It picks its lock and socket fallback directory from `XDG_RUNTIME_DIR` when the module is imported, so we
  set that variable (to a private 0700 directory) before the first import.
- It shares one server between processes through a list of "handle" pids kept in the data dir and stops the
  server only when the last handle goes. A process killed without clean-up stays on that list forever and
  the server would then never stop: dead pids are pruned when we attach and when we stop.
- Its clean-up can silently leave the postmaster running; `stop()` verifies, and ends what is left.
  (A stopped postmaster lingers as a zombie until PID 1 reaps it; that counts as stopped.)

Everything here blocks (it starts processes and waits): from asyncio code call it through
`asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import psutil
import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATABASE = "callsense"
_HANDLES_FILE = ".handle_pids.json"  # pgserver's list of processes holding the server
_STOP_WAIT_S = 10.0


def database_url() -> str | None:
    """The production database from `DATABASE_URL`; None means: start the embedded one."""
    return os.environ.get("DATABASE_URL") or None


def default_data_dir(repo_root: Path = REPO_ROOT) -> Path:
    """One data dir per checkout, outside it (pgserver chowns the dir and opens up its parents)."""
    digest = hashlib.sha256(str(repo_root.resolve()).encode()).hexdigest()[:12]
    return Path("/var/tmp/callsense-pg") / digest


class EmbeddedPostgres:
    """A running embedded server; `uri` points at its `database`. Stop it with `stop()` or a `with` block."""

    def __init__(self, server: PostgresServer, data_dir: Path, database: str) -> None:
        self._server: PostgresServer | None = server
        self._postmaster = server.get_postmaster_info()
        self.data_dir = data_dir
        self.database = database
        self.pid: int = self._postmaster.pid
        self.uri: str = self._postmaster.get_uri(database=database)

    def database_uri(self, database: str) -> str:
        """The URI of another database in the same server (tests, a second region)."""
        return str(self._postmaster.get_uri(database=database))

    def create_database(self, database: str) -> str:
        """Create `database` if it is missing; returns its URI."""
        _ensure_database(self.database_uri("postgres"), database)
        return self.database_uri(database)

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        """Release this process's handle; stop the server unless another live process still holds it."""
        server, self._server = self._server, None
        if server is None:
            return
        from pgserver.postgres_server import PostgresServer

        # pgserver stops the server only when its handle list holds this process alone: drop the dead.
        with PostgresServer._lock:
            _prune_dead_handles(self.data_dir)
        # pgserver counts `with` entries: leaving the last one runs its clean-up (pg_ctl stop -w).
        server.__exit__(None, None, None)
        if server._count > 0 or _other_live_handles(self.data_dir):
            return  # still used: by another EmbeddedPostgres here, or another process (`callsense up`)
        _ensure_stopped(self.pid)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_embedded_postgres(
    data_dir: Path | None = None, *, database: str = DEFAULT_DATABASE, delete_on_stop: bool = False
) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server in `data_dir` and make sure `database` exists."""
    data_dir = (data_dir or default_data_dir()).resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    _ensure_runtime_dir()
    from pgserver.postgres_server import PostgresServer, get_server  # reads XDG_RUNTIME_DIR at import

    started = time.perf_counter()
    with PostgresServer._lock:  # the lock pgserver itself holds while it edits the handle list
        _prune_dead_handles(data_dir)
    server = get_server(data_dir, cleanup_mode="delete" if delete_on_stop else "stop")
    # A cached server object may already have dropped this pid from its handle list; re-register it.
    server.global_process_id_list.get_and_add(os.getpid())
    server.__enter__()
    embedded = EmbeddedPostgres(server, data_dir, database)
    try:
        _ensure_database(embedded.database_uri("postgres"), database)
    except BaseException:
        embedded.stop()
        raise
    log.info("embedded PostgreSQL ready in %.2f s at %s", time.perf_counter() - started, data_dir)
    return embedded


def _ensure_runtime_dir() -> None:
    """Give pgserver a private XDG_RUNTIME_DIR when the session has none (root shells often lack one)."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = Path(tempfile.gettempdir()) / f"callsense-runtime-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
        private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077 == 0
    except OSError:
        private = False
    if not private:  # somebody else's, or a link: never trust it, take a fresh one
        path = Path(tempfile.mkdtemp(prefix="callsense-runtime-"))
    os.environ["XDG_RUNTIME_DIR"] = str(path)


def _read_handles(data_dir: Path) -> list[int]:
    try:
        return [int(pid) for pid in json.loads((data_dir / _HANDLES_FILE).read_text())]
    except (OSError, ValueError, TypeError):
        return []


def _prune_dead_handles(data_dir: Path) -> None:
    """Drop pids of processes that died without releasing the server (else it would never be stopped)."""
    handles = _read_handles(data_dir)
    alive = [pid for pid in handles if psutil.pid_exists(pid)]
    if alive != handles:
        log.info("pgserver: dropping dead handle pids %s", sorted(set(handles) - set(alive)))
        (data_dir / _HANDLES_FILE).write_text(json.dumps(alive))


def _other_live_handles(data_dir: Path) -> bool:
    return any(pid != os.getpid() and psutil.pid_exists(pid) for pid in _read_handles(data_dir))


def _ensure_stopped(postmaster_pid: int) -> None:
    """Wait for the postmaster and its children to exit; terminate, then kill, whatever lingers."""
    try:
        postmaster = psutil.Process(postmaster_pid)
        procs = [postmaster, *postmaster.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    alive = _wait_stopped(procs, _STOP_WAIT_S)
    if not alive:
        return
    log.warning("embedded PostgreSQL still running after stop; terminating %s", [p.pid for p in alive])
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    alive = _wait_stopped(alive, 3.0)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _wait_stopped(alive, 3.0)


def _wait_stopped(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in procs if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _running(proc: psutil.Process) -> bool:
    # The postmaster is a daemon: once stopped it stays a zombie until PID 1 reaps it (about 1.5 s in
    # this VM). A zombie runs nothing and holds no port, socket or memory, so it counts as stopped.
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _ensure_database(maintenance_uri: str, database: str) -> None:
    with psycopg.connect(maintenance_uri, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            return
        # Two processes may race here; the loser's duplicate is harmless.
        with contextlib.suppress(psycopg.errors.DuplicateDatabase):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
