"""The drift indicators in PostgreSQL (``drift_daily``, migration 0007) as the nightly drift job reads and
writes them: a day's scores per tenant (aggregated in SQL), a tenant's texts of the day (bounded), its
trailing days, and the day's rows written with their Slack alerts in one transaction.

The gateway reads the rows for GET /v1/reports/drift with a query of its own (gateway/store.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from callsense.domain import DRIFT_ROW_COLUMNS, DriftRow
from callsense.outbox import OutboxMessage, insert_outbox
from callsense.storage import Database
from postcall.rollup_store import DayWindow

# Class of the advisory locks that serialise writes of one day's drift (the second key: the day's ordinal).
DRIFT_LOCK_CLASS = 0x64726674  # "drft"


@dataclass(frozen=True)
class TenantDayScores:
    """One tenant's day as SQL aggregates it: counts, the label mix and the mean confidence."""

    tenant: str
    utterances: int
    text_utterances: int
    negative_share: float | None
    neutral_share: float | None
    positive_share: float | None
    mean_confidence: float | None

    def scores(self) -> dict[str, float | None]:
        return {
            "negative_share": self.negative_share,
            "neutral_share": self.neutral_share,
            "positive_share": self.positive_share,
            "mean_confidence": self.mean_confidence,
        }


# A day of scored utterances per tenant, each tenant's day in its own zone (as in the roll-up's query,
# postcall/rollup_store.py). The confidence is the top class's probability.
_DAY_SCORES = """
    SELECT c.tenant,
           count(e.id)::integer AS utterances,
           count(e.id) FILTER (WHERE btrim(e.text) <> '')::integer AS text_utterances,
           avg((e.label = 'negative')::integer)::double precision AS negative_share,
           avg((e.label = 'neutral')::integer)::double precision AS neutral_share,
           avg((e.label = 'positive')::integer)::double precision AS positive_share,
           avg(GREATEST(e.p_negative, e.p_neutral, e.p_positive))::double precision AS mean_confidence
    FROM calls c
    LEFT JOIN unnest(
        %(zone_tenants)s::text[], %(zone_starts)s::timestamptz[], %(zone_ends)s::timestamptz[]
    ) AS z(tenant, day_start, day_end) ON z.tenant = c.tenant
    JOIN nlp_events e ON e.call_id = c.call_id
    WHERE c.started_at >= %(earliest)s AND c.started_at < %(latest)s  -- the index narrows, then
      AND c.started_at >= COALESCE(z.day_start, %(start)s) AND c.started_at < COALESCE(z.day_end, %(end)s)
    GROUP BY c.tenant
    ORDER BY c.tenant
"""
# One tenant's texts of the day; on a day with more than the cap, a deterministic 1-in-`every` sample by a
# hash of the utterance's key (so a re-run reads the same lines), and never more than `cap` rows.
_DAY_TEXTS = """
    SELECT e.text
    FROM calls c JOIN nlp_events e ON e.call_id = c.call_id
    WHERE c.tenant = %(tenant)s AND c.started_at >= %(start)s AND c.started_at < %(end)s
      AND btrim(e.text) <> ''
      AND (%(every)s = 1
           OR (hashtext(c.call_id || ':' || e.utterance_id::text) & 2147483647) %% %(every)s = 0)
    LIMIT %(cap)s
"""
_COLUMNS = ", ".join(DRIFT_ROW_COLUMNS)
_TRAILING = f"""
    SELECT {_COLUMNS} FROM drift_daily
    WHERE tenant = %(tenant)s AND day >= %(first)s AND day < %(day)s
    ORDER BY day
"""
_WRITTEN = [c for c in DRIFT_ROW_COLUMNS if c != "computed_at"]
_INSERT = f"""
    INSERT INTO drift_daily ({", ".join(_WRITTEN)})
    VALUES ({", ".join(f"%({c})s" for c in _WRITTEN)})
"""


class DriftStore(Database):
    """The drift rows of one database. ``DriftStore(db.pool)`` shares an open pool."""

    async def day_scores(
        self, day_window: DayWindow, tenant_windows: Mapping[str, DayWindow]
    ) -> list[TenantDayScores]:
        """Every tenant with scored utterances on the day: a tenant's day is its window in
        ``tenant_windows``, else ``day_window``."""
        every = [day_window, *tenant_windows.values()]
        params = {
            "start": day_window.start,
            "end": day_window.end,
            "zone_tenants": list(tenant_windows),
            "zone_starts": [w.start for w in tenant_windows.values()],
            "zone_ends": [w.end for w in tenant_windows.values()],
            "earliest": min(w.start for w in every),
            "latest": max(w.end for w in every),
        }
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(TenantDayScores)).execute(_DAY_SCORES, params)
            return await cur.fetchall()

    async def day_texts(self, tenant: str, window: DayWindow, text_utterances: int, cap: int) -> list[str]:
        """The tenant's utterance texts of the day: all of them up to ``cap``, else a sample of about
        ``cap`` (``text_utterances``: how many there are, from ``day_scores``)."""
        every = max(1, -(-text_utterances // cap))  # ceil
        params = {"tenant": tenant, "start": window.start, "end": window.end, "every": every, "cap": cap}
        async with self.pool.connection() as conn:
            cur = await conn.execute(_DAY_TEXTS, params)
            return [row[0] for row in await cur.fetchall()]

    async def trailing(self, tenant: str, day: date, days: int) -> list[DriftRow]:
        """The tenant's stored days in the ``days`` before ``day``, oldest first."""
        params = {"tenant": tenant, "first": day - timedelta(days=days), "day": day}
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(DriftRow)).execute(_TRAILING, params)
            return await cur.fetchall()

    async def write_day(
        self, day: date, rows: Sequence[DriftRow], alerts: Sequence[OutboxMessage]
    ) -> list[OutboxMessage]:
        """Replace ``day``'s rows with ``rows`` and enqueue ``alerts``, in one transaction (under a lock per
        day, so two workers at once leave one set of rows); returns the alerts that were new (a day's alert
        already enqueued by an earlier run is not enqueued again)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (DRIFT_LOCK_CLASS, day.toordinal()))
            await conn.execute("DELETE FROM drift_daily WHERE day = %s", (day,))
            if rows:
                async with conn.cursor() as cur:
                    await cur.executemany(_INSERT, [_params(row) for row in rows])
            # One by one (a tenant or two a day), to know which were new: the alert counter counts those.
            return [alert for alert in alerts if await insert_outbox(conn, [alert])]


def _params(row: DriftRow) -> dict[str, Any]:
    params = {c: getattr(row, c) for c in _WRITTEN}
    params["checks"] = Jsonb(row.checks)
    return params
