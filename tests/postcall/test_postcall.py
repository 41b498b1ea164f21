"""After the call, end to end: a live call that sours at the price, over the WebSocket of a real gateway
(chopper, scorer and post-call worker subprocesses, embedded PostgreSQL), ends with objection tags and a
spike line in its summary event and in the stored call (the report comes from the worker over gRPC), and
its CRM fields reach a real local webhook receiver, signed, within moments of the call's end (the worker's
dispatcher is woken by the database's notification); a batch of the same call gets the same report.
``PostCall.Report`` answers over gRPC exactly what the report code builds in-process. When the worker is
down as a call ends, the call still ends and is stored, its client is told, and the worker completes the
report, the tags and the CRM push once it is back. Each part's rules are tested on their own in
test_call_report.py, test_objections.py and test_webhooks.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from websockets.asyncio.client import connect

from callsense import grpc_runtime
from callsense.config import Config
from callsense.database import EmbeddedPostgres
from callsense.domain import Channel, UtteranceScore
from callsense.report import report_from_proto, utterance_to_proto
from callsense.tenants import TenantsConfig, TenantSettings
from callsense.v1 import postcall_pb2, postcall_pb2_grpc
from gateway.calls.errors import ErrorCode
from gateway.postcall_client import AfterCall
from postcall.objections import LocalObjectionTagger
from postcall.reports import ReportBuilder
from tests.support.delivery import WebhookReceiver, delivery_db_url  # noqa: F401  (fixture)
from tests.support.mesh import (
    MeshServices,
    RunningGateway,
    _serve_gateway,
    _stop,
    _wait_serving,
    fresh_database,
    spawn_postcall,
)
from tools.ports import free_port

pytestmark = pytest.mark.slow  # real processes
SECRET = "s3cret-for-tests"
TIMEOUT_S = 60.0
PUSH_WITHIN_S = 2.0
"""A CRM push reaches the receiver within this of the call's end (the dispatcher's poll is 5 s)."""

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


# --- a worker of this module's own: its database and tenants reach this module's receiver -------------------


@pytest.fixture(scope="module")
def crm_receiver() -> Iterator[WebhookReceiver]:
    """A real local CRM endpoint for the whole module (tests find their pushes by call id)."""
    server = WebhookReceiver(secret=SECRET)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def crm_tenants(crm_receiver: WebhookReceiver) -> TenantsConfig:
    """Tenant "acme-sales" pushes CRM fields to the receiver: the gateway enqueues, the worker signs."""
    crm = TenantSettings(crm_webhook_url=crm_receiver.url("/crm"), crm_webhook_secret=SECRET)
    return TenantsConfig(tenants={"acme-sales": crm})


@pytest.fixture(scope="module")
def crm_tenants_file(crm_receiver: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tenants as ``crm_tenants``, as the worker reads them (CALLSENSE_TENANTS_FILE)."""
    path = tmp_path_factory.mktemp("tenants") / "tenants.toml"
    path.write_text(
        f'[tenants.acme-sales]\ncrm_webhook_url = "{crm_receiver.url("/crm")}"\n'
        f'crm_webhook_secret = "{SECRET}"\n'
    )
    return path


@pytest.fixture(scope="module")
def crm_db_url(gateway_pg: EmbeddedPostgres) -> Iterator[str]:
    """A database of this module's own: only its worker's dispatcher delivers its outbox."""
    yield from fresh_database(gateway_pg, "postcall_test")


def _start_worker(addr: str, db_url: str, tenants_file: Path, log: Path) -> subprocess.Popen[bytes]:
    worker = spawn_postcall(
        addr, db_url, log, env={"CALLSENSE_TENANTS_FILE": str(tenants_file)}, args=["--sweep-interval-s", "1"]
    )
    _wait_serving("postcall", addr, worker, log)
    return worker


@pytest.fixture(scope="module")
def crm_worker(
    crm_db_url: str, crm_tenants_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real `python -m postcall` on ``crm_db_url`` with the CRM tenants; its address."""
    addr = f"127.0.0.1:{free_port()}"
    worker = _start_worker(addr, crm_db_url, crm_tenants_file, tmp_path_factory.mktemp("crm") / "worker.log")
    yield addr
    _stop(worker)


@contextlib.asynccontextmanager
async def _gateway(
    mesh: MeshServices, postcall_addr: str, db_url: str, tenants: TenantsConfig
) -> AsyncIterator[RunningGateway]:
    config = Config(
        chopper_addr=mesh.chopper_addr,
        scorer_addr=mesh.scorer_addr,
        postcall_addr=postcall_addr,
        database_url=db_url,
    )
    after_call = AfterCall.for_config(config, tenants, timeout_s=TIMEOUT_S)
    try:
        async with _serve_gateway(config, after_call=after_call, tenant="acme-sales") as running:
            yield running
    finally:
        await after_call.close()


@pytest_asyncio.fixture
async def crm_gateway(
    mesh_services: MeshServices, crm_worker: str, crm_db_url: str, crm_tenants: TenantsConfig
) -> AsyncIterator[RunningGateway]:
    """A gateway whose tenant "acme-sales" pushes CRM fields to the receiver, through the worker."""
    async with _gateway(mesh_services, crm_worker, crm_db_url, crm_tenants) as running:
        yield running


# --- helpers ------------------------------------------------------------------------------------------------


def utterances() -> list[dict[str, Any]]:
    return [
        {"text": text, "channel": channel, "start_ms": start * 1000, "end_ms": start * 1000 + 4000}
        for channel, start, text in CALL
    ]


async def live_call(gw: RunningGateway, call_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Drive CALL over the WebSocket; the summary event and the error events before it."""
    errors = []
    async with connect(gw.ws_url, additional_headers=gw.headers) as ws:
        start = {"type": "start", "call_id": call_id, "metadata": {"tenant": "acme-sales", "agent": "ana"}}
        await ws.send(json.dumps(start))
        for message in utterances():
            await ws.send(json.dumps({"type": "utterance", **message}))
        await ws.send(json.dumps({"type": "stop"}))
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "error":
                    errors.append(event)
                if event["type"] == "summary":
                    return event, errors


async def delivered(receiver: WebhookReceiver, call_id: str) -> dict[str, Any]:
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
            await asyncio.sleep(0.02)


async def stored_call(gw: RunningGateway, call_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gw.http_url, headers=gw.headers) as http:
        stored: dict[str, Any] = (await http.get(f"/v1/calls/{call_id}")).json()
    return stored


def check_report(summary: dict[str, Any]) -> None:
    spikes = summary["spikes"]
    assert spikes and spikes[0]["at_ms"] == 136_000 and spikes[0]["topic"] == "pricing", spikes
    assert "negative spike at 02:16 after pricing" in " | ".join(summary["lines"])
    tags = {(t["tag"], t["start_ms"]) for t in summary["objection_tags"]}
    assert ("pricing pushback", 136_000) in tags and ("competitor mention", 170_000) in tags, tags
    assert all(t["channel"] == "customer" for t in summary["objection_tags"])
    assert len(summary["quarters"]) == 4


# --- through the gateway ------------------------------------------------------------------------------------


async def test_a_live_call_ends_with_tags_a_spike_line_and_a_signed_crm_push(
    crm_gateway: RunningGateway, crm_receiver: WebhookReceiver
) -> None:
    call_id = f"post-{uuid.uuid4().hex[:12]}"
    summary_event, errors = await live_call(crm_gateway, call_id)
    ended = time.monotonic()
    assert errors == []
    assert "pricing pushback" in summary_event["objection_tags"]
    assert any(line.startswith("negative spike at 02:16") for line in summary_event["lines"])

    payload = await delivered(crm_receiver, call_id)
    # The worker's dispatcher was idle (its poll is 5 s): the ending transaction's NOTIFY woke it.
    assert time.monotonic() - ended < PUSH_WITHIN_S, f"the CRM push took {time.monotonic() - ended:.2f} s"

    stored = await stored_call(crm_gateway, call_id)
    check_report(stored["summary"])
    assert "report_pending" not in stored["summary"]
    assert stored["objection_tags"][:1] == ["pricing pushback"]
    assert "competitor mention" in stored["objection_tags"]

    assert payload["objection_tags"] == stored["objection_tags"]
    assert payload["avg_sentiment"] == pytest.approx(stored["stats"]["avg_sentiment"])
    assert payload["min_sentiment"] == pytest.approx(stored["stats"]["min_sentiment"])
    assert payload["tenant"] == "acme-sales" and payload["agent"] == "ana"


async def test_a_batch_gets_the_same_report_and_one_push_however_often_it_is_sent(
    crm_gateway: RunningGateway, crm_receiver: WebhookReceiver
) -> None:
    call_id = f"post-{uuid.uuid4().hex[:12]}"
    body = {"call_id": call_id, "metadata": {"tenant": "acme-sales"}, "utterances": utterances()}
    async with httpx.AsyncClient(
        base_url=crm_gateway.http_url, headers=crm_gateway.headers, timeout=TIMEOUT_S
    ) as http:
        first = await http.post("/v1/sentiment/batch", json=body)
        again = await http.post("/v1/sentiment/batch", json=body)
        stored = (await http.get(f"/v1/calls/{call_id}")).json()
    assert first.status_code == again.status_code == 200, first.text
    assert first.json()["summary"] == again.json()["summary"]
    check_report(stored["summary"])
    await delivered(crm_receiver, call_id)
    await asyncio.sleep(1.0)  # a second push would have gone out by now
    assert sum(r.json().get("call_id") == call_id for r in crm_receiver.received()) == 1


async def test_a_call_ending_while_the_worker_is_down_is_stored_and_completed_when_it_is_back(
    mesh_services: MeshServices,
    delivery_db_url: str,  # noqa: F811  (a database of this test's own: no other worker sweeps it)
    crm_tenants: TenantsConfig,
    crm_tenants_file: Path,
    crm_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    """The real worker, stopped then started again: no score is lost, the client hears why its summary
    has no lines, and the worker owes, then completes, the report, the tags and the CRM push."""
    addr, db_url = f"127.0.0.1:{free_port()}", delivery_db_url
    worker = _start_worker(addr, db_url, crm_tenants_file, tmp_path / "worker-1.log")
    try:  # whatever fails, no worker outlives the test
        async with _gateway(mesh_services, addr, db_url, crm_tenants) as gateway:
            served, errors = await live_call(gateway, f"post-up-{uuid.uuid4().hex[:8]}")  # the worker answers
            assert errors == [] and served["lines"]
            _stop(worker)  # SIGTERM: the worker is gone

            call_id = f"post-down-{uuid.uuid4().hex[:8]}"
            summary_event, errors = await live_call(gateway, call_id)
            [error] = errors
            assert (error["code"], error["fatal"]) == (ErrorCode.POSTCALL_UNAVAILABLE, False), error
            assert "stored" in error["message"] and "unavailable" in error["message"]  # away, not busy
            assert summary_event["lines"] == [] and summary_event["objection_tags"] == []

            owed = await stored_call(gateway, call_id)
            assert owed["status"] == "ended" and len(owed["events"]) >= len(CALL)  # no score lost
            assert summary_event["utterance_count"] == len(owed["events"]) == owed["stats"]["utterance_count"]
            assert owed["summary"]["report_pending"] is True and owed["summary"]["lines"] == []
            assert owed["summary"]["reason"] == "hangup"
            await asyncio.sleep(0.5)
            assert not any(r.json().get("call_id") == call_id for r in crm_receiver.received())  # not yet

            worker = _start_worker(addr, db_url, crm_tenants_file, tmp_path / "worker-2.log")  # back
            payload = await delivered(crm_receiver, call_id)  # the sweep completed it and pushed it
            completed = await stored_call(gateway, call_id)
    finally:
        _stop(worker)
    summary = completed["summary"]
    assert "report_pending" not in summary
    check_report(summary)
    assert summary["reason"] == "hangup" and summary["label_counts"] == owed["summary"]["label_counts"]
    assert completed["objection_tags"][:1] == ["pricing pushback"]
    assert payload["objection_tags"] == completed["objection_tags"]
    assert payload["summary"] == summary["lines"]
    assert sum(r.json().get("call_id") == call_id for r in crm_receiver.received()) == 1


# --- the contract, against the real worker ------------------------------------------------------------------


def _scored(channel: Channel, utterance_id: int, start_s: int, text: str, score: float) -> UtteranceScore:
    label = "negative" if score < 0.35 else "positive" if score > 0.65 else "neutral"
    p_positive = max(0.0, min(1.0, 2 * score - 1)) if label != "negative" else 0.02
    p_negative = max(0.0, min(1.0, 1 - 2 * score)) if label != "positive" else 0.02
    return UtteranceScore(
        call_id="grpc-report",
        utterance_id=utterance_id,
        channel=channel,
        start_ms=start_s * 1000,
        end_ms=start_s * 1000 + 4000,
        text=text,
        label=label,
        p_negative=p_negative,
        p_neutral=max(0.0, 1 - p_positive - p_negative),
        p_positive=p_positive,
        score=score,
        model_version="test-1",
        inference_ms=None if utterance_id % 2 else 1.25,
    )


SCORES = (0.55, 0.82, 0.5, 0.8, 0.77, 0.5, 0.12, 0.1, 0.2, 0.45)


async def test_report_over_grpc_is_what_the_report_code_builds(postcall_addr: str) -> None:
    events = [
        _scored(channel, i, start, text, score)  # type: ignore[arg-type]
        for i, ((channel, start, text), score) in enumerate(zip(CALL, SCORES, strict=True))
    ]
    expected = ReportBuilder(LocalObjectionTagger()).build(events)
    service = grpc_runtime.service_name(postcall_pb2, "PostCall")
    async with grpc_runtime.insecure_channel(postcall_addr) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = postcall_pb2_grpc.PostCallStub(channel)
        request = postcall_pb2.ReportRequest(
            call_id="grpc-report", utterances=map(utterance_to_proto, events)
        )
        reply = await stub.Report(request, timeout=TIMEOUT_S)
        assert json.dumps(report_from_proto(reply).to_json()) == json.dumps(expected.to_json())
        assert report_from_proto(reply).lines == expected.lines and expected.tags

        empty = await stub.Report(postcall_pb2.ReportRequest(call_id="nothing"), timeout=TIMEOUT_S)
        assert list(empty.lines) == ["no utterances were scored"] and len(empty.quarters) == 4

        bad = postcall_pb2.ReportRequest(
            call_id="bad", utterances=[postcall_pb2.UtteranceScore(call_id="bad")]
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Report(bad, timeout=TIMEOUT_S)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "utterance 0 of call 'bad'" in (refused.value.details() or "")
