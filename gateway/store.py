"""The gateway's repository: calls and their scored utterances in PostgreSQL (psycopg 3, async pool).

- ``Store``: one database. Writes of scores are idempotent on (call_id, utterance_id): the first write wins
  and a replay (a client retry, a gateway restart re-sending its tail) inserts nothing. A call's end is
  stored together with its after-call outbox (``end_call(..., outbox=...)``: the CRM push, enqueued in the
  same transaction by callsense/outbox.py), which the post-call worker delivers.
- ``StoreRouter``: data residency. A call whose region has its own database (``DATABASE_URL_EU``, ...) is
  stored only there; every other call goes to the default database.
- The report pages' reads of the daily roll-ups (``daily_rollups``, ``rollup_trend``, ...) and of the drift
  indicators (``drift_day``); the post-call worker writes them (postcall/rollup.py, postcall/drift_job.py).

Opening a pool, the migrations (callsense/migrations/) and region routing are the runtime's
(callsense/storage.py); the rows both processes read are callsense/domain.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, Literal, Self

import psycopg
import psycopg_pool
from psycopg import AsyncConnection
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from callsense.domain import (
    CALL_ROW_COLUMNS,
    DRIFT_ROW_COLUMNS,
    CallStatistics,
    UtteranceScore,
    call_row,
    compute_call_stats,
)
from callsense.domain import CallRow as CallRow  # the gateway's modules read a call as gateway.store's
from callsense.domain import DriftRow as DriftRow
from callsense.domain import RollupRow as RollupRow
from callsense.outbox import OutboxSource, insert_outbox
from callsense.privacy import Erasure, erase_call
from callsense.storage import Database, RegionalStores, normalize_region
from callsense.storage import start_embedded_database as start_embedded_database

# CallStart metadata keys that have their own column; everything else lands in calls.metadata.
_CALL_COLUMNS = ("tenant", "region", "agent", "team", "language")


UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout, TimeoutError)
"""What says the database cannot be reached now (as opposed to refusing a write it will always refuse)."""


class UnknownCallError(LookupError):
    """A score was written for a call that `upsert_call_start` never created in this database."""


@dataclass(frozen=True, slots=True)
class LiveCallRow:
    """A call some gateway replica holds live now (its heartbeat is fresh)."""

    call_id: str
    tenant: str
    team: str
    agent: str
    region: str
    started_at: datetime
    heartbeat_at: datetime


# --- SQL ----------------------------------------------------------------------------------------------------

_EVENT_COLUMNS = tuple(f.name for f in fields(UtteranceScore) if f.name != "created_at")
_INSERT_EVENT = (
    f"INSERT INTO nlp_events ({', '.join(_EVENT_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(_EVENT_COLUMNS))})"
    " ON CONFLICT (call_id, utterance_id) DO NOTHING"
)
_SELECT_EVENTS = (
    f"SELECT {', '.join(f.name for f in fields(UtteranceScore))} FROM nlp_events"
    " WHERE call_id = %s ORDER BY utterance_id"
)
# The statistics a calls row keeps (CallStatistics has a few more, computed when a call is read).
_STATS_COLUMNS = (
    "utterance_count",
    "avg_sentiment",
    "min_sentiment",
    "customer_avg_sentiment",
    "agent_avg_sentiment",
)
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
""".format(columns=", ".join(CALL_ROW_COLUMNS))
_SELECT_CALL = f"SELECT {', '.join(CALL_ROW_COLUMNS)} FROM calls WHERE call_id = %s"

_LIVE_CALLS = f"""
    SELECT {", ".join(f.name for f in fields(LiveCallRow))} FROM calls
    WHERE status = 'live' AND heartbeat_at > now() - make_interval(secs => %(fresh_s)s)
      AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
      AND (%(team)s::text IS NULL OR team = %(team)s)
      AND (%(agent)s::text IS NULL OR agent = %(agent)s)
    ORDER BY started_at DESC, call_id
    LIMIT %(limit)s
"""
# The report pages' reads of daily_rollups (postcall/rollup_store.py writes them).
_SELECT_ROLLUPS = f"""
    SELECT {", ".join(f.name for f in fields(RollupRow))} FROM daily_rollups
    WHERE day = %s ORDER BY tenant, team, agent
"""
# Served by drift_daily's primary key (tenant, day) (migration 0007).
_SELECT_DRIFT = f"SELECT {', '.join(DRIFT_ROW_COLUMNS)} FROM drift_daily WHERE tenant = %s AND day = %s"
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


# --- Store --------------------------------------------------------------------------------------------------


class Store(Database):
    """Calls and scored utterances in one PostgreSQL database. Open with `await Store.open(url)` (a pool,
    migrated first: callsense/storage.py)."""

    async def upsert_call_start(
        self, call_id: str, metadata: Mapping[str, Any] | None = None, *, started_at: datetime | None = None
    ) -> bool:
        """Create the call (status live); True when it is new, False when it existed (a resumed call).

        tenant, region, agent, team and language go to their columns; other keys to `calls.metadata`.
        """
        params = _call_params(call_id, metadata or {}, started_at)
        async with self.pool.connection() as conn:
            cur = await conn.execute(_UPSERT_CALL, params)
            row = await cur.fetchone()
        return bool(row and row[0])

    async def record_score(self, event: UtteranceScore) -> bool:
        """Store one scored utterance; False when (call_id, utterance_id) was already stored (kept as is)."""
        async with self.pool.connection() as conn:
            try:
                cur = await conn.execute(_INSERT_EVENT, _event_params(event))
            except psycopg.errors.ForeignKeyViolation as err:
                raise UnknownCallError(event.call_id) from err
        return cur.rowcount == 1

    async def record_scores(self, batch: Sequence[UtteranceScore]) -> int:
        """Store a batch in one transaction (all or nothing); returns how many rows were new."""
        if not batch:
            return 0
        async with self.pool.connection() as conn:
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.executemany(_INSERT_EVENT, [_event_params(e) for e in batch])
                    return cur.rowcount  # psycopg sums the rows affected over the batch
            except psycopg.errors.ForeignKeyViolation as err:
                raise UnknownCallError(", ".join(sorted({e.call_id for e in batch}))) from err

    async def list_events(self, call_id: str) -> list[UtteranceScore]:
        """The call's scored utterances, ordered by utterance_id."""
        async with self.pool.connection() as conn:
            return await _fetch_events(conn, call_id)

    async def call_stats(self, call_id: str) -> CallStatistics:
        """The statistics of the call's stored scores."""
        async with self.pool.connection() as conn:
            return await _fetch_stats(conn, call_id)

    async def end_call(
        self,
        call_id: str,
        stats: CallStatistics | None = None,
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
        async with self.pool.connection() as conn, conn.transaction():
            if stats is None:
                stats = await _fetch_stats(conn, call_id)
            params = {
                **{column: getattr(stats, column) for column in _STATS_COLUMNS},
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
            messages = outbox(call_row(row)) if callable(outbox) else outbox
            await insert_outbox(conn, messages)
        return True

    async def get_call(self, call_id: str) -> CallRow | None:
        """The call with its events in utterance order, or None."""
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(_SELECT_CALL, (call_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            return call_row(row, await _fetch_events(conn, call_id))

    # -- live calls across replicas

    async def heartbeat(self, call_ids: Sequence[str]) -> None:
        """These calls are held live by the caller's replica, now."""
        if call_ids:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "UPDATE calls SET heartbeat_at = now() WHERE call_id = ANY(%s) AND status = 'live'",
                    (list(call_ids),),
                )

    async def live_calls(
        self,
        fresh_s: float,
        tenant: str | None = None,
        limit: int = 50,
        *,
        team: str | None = None,
        agent: str | None = None,
    ) -> list[LiveCallRow]:
        """Live calls whose replica sent a heartbeat within `fresh_s`, newest first; None: any."""
        params = {"fresh_s": fresh_s, "tenant": tenant, "team": team, "agent": agent, "limit": limit}
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(LiveCallRow)).execute(_LIVE_CALLS, params)
            return await cur.fetchall()

    async def fail_orphaned_calls(self, silent_s: float) -> list[str]:
        """Close as failed (reason ``replica_lost``) the live calls without a heartbeat for `silent_s`:
        the replica holding them died. Their scored utterances stay; the aggregates are computed from them."""
        async with self.pool.connection() as conn:
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

    # -- the daily roll-ups, for the report pages

    async def rollup_ran_at(self, day: date) -> datetime | None:
        """When `day` was last rolled up (None: never)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT ran_at FROM rollup_runs WHERE day = %s", (day,))
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def daily_rollups(self, day: date) -> list[RollupRow]:
        """The stored roll-up rows of `day`, by tenant, team, agent (the team's row first)."""
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(RollupRow)).execute(_SELECT_ROLLUPS, (day,))
            return await cur.fetchall()

    async def rollup_trend(
        self, tenant: str, team: str, agent: str, first: date, last: date
    ) -> list[RollupRow]:
        """One team's (`agent` "") or one agent's stored rows from `first` to `last`, by day."""
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(RollupRow)).execute(
                _SELECT_TREND, {"tenant": tenant, "team": team, "agent": agent, "first": first, "last": last}
            )
            return await cur.fetchall()

    async def drift_day(self, tenant: str, day: date) -> DriftRow | None:
        """The tenant's drift indicators of `day` (None: no scored utterance that day, or not computed)."""
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(DriftRow)).execute(_SELECT_DRIFT, (tenant, day))
            return await cur.fetchone()

    async def rolled_up_days(self, first: date, last: date) -> set[date]:
        """The days from `first` to `last` whose roll-up has run."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT day FROM rollup_runs WHERE day BETWEEN %s AND %s", (first, last))
            return {row[0] for row in await cur.fetchall()}


def _event_params(event: UtteranceScore) -> tuple[Any, ...]:
    return tuple(getattr(event, column) for column in _EVENT_COLUMNS)


async def _fetch_events(conn: AsyncConnection[Any], call_id: str) -> list[UtteranceScore]:
    cur = await conn.cursor(row_factory=class_row(UtteranceScore)).execute(_SELECT_EVENTS, (call_id,))
    return await cur.fetchall()


async def _fetch_stats(conn: AsyncConnection[Any], call_id: str) -> CallStatistics:
    return compute_call_stats(await _fetch_events(conn, call_id))


# --- region routing -----------------------------------------------------------------------------------------


class StoreRouter(RegionalStores[Store]):
    """The default Store plus one per region that has its own database; picks the one a call belongs to.

    A region without its own database (and a call without a region) uses the default store: residency is
    enforced for the regions that are configured, as `DATABASE_URL_<REGION>` says.
    """

    @classmethod
    async def open(
        cls,
        default_url: str,
        regional_urls: Mapping[str, str] | None = None,
        min_size: int = 1,
        max_size: int = 10,
    ) -> Self:
        """Open every store concurrently; if one fails, close those that opened and re-raise."""

        async def open_store(url: str) -> Store:
            return await Store.open(url, min_size, max_size)

        return await cls.open_with(open_store, default_url, regional_urls)

    async def get_call(self, call_id: str) -> CallRow | None:
        """Find a call whose region is not known to the caller (GET /v1/calls/{id}) in every database."""
        found = await asyncio.gather(*(s.get_call(call_id) for s in self.stores))
        return next((call for call in found if call is not None), None)

    async def erase_call(self, call_id: str, tenant: str, actor: str) -> Erasure:
        """Erase the call (callsense/privacy.py) in whichever database holds it."""
        for store in self.stores:
            async with store.pool.connection() as conn:
                erasure = await erase_call(conn, call_id, tenant, actor)
            if erasure.outcome != "not_found":
                return erasure
        return Erasure("not_found")
