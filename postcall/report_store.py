"""The calls whose after-call report is owed, as the worker's sweep reads and completes them.

A gateway that could not reach the worker when a call ended stored the call with an empty report marked
``REPORT_PENDING`` in ``calls.summary`` (and no CRM push). ``complete`` writes the real report over it, the
tags, and enqueues the CRM push built from the completed row, in one transaction; it does nothing when the
mark is gone (another worker completed it first), so a report is completed and pushed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from callsense.domain import CALL_ROW_COLUMNS, REPORT_PENDING, CallRow, UtteranceScore, call_row
from callsense.outbox import OutboxSource, insert_outbox
from callsense.storage import Database

# The predicate of calls_report_pending_idx (migration 0004), repeated so that the index serves the sweep.
_PENDING = f"summary ? '{REPORT_PENDING}'"
_SELECT_PENDING = f"""
    SELECT call_id FROM calls WHERE {_PENDING} AND status <> 'live'
    ORDER BY ended_at LIMIT %s
"""
_SELECT_EVENTS = (
    f"SELECT {', '.join(f.name for f in fields(UtteranceScore))} FROM nlp_events"
    " WHERE call_id = %s ORDER BY utterance_id"
)
# The report's keys replace the stand-in's; the rest of the summary (reason, badge, label counts) stays.
_COMPLETE = f"""
    UPDATE calls SET
        summary = (summary - '{REPORT_PENDING}') || %(report)s,
        objection_tags = %(tags)s
    WHERE call_id = %(call_id)s AND {_PENDING}
    RETURNING {", ".join(CALL_ROW_COLUMNS)}
"""


class OwedReports(Database):
    """The owed reports of one database. ``OwedReports(db.pool)`` shares an open pool."""

    async def pending_calls(self, limit: int = 100) -> list[str]:
        """Ended calls whose report is owed, the longest waiting first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_SELECT_PENDING, (limit,))
            return [row[0] for row in await cur.fetchall()]

    async def events(self, call_id: str) -> list[UtteranceScore]:
        """The call's scored utterances, ordered by utterance_id."""
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(UtteranceScore)).execute(_SELECT_EVENTS, (call_id,))
            return await cur.fetchall()

    async def complete(
        self,
        call_id: str,
        report: Mapping[str, Any],
        objection_tags: Sequence[str],
        *,
        outbox: OutboxSource = (),
    ) -> CallRow | None:
        """Store the report (``CallReport.to_json()``) and tags of an owed call and enqueue ``outbox`` (a
        function of the completed row, or messages) in the same transaction. None when the call owes no
        report (any more)."""
        params = {"call_id": call_id, "report": Jsonb(dict(report)), "tags": Jsonb(list(objection_tags))}
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.cursor(row_factory=dict_row).execute(_COMPLETE, params)
            row = await cur.fetchone()
            if row is None:
                return None
            call = call_row(row)
            await insert_outbox(conn, outbox(call) if callable(outbox) else outbox)
        return call
