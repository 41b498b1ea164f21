"""The live coach on the wire: badge and cue events of live calls, over the WebSocket and gRPC.

The wire formats are checked without processes; the calls run against the real mesh (chopper and scorer
subprocesses, embedded PostgreSQL, tests/support/mesh.py). The scripted calls use sentences the shipped
model scores far from the thresholds (sour ones about 0.05, sweet ones above 0.85), so the badge's
arithmetic, not the model's last decimals, decides each outcome.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from websockets.asyncio.client import connect

from callsense.domain import Channel, compute_call_stats
from callsense.v1 import audio_pb2, sentiment_pb2, sentiment_pb2_grpc
from gateway.calls.events import CallOutcome, LiveBadge, LiveCue, LiveScore, LiveSummary
from gateway.calls.inputs import CallInfo, UtteranceInput
from gateway.calls.registry import CallDriver
from gateway.calls.service import Gateway
from gateway.calls.settings import SessionSettings
from gateway.grpc_api import event_proto
from gateway.live import BadgeChange, BadgeSettings, BadgeState, CoachingCue
from gateway.schemas import event_json
from tests.support.mesh import MeshServices, RunningGateway
from tests.support.ws_client import receive, receive_until_summary, send

slow = pytest.mark.slow  # the calls start real processes
TIMEOUT_S = 60.0
UTTERANCE_MS = 3_000  # every scripted utterance lasts 3 s, back to back

# The customer is pleased, hears the price and turns sour for 30 s of call time (9 s to 39 s). Each sour
# line scores about 0.13-0.25 with the shipped (calibrated) model, so the 30 s rolling average, which
# still holds the early praise, sinks below 0.30 around 27 s and RED follows more than 5 s later; the cue
# line (0.35 for more than 6 s, not before 20 s) is crossed first.
SOUR_CALL: tuple[tuple[Channel, str], ...] = (
    ("agent", "Thanks for taking the time today, great to meet you."),
    ("customer", "Great to meet you too, the demo last week looked really good."),
    ("agent", "Our premium plan costs five thousand dollars a month."),
    ("customer", "That price is ridiculous and way too expensive for us."),
    ("customer", "Honestly I am really disappointed, this pricing is terrible."),
    ("customer", "We simply cannot afford that cost, it is outrageous."),
    ("customer", "Paying that much would be a terrible waste of our budget."),
    ("customer", "I hate this price, it is an insult to be quoted that much."),
    ("customer", "This is awful, the fees are far too high and I am angry."),
    ("customer", "The cost is completely unacceptable and frankly insulting."),
    ("customer", "I am furious, nobody in their right mind would pay this."),
    ("customer", "This is outrageous, I am angry and I will not pay that."),
    ("customer", "This is a terrible deal and I resent being offered it."),
)
SOUR_FROM_MS = 3 * UTTERANCE_MS

# One very negative sentence amid praise: it must neither turn the badge red nor fire a cue.
ONE_LOW_SENTENCE: tuple[tuple[Channel, str], ...] = (
    ("agent", "Thanks for taking the time today, great to meet you."),
    ("customer", "Great to meet you too, the demo last week looked really good."),
    ("agent", "Let me show you the reporting dashboards next."),
    ("customer", "That sounds great, my team would love those dashboards."),
    ("customer", "Brilliant, the integrations look excellent to me."),
    ("customer", "Honestly that one feature is useless garbage and it makes me furious."),
    ("customer", "I really like how simple the setup is."),
    ("customer", "Wonderful, this will save us so much time every week."),
    ("customer", "This is wonderful, exactly what we have been looking for."),
)


def new_call_id() -> str:
    return f"live-{uuid.uuid4().hex[:12]}"


def times(index: int) -> tuple[int, int]:
    return index * UTTERANCE_MS, (index + 1) * UTTERANCE_MS


# --------------------------------------------------------------------------------------------- wire formats


def test_badge_and_cue_events_as_websocket_json_and_grpc() -> None:
    badge = LiveBadge("c-1", 7, BadgeChange(BadgeState.RED, 0.21, 24_000))
    cue = LiveCue("c-1", 8, CoachingCue("pricing", "Try the value-based angle.", 24_000))
    assert event_json(badge) == {
        "type": "badge",
        "call_id": "c-1",
        "seq": 7,
        "state": "red",
        "rolling_score": 0.21,
        "at_ms": 24_000,
    }
    assert event_json(cue) == {
        "type": "cue",
        "call_id": "c-1",
        "seq": 8,
        "topic": "pricing",
        "text": "Try the value-based angle.",
        "at_ms": 24_000,
    }
    badge_proto = event_proto(badge)
    assert (badge_proto.call_id, badge_proto.seq, badge_proto.WhichOneof("event")) == ("c-1", 7, "badge")
    assert badge_proto.badge.state == sentiment_pb2.RED and badge_proto.badge.at_ms == 24_000
    assert badge_proto.badge.rolling_score == pytest.approx(0.21)
    for state, wire in ((BadgeState.GREEN, sentiment_pb2.GREEN), (BadgeState.AMBER, sentiment_pb2.AMBER)):
        assert event_proto(LiveBadge("c-1", 0, BadgeChange(state, 0.5, 1))).badge.state == wire
    cue_proto = event_proto(cue)
    assert (cue_proto.seq, cue_proto.WhichOneof("event")) == (8, "cue")
    assert (cue_proto.cue.topic, cue_proto.cue.text, cue_proto.cue.at_ms) == (
        "pricing",
        "Try the value-based angle.",
        24_000,
    )


def test_summary_carries_the_final_badge_of_a_live_call_only() -> None:
    stats = compute_call_stats([])
    live = CallOutcome("c", "ended", "hangup", stats, (), badge=BadgeState.RED)
    batch = CallOutcome("c", "ended", "batch", stats, ())
    assert event_json(LiveSummary("c", 3, live))["badge"] == "red"
    assert event_json(LiveSummary("c", 3, batch))["badge"] is None
    assert live.for_store()["badge"] == "red" and "badge" not in batch.for_store()


# --------------------------------------------------------------------------------------------- WebSocket


async def websocket_call(
    gw: RunningGateway, call_id: str, script: Sequence[tuple[Channel, str]], *, watch: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Drive ``script`` as one call; the driver's events up to the summary, and a watcher's (joined
    right after the start) when ``watch``."""
    async with connect(gw.ws_url, additional_headers=gw.headers) as ws:
        await send(ws, {"type": "start", "call_id": call_id, "metadata": {"tenant": "acme"}})
        assert (await receive(ws))["type"] == "started"
        watcher = (
            await connect(f"{gw.ws_url}?watch={call_id}", additional_headers=gw.headers) if watch else None
        )
        if watcher is not None:
            assert await receive(watcher) == {"type": "watching", "call_id": call_id}
        for i, (channel, text) in enumerate(script):
            start_ms, end_ms = times(i)
            utterance = {"text": text, "channel": channel, "start_ms": start_ms, "end_ms": end_ms}
            await send(ws, {"type": "utterance", **utterance})
        await send(ws, {"type": "stop"})
        driven = await receive_until_summary(ws)
    if watcher is None:
        return driven, None
    watched = await receive_until_summary(watcher)
    await watcher.close()
    return driven, watched


@slow
async def test_sour_call_turns_the_badge_red_after_its_scores_and_cues_pricing(
    running_gateway: RunningGateway,
) -> None:
    gw, call_id = running_gateway, new_call_id()
    events, watched = await websocket_call(gw, call_id, SOUR_CALL, watch=True)

    assert [e["seq"] for e in events] == list(range(len(events))), events
    scores = [e for e in events if e["type"] == "score"]
    assert len(scores) == len(SOUR_CALL)
    # Every sour line is below the red line on its own (the badge then has to wait for the average).
    assert all(s["score"] < 0.30 for s in scores if s["start_ms"] >= SOUR_FROM_MS), scores

    reds = [i for i, e in enumerate(events) if e["type"] == "badge" and e["state"] == "red"]
    assert reds, f"no red badge: {[e['type'] for e in events]}"
    at = reds[0]
    red = events[at]
    assert red["call_id"] == call_id and red["rolling_score"] < 0.30
    assert red["at_ms"] - SOUR_FROM_MS > 5_000, red  # sour for more than five seconds first
    # Right after the customer score that tipped it; every score before ends no later than it.
    cause = events[at - 1]
    assert cause["type"] == "score" and cause["channel"] == "customer" and cause["end_ms"] == red["at_ms"]
    assert all(e["end_ms"] <= red["at_ms"] for e in events[:at] if e["type"] == "score")

    cues = [e for e in events if e["type"] == "cue"]
    assert any(c["topic"] == "pricing" and c["text"] for c in cues), cues
    first_cue = next(i for i, e in enumerate(events) if e["type"] == "cue")
    assert events[first_cue - 1]["type"] in ("score", "badge")  # also right after what caused it

    summary = events[-1]
    assert summary["type"] == "summary" and summary["badge"] == "red"
    assert watched == events  # the second screen sees the same badge and cue events, in order
    row = await gw.gateway.get_call(call_id)
    assert row is not None and row.summary is not None and row.summary["badge"] == "red"
    metrics = gw.gateway.metrics.render()
    assert 'callsense_gateway_badge_changes_total{state="red"}' in metrics
    assert 'callsense_gateway_cues_total{topic="pricing"}' in metrics


@slow
async def test_one_very_negative_sentence_amid_praise_turns_nothing_red(
    running_gateway: RunningGateway,
) -> None:
    events, _ = await websocket_call(running_gateway, new_call_id(), ONE_LOW_SENTENCE)
    scores = [e for e in events if e["type"] == "score"]
    assert len(scores) == len(ONE_LOW_SENTENCE)
    assert min(s["score"] for s in scores) < 0.25  # the low sentence really is scored well below the red line
    assert [e for e in events if e["type"] == "badge" and e["state"] == "red"] == []
    assert [e for e in events if e["type"] == "cue"] == []
    assert events[-1]["badge"] != "red"


# --------------------------------------------------------------------------------------------- gRPC


@slow
async def test_grpc_stream_call_of_a_sour_call_gets_a_red_badge_and_a_cue(
    running_gateway: RunningGateway,
) -> None:
    gw, call_id = running_gateway, new_call_id()
    roles = {"customer": audio_pb2.CUSTOMER, "agent": audio_pb2.AGENT}

    async def requests() -> AsyncIterator[sentiment_pb2.StreamCallRequest]:
        metadata = audio_pb2.CallMetadata(tenant="acme")
        yield sentiment_pb2.StreamCallRequest(
            call_id=call_id, start=audio_pb2.CallStart(call_id=call_id, metadata=metadata)
        )
        for i, (channel, text) in enumerate(SOUR_CALL):
            start_ms, end_ms = times(i)
            utterance = sentiment_pb2.TextUtterance(
                text=text,
                channel=roles[channel],  # type: ignore[arg-type]  # an int of the ChannelRole enum
                start_ms=start_ms,
                end_ms=end_ms,
            )
            yield sentiment_pb2.StreamCallRequest(call_id=call_id, text=utterance)
        yield sentiment_pb2.StreamCallRequest(call_id=call_id, end=audio_pb2.CallEnd(call_id=call_id))

    async with gw.channel() as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        events = [event async for event in stub.StreamCall(requests(), timeout=TIMEOUT_S)]

    kinds = [e.WhichOneof("event") for e in events]
    assert [e.seq for e in events] == list(range(len(events)))
    assert kinds.count("score") == len(SOUR_CALL) and kinds[-1] == "summary"
    at = next(i for i, e in enumerate(events) if kinds[i] == "badge" and e.badge.state == sentiment_pb2.RED)
    red = events[at].badge
    assert red.rolling_score < 0.30 and red.at_ms - SOUR_FROM_MS > 5_000
    assert kinds[at - 1] == "score" and events[at - 1].score.utterance.end_ms == red.at_ms
    assert any(e.cue.topic == "pricing" and e.cue.text for e in events if e.WhichOneof("event") == "cue")


# --------------------------------------------------------------------------------------------- per tenant


@slow
async def test_a_tenants_own_thresholds_make_red_come_earlier(
    mesh_services: MeshServices, gateway_db_url: str
) -> None:
    # "quick" sees red as soon as the average is below 0.50 on 4 s of speech, with no sustain period.
    quick = BadgeSettings(min_evidence_s=4.0, red_enter=0.50, red_enter_sustain_s=0.0, red_exit=0.54)
    config = mesh_services.config(database_url=gateway_db_url)
    settings = SessionSettings(grace_s=0.5, finish_timeout_s=30.0, badge_settings={"quick": quick})
    gateway = await Gateway.open(config, settings=settings)
    # Pleased for 3 s, the agent's price, then 6 s sour: the customer's average at 12 s is about 0.40,
    # under quick's 0.50 and above the default 0.30. (Without the price line between them the model of
    # 2026-12-05 03:17 read the first sour line after the praise as praise: tests/scorer_service's known
    # gap.)
    script = [SOUR_CALL[1], SOUR_CALL[2], SOUR_CALL[3], SOUR_CALL[4]]
    try:
        badges: dict[str, list[BadgeChange]] = {}
        for tenant in ("quick", "acme"):
            driver = CallDriver(gateway.registry)
            session, _ = await driver.start(new_call_id(), CallInfo(tenant=tenant))
            subscription = session.subscribe()
            for i, (channel, text) in enumerate(script):
                await driver.utterance(UtteranceInput(text, channel, *times(i)))
            summary = await asyncio.wait_for(driver.stop(), TIMEOUT_S)
            received = [event async for event in subscription]
            assert sum(isinstance(e, LiveScore) for e in received) == len(script)
            badges[tenant] = [e.change for e in received if isinstance(e, LiveBadge)]
            assert summary.badge is (BadgeState.RED if tenant == "quick" else BadgeState.AMBER)
    finally:
        await gateway.close()
    assert [(b.state, b.at_ms) for b in badges["quick"]] == [(BadgeState.RED, 4 * UTTERANCE_MS)]
    assert badges["acme"] == []
