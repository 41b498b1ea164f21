"""PostgreSQL storage for calls and their scored utterances (psycopg 3, async pool).

- `Store`: one database. Writes of scores are idempotent on (call_id, utterance_id): the first write wins and
  a replay (a client retry, a gateway restart re-sending its tail) inserts nothing.
- `StoreRouter`: data residency. A call whose region has its own database (`DATABASE_URL_EU`, ...) is stored
  only there; every other call goes to the default database.
- Migrations: `gateway/migrations/NNNN_name.sql`, applied in order at start-up and recorded in
  `schema_migrations`. Every pending migration runs in one transaction under an advisory lock, so two
  replicas starting together apply each migration once and a failed one leaves nothing half-done.
- Outbox (`webhook_outbox`): webhooks to deliver, inserted in the same transaction as what caused them
  (`end_call(..., outbox=...)`, `enqueue`), unique on a dedupe key, claimed by dispatchers with
  `FOR UPDATE SKIP LOCKED` plus a lease, never deleted. gateway/enrichment/webhooks.py delivers them.
- Roll-ups (`daily_rollups`): `rollup_day` recomputes one UTC day per agent and team (see
  gateway/enrichment/rollup.py for what the figures mean).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Self

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from callsense.config import Config

if TYPE_CHECKING:
    from callsense.database import EmbeddedPostgres

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Key of the advisory lock that serialises migrations; any constant works as long as nothing else uses it.
MIGRATION_LOCK_KEY = 0x63616C6C73656E73  # "callsens"
REGION_URL_PREFIX = "DATABASE_URL_"
# Class of the advisory locks that serialise roll-ups of one day (the second key is the day's ordinal).
ROLLUP_LOCK_CLASS = 0x726F6C6C  # "roll"

Channel = Literal["customer", "agent", "mixed"]
Label = Literal["negative", "neutral", "positive"]
CallStatus = Literal["live", "ended", "failed"]
OutboxKind = Literal["crm", "slack"]

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
class OutboxMessage:
    """A webhook to deliver. Enqueued once per `dedupe_key`: enqueuing the same key again does nothing."""

    kind: OutboxKind
    tenant: str
    url: str
    payload: Mapping[str, Any]
    dedupe_key: str
    call_id: str | None = None


# What `end_call(outbox=...)` takes: the messages, or a function of the call as just ended (its ended_at,
# duration, tags and summary as stored), run inside the same transaction.
OutboxSource = Sequence[OutboxMessage] | Callable[[CallRow], Iterable[OutboxMessage]]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A row of webhook_outbox. A claimed row's `attempts` already counts the attempt it was claimed for."""

    id: int
    kind: OutboxKind
    tenant: str
    call_id: str | None
    url: str
    payload: dict[str, Any]
    dedupe_key: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    dead_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LiveCallRow:
    """A call some gateway replica holds live now (its heartbeat is fresh)."""

    call_id: str
    tenant: str
    agent: str
    region: str
    started_at: datetime
    heartbeat_at: datetime


class DayWindow(NamedTuple):
    """A day as an interval of time: [start, end), both timezone-aware."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class RollupRow:
    """A row of daily_rollups: one agent's day (`agent` set) or one team's day (`agent` == "")."""

    day: date
    tenant: str
    team: str
    agent: str
    calls: int
    utterances: int
    customer_utterances: int
    avg_sentiment: float | None
    negative_rate: float | None


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
    INSERT INTO calls (call_id, {", ".join(_CALL_COLUMNS)}, started_at, metadata, heartbeat_at)
    VALUES (%(call_id)s, {", ".join(f"%({c})s" for c in _CALL_COLUMNS)},
            COALESCE(%(started_at)s::timestamptz, now()), %(metadata)s, now())
    ON CONFLICT (call_id) DO UPDATE SET
        {", ".join(f"{c} = COALESCE(NULLIF(EXCLUDED.{c}, ''), calls.{c})" for c in _CALL_COLUMNS)},
        metadata = calls.metadata || EXCLUDED.metadata,
        heartbeat_at = now()
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
    RETURNING {columns}
""".format(columns=", ".join(f.name for f in fields(CallRow) if f.name != "events"))
_SELECT_CALL = (
    f"SELECT {', '.join(f.name for f in fields(CallRow) if f.name != 'events')} FROM calls WHERE call_id = %s"
)

_LIVE_CALLS = f"""
    SELECT {", ".join(f.name for f in fields(LiveCallRow))} FROM calls
    WHERE status = 'live' AND heartbeat_at > now() - make_interval(secs => %(fresh_s)s)
      AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
    ORDER BY started_at DESC, call_id
    LIMIT %(limit)s
"""
_OUTBOX_COLUMNS = ", ".join(f.name for f in fields(OutboxRow))
_INSERT_OUTBOX = """
    INSERT INTO webhook_outbox (kind, tenant, call_id, url, payload, dedupe_key)
    VALUES (%s, %s, %s, %s, %s, %s)
    ON CONFLICT (dedupe_key) DO NOTHING
"""
_PENDING = "delivered_at IS NULL AND dead_at IS NULL AND (%(kinds)s::text[] IS NULL OR kind = ANY(%(kinds)s))"
# Claim: lock due rows that no other dispatcher holds, count the attempt and push next_attempt_at past the
# lease, all in one statement; the row locks go at its commit, the lease keeps the row ours meanwhile.
_CLAIM_OUTBOX = f"""
    WITH due AS (
        SELECT id FROM webhook_outbox
        WHERE {_PENDING} AND next_attempt_at <= now()
        ORDER BY next_attempt_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    )
    UPDATE webhook_outbox AS o
    SET attempts = o.attempts + 1, next_attempt_at = now() + make_interval(secs => %(lease_s)s)
    FROM due WHERE o.id = due.id
    RETURNING {", ".join(f"o.{f.name}" for f in fields(OutboxRow))}
"""
_NEXT_ATTEMPT_IN = f"""
    SELECT EXTRACT(EPOCH FROM min(next_attempt_at) - now())::double precision
    FROM webhook_outbox WHERE {_PENDING}
"""

# One UTC day of calls, per agent and per team (GROUPING SETS; the team's row has agent ''). Calls without
# an agent count in their team's row only: an agent row keyed '' would collide with the team's.
# negative_rate is over customer-side utterances ('customer', and 'mixed': a mono line carries the
# customer's voice); utterances and avg_sentiment over every scored utterance, like calls.avg_sentiment.
_ROLLUP_DAY = """
    WITH per_call AS (
        SELECT c.tenant, c.team, c.agent, c.call_id,
               count(e.id) AS utterances,
               sum(e.score) AS score_sum,
               count(e.id) FILTER (WHERE e.channel IN ('customer', 'mixed')) AS customer_utterances,
               count(e.id) FILTER (WHERE e.channel IN ('customer', 'mixed') AND e.label = 'negative')
                   AS negative_utterances
        FROM calls c
        LEFT JOIN unnest(
            %(zone_tenants)s::text[], %(zone_starts)s::timestamptz[], %(zone_ends)s::timestamptz[]
        ) AS z(tenant, day_start, day_end) ON z.tenant = c.tenant
        LEFT JOIN nlp_events e ON e.call_id = c.call_id
        WHERE c.started_at >= %(earliest)s AND c.started_at < %(latest)s  -- the index narrows, then
          AND c.started_at >= COALESCE(z.day_start, %(start)s) AND c.started_at < COALESCE(z.day_end, %(end)s)
        GROUP BY c.tenant, c.team, c.agent, c.call_id
    ), grouped AS (
        SELECT tenant, team, CASE WHEN GROUPING(agent) = 1 THEN '' ELSE agent END AS agent,
               count(*) AS calls,
               sum(utterances) AS utterances,
               sum(customer_utterances) AS customer_utterances,
               sum(score_sum) / NULLIF(sum(utterances), 0) AS avg_sentiment,
               sum(negative_utterances) / NULLIF(sum(customer_utterances), 0) AS negative_rate
        FROM per_call
        GROUP BY GROUPING SETS ((tenant, team, agent), (tenant, team))
        HAVING GROUPING(agent) = 1 OR agent <> ''
    )
    INSERT INTO daily_rollups
        (day, tenant, team, agent, calls, utterances, customer_utterances, avg_sentiment, negative_rate)
    SELECT %(day)s, tenant, team, agent, calls::integer, utterances::integer, customer_utterances::integer,
           avg_sentiment::double precision, negative_rate::double precision
    FROM grouped
    RETURNING day, tenant, team, agent, calls, utterances, customer_utterances, avg_sentiment, negative_rate
"""
_SELECT_ROLLUPS = f"""
    SELECT {", ".join(f.name for f in fields(RollupRow))} FROM daily_rollups
    WHERE day = %s ORDER BY tenant, team, agent
"""
# Served by daily_rollups_tenant_team_day_idx (migration 0001).
_SELECT_TREND = f"""
    SELECT {", ".join(f.name for f in fields(RollupRow))} FROM daily_rollups
    WHERE tenant = %(tenant)s AND team = %(team)s AND agent = %(agent)s AND day BETWEEN %(first)s AND %(last)s
    ORDER BY day
"""


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
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
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
        outbox: OutboxSource = (),
    ) -> bool:
        """Close the call and store its aggregates (computed from its events when `stats` is None).

        Safe to repeat: ended_at keeps its first value; tags and summary left None keep what is stored.
        `outbox` (messages, or a function of the ended call's row that returns them) is enqueued in the same
        transaction, so a crash cannot end the call and lose its CRM push; a message whose dedupe key is
        already enqueued (a repeated end) is not enqueued again. Returns False when the call is unknown.
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
            cur = await conn.cursor(row_factory=dict_row).execute(_END_CALL, params)
            row = await cur.fetchone()
            if row is None:
                return False
            messages = outbox(_call_from_row(row, ())) if callable(outbox) else outbox
            await _insert_outbox(conn, messages)
        return True

    async def get_call(self, call_id: str) -> CallRow | None:
        """The call with its events in utterance order, or None."""
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(_SELECT_CALL, (call_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            return _call_from_row(row, await _fetch_events(conn, call_id))

    # -- live calls across replicas

    async def heartbeat(self, call_ids: Sequence[str]) -> None:
        """These calls are held live by the caller's replica, now."""
        if call_ids:
            async with self._pool.connection() as conn:
                await conn.execute(
                    "UPDATE calls SET heartbeat_at = now() WHERE call_id = ANY(%s) AND status = 'live'",
                    (list(call_ids),),
                )

    async def live_calls(
        self, fresh_s: float, tenant: str | None = None, limit: int = 50
    ) -> list[LiveCallRow]:
        """Live calls whose replica sent a heartbeat within `fresh_s`, newest first."""
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(LiveCallRow)).execute(
                _LIVE_CALLS, {"fresh_s": fresh_s, "tenant": tenant, "limit": limit}
            )
            return await cur.fetchall()

    async def fail_orphaned_calls(self, silent_s: float) -> list[str]:
        """Close as failed (reason ``replica_lost``) the live calls without a heartbeat for `silent_s`:
        the replica holding them died. Their scored utterances stay; the aggregates are computed from them."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT call_id, heartbeat_at FROM calls WHERE status = 'live'"
                " AND heartbeat_at < now() - make_interval(secs => %s)",
                (silent_s,),
            )
            orphans = await cur.fetchall()
        for call_id, last_heard in orphans:  # ended when last heard of, so its duration is true
            await self.end_call(
                call_id, status="failed", ended_at=last_heard, summary={"reason": "replica_lost"}
            )
        return [call_id for call_id, _ in orphans]

    # -- outbox

    async def enqueue(self, messages: Iterable[OutboxMessage]) -> int:
        """Enqueue webhooks in one transaction; returns how many were new (a known dedupe key is skipped)."""
        async with self._pool.connection() as conn, conn.transaction():
            return await _insert_outbox(conn, messages)

    async def claim_due(
        self, limit: int, lease_s: float, kinds: Sequence[OutboxKind] | None = None
    ) -> list[OutboxRow]:
        """Take up to `limit` due messages for one attempt each, oldest due first.

        Each is leased for `lease_s`: no other dispatcher gets it before that, unless it is marked failed
        (then at its next attempt); a dispatcher that dies holding it leaves it due again after the lease.
        """
        params = {"limit": limit, "lease_s": lease_s, "kinds": None if kinds is None else list(kinds)}
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(OutboxRow)).execute(_CLAIM_OUTBOX, params)
            return await cur.fetchall()

    async def mark_delivered(self, message_id: int, status: int) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE webhook_outbox SET delivered_at = now(), last_status = %s, last_error = NULL"
                " WHERE id = %s AND delivered_at IS NULL",
                (status, message_id),
            )

    async def mark_failed(
        self, message_id: int, *, status: int | None, error: str, retry_in_s: float | None
    ) -> None:
        """Record a failed attempt: due again in `retry_in_s`, or given up (dead) when it is None."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE webhook_outbox SET last_status = %(status)s, last_error = %(error)s,"
                " next_attempt_at = CASE WHEN %(retry)s::double precision IS NULL THEN next_attempt_at"
                "   ELSE now() + make_interval(secs => %(retry)s) END,"
                " dead_at = CASE WHEN %(retry)s::double precision IS NULL THEN now() END"
                " WHERE id = %(id)s AND delivered_at IS NULL",
                {"status": status, "error": error, "retry": retry_in_s, "id": message_id},
            )

    async def requeue_dead(self, *, tenant: str | None = None, kind: OutboxKind | None = None) -> int:
        """Make given-up messages due again (after fixing a receiver or a secret); returns how many."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE webhook_outbox SET dead_at = NULL, next_attempt_at = now()"
                " WHERE dead_at IS NOT NULL AND delivered_at IS NULL"
                " AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
                " AND (%(kind)s::text IS NULL OR kind = %(kind)s)",
                {"tenant": tenant, "kind": kind},
            )
            return cur.rowcount

    async def seconds_until_next_attempt(self, kinds: Sequence[OutboxKind] | None = None) -> float | None:
        """How long until the earliest pending message is due (<= 0: now); None when none is pending."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(_NEXT_ATTEMPT_IN, {"kinds": None if kinds is None else list(kinds)})
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def outbox_message(self, dedupe_key: str) -> OutboxRow | None:
        """The message enqueued under `dedupe_key`, with its delivery state."""
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(OutboxRow)).execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM webhook_outbox WHERE dedupe_key = %s", (dedupe_key,)
            )
            return await cur.fetchone()

    # -- daily roll-ups

    async def rollup_day(
        self,
        day: date,
        window: DayWindow | None = None,
        tenant_windows: Mapping[str, DayWindow] | None = None,
    ) -> list[RollupRow]:
        """Recompute `day`'s rows of daily_rollups from its calls and return them.

        A call belongs to `day` when it started within its tenant's window in `tenant_windows`, else
        within `window` (default: the UTC day). The day's old rows are replaced in one transaction, under
        an advisory lock per day, so a re-run (or two replicas at once) gives the same rows and leaves
        none from an earlier, different run.
        """
        utc_start = datetime.combine(day, time.min, UTC)
        window = window or DayWindow(utc_start, utc_start + timedelta(days=1))
        named = dict(tenant_windows or {})
        every = [window, *named.values()]
        params = {
            "day": day,
            "start": window.start,
            "end": window.end,
            "zone_tenants": list(named),
            "zone_starts": [w.start for w in named.values()],
            "zone_ends": [w.end for w in named.values()],
            "earliest": min(w.start for w in every),
            "latest": max(w.end for w in every),
        }
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (ROLLUP_LOCK_CLASS, day.toordinal()))
            await conn.execute("DELETE FROM daily_rollups WHERE day = %s", (day,))
            cur = await conn.cursor(row_factory=class_row(RollupRow)).execute(_ROLLUP_DAY, params)
            rows = await cur.fetchall()
        return sorted(rows, key=lambda r: (r.tenant, r.team, r.agent))

    async def daily_rollups(self, day: date) -> list[RollupRow]:
        """The stored roll-up rows of `day`, by tenant, team, agent (the team's row first)."""
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(RollupRow)).execute(_SELECT_ROLLUPS, (day,))
            return await cur.fetchall()

    async def rollup_trend(
        self, tenant: str, team: str, agent: str, first: date, last: date
    ) -> list[RollupRow]:
        """One team's (`agent` "") or one agent's stored rows from `first` to `last`, by day."""
        async with self._pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(RollupRow)).execute(
                _SELECT_TREND, {"tenant": tenant, "team": team, "agent": agent, "first": first, "last": last}
            )
            return await cur.fetchall()

    async def rolled_up_days(self, first: date, last: date) -> set[date]:
        """The days from `first` to `last` whose roll-up has run."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT day FROM rollup_runs WHERE day BETWEEN %s AND %s", (first, last))
            return {row[0] for row in await cur.fetchall()}

    async def mark_rollup_ran(self, day: date, rows: int) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO rollup_runs (day, rows) VALUES (%s, %s)"
                " ON CONFLICT (day) DO UPDATE SET rows = EXCLUDED.rows, ran_at = now()",
                (day, rows),
            )

    async def rollup_ran_at(self, day: date) -> datetime | None:
        """When `day` was last rolled up (None: never)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT ran_at FROM rollup_runs WHERE day = %s", (day,))
            row = await cur.fetchone()
        return None if row is None else row[0]


async def _insert_outbox(conn: AsyncConnection[Any], messages: Iterable[OutboxMessage]) -> int:
    params = [(m.kind, m.tenant, m.call_id, m.url, Jsonb(dict(m.payload)), m.dedupe_key) for m in messages]
    if not params:
        return 0
    async with conn.cursor() as cur:
        await cur.executemany(_INSERT_OUTBOX, params)
        return cur.rowcount


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

    @property
    def stores(self) -> list[Store]:
        """Every database: the default first. Each has its own outbox and roll-ups."""
        return self._stores()

    @property
    def named_stores(self) -> list[tuple[str, Store]]:
        """Every database with its region ("" for the default one), the default first."""
        return [("", self.default), *self.regional.items()]

    async def get_call(self, call_id: str) -> CallRow | None:
        """Find a call whose region is not known to the caller (GET /v1/calls/{id}) in every database."""
        found = await asyncio.gather(*(s.get_call(call_id) for s in self._stores()))
        return next((call for call in found if call is not None), None)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._stores()))

    def _stores(self) -> list[Store]:
        return [self.default, *self.regional.values()]


async def start_embedded_database(config: Config) -> EmbeddedPostgres:
    """The embedded PostgreSQL under ``config.data_dir`` (a relative CALLSENSE_DATA_DIR means the default
    one), started in a thread: initdb and pg_ctl block."""
    from callsense.database import start_embedded_postgres  # pgserver is heavy: only when needed

    data_dir = config.data_dir.resolve() / "postgres" if config.data_dir.is_absolute() else None
    return await asyncio.to_thread(start_embedded_postgres, data_dir)


@asynccontextmanager
async def command_stores(config: Config, database_url: str | None = None) -> AsyncIterator[StoreRouter]:
    """The stores a one-shot command (``callsense rollup``, ``callsense webhooks``) works on, chosen as
    the gateway chooses them: ``database_url``, else ``DATABASE_URL``, else the embedded PostgreSQL under
    ``CALLSENSE_DATA_DIR`` (started here and stopped at the end)."""
    url = database_url or config.database_url
    embedded = None
    if url is None:
        embedded = await start_embedded_database(config)
        url = embedded.uri
    try:
        stores = await StoreRouter.open(url)
        try:
            yield stores
        finally:
            await stores.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
