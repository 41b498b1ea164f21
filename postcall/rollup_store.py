"""The daily roll-ups (``daily_rollups``, ``rollup_runs``) as the roll-up writes them.

``rollup_day`` recomputes one day per agent and team (see postcall/rollup.py for what the figures mean);
the gateway's report pages read the rows with queries of their own (gateway/store.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple

from psycopg.rows import class_row

from callsense.domain import RollupRow
from callsense.storage import Database

# Class of the advisory locks that serialise roll-ups of one day (the second key is the day's ordinal).
ROLLUP_LOCK_CLASS = 0x726F6C6C  # "roll"


class DayWindow(NamedTuple):
    """A day as an interval of time: [start, end), both timezone-aware."""

    start: datetime
    end: datetime


# One day of calls, per agent and per team (GROUPING SETS; the team's row has agent ''). Calls without an
# agent count in their team's row only: an agent row keyed '' would collide with the team's.
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


class RollupStore(Database):
    """The roll-ups of one database. ``RollupStore(db.pool)`` shares an open pool."""

    async def rollup_day(
        self,
        day: date,
        window: DayWindow | None = None,
        tenant_windows: Mapping[str, DayWindow] | None = None,
    ) -> list[RollupRow]:
        """Recompute `day`'s rows of daily_rollups from its calls and return them.

        A call belongs to `day` when it started within its tenant's window in `tenant_windows`, else
        within `window` (default: the UTC day). The day's old rows are replaced in one transaction, under
        an advisory lock per day, so a re-run (or two workers at once) gives the same rows and leaves
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
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (ROLLUP_LOCK_CLASS, day.toordinal()))
            await conn.execute("DELETE FROM daily_rollups WHERE day = %s", (day,))
            cur = await conn.cursor(row_factory=class_row(RollupRow)).execute(_ROLLUP_DAY, params)
            rows = await cur.fetchall()
        return sorted(rows, key=lambda r: (r.tenant, r.team, r.agent))

    async def mark_rollup_ran(self, day: date, rows: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO rollup_runs (day, rows) VALUES (%s, %s)"
                " ON CONFLICT (day) DO UPDATE SET rows = EXCLUDED.rows, ran_at = now()",
                (day, rows),
            )

    async def rollup_ran_at(self, day: date) -> datetime | None:
        """When `day` was last rolled up (None: never)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT ran_at FROM rollup_runs WHERE day = %s", (day,))
            row = await cur.fetchone()
        return None if row is None else row[0]
