"""PostgreSQL for every process that stores something (psycopg 3, async pool): opening a database, its
schema, and which database a region's data lives in. The queries live with their owners: the gateway's
calls and events (gateway/store.py), the post-call worker's outbox, roll-ups and owed reports (postcall/).

- ``Database``: one pool on one database, migrated when opened. The repositories subclass it: one built
  with ``Repo.open(url)`` owns its pool, one built as ``Repo(other.pool)`` shares another's.
- Migrations: ``callsense/migrations/NNNN_name.sql``, applied in order at start-up and recorded in
  ``schema_migrations``. Every pending migration runs in one transaction under an advisory lock, so two
  processes starting together (gateway replicas, the worker) apply each migration once and a failed one
  leaves nothing half-done.
- ``RegionalStores``: data residency. A call whose region has its own database (``DATABASE_URL_EU``, ...)
  is stored only there; every other call goes to the default database. Each database has its own outbox
  and roll-ups.
- ``start_embedded_database`` / ``command_databases``: the embedded PostgreSQL (pgserver) when no
  ``DATABASE_URL`` is set, for the processes and for one-shot commands (``callsense rollup``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from callsense.config import Config

if TYPE_CHECKING:
    from callsense.database import EmbeddedPostgres

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Key of the advisory lock that serialises migrations; any constant works as long as nothing else uses it.
MIGRATION_LOCK_KEY = 0x63616C6C73656E73  # "callsens"
REGION_URL_PREFIX = "DATABASE_URL_"

Pool = AsyncConnectionPool[AsyncConnection[Any]]


class MigrationError(RuntimeError):
    """The migrations on disk disagree with what the database says was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str
    checksum: str


# --- migrations ---------------------------------------------------------------------------------------------

_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in `directory`, ordered by version (blocking file reads: call via a thread)."""
    migrations = []
    for path in sorted(directory.iterdir()):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            continue
        text = path.read_text(encoding="utf-8")
        checksum = hashlib.sha256(text.encode()).hexdigest()
        migrations.append(Migration(match[1], match[2], text, checksum))
    return migrations


async def apply_migrations(conn: AsyncConnection[Any], migrations: Sequence[Migration]) -> list[str]:
    """Apply the pending `migrations`; returns the versions applied (empty when up to date)."""
    async with conn.transaction():
        # Held to the end of the transaction: a second process waits here, then finds nothing to do.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version, checksum FROM schema_migrations")
        applied = {version: checksum for version, checksum in await cur.fetchall()}
        done = []
        for migration in migrations:
            if migration.version in applied:
                # An edited migration would never run again: refuse to start rather than drift silently.
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version}_{migration.name} changed after it ran"
                    )
                continue
            await conn.execute(migration.sql)  # no parameters: psycopg sends it as one multi-statement query
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            done.append(migration.version)
    if done:
        log.info("applied migrations %s", done)
    return done


# --- one database -------------------------------------------------------------------------------------------


class Database:
    """One PostgreSQL database through an async pool. Open with ``await Database.open(url)`` (or a
    repository subclass's ``open``); ``Repo(db.pool)`` shares the pool of one already open."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> Pool:
        return self._pool

    @classmethod
    async def open(
        cls,
        url: str,
        min_size: int = 1,
        max_size: int = 10,
        *,
        migrate: bool = True,
        timeout: float = 30.0,
        checkout_timeout_s: float = 30.0,
    ) -> Self:
        """Open a pool on `url`, wait for its first connections, and apply pending migrations.

        `checkout_timeout_s`: how long a caller waits for a connection while the database is away before
        psycopg_pool.PoolTimeout (the HTTP API answers 503 then); live calls ride out shorter outages."""
        pool: Pool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=checkout_timeout_s,
            open=False,
            # Single statements commit on their own; multi-statement work uses conn.transaction().
            kwargs={"autocommit": True},
            # A connection broken by a database restart is replaced at checkout, not handed to a caller.
            check=AsyncConnectionPool.check_connection,
            name="callsense-store",
        )
        await pool.open(wait=True, timeout=timeout)
        try:
            if migrate:
                migrations = await asyncio.to_thread(load_migrations)
                async with pool.connection() as conn:
                    await apply_migrations(conn, migrations)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self) -> list[str]:
        """Apply pending migrations now; returns the versions applied."""
        migrations = await asyncio.to_thread(load_migrations)
        async with self._pool.connection() as conn:
            return await apply_migrations(conn, migrations)


# --- region routing -----------------------------------------------------------------------------------------


def normalize_region(region: str | None) -> str:
    return (region or "").strip().lower()


def regional_urls_from_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`DATABASE_URL_EU=...` -> {"eu": ...}: one database per data-residency region."""
    return {
        normalize_region(key.removeprefix(REGION_URL_PREFIX)): url
        for key, url in env.items()
        if key.startswith(REGION_URL_PREFIX) and len(key) > len(REGION_URL_PREFIX) and url
    }


class _Closable(Protocol):
    async def close(self) -> None: ...


S = TypeVar("S", bound=_Closable)


class RegionalStores(Generic[S]):
    """The default store plus one per region that has its own database; picks the one a call belongs to.

    A region without its own database (and a call without a region) uses the default store: residency is
    enforced for the regions that are configured, as `DATABASE_URL_<REGION>` says.
    """

    def __init__(self, default: S, regional: Mapping[str, S] | None = None) -> None:
        self.default = default
        self.regional = {normalize_region(r): s for r, s in (regional or {}).items()}

    @classmethod
    async def open_with(
        cls,
        opener: Callable[[str], Awaitable[S]],
        default_url: str,
        regional_urls: Mapping[str, str] | None = None,
    ) -> Self:
        """Open every store with ``opener(url)`` concurrently; if one fails, close those that opened and
        re-raise. ``regional_urls`` defaults to the environment's ``DATABASE_URL_<REGION>``."""
        regional_urls = dict(regional_urls if regional_urls is not None else regional_urls_from_env())
        urls = [default_url, *regional_urls.values()]
        results = await asyncio.gather(*(opener(url) for url in urls), return_exceptions=True)
        stores = [r for r in results if not isinstance(r, BaseException)]
        for result in results:
            if isinstance(result, BaseException):
                await asyncio.gather(*(s.close() for s in stores))
                raise result
        return cls(stores[0], dict(zip(regional_urls, stores[1:], strict=True)))

    def for_region(self, region: str | None) -> S:
        return self.regional.get(normalize_region(region), self.default)

    @property
    def stores(self) -> list[S]:
        """Every database: the default first. Each has its own outbox and roll-ups."""
        return [self.default, *self.regional.values()]

    @property
    def named_stores(self) -> list[tuple[str, S]]:
        """Every database with its region ("" for the default one), the default first."""
        return [("", self.default), *self.regional.items()]

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.stores))


# --- the embedded database ----------------------------------------------------------------------------------


async def start_embedded_database(config: Config) -> EmbeddedPostgres:
    """The embedded PostgreSQL under ``config.data_dir`` (a relative CALLSENSE_DATA_DIR means the default
    one), started in a thread: initdb and pg_ctl block."""
    from callsense.database import start_embedded_postgres  # pgserver is heavy: only when needed

    data_dir = config.data_dir.resolve() / "postgres" if config.data_dir.is_absolute() else None
    return await asyncio.to_thread(start_embedded_postgres, data_dir)


@asynccontextmanager
async def default_database_url(config: Config, url: str | None = None) -> AsyncIterator[str]:
    """``url``, else ``DATABASE_URL``, else the embedded PostgreSQL under ``CALLSENSE_DATA_DIR`` (started
    here and stopped at the end): how every process and command chooses its default database."""
    url = url or config.database_url
    if url is not None:
        yield url
        return
    embedded = await start_embedded_database(config)
    try:
        yield embedded.uri
    finally:
        await asyncio.to_thread(embedded.stop)


@asynccontextmanager
async def command_databases(
    config: Config, url: str | None = None
) -> AsyncIterator[RegionalStores[Database]]:
    """The databases a one-shot command (``callsense rollup``, ``callsense webhooks``) works on, chosen as
    the processes choose them (``default_database_url``), with each region's ``DATABASE_URL_<REGION>``."""
    async with default_database_url(config, url) as default_url:
        databases = await RegionalStores[Database].open_with(Database.open, default_url)
        try:
            yield databases
        finally:
            await databases.close()
