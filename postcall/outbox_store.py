"""The webhook outbox (``webhook_outbox``) as its dispatchers see it: claim, record, requeue, listen.

Messages are inserted in the same transaction as what caused them (``callsense.outbox.insert_outbox``: the
gateway's end of a call, a roll-up's alerts, a completed report), unique on a dedupe key, claimed by
dispatchers with ``FOR UPDATE SKIP LOCKED`` plus a lease, and never deleted. postcall/webhooks.py delivers
them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from callsense.outbox import NOTIFY_CHANNEL, OutboxKind, OutboxMessage, insert_outbox
from callsense.storage import Database


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


_OUTBOX_COLUMNS = ", ".join(f.name for f in fields(OutboxRow))
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


class OutboxStore(Database):
    """The outbox of one database. ``OutboxStore(db.pool)`` shares an open pool."""

    async def enqueue(self, messages: Iterable[OutboxMessage]) -> int:
        """Enqueue webhooks in one transaction; returns how many were new (a known dedupe key is skipped)."""
        async with self.pool.connection() as conn, conn.transaction():
            return await insert_outbox(conn, messages)

    async def claim_due(
        self, limit: int, lease_s: float, kinds: Sequence[OutboxKind] | None = None
    ) -> list[OutboxRow]:
        """Take up to `limit` due messages for one attempt each, oldest due first.

        Each is leased for `lease_s`: no other dispatcher gets it before that, unless it is marked failed
        (then at its next attempt); a dispatcher that dies holding it leaves it due again after the lease.
        """
        params = {"limit": limit, "lease_s": lease_s, "kinds": None if kinds is None else list(kinds)}
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(OutboxRow)).execute(_CLAIM_OUTBOX, params)
            return await cur.fetchall()

    async def mark_delivered(self, message_id: int, status: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE webhook_outbox SET delivered_at = now(), last_status = %s, last_error = NULL"
                " WHERE id = %s AND delivered_at IS NULL",
                (status, message_id),
            )

    async def mark_failed(
        self, message_id: int, *, status: int | None, error: str, retry_in_s: float | None
    ) -> None:
        """Record a failed attempt: due again in `retry_in_s`, or given up (dead) when it is None."""
        async with self.pool.connection() as conn:
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
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE webhook_outbox SET dead_at = NULL, next_attempt_at = now()"
                " WHERE dead_at IS NOT NULL AND delivered_at IS NULL"
                " AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
                " AND (%(kind)s::text IS NULL OR kind = %(kind)s)",
                {"tenant": tenant, "kind": kind},
            )
            if cur.rowcount:
                await conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
            return cur.rowcount

    async def seconds_until_next_attempt(self, kinds: Sequence[OutboxKind] | None = None) -> float | None:
        """How long until the earliest pending message is due (<= 0: now); None when none is pending."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_NEXT_ATTEMPT_IN, {"kinds": None if kinds is None else list(kinds)})
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def outbox_message(self, dedupe_key: str) -> OutboxRow | None:
        """The message enqueued under `dedupe_key`, with its delivery state."""
        async with self.pool.connection() as conn:
            cur = await conn.cursor(row_factory=class_row(OutboxRow)).execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM webhook_outbox WHERE dedupe_key = %s", (dedupe_key,)
            )
            return await cur.fetchone()

    async def notifications(self) -> AsyncIterator[None]:
        """Yields once when listening has begun (the caller then looks at what is already due), then once
        per transaction that enqueued something in this database, whoever committed it. A connection of
        its own (outside the pool), closed when the iteration ends; it raises when the connection breaks."""
        conninfo = self.pool.conninfo
        assert isinstance(conninfo, str), "the pools here are opened on a URL"
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            yield
            async for _ in conn.notifies():
                yield
        finally:
            await conn.close()
