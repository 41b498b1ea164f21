"""PostgreSQL storage for calls and their scored utterances (psycopg 3, async pool).

- `Store`: one database. Writes of scores are idempotent on (call_id, utterance_id): the first write wins and
  a replay (a client retry, a gateway restart re-sending its tail) inserts nothing.
- `StoreRouter`: data residency. A call whose region has its own database (`DATABASE_URL_EU`, ...) is stored
  only there; every other call goes to the default database.
- Migrations: `gateway/migrations/NNNN_name.sql`, applied in order at start-up and recorded in
  `schema_migrations`. Every pending migration runs in one transaction under an advisory lock, so two
  replicas starting together apply each migration once and a failed one leaves nothing half-done.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Self

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Key of the advisory lock that serialises migrations; any constant works as long as nothing else uses it.
MIGRATION_LOCK_KEY = 0x63616C6C73656E73  # "callsens"
REGION_URL_PREFIX = "DATABASE_URL_"

Channel = Literal["customer", "agent", "mixed"]
Label = Literal["negative", "neutral", "positive"]
CallStatus = Literal["live", "ended", "failed"]

# CallStart metadata keys that have their own column; everything else lands in calls.metadata.
_CALL_COLUMNS = ("tenant", "region", "agent", "team", "language")


class UnknownCallError(LookupError):
    """A score was written for a call that `upsert_call_start` never created in this database."""


class MigrationError(RuntimeError):
    """The migrations on disk disagree with what the database says was applied."""


@dataclass(frozen=True, slots=True)
class ScoredEvent:
    """One scored utterance: a row of nlp_events. `created_at` is set by the database."""

    call_id: str
    utterance_id: int
    channel: Channel
    start_ms: int
    end_ms: int
    text: str  # PII-masked
    label: Label
    p_negative: float
    p_neutral: float
    p_positive: float
    score: float  # p_positive + 0.5 * p_neutral, in [0, 1]
    model_version: str
    inference_ms: float | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CallStats:
    """Aggregates of a call's scores; the averages are None while the call has no (such) utterance."""

    utterance_count: int
    avg_sentiment: float | None
    min_sentiment: float | None
    customer_avg_sentiment: float | None
    agent_avg_sentiment: float | None


@dataclass(frozen=True, slots=True)
class CallRow:
    """A row of calls, with its events in utterance order when read through `Store.get_call`."""

    call_id: str
    tenant: str
    region: str
    agent: str
    team: str
    language: str
    status: CallStatus
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    avg_sentiment: float | None
    min_sentiment: float | None
    customer_avg_sentiment: float | None
    agent_avg_sentiment: float | None
    utterance_count: int
    objection_tags: tuple[str, ...]
    summary: dict[str, Any] | None
    metadata: dict[str, Any]
    events: tuple[ScoredEvent, ...] = ()


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


# --- SQL ----------------------------------------------------------------------------------------------------

_EVENT_COLUMNS = tuple(f.name for f in fields(ScoredEvent) if f.name != "created_at")
_INSERT_EVENT = (
    f"INSERT INTO nlp_events ({', '.join(_EVENT_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(_EVENT_COLUMNS))})"
    " ON CONFLICT (call_id, utterance_id) DO NOTHING"
)
_SELECT_EVENTS = (
    f"SELECT {', '.join(f.name for f in fields(ScoredEvent))} FROM nlp_events"
    " WHERE call_id = %s ORDER BY utterance_id"
)
_SELECT_STATS = """
    SELECT count(*) AS utterance_count,
           avg(score) AS avg_sentiment,
           min(score) AS min_sentiment,
           avg(score) FILTER (WHERE channel = 'customer') AS customer_avg_sentiment,
           avg(score) FILTER (WHERE channel = 'agent') AS agent_avg_sentiment
    FROM nlp_events WHERE call_id = %s
"""
# On a repeated start (a reconnect, a replayed batch) fill in what was missing, never reset the call.
# `xmax = 0` holds only for a row this statement inserted: it tells a new call from a resumed one.
_UPSERT_CALL = f"""
    INSERT INTO calls (call_id, {", ".join(_CALL_COLUMNS)}, started_at, metadata)
    VALUES (%(call_id)s, {", ".join(f"%({c})s" for c in _CALL_COLUMNS)},
            COALESCE(%(started_at)s::timestamptz, now()), %(metadata)s)
    ON CONFLICT (call_id) DO UPDATE SET
        {", ".join(f"{c} = COALESCE(NULLIF(EXCLUDED.{c}, ''), calls.{c})" for c in _CALL_COLUMNS)},
        metadata = calls.metadata || EXCLUDED.metadata
    RETURNING (xmax = 0) AS inserted
"""
# The first end wins for ended_at (so duration_s is stable); a later end_call may still add enrichment.
_END_CALL = """
    UPDATE calls SET
        status = %(status)s,
        ended_at = COALESCE(ended_at, %(ended_at)s::timestamptz, now()),
        duration_s = GREATEST(0, EXTRACT(EPOCH FROM
            COALESCE(ended_at, %(ended_at)s::timestamptz, now()) - started_at))::double precision,
        utterance_count = %(utterance_count)s,
        avg_sentiment = %(avg_sentiment)s,
        min_sentiment = %(min_sentiment)s,
        customer_avg_sentiment = %(customer_avg_sentiment)s,
        agent_avg_sentiment = %(agent_avg_sentiment)s,
        objection_tags = COALESCE(%(objection_tags)s, objection_tags),
        summary = COALESCE(%(summary)s, summary)
    WHERE call_id = %(call_id)s
"""
_SELECT_CALL = (
    f"SELECT {', '.join(f.name for f in fields(CallRow) if f.name != 'events')} FROM calls WHERE call_id = %s"
)


def _call_params(call_id: str, metadata: Mapping[str, Any], started_at: datetime | None) -> dict[str, Any]:
    params: dict[str, Any] = {c: str(metadata.get(c) or "").strip() for c in _CALL_COLUMNS}
    params["region"] = normalize_region(params["region"])
    extra = {k: v for k, v in metadata.items() if k not in _CALL_COLUMNS}
    return {**params, "call_id": call_id, "started_at": started_at, "metadata": Jsonb(extra)}


def _call_from_row(row: Mapping[str, Any], events: Iterable[ScoredEvent]) -> CallRow:
    values = dict(row)
    values["objection_tags"] = tuple(values["objection_tags"] or ())
    return CallRow(**values, events=tuple(events))


def normalize_region(region: str | None) -> str:
    return (region or "").strip().lower()


# --- Store --------------------------------------------------------------------------------------------------


class Store:
    """Calls and scored utterances in one PostgreSQL database. Open with `await Store.open(url)`."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]]) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls, url: str, min_size: int = 1, max_size: int = 10, *, migrate: bool = True, timeout: float = 30.0
    ) -> Self:
        """Open a pool on `url`, wait for its first connections, and apply pending migrations."""
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
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

    async def upsert_call_start(
        self, call_id: str, metadata: Mapping[str, Any] | None = None, *, started_at: datetime | None = None
    ) -> bool:
        """Create the call (status live); True when it is new, False when it existed (a resumed call).

        tenant, region, agent, team and language go to their columns; other keys to `calls.metadata`.
        """
        params = _call_params(call_id, metadata or {}, started_at)
        async with self._pool.connection() as conn:
            cur = await conn.execute(_UPSERT_CALL, params)
            row = await cur.fetchone()
        return bool(row and row[0])

    async def record_score(self, event: ScoredEvent) -> bool:
        """Store one scored utterance; False when (call_id, utterance_id) was already stored (kept as is)."""
        async with self._pool.connection() as conn:
            try:
                cur = await conn.execute(_INSERT_EVENT, _event_params(event))
            except psycopg.errors.ForeignKeyViolation as err:
                raise UnknownCallError(event.call_id) from err
        return cur.rowcount == 1

    async def record_scores(self, batch: Sequence[ScoredEvent]) -> int:
        """Store a batch in one transaction (all or nothing); returns how many rows were new."""
        if not batch:
            return 0
        async with self._pool.connection() as conn:
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.executemany(_INSERT_EVENT, [_event_params(e) for e in batch])
                    return cur.rowcount  # psycopg sums the rows affected over the batch
            except psycopg.errors.ForeignKeyViolation as err:
                raise UnknownCallError(", ".join(sorted({e.call_id for e in batch}))) from err

    async def list_events(self, call_id: str) -> list[ScoredEvent]:
        """The call's scored utterances, ordered by utterance_id."""
        async with self._pool.connection() as conn:
            return await _fetch_events(conn, call_id)

    async def call_stats(self, call_id: str) -> CallStats:
        """Average, minimum, customer and agent averages of the call's scores, computed in SQL."""
        async with self._pool.connection() as conn:
            return await _fetch_stats(conn, call_id)

    async def end_call(
        self,
        call_id: str,
        stats: CallStats | None = None,
        *,
        status: Literal["ended", "failed"] = "ended",
        ended_at: datetime | None = None,
        objection_tags: Sequence[str] | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> bool:
        """Close the call and store its aggregates (computed from its events when `stats` is None).

        Safe to repeat: ended_at keeps its first value; tags and summary left None keep what is stored.
        Returns False when the call is unknown.
        """
        async with self._pool.connection() as conn, conn.transaction():
            if stats is None:
                stats = await _fetch_stats(conn, call_id)
            params = {
                **{f.name: getattr(stats, f.name) for f in fields(CallStats)},
                "call_id": call_id,
                "status": status,
                "ended_at": ended_at,
                "objection_tags": None if objection_tags is None else Jsonb(list(objection_tags)),
                "summary": None if summary is None else Jsonb(dict(summary)),
            }
            cur = await conn.execute(_END_CALL, params)
        return cur.rowcount == 1

    async def get_call(self, call_id: str) -> CallRow | None:
        """The call with its events in utterance order, or None."""
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(_SELECT_CALL, (call_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            return _call_from_row(row, await _fetch_events(conn, call_id))


def _event_params(event: ScoredEvent) -> tuple[Any, ...]:
    return tuple(getattr(event, column) for column in _EVENT_COLUMNS)


async def _fetch_events(conn: AsyncConnection[Any], call_id: str) -> list[ScoredEvent]:
    cur = await conn.cursor(row_factory=class_row(ScoredEvent)).execute(_SELECT_EVENTS, (call_id,))
    return await cur.fetchall()


async def _fetch_stats(conn: AsyncConnection[Any], call_id: str) -> CallStats:
    cur = await conn.cursor(row_factory=class_row(CallStats)).execute(_SELECT_STATS, (call_id,))
    stats = await cur.fetchone()
    assert stats is not None  # an aggregate without GROUP BY always yields one row
    return stats


# --- region routing -----------------------------------------------------------------------------------------


def regional_urls_from_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """`DATABASE_URL_EU=...` -> {"eu": ...}: one database per data-residency region."""
    return {
        normalize_region(key.removeprefix(REGION_URL_PREFIX)): url
        for key, url in env.items()
        if key.startswith(REGION_URL_PREFIX) and len(key) > len(REGION_URL_PREFIX) and url
    }


class StoreRouter:
    """The default Store plus one per region that has its own database; picks the one a call belongs to.

    A region without its own database (and a call without a region) uses the default store: residency is
    enforced for the regions that are configured, as `DATABASE_URL_<REGION>` says.
    """

    def __init__(self, default: Store, regional: Mapping[str, Store] | None = None) -> None:
        self.default = default
        self.regional = {normalize_region(r): s for r, s in (regional or {}).items()}

    @classmethod
    async def open(
        cls,
        default_url: str,
        regional_urls: Mapping[str, str] | None = None,
        min_size: int = 1,
        max_size: int = 10,
    ) -> Self:
        """Open every store concurrently; if one fails, close those that opened and re-raise."""
        regional_urls = dict(regional_urls if regional_urls is not None else regional_urls_from_env())
        urls = [default_url, *regional_urls.values()]
        results = await asyncio.gather(
            *(Store.open(url, min_size, max_size) for url in urls), return_exceptions=True
        )
        stores = [r for r in results if isinstance(r, Store)]
        for result in results:
            if isinstance(result, BaseException):
                await asyncio.gather(*(s.close() for s in stores))
                raise result
        return cls(stores[0], dict(zip(regional_urls, stores[1:], strict=True)))

    def for_region(self, region: str | None) -> Store:
        return self.regional.get(normalize_region(region), self.default)

    async def get_call(self, call_id: str) -> CallRow | None:
        """Find a call whose region is not known to the caller (GET /v1/calls/{id}) in every database."""
        found = await asyncio.gather(*(s.get_call(call_id) for s in self._stores()))
        return next((call for call in found if call is not None), None)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._stores()))

    def _stores(self) -> list[Store]:
        return [self.default, *self.regional.values()]
