"""Erasure and the no-transcript switch through the real gateway (chopper, scorer, post-call worker,
PostgreSQL): an admin erases an ended call (gone with its utterances, an audit row without content
stays); other roles, tenants and live calls are refused; a tenant that stores no transcripts gets scores,
tags and figures stored and no text anywhere in its rows, while its live clients still see the text."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect

from callsense.tenants import TenantsConfig, TenantSettings
from gateway.auth.credentials import Role
from tests.support.auth import bearer
from tests.support.mesh import MeshServices, RunningGateway, _serve_gateway
from tests.support.ws_client import receive, receive_until_summary, send

pytestmark = pytest.mark.slow

LINES = [
    ("customer", "Honestly that is well over what we budgeted for this year."),
    ("agent", "I understand, let me see what I can do on the price."),
    ("customer", "If you can get closer to our number we can sign this month."),
]


@pytest_asyncio.fixture
async def gw(mesh_services: MeshServices, gateway_db_url: str) -> AsyncIterator[RunningGateway]:
    config = mesh_services.config(database_url=gateway_db_url)
    tenants = TenantsConfig(tenants={"hush": TenantSettings(store_transcripts=False)})
    async with _serve_gateway(config, tenants=tenants) as running:
        yield running


def batch(call_id: str) -> dict[str, object]:
    utterances = [
        {"text": text, "channel": channel, "start_ms": i * 4000, "end_ms": i * 4000 + 3500}
        for i, (channel, text) in enumerate(LINES)
    ]
    return {"call_id": call_id, "utterances": utterances}


async def test_an_admin_erases_a_call_and_only_an_audit_row_stays(gw: RunningGateway) -> None:
    call_id = f"erase-{uuid.uuid4().hex[:8]}"
    admin, globex_admin = await gw.make_key("acme", Role.ADMIN), await gw.make_key("globex", Role.ADMIN)
    async with httpx.AsyncClient(base_url=gw.http_url, timeout=60) as http:
        assert (
            await http.post("/v1/sentiment/batch", json=batch(call_id), headers=gw.headers)
        ).status_code == 200
        refused = {
            "no key": await http.delete(f"/v1/calls/{call_id}"),
            "service": await http.delete(f"/v1/calls/{call_id}", headers=gw.headers),
            "other tenant": await http.delete(f"/v1/calls/{call_id}", headers=bearer(globex_admin)),
        }
        assert {k: r.status_code for k, r in refused.items()} == {
            "no key": 401,
            "service": 403,
            "other tenant": 404,
        }
        assert (await http.delete(f"/v1/calls/{call_id}", headers=bearer(admin))).status_code == 204
        assert (await http.get(f"/v1/calls/{call_id}", headers=gw.headers)).status_code == 404
        again = await http.delete(f"/v1/calls/{call_id}", headers=bearer(admin))
        assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"
    store = gw.gateway.stores.default
    assert await store.list_events(call_id) == []
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT tenant, actor, action, detail FROM audit_log WHERE target = %s", (call_id,)
        )
        audit = await cur.fetchall()
    admin_key_id = admin.split("_")[1]
    assert [(t, a, act) for t, a, act, _ in audit] == [("acme", admin_key_id, "erase_call")]
    assert "budget" not in json.dumps(audit[0][3])  # no content in the audit


async def test_a_live_call_is_not_erased(gw: RunningGateway) -> None:
    admin = await gw.make_key("acme", Role.ADMIN)
    call_id = f"erase-live-{uuid.uuid4().hex[:8]}"
    async with connect(gw.ws_url, additional_headers=gw.headers) as ws:
        await send(ws, {"type": "start", "call_id": call_id})
        assert (await receive(ws))["type"] == "started"
        async with httpx.AsyncClient(base_url=gw.http_url, headers=bearer(admin)) as http:
            live = await http.delete(f"/v1/calls/{call_id}")
        assert live.status_code == 409 and live.json()["error"]["code"] == "call_active"
        await send(ws, {"type": "stop"})
        await receive_until_summary(ws)


async def test_a_tenant_that_stores_no_transcripts_keeps_scores_and_tags_but_no_text(
    gw: RunningGateway,
) -> None:
    hush = await gw.make_key("hush")
    live_id, batch_id = f"hush-live-{uuid.uuid4().hex[:8]}", f"hush-batch-{uuid.uuid4().hex[:8]}"
    async with connect(gw.ws_url, additional_headers=bearer(hush)) as ws:
        await send(ws, {"type": "start", "call_id": live_id})
        assert (await receive(ws))["type"] == "started"
        for i, (channel, text) in enumerate(LINES):
            at = i * 4000
            await send(
                ws,
                {"type": "utterance", "text": text, "channel": channel, "start_ms": at, "end_ms": at + 3500},
            )
        await send(ws, {"type": "stop"})
        events = await receive_until_summary(ws)
    assert [e["text"] for e in events if e["type"] == "score"] == [text for _, text in LINES]  # live: text
    async with httpx.AsyncClient(base_url=gw.http_url, headers=bearer(hush), timeout=60) as http:
        assert (await http.post("/v1/sentiment/batch", json=batch(batch_id))).status_code == 200
    store = gw.gateway.stores.default
    for call_id in (live_id, batch_id):
        row = await store.get_call(call_id)
        assert row is not None and row.tenant == "hush" and row.status == "ended"
        assert [e.text for e in row.events] == ["", "", ""]
        assert all(0 <= e.score <= 1 for e in row.events) and row.avg_sentiment is not None
        stored = json.dumps(row.summary)
        assert not any(word in stored for word in ("budgeted", "price", "sign this month")), stored
        assert row.objection_tags  # computed from the text before it was dropped
