"""Erasure and retention: a call's data removed on request or when its tenant's retention period is over,
each removal written to ``audit_log`` (migration 0006) without any of the call's content.

What goes with a call: its row, its scored utterances (``nlp_events``, by cascade) and its webhook outbox
rows (their payloads copy the call's report). What stays: the daily roll-ups (counts and averages per team
and agent, no text) and the audit rows. The gateway erases (``DELETE /v1/calls/{id}``); the post-call worker
purges (postcall/retention.py), in every database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from callsense.tenants import TenantsConfig

RETENTION_ACTOR = "retention"


@dataclass(frozen=True)
class Erasure:
    """The outcome of erasing one call: ``status`` of the call that was removed, or why nothing was."""

    outcome: Literal["erased", "not_found", "live"]
    outbox_rows: int = 0


async def erase_call(conn: AsyncConnection[Any], call_id: str, tenant: str, actor: str) -> Erasure:
    """Remove ``call_id`` of ``tenant`` with its utterances and outbox rows, and audit it; a live call is
    left alone (end it first). One transaction: all of it, or nothing."""
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT status FROM calls WHERE call_id = %s AND tenant = %s FOR UPDATE", (call_id, tenant)
        )
        row = await cur.fetchone()
        if row is None:
            return Erasure("not_found")
        if row[0] == "live":
            return Erasure("live")
        outbox = await _delete_outbox(conn, [call_id])
        await conn.execute("DELETE FROM calls WHERE call_id = %s", (call_id,))
        await _audit(conn, tenant, actor, "erase_call", call_id, {"outbox_rows": outbox})
    return Erasure("erased", outbox)


@dataclass(frozen=True)
class Purge:
    """What one retention run removed, per tenant (the number of calls)."""

    calls: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.calls.values())


async def purge_expired(conn: AsyncConnection[Any], tenants: TenantsConfig, now: datetime) -> Purge:
    """Remove the ended calls older than their tenant's ``retention_days`` (tenants without a period keep
    everything); one audit row per tenant purged."""
    removed: Counter[str] = Counter()
    named = list(tenants.tenants)
    for tenant, settings in tenants.tenants.items():
        if settings.retention_days is not None:
            cutoff = now - timedelta(days=settings.retention_days)
            removed += await _purge(conn, "tenant = %(tenant)s", {"tenant": tenant}, cutoff)
    if tenants.default.retention_days is not None:  # every tenant not named has the default's period
        cutoff = now - timedelta(days=tenants.default.retention_days)
        removed += await _purge(conn, "tenant <> ALL(%(named)s)", {"named": named}, cutoff)
    return Purge(dict(removed))


async def _purge(
    conn: AsyncConnection[Any], which: str, params: dict[str, Any], cutoff: datetime
) -> Counter[str]:
    async with conn.transaction():
        cur = await conn.execute(
            f"DELETE FROM calls WHERE {which} AND started_at < %(cutoff)s AND status <> 'live'"
            " RETURNING call_id, tenant",
            {**params, "cutoff": cutoff},
        )
        rows = await cur.fetchall()
        counts = Counter(tenant for _, tenant in rows)
        outbox = await _delete_outbox(conn, [call_id for call_id, _ in rows])
        for tenant, calls in counts.items():
            detail = {"calls": calls, "outbox_rows": outbox if len(counts) == 1 else None}
            await _audit(conn, tenant, RETENTION_ACTOR, "retention_purge", cutoff.isoformat(), detail)
    return counts


async def _delete_outbox(conn: AsyncConnection[Any], call_ids: Iterable[str]) -> int:
    ids = list(call_ids)
    if not ids:
        return 0
    cur = await conn.execute("DELETE FROM webhook_outbox WHERE call_id = ANY(%s)", (ids,))
    return cur.rowcount


async def _audit(
    conn: AsyncConnection[Any], tenant: str, actor: str, action: str, target: str, detail: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (tenant, actor, action, target, detail) VALUES (%s, %s, %s, %s, %s)",
        (tenant, actor, action, target, Jsonb(detail)),
    )
