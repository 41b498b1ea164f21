"""The retention purge against a real database (a fresh one per test, ``store`` from tests/support/delivery):
calls past their tenant's period go with their utterances and outbox rows and leave an audit row; others,
live calls and tenants without a period stay. The clock is a parameter, never a wait."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from callsense.outbox import OutboxMessage, insert_outbox
from callsense.tenants import TenantsConfig, TenantSettings
from gateway.store import Store
from postcall.retention import RetentionPurge
from tests.support.delivery import add_call

pytestmark = pytest.mark.slow

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


async def test_calls_past_their_tenants_period_go_and_are_audited(store: Store) -> None:
    tenants = TenantsConfig(
        default=TenantSettings(retention_days=90),
        tenants={"acme": TenantSettings(retention_days=30), "keeper": TenantSettings()},
    )
    ages = {"acme-old": ("acme", 31), "acme-new": ("acme", 29), "other-old": ("other", 91)}
    ages |= {"other-new": ("other", 60), "keeper-old": ("keeper", 900)}
    for call_id, (tenant, days) in ages.items():
        await add_call(
            store, call_id, [("customer", "negative")], started_at=NOW - timedelta(days=days), tenant=tenant
        )
    await store.upsert_call_start("acme-live", {"tenant": "acme"}, started_at=NOW - timedelta(days=40))
    message = OutboxMessage(
        "crm", "acme", "https://crm.example/x", {"call_id": "acme-old"}, "crm:acme-old", "acme-old"
    )
    async with store.pool.connection() as conn:
        await insert_outbox(conn, [message])

    purge = RetentionPurge([store], tenants, clock=lambda: NOW)
    assert purge.enabled
    [result] = await purge.run_once()
    assert result.calls == {"acme": 1, "other": 1}
    left = {c for c in [*ages, "acme-live"] if await store.get_call(c) is not None}
    assert left == {"acme-new", "other-new", "keeper-old", "acme-live"}
    assert await store.list_events("acme-old") == []
    async with store.pool.connection() as conn:
        outbox = await (await conn.execute("SELECT count(*) FROM webhook_outbox")).fetchone()
        audit = await (
            await conn.execute("SELECT tenant, actor, action, detail FROM audit_log ORDER BY tenant")
        ).fetchall()
    assert outbox == (0,)
    assert [(t, a, act, d["calls"]) for t, a, act, d in audit] == [
        ("acme", "retention", "retention_purge", 1),
        ("other", "retention", "retention_purge", 1),
    ]
    assert await purge.run_once() == [type(result)({})]  # nothing more to remove


def test_without_any_period_the_purge_never_runs() -> None:
    assert not RetentionPurge([], TenantsConfig()).enabled
    with pytest.raises(ValueError, match="at least 1"):
        TenantSettings(retention_days=0)
