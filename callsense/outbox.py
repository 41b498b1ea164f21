"""The webhook outbox as its writers see it: the message type, the one SQL that enqueues, the CRM push.

A webhook is never posted from where it is caused. It is written to ``webhook_outbox`` in the same
transaction as its cause, then the post-call worker's dispatcher delivers it (postcall/webhooks.py: signing,
retries, the headers). Two writers:
- the gateway, when a call ends: ``end_call(..., outbox=crm_outbox(tenants))`` enqueues the call's CRM push,
  built from the call's row as it was just stored (so a crash cannot end the call and lose its push);
- the post-call worker: the roll-up's Slack alerts, and the CRM push of a call whose report it completed
  later (``REPORT_PENDING``).

``insert_outbox`` also sends ``NOTIFY callsense_outbox`` in that transaction (delivered at its commit): the
worker LISTENs, so a push enqueued by a gateway goes out at once, not at the dispatcher's next poll.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from callsense.domain import REPORT_PENDING, CallRow
from callsense.tenants import TenantsConfig

OutboxKind = Literal["crm", "slack"]
EVENTS: dict[OutboxKind, str] = {"crm": "crm.call_ended", "slack": "slack.daily_alert"}
"""The ``X-Callsense-Event`` of each kind (the CRM payload's ``event`` too)."""
NOTIFY_CHANNEL = "callsense_outbox"
"""Notified (empty payload) by every transaction that enqueued something."""


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

_INSERT_OUTBOX = """
    INSERT INTO webhook_outbox (kind, tenant, call_id, url, payload, dedupe_key)
    VALUES (%s, %s, %s, %s, %s, %s)
    ON CONFLICT (dedupe_key) DO NOTHING
"""


async def insert_outbox(conn: AsyncConnection[Any], messages: Iterable[OutboxMessage]) -> int:
    """Enqueue ``messages`` on ``conn`` (inside the caller's transaction, if any); returns how many were new
    (a known dedupe key is skipped). The dispatchers are notified when one was."""
    params = [(m.kind, m.tenant, m.call_id, m.url, Jsonb(dict(m.payload)), m.dedupe_key) for m in messages]
    if not params:
        return 0
    async with conn.cursor() as cur:
        await cur.executemany(_INSERT_OUTBOX, params)
        inserted = cur.rowcount
    if inserted:
        await conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
    return inserted


# --- the CRM push -------------------------------------------------------------------------------------------


def crm_dedupe_key(call_id: str) -> str:
    return f"crm:{call_id}"


def crm_payload(call: CallRow) -> dict[str, Any]:
    """The CRM fields of an ended call, as POSTed (JSON). Scores are in [0, 1]: p_positive + p_neutral / 2.

    ``avg_sentiment`` / ``min_sentiment`` cover every speaker (as ``calls`` does); the customer's average is
    beside them. ``summary`` holds the manager's summary lines; ``metadata`` the caller's own keys (labels
    such as a CRM opportunity id), so that the receiver can find its record.
    """
    summary = call.summary or {}
    lines = summary.get("lines", [])
    return {
        "event": EVENTS["crm"],
        "call_id": call.call_id,
        "tenant": call.tenant,
        "agent": call.agent,
        "team": call.team,
        "region": call.region,
        "language": call.language,
        "status": call.status,
        "started_at": _iso(call.started_at),
        "ended_at": _iso(call.ended_at),
        "duration_s": call.duration_s,
        "utterance_count": call.utterance_count,
        "avg_sentiment": call.avg_sentiment,
        "min_sentiment": call.min_sentiment,
        "customer_avg_sentiment": call.customer_avg_sentiment,
        "objection_tags": list(call.objection_tags),
        "summary": [str(line) for line in lines] if isinstance(lines, list) else [],
        "metadata": call.metadata,
    }


def crm_outbox_message(call: CallRow, tenants: TenantsConfig) -> OutboxMessage | None:
    """The CRM push of an ended call, or None when its tenant has no CRM webhook."""
    url = tenants.for_tenant(call.tenant).crm_webhook_url
    if not url:
        return None
    return OutboxMessage(
        kind="crm",
        tenant=call.tenant,
        url=url,
        payload=crm_payload(call),
        dedupe_key=crm_dedupe_key(call.call_id),
        call_id=call.call_id,
    )


def crm_outbox(tenants: TenantsConfig) -> Callable[[CallRow], list[OutboxMessage]]:
    """What ``end_call(..., outbox=...)`` takes: the push built from the call's row as just ended.

    None for a call whose report is still owed (``REPORT_PENDING`` in its summary): the post-call worker
    enqueues its push once it has completed the report, so that the CRM gets the tags and the summary."""

    def messages(call: CallRow) -> list[OutboxMessage]:
        if (call.summary or {}).get(REPORT_PENDING):
            return []
        message = crm_outbox_message(call, tenants)
        return [] if message is None else [message]

    return messages


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
