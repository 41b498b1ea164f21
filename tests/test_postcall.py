"""After the call, end to end: a live call that sours at the price, over the WebSocket of a real gateway
(chopper and scorer subprocesses, embedded PostgreSQL), ends with objection tags and a spike line in its
summary event and in the stored call, and its CRM fields reach a real local webhook receiver, signed;
a batch of the same call gets the same report. Each part's rules are tested on their own in
test_call_report.py, test_objections.py and test_webhooks.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect

from callsense.config import Config
from gateway.enrichment.objections import LocalObjectionTagger
from gateway.enrichment.postcall import AfterCall
from gateway.enrichment.webhooks import DeliveryPolicy, OutboxDispatcher
from gateway.tenants import TenantsConfig, TenantSettings
from tests.delivery_fixtures import WebhookReceiver, receiver  # noqa: F401  (fixture)
from tests.mesh_fixtures import *  # noqa: F403  (fixtures)
from tests.mesh_fixtures import MeshServices, RunningGateway, _serve_gateway

pytestmark = pytest.mark.slow  # real processes
SECRET = "s3cret-for-tests"
TIMEOUT_S = 60.0

# (channel, start s, text): friendly, the price lands at 02:10, the customer sours and names a rival.
CALL: tuple[tuple[str, int, str], ...] = (
    ("agent", 0, "Thanks for taking the time today, great to meet you."),
    ("customer", 6, "Great to meet you too, the demo last week looked really good."),
    ("agent", 40, "Let me walk you through the reporting dashboards."),
    ("customer", 50, "Those dashboards are wonderful, my team would love them."),
    ("customer", 80, "I really like how simple the setup looks."),
    ("agent", 130, "Our premium plan costs five thousand dollars a month."),
    ("customer", 136, "This price is outrageous, I am really disappointed."),
    ("customer", 150, "Honestly this is far too expensive, I am really unhappy."),
    ("customer", 170, "Another vendor offers the same thing for half the price."),
    ("agent", 190, "I understand, let me see what I can do on the price."),
)


@pytest_asyncio.fixture
async def crm_gateway(
    mesh_services: MeshServices,
    gateway_db_url: str,
    receiver: WebhookReceiver,  # noqa: F811
) -> AsyncIterator[RunningGateway]:
    """A gateway whose tenant "acme-sales" pushes CRM fields to the receiver, with its outbox dispatcher."""
    tenants = TenantsConfig(
        tenants={
            "acme-sales": TenantSettings(crm_webhook_url=receiver.url("/crm"), crm_webhook_secret=SECRET)
        }
    )
    after_call = AfterCall(LocalObjectionTagger(), tenants)
    config = Config(
        chopper_addr=mesh_services.chopper_addr,
        scorer_addr=mesh_services.scorer_addr,
        database_url=gateway_db_url,
    )
    async with _serve_gateway(config, after_call=after_call) as running:
        dispatcher = OutboxDispatcher(
            running.gateway.stores.stores, tenants, DeliveryPolicy(poll_interval_s=0.2)
        )
        after_call.on_enqueued = dispatcher.notify
        await dispatcher.start()
        try:
            yield running
        finally:
            await dispatcher.stop()


def utterances() -> list[dict[str, Any]]:
    return [
        {"text": text, "channel": channel, "start_ms": start * 1000, "end_ms": start * 1000 + 4000}
        for channel, start, text in CALL
    ]


async def live_call(gw: RunningGateway, call_id: str) -> dict[str, Any]:
    """Drive CALL over the WebSocket; the summary event."""
    async with connect(gw.ws_url) as ws:
        start = {"type": "start", "call_id": call_id, "metadata": {"tenant": "acme-sales", "agent": "ana"}}
        await ws.send(json.dumps(start))
        for message in utterances():
            await ws.send(json.dumps({"type": "utterance", **message}))
        await ws.send(json.dumps({"type": "stop"}))
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                event = json.loads(await ws.recv())
                assert event["type"] != "error", event
                if event["type"] == "summary":
                    return event


async def delivered(receiver: WebhookReceiver, call_id: str) -> dict[str, Any]:  # noqa: F811
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            for request in receiver.received():
                if request.json().get("call_id") == call_id:
                    assert request.signature_valid
                    header = dict(
                        part.split("=", 1) for part in request.headers["x-callsense-signature"].split(",")
                    )
                    signed = f"{header['t']}.".encode() + request.body
                    expected = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
                    assert hmac.compare_digest(header["v1"], expected)
                    payload: dict[str, Any] = request.json()
                    return payload
            await asyncio.sleep(0.1)


def check_report(summary: dict[str, Any]) -> None:
    spikes = summary["spikes"]
    assert spikes and spikes[0]["at_ms"] == 136_000 and spikes[0]["topic"] == "pricing", spikes
    assert "negative spike at 02:16 after pricing" in " | ".join(summary["lines"])
    tags = {(t["tag"], t["start_ms"]) for t in summary["objection_tags"]}
    assert ("pricing pushback", 136_000) in tags and ("competitor mention", 170_000) in tags, tags
    assert all(t["channel"] == "customer" for t in summary["objection_tags"])
    assert len(summary["quarters"]) == 4


async def test_a_live_call_ends_with_tags_a_spike_line_and_a_signed_crm_push(
    crm_gateway: RunningGateway,
    receiver: WebhookReceiver,  # noqa: F811
) -> None:
    call_id = f"post-{uuid.uuid4().hex[:12]}"
    summary_event = await live_call(crm_gateway, call_id)
    assert "pricing pushback" in summary_event["objection_tags"]
    assert any(line.startswith("negative spike at 02:16") for line in summary_event["lines"])

    async with httpx.AsyncClient(base_url=crm_gateway.http_url) as http:
        stored = (await http.get(f"/v1/calls/{call_id}")).json()
    check_report(stored["summary"])
    assert stored["objection_tags"][:1] == ["pricing pushback"]
    assert "competitor mention" in stored["objection_tags"]

    payload = await delivered(receiver, call_id)
    assert payload["objection_tags"] == stored["objection_tags"]
    assert payload["avg_sentiment"] == pytest.approx(stored["stats"]["avg_sentiment"])
    assert payload["min_sentiment"] == pytest.approx(stored["stats"]["min_sentiment"])
    assert payload["tenant"] == "acme-sales" and payload["agent"] == "ana"


async def test_a_batch_gets_the_same_report_and_one_push_however_often_it_is_sent(
    crm_gateway: RunningGateway,
    receiver: WebhookReceiver,  # noqa: F811
) -> None:
    call_id = f"post-{uuid.uuid4().hex[:12]}"
    body = {"call_id": call_id, "metadata": {"tenant": "acme-sales"}, "utterances": utterances()}
    async with httpx.AsyncClient(base_url=crm_gateway.http_url, timeout=TIMEOUT_S) as http:
        first = await http.post("/v1/sentiment/batch", json=body)
        again = await http.post("/v1/sentiment/batch", json=body)
        stored = (await http.get(f"/v1/calls/{call_id}")).json()
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["summary"] == again.json()["summary"]
    check_report(stored["summary"])
    await delivered(receiver, call_id)
    await asyncio.sleep(1.0)  # a second push would have gone out by now
    assert sum(r.json().get("call_id") == call_id for r in receiver.received()) == 1
