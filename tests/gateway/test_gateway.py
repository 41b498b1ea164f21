"""The gateway against the real mesh: chopper and scorer subprocesses, embedded PostgreSQL.

WebSocket calls (scores, storage, watchers, every kind of bad input, a client that vanishes), the batch
endpoint (idempotent), call look-ups, health, metrics, and the public gRPC API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection, connect

from callsense.v1 import audio_pb2, sentiment_pb2, sentiment_pb2_grpc
from gateway.__main__ import _Server
from gateway.app import create_app
from gateway.calls.errors import InputError
from gateway.calls.events import LiveError, LiveSummary
from gateway.calls.inputs import MAX_TEXT_CHARS, CallInfo, UtteranceInput
from gateway.calls.registry import CallDriver
from gateway.calls.service import Gateway
from gateway.calls.settings import SessionSettings
from tests.support.mesh import MeshServices, RunningGateway
from tests.support.ws_client import receive, receive_until_summary, send
from tools.ports import free_port

pytestmark = pytest.mark.slow

TIMEOUT_S = 60.0
POSITIVE = "Thank you so much, this is exactly what we needed and the price is great!"
NEGATIVE = "This is terrible, I am really angry and disappointed with your awful service."
NEUTRAL = "I will check the contract with my manager tomorrow."


def new_call_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def utterance(text: str, channel: str = "customer", start_ms: int = 0, end_ms: int = 1000) -> dict[str, Any]:
    return {"type": "utterance", "text": text, "channel": channel, "start_ms": start_ms, "end_ms": end_ms}


def start(call_id: str, **metadata: str) -> dict[str, Any]:
    return {"type": "start", "call_id": call_id, "metadata": {"tenant": "acme", "agent": "a1", **metadata}}


async def receive_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next event of ``kind``; fails on any other event type in between except score."""
    while True:
        event = await receive(ws)
        if event["type"] == kind:
            return event
        assert event["type"] == "score", f"expected {kind}, got {event}"


async def started_call(gw: RunningGateway, call_id: str) -> ClientConnection:
    ws = await connect(gw.ws_url, additional_headers=gw.headers, max_size=None)
    await send(ws, start(call_id))
    assert (await receive(ws)) == {
        "type": "started",
        "call_id": call_id,
        "resumed": False,
        "max_text_chars": MAX_TEXT_CHARS,
    }
    return ws


# --------------------------------------------------------------------------------------------- WebSocket


async def test_live_call_scores_each_utterance_stores_it_and_summarises(
    running_gateway: RunningGateway,
) -> None:
    gw, call_id = running_gateway, new_call_id()
    ws = await started_call(gw, call_id)
    texts = [(POSITIVE, "customer"), (NEUTRAL, "agent"), (NEGATIVE, "customer")]
    for i, (text, channel) in enumerate(texts):
        await send(ws, utterance(text, channel, i * 2000, i * 2000 + 1500))
    await send(ws, {"type": "stop"})
    events = await receive_until_summary(ws)
    await ws.close()

    scores = [e for e in events if e["type"] == "score"]
    assert [e["utterance_id"] for e in scores] == [0, 1, 2]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert [e["channel"] for e in scores] == ["customer", "agent", "customer"]
    assert scores[0]["score"] > scores[2]["score"]
    assert scores[0]["label"] == "positive" and scores[2]["label"] == "negative"
    for e in scores:
        assert abs(e["p_negative"] + e["p_neutral"] + e["p_positive"] - 1) < 1e-3
        assert e["call_id"] == call_id and e["model_version"]
    summary = events[-1]
    assert summary["status"] == "ended" and summary["reason"] == "hangup"
    assert summary["utterance_count"] == 3
    assert summary["customer_avg_sentiment"] == pytest.approx((scores[0]["score"] + scores[2]["score"]) / 2)
    assert summary["agent_avg_sentiment"] == pytest.approx(scores[1]["score"])

    stored = await gw.gateway.stores.default.list_events(call_id)
    assert [(e.utterance_id, e.text, e.label) for e in stored] == [
        (e["utterance_id"], e["text"], e["label"]) for e in scores
    ]
    async with httpx.AsyncClient(base_url=gw.http_url, headers=gw.headers) as http:
        reply = await http.get(f"/v1/calls/{call_id}")
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "ended" and body["metadata"]["tenant"] == "acme"
    assert [e["utterance_id"] for e in body["events"]] == [0, 1, 2]
    assert body["stats"]["utterance_count"] == 3
    assert body["summary"]["reason"] == "hangup"


async def test_pii_is_masked_before_anything_is_stored(running_gateway: RunningGateway) -> None:
    gw, call_id = running_gateway, new_call_id()
    ws = await started_call(gw, call_id)
    await send(ws, utterance("Please email me at jane.doe@example.com about the offer."))
    score = await receive_type(ws, "score")
    await send(ws, {"type": "stop"})
    await receive_until_summary(ws)
    await ws.close()
    assert "jane.doe@example.com" not in score["text"]
    stored = await gw.gateway.stores.default.list_events(call_id)
    assert all("jane.doe" not in e.text for e in stored)


async def test_watcher_sees_the_same_scores(running_gateway: RunningGateway) -> None:
    gw, call_id = running_gateway, new_call_id()
    driver = await started_call(gw, call_id)
    await send(driver, utterance(POSITIVE, start_ms=0, end_ms=1000))
    first = await receive_type(driver, "score")

    # Joins mid-call (the query-parameter form): gets the call so far, then live events.
    watcher = await connect(f"{gw.ws_url}?watch={call_id}", additional_headers=gw.headers)
    assert await receive(watcher) == {"type": "watching", "call_id": call_id}
    await send(driver, utterance(NEGATIVE, start_ms=2000, end_ms=3000))
    await send(driver, {"type": "stop"})
    driven = [first, *await receive_until_summary(driver)]
    watched = await receive_until_summary(watcher)
    assert watched == driven
    await watcher.wait_closed()  # the server ends a watch after the summary
    await driver.close()


async def test_watch_message_form_and_unknown_call(running_gateway: RunningGateway) -> None:
    gw = running_gateway
    async with connect(gw.ws_url, additional_headers=gw.headers) as ws:
        await send(ws, {"type": "watch", "call_id": "no-such-call"})
        error = await receive(ws)
        assert error["type"] == "error" and error["code"] == "not_found" and error["fatal"] is True


BAD_BEFORE_START: list[tuple[str, dict[str, Any] | str, str, str]] = [
    ("malformed json", '{"type": "start", "call_id": ', "bad_json", "not valid JSON"),
    ("not an object", "[1, 2]", "invalid_message", "JSON object"),
    ("unknown type", {"type": "dance"}, "unknown_type", "'dance'"),
    ("missing call_id", {"type": "start"}, "invalid_call_id", "call_id is required"),
    ("malformed call_id", {"type": "start", "call_id": "no spaces/slashes"}, "invalid_call_id", "malformed"),
    ("long call_id", {"type": "start", "call_id": "x" * 129}, "invalid_call_id", "1-128"),
    ("utterance before start", utterance(POSITIVE), "not_started", "send start"),
    ("stop before start", {"type": "stop"}, "not_started", "send start"),
    ("nested 100,000 deep", "[" * 100_000 + "]" * 100_000, "bad_json", "nested too deeply"),
    (
        "audio encoding a list",
        {"type": "start", "call_id": "enc-list", "audio": {"encoding": [], "sample_rate_hz": 16000}},
        "invalid_audio_format",
        "encoding [] is unsupported",
    ),
    (
        "channel role a list",
        {
            "type": "start",
            "call_id": "roles-nested",
            "audio": {"encoding": "pcm16", "sample_rate_hz": 16000, "channel_roles": [["customer"]]},
        },
        "invalid_audio_format",
        "channel_roles",
    ),
    (
        "NUL in the tenant",
        {"type": "start", "call_id": "nul-tenant", "metadata": {"tenant": "acme\x00"}},
        "invalid_metadata",
        "NUL",
    ),
]


@pytest.mark.parametrize(
    ("bad", "code", "says"), [case[1:] for case in BAD_BEFORE_START], ids=[c[0] for c in BAD_BEFORE_START]
)
async def test_bad_message_before_start_is_answered_and_the_connection_goes_on(
    running_gateway: RunningGateway, bad: dict[str, Any] | str, code: str, says: str
) -> None:
    gw, call_id = running_gateway, new_call_id()
    async with connect(gw.ws_url, additional_headers=gw.headers) as ws:
        await send(ws, bad)
        error = await receive(ws)
        assert error["type"] == "error" and error["code"] == code and error["fatal"] is False
        assert says in error["message"]
        await send(ws, start(call_id))
        assert (await receive(ws))["type"] == "started"
        await send(ws, utterance(POSITIVE))
        assert (await receive(ws))["type"] == "score"
        await send(ws, {"type": "stop"})
        await receive_until_summary(ws)


BAD_IN_CALL: list[tuple[str, dict[str, Any] | str | bytes, str, str]] = [
    ("malformed json", "{nope", "bad_json", "not valid JSON"),
    ("unknown type", {"type": "utterances"}, "unknown_type", "'utterances'"),
    ("1 MB utterance", utterance("word " * 200_000), "text_too_long", f"{MAX_TEXT_CHARS:,}"),
    ("empty text", utterance("   "), "empty_text", "empty"),
    (
        "missing text",
        {"type": "utterance", "channel": "customer", "start_ms": 0, "end_ms": 1},
        "invalid_message",
        "text",
    ),
    ("unknown channel", utterance(POSITIVE, channel="robot"), "invalid_channel", "customer, agent or mixed"),
    ("end before start", utterance(POSITIVE, start_ms=500, end_ms=100), "invalid_times", "before start_ms"),
    ("negative time", utterance(POSITIVE, start_ms=-1), "invalid_times", "start_ms"),
    ("second start", {"type": "start", "call_id": "other-call"}, "already_started", "already running"),
    ("audio frame", b"\x00\x01" * 400, "audio_not_enabled", "audio is not enabled"),
    ("NUL in the text", utterance("that's well over budget\x00 for us"), "invalid_text", "NUL"),
    (
        "lone surrogate",
        '{"type": "utterance", "text": "not what we hoped \\ud800", "channel": "customer", '
        '"start_ms": 0, "end_ms": 900}',
        "invalid_text",
        "surrogate",
    ),
    ("nested 100,000 deep", "[" * 100_000 + "]" * 100_000, "bad_json", "nested too deeply"),
]


@pytest.mark.parametrize(
    ("bad", "code", "says"), [case[1:] for case in BAD_IN_CALL], ids=[c[0] for c in BAD_IN_CALL]
)
async def test_bad_message_in_a_call_is_answered_and_the_call_goes_on(
    running_gateway: RunningGateway, bad: dict[str, Any] | str | bytes, code: str, says: str
) -> None:
    gw, call_id = running_gateway, new_call_id()
    ws = await started_call(gw, call_id)
    await send(ws, utterance(NEGATIVE, start_ms=0, end_ms=1000))  # accepted before the bad message
    await send(ws, bad)
    await send(ws, utterance(POSITIVE, start_ms=2000, end_ms=3000))
    await send(ws, {"type": "stop"})
    events = await receive_until_summary(ws)
    await ws.close()
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1, events
    assert errors[0]["code"] == code and errors[0]["fatal"] is False and errors[0]["call_id"] == call_id
    assert says in errors[0]["message"]
    assert errors[0]["seq"] is None  # addressed to this client, not an event of the call
    scores = [e for e in events if e["type"] == "score"]
    assert [(s["utterance_id"], s["label"]) for s in scores] == [(0, "negative"), (1, "positive")]
    assert len(await gw.gateway.stores.default.list_events(call_id)) == 2


async def test_messages_after_stop_are_refused_and_nothing_accepted_is_lost(
    running_gateway: RunningGateway,
) -> None:
    gw, call_id = running_gateway, new_call_id()
    ws = await started_call(gw, call_id)
    await send(ws, utterance(POSITIVE))
    await send(ws, {"type": "stop"})
    await send(ws, utterance(NEGATIVE, start_ms=2000, end_ms=3000))
    await send(ws, {"type": "stop"})
    events = await receive_until_summary(ws)
    errors = [e for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["stopped", "stopped"]
    assert "was stopped" in errors[0]["message"]
    assert [e["type"] for e in events if e["type"] != "error"] == ["score", "summary"]
    assert events[-1]["utterance_count"] == 1
    # After the summary the connection may drive a new call.
    await send(ws, {"type": "utterance", "text": "late", "channel": "agent", "start_ms": 1, "end_ms": 2})
    assert (await receive(ws))["code"] == "stopped"
    second = new_call_id()
    await send(ws, start(second))
    assert (await receive(ws))["call_id"] == second
    await send(ws, {"type": "stop"})
    assert (await receive(ws))["utterance_count"] == 0
    await ws.close()


async def test_bad_input_on_one_call_leaves_other_calls_alone(running_gateway: RunningGateway) -> None:
    gw = running_gateway
    noisy, calm = await started_call(gw, new_call_id()), await started_call(gw, new_call_id())
    for junk in ("{", json.dumps(utterance("x" * (MAX_TEXT_CHARS + 1))), json.dumps({"type": "?"})):
        await send(noisy, junk)
    await send(calm, utterance(POSITIVE))
    assert (await receive(calm))["type"] == "score"
    assert [(await receive(noisy))["type"] for _ in range(3)] == ["error"] * 3
    for ws in (noisy, calm):
        await send(ws, {"type": "stop"})
        await receive_until_summary(ws)
        await ws.close()


async def test_same_call_id_cannot_be_driven_twice(running_gateway: RunningGateway) -> None:
    gw, call_id = running_gateway, new_call_id()
    first = await started_call(gw, call_id)
    async with connect(gw.ws_url, additional_headers=gw.headers) as second:
        await send(second, start(call_id))
        error = await receive(second)
        assert error["code"] == "call_active"
    await send(first, {"type": "stop"})
    await receive_until_summary(first)
    await first.close()
    async with connect(
        gw.ws_url, additional_headers=gw.headers
    ) as third:  # an ended call cannot be restarted
        await send(third, start(call_id))
        assert (await receive(third))["code"] == "call_ended"


async def test_client_that_vanishes_still_gets_what_it_sent_stored(running_gateway: RunningGateway) -> None:
    gw, call_id = running_gateway, new_call_id()
    ws = await started_call(gw, call_id)
    for i, text in enumerate((POSITIVE, NEGATIVE, NEUTRAL)):
        await send(ws, utterance(text, start_ms=i * 1000, end_ms=i * 1000 + 900))
    session = gw.gateway.registry.get(call_id)
    assert session is not None
    async with asyncio.timeout(TIMEOUT_S):
        while session.accepted < 3:
            await asyncio.sleep(0.01)
    ws.transport.abort()  # gone without a stop or a close frame

    summary = await asyncio.wait_for(session.wait_closed(), TIMEOUT_S)
    assert summary.status == "ended" and summary.reason == "client_gone"
    assert summary.stats.utterance_count == 3
    row = await gw.gateway.get_call(call_id)
    assert row is not None and row.status == "ended"
    assert [e.utterance_id for e in row.events] == [0, 1, 2]
    assert row.summary is not None and row.summary["reason"] == "client_gone"
    assert gw.gateway.registry.get(call_id) is None


async def test_client_that_comes_back_within_the_grace_period_resumes(
    running_gateway: RunningGateway,
) -> None:
    gw, call_id = running_gateway, new_call_id()
    ws = await started_call(gw, call_id)
    await send(ws, utterance(POSITIVE))
    assert (await receive(ws))["type"] == "score"
    await ws.close()
    async with connect(gw.ws_url, additional_headers=gw.headers) as again:
        await send(again, start(call_id))
        started = await receive(again)
        assert started["type"] == "started" and started["resumed"] is True
        replayed = await receive(again)
        assert replayed["type"] == "score" and replayed["utterance_id"] == 0
        await send(again, utterance(NEGATIVE, start_ms=2000, end_ms=3000))
        await send(again, {"type": "stop"})
        events = await receive_until_summary(again)
    assert events[-1]["reason"] == "hangup" and events[-1]["utterance_count"] == 2


# --------------------------------------------------------------------------------------------- REST


def batch_body(call_id: str) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "metadata": {"tenant": "acme", "agent": "a7", "region": "us"},
        "utterances": [  # out of order on purpose: they are sorted by start_ms
            {"text": NEGATIVE, "channel": "customer", "start_ms": 4000, "end_ms": 5000},
            {
                "text": f"{POSITIVE} Call me at +1 415 555 0134.",
                "channel": "customer",
                "start_ms": 0,
                "end_ms": 3000,
            },
            {"text": NEUTRAL, "channel": "agent", "start_ms": 3000, "end_ms": 4000},
        ],
    }


async def test_batch_scores_splits_masks_and_is_idempotent(running_gateway: RunningGateway) -> None:
    gw, call_id = running_gateway, new_call_id()
    async with httpx.AsyncClient(base_url=gw.http_url, headers=gw.headers, timeout=TIMEOUT_S) as http:
        first = await http.post("/v1/sentiment/batch", json=batch_body(call_id))
        again = await http.post("/v1/sentiment/batch", json=batch_body(call_id))
        stored = await http.get(f"/v1/calls/{call_id}")
    assert first.status_code == 200, first.text
    assert again.json() == first.json()
    body = first.json()
    texts = [u["text"] for u in body["utterances"]]
    assert len(texts) == 4  # the chopper cut the two-sentence utterance in two
    assert [u["utterance_id"] for u in body["utterances"]] == [0, 1, 2, 3]
    assert "555 0134" not in " ".join(texts)
    assert body["utterances"][0]["label"] == "positive" and body["utterances"][-1]["label"] == "negative"
    assert body["stats"]["utterance_count"] == 4
    assert body["summary"]
    assert len(await gw.gateway.stores.default.list_events(call_id)) == 4
    assert stored.json()["status"] == "ended" and stored.json()["metadata"]["agent"] == "a7"


async def test_batch_with_other_utterances_for_a_used_call_id_is_a_conflict(
    running_gateway: RunningGateway,
) -> None:
    gw, call_id = running_gateway, new_call_id()
    async with httpx.AsyncClient(base_url=gw.http_url, headers=gw.headers, timeout=TIMEOUT_S) as http:
        assert (await http.post("/v1/sentiment/batch", json=batch_body(call_id))).status_code == 200
        other = batch_body(call_id)
        other["utterances"][2]["text"] = "Something else entirely."
        reply = await http.post("/v1/sentiment/batch", json=other)
    assert reply.status_code == 409
    assert reply.json()["error"]["code"] == "call_conflict"


@pytest.mark.parametrize(
    ("change", "code", "where"),
    [
        (lambda b: b.update(call_id="bad id"), "invalid_call_id", "call_id"),
        (lambda b: b.pop("call_id"), "invalid_call_id", "call_id"),
        (lambda b: b.update(utterances=[]), "empty_text", "utterances"),
        (lambda b: b["utterances"][1].update(text=""), "empty_text", "text"),
        (lambda b: b["utterances"][1].update(text="y" * 1_000_000), "text_too_long", "text"),
        (lambda b: b["utterances"][0].update(channel="bot"), "invalid_channel", "channel"),
        (lambda b: b["utterances"][0].update(start_ms="soon"), "invalid_message", "start_ms"),
        (lambda b: b["metadata"].update(colour="red"), "invalid_message", "colour"),
        (lambda b: b["utterances"][1].update(text="over budget\x00"), "invalid_text", "NUL"),
        (lambda b: b["metadata"].update(tenant="acme\x00"), "invalid_metadata", "NUL"),
    ],
    ids=[
        "bad call_id",
        "no call_id",
        "no utterances",
        "empty text",
        "1 MB text",
        "channel",
        "times",
        "metadata",
        "NUL in text",
        "NUL in tenant",
    ],
)
async def test_batch_bad_bodies_get_clear_422s(
    running_gateway: RunningGateway, change: Any, code: str, where: str
) -> None:
    body = batch_body(new_call_id())
    change(body)
    async with httpx.AsyncClient(base_url=running_gateway.http_url, headers=running_gateway.headers) as http:
        reply = await http.post("/v1/sentiment/batch", json=body)
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["code"] == code
    assert where in json.dumps(error["details"]) + error["message"]
    assert len(reply.content) < 10_000  # a rejected text is never echoed back


async def test_unknown_call_is_404_and_service_endpoints_answer(running_gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=running_gateway.http_url, headers=running_gateway.headers) as http:
        missing = await http.get("/v1/calls/never-seen")
        bad = await http.get("/v1/calls/bad%20id")
        health = await http.get("/healthz")
        ready = await http.get("/readyz")
        metrics = await http.get("/metrics")
        docs = await http.get("/docs")
        openapi = await http.get("/openapi.json")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": "not_found",
        "message": "no call with id 'never-seen'",
        "details": [],
    }
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_call_id"
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    readiness = ready.json()
    assert readiness["ready"] and readiness["checks"] == {"database": "ok", "chopper": "ok", "scorer": "ok"}
    assert list(readiness["models"]) == ["scorer"] and readiness["models"]["scorer"]  # the version it serves
    assert "callsense_gateway_active_calls " in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert docs.status_code == 200
    assert "/v1/sentiment/batch" in openapi.json()["paths"]


# --------------------------------------------------------------------------------------------- gRPC


async def stream_call(
    gw: RunningGateway, requests: Sequence[sentiment_pb2.StreamCallRequest]
) -> list[sentiment_pb2.CallEvent]:
    async def source() -> AsyncIterator[sentiment_pb2.StreamCallRequest]:
        for request in requests:
            yield request

    async with gw.channel() as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        return [event async for event in stub.StreamCall(source(), timeout=TIMEOUT_S)]


def text(
    call_id: str, words: str, channel: int = audio_pb2.CUSTOMER, at: int = 0
) -> sentiment_pb2.StreamCallRequest:
    utterance = sentiment_pb2.TextUtterance(text=words, channel=channel, start_ms=at, end_ms=at + 900)  # type: ignore[arg-type]
    return sentiment_pb2.StreamCallRequest(call_id=call_id, text=utterance)


def grpc_start(call_id: str) -> sentiment_pb2.StreamCallRequest:
    metadata = audio_pb2.CallMetadata(tenant="acme", agent="g1", labels={"campaign": "q4"})
    return sentiment_pb2.StreamCallRequest(
        call_id=call_id, start=audio_pb2.CallStart(call_id=call_id, metadata=metadata)
    )


def grpc_end(call_id: str) -> sentiment_pb2.StreamCallRequest:
    return sentiment_pb2.StreamCallRequest(
        call_id=call_id, end=audio_pb2.CallEnd(call_id=call_id, reason="hangup")
    )


async def test_grpc_stream_call_get_call_and_a_bad_message_mid_call(running_gateway: RunningGateway) -> None:
    gw, call_id = running_gateway, new_call_id()
    events = await stream_call(
        gw,
        [
            grpc_start(call_id),
            text(call_id, POSITIVE),
            text(call_id, "  "),  # empty: an Error event, and the call goes on
            text(call_id, NEGATIVE, audio_pb2.AGENT, 1000),
            grpc_end(call_id),
        ],
    )
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.count("score") == 2 and kinds[-1] == "summary" and kinds.count("error") == 1
    error = next(e.error for e in events if e.WhichOneof("event") == "error")
    assert error.code == "INVALID_ARGUMENT" and "empty" in error.message and not error.fatal
    scores = [e.score for e in events if e.WhichOneof("event") == "score"]
    assert [s.utterance.utterance_id for s in scores] == [0, 1]
    assert scores[0].score.score > scores[1].score.score
    summary = events[-1].summary
    assert summary.utterance_count == 2
    assert summary.avg_sentiment == pytest.approx(scores[0].score.score, abs=1e-5)  # the customer's

    async with gw.channel() as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        record = await stub.GetCall(sentiment_pb2.GetCallRequest(call_id=call_id))
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetCall(sentiment_pb2.GetCallRequest(call_id="never-seen"))
    assert record.status == sentiment_pb2.COMPLETED
    assert record.metadata.labels["campaign"] == "q4"
    assert [e.utterance.text for e in record.events] == [s.utterance.text for s in scores]
    assert record.HasField("ended_at") and record.summary.utterance_count == 2
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("requests", "says"),
    [
        ([text("c-1", POSITIVE)], "first message of StreamCall must be start"),
        ([sentiment_pb2.StreamCallRequest(start=audio_pb2.CallStart())], "call_id is required"),
        ([sentiment_pb2.StreamCallRequest(start=audio_pb2.CallStart(call_id="bad id"))], "malformed"),
        ([sentiment_pb2.StreamCallRequest(call_id="c-1")], "must be start, not an empty message"),
    ],
    ids=["text before start", "no call_id", "bad call_id", "no payload"],
)
async def test_grpc_wrong_shape_before_start_is_invalid_argument(
    running_gateway: RunningGateway, requests: list[sentiment_pb2.StreamCallRequest], says: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stream_call(running_gateway, requests)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (failure.value.details() or "")


async def test_grpc_analyze_batch_and_watch(running_gateway: RunningGateway) -> None:
    gw, call_id = running_gateway, new_call_id()
    request = sentiment_pb2.AnalyzeBatchRequest(
        call_id=call_id,
        metadata=audio_pb2.CallMetadata(tenant="acme"),
        utterances=[
            sentiment_pb2.TextUtterance(
                text=NEGATIVE, channel=audio_pb2.CUSTOMER, start_ms=2000, end_ms=3000
            ),
            sentiment_pb2.TextUtterance(text=POSITIVE, channel=audio_pb2.CUSTOMER, start_ms=0, end_ms=1000),
        ],
    )
    async with gw.channel() as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        first = await stub.AnalyzeBatch(request)
        again = await stub.AnalyzeBatch(request)
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            await stub.AnalyzeBatch(
                sentiment_pb2.AnalyzeBatchRequest(
                    call_id=new_call_id(), utterances=[sentiment_pb2.TextUtterance()]
                )
            )
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            async for _ in stub.WatchCall(sentiment_pb2.WatchCallRequest(call_id="not-live")):
                pass
    assert first == again
    assert [u.score.label for u in first.utterances] == [3, 1]  # POSITIVE then NEGATIVE, sorted by time
    assert first.summary.utterance_count == 2
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "utterances[0]" in (empty.value.details() or "")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(await gw.gateway.stores.default.list_events(call_id)) == 2


async def test_grpc_watcher_follows_a_websocket_call(running_gateway: RunningGateway) -> None:
    gw, call_id = running_gateway, new_call_id()
    ws = await started_call(gw, call_id)
    async with gw.channel() as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        watch = stub.WatchCall(sentiment_pb2.WatchCallRequest(call_id=call_id), timeout=TIMEOUT_S)
        await send(ws, utterance(POSITIVE))
        await send(ws, {"type": "stop"})
        watched = [event async for event in watch]
    driven = await receive_until_summary(ws)
    await ws.close()
    assert [e.seq for e in watched] == [e["seq"] for e in driven]
    assert [e.WhichOneof("event") for e in watched] == ["score", "summary"]
    assert watched[0].score.utterance.text == driven[0]["text"]


# --------------------------------------------------------------------------------------------- failures


async def test_unreachable_stage_fails_the_call_clearly_and_readyz_says_so(
    mesh_services: MeshServices, gateway_db_url: str
) -> None:
    # A real failure, not a stub: the chopper address has nothing listening.
    config = replace(
        mesh_services.config(database_url=gateway_db_url), chopper_addr=f"127.0.0.1:{free_port()}"
    )
    # The call waits stage_reopen_s for the chopper to come back, then fails.
    gateway = await Gateway.open(config, settings=SessionSettings(grace_s=0.5, stage_reopen_s=1.0))
    try:
        readiness = await gateway.readiness(timeout_s=1.0)
        assert not readiness.ready
        assert readiness.checks["chopper"].startswith("unreachable") and readiness.checks["scorer"] == "ok"

        call_id = new_call_id()
        driver = CallDriver(gateway.registry)
        session, _ = await driver.start(call_id, CallInfo(tenant="acme"))
        events = session.subscribe()
        with contextlib.suppress(InputError):  # accepted, or refused once the failure is known
            await driver.utterance(UtteranceInput(POSITIVE, "customer", 0, 1000))
        received = [event async for event in events]
        assert isinstance(received[-1], LiveSummary) and received[-1].summary.status == "failed"
        fatal = [e for e in received if isinstance(e, LiveError)]
        assert (
            fatal
            and fatal[0].fatal
            and fatal[0].code == "stage_failed"
            and "chopper failed: UNAVAILABLE" in fatal[0].message
        )
        with pytest.raises(InputError) as late:
            await driver.utterance(UtteranceInput(POSITIVE, "customer", 0, 1000))
        assert late.value.code == "call_ended"
        row = await gateway.get_call(call_id)
        assert row is not None and row.status == "failed"
    finally:
        await gateway.close()


async def test_create_app_opens_and_closes_its_own_gateway(
    mesh_services: MeshServices, gateway_db_url: str
) -> None:
    config = mesh_services.config()
    app = create_app(config, database_url=gateway_db_url)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(app, log_config=None, lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while not server.started:
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}") as http:
            assert (await http.get("/readyz")).status_code == 200
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def test_grpc_stream_closed_without_end_ends_the_call(running_gateway: RunningGateway) -> None:
    gw, call_id = running_gateway, new_call_id()
    events = await stream_call(gw, [grpc_start(call_id), text(call_id, POSITIVE)])  # half-closes, no end
    assert [e.WhichOneof("event") for e in events] == ["score", "summary"]
    row = await gw.gateway.get_call(call_id)
    assert row is not None and row.status == "ended" and row.summary is not None
    assert row.summary["reason"] == "client_closed"
