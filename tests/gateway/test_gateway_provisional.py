"""Provisional scores: the mood of a turn while it is being spoken (gateway/calls/provisional.py).

The word rules are plain functions; the ProvisionalScorer runs against the real scorer; the whole path
runs through the gateway's WebSocket with the real ASR, a customer saying a long polite objection.
"""

from __future__ import annotations

import asyncio
import uuid

import grpc.aio
import numpy as np
import pytest
from websockets.asyncio.client import connect

from callsense.v1 import asr_pb2, audio_pb2, scorer_pb2_grpc
from gateway.calls.events import LiveProvisional
from gateway.calls.provisional import ProvisionalMood, ProvisionalScorer, scored_tail, stable_words
from gateway.grpc_api import event_proto
from gateway.metrics import GatewayMetrics
from gateway.schemas import event_json
from tests.support.audio import normalise_words, speak_pcm16
from tests.support.mesh import MeshServices, RunningGateway
from tests.support.ws_client import receive, receive_until_summary, send
from tools.demo import send_audio

RATE = 16_000
FRAME_BYTES = RATE * 2 // 20  # 50 ms of mono PCM16
CUSTOMER = audio_pb2.CUSTOMER

# A buyer objecting politely, long enough (about 7 s) for several partials before the final.
OBJECTION = (
    "Thanks for walking us through it. Honestly though, that is well over what we budgeted for this year, "
    "and I do not see how I could justify it to our finance team."
)


# ------------------------------------------------------------------------------------------ word rules


def test_stable_words_are_what_two_partials_agree_on() -> None:
    assert stable_words("Honestly, that is well", "honestly that is well over what we") == [
        "honestly",
        "that",
        "is",
        "well",
    ]
    # A word the newer decode heard differently ends the agreement there.
    assert stable_words("that is way more than we monitored", "that is way more than we budgeted") == [
        "that",
        "is",
        "way",
        "more",
        "than",
        "we",
    ]
    # The first partial of a segment: its last word may be cut mid-word.
    assert stable_words(None, "that is well ov") == ["that", "is", "well"]
    assert stable_words(None, "") == []


def test_the_tail_scored_starts_at_the_last_sentence_long_enough() -> None:
    words = ["Thanks", "for", "that.", "Honestly", "it", "is", "well", "over", "budget"]
    assert scored_tail(words, 3, 48) == ["Honestly", "it", "is", "well", "over", "budget"]
    # A last sentence too short to read goes with the one before.
    short_last = ["It", "looks", "good.", "Too", "much."]
    assert scored_tail(short_last, 3, 48) == short_last
    assert scored_tail([f"w{i}" for i in range(60)], 3, 48) == [f"w{i}" for i in range(12, 60)]


def _partial(segment_id: int, text: str, end_ms: int, *, final: bool = False) -> asr_pb2.TranscriptEvent:
    return asr_pb2.TranscriptEvent(
        call_id="prov-1",
        segment_id=segment_id,
        is_final=final,
        text=text,
        start_ms=0,
        end_ms=end_ms,
        channel=CUSTOMER,
    )


# ------------------------------------------------------------------------------ against the real scorer


@pytest.mark.slow
async def test_stable_words_are_scored_by_the_real_scorer(mesh_services: MeshServices) -> None:
    moods: list[ProvisionalMood] = []
    published = asyncio.Event()

    def publish(mood: ProvisionalMood) -> None:
        moods.append(mood)
        published.set()

    async with grpc.aio.insecure_channel(mesh_services.scorer_addr) as channel:
        scorer = ProvisionalScorer("prov-1", scorer_pb2_grpc.ScorerStub(channel), publish, GatewayMetrics())
        scorer.on_transcript(_partial(0, "Honestly, that is well over", 2000))
        await asyncio.wait_for(published.wait(), 30)
        published.clear()
        scorer.on_transcript(_partial(0, "Honestly, that is well over what we budgeted for", 3000))
        await asyncio.wait_for(published.wait(), 30)
        # Stable words already scored are not scored again; a final ends the segment's provisional life.
        scorer.on_transcript(_partial(0, "Honestly, that is well over when", 3500))
        # A pair that agrees on fewer words (the start re-read) takes nothing back and scores nothing.
        scorer.on_transcript(_partial(0, "Honest. That is well over what we budgeted for this", 4000))
        scorer.on_transcript(_partial(0, "Honestly, that is well over what we budgeted.", 4100, final=True))
        scorer.on_transcript(_partial(0, "Honestly, that is well over what we budgeted for", 4200))
        await scorer.close()

    assert [m.text for m in moods] == ["Honestly, that is well", "Honestly, that is well over"]
    assert all(m.channel == "customer" and m.segment_id == 0 for m in moods)
    last = moods[-1].score
    assert abs(last.p_negative + last.p_neutral + last.p_positive - 1) < 1e-3
    assert last.model_version

    # The wire forms: JSON for the WebSocket, sentiment.proto's CallEvent for gRPC.
    event = LiveProvisional("prov-1", 7, moods[-1])
    as_json = event_json(event)
    assert as_json["type"] == "provisional" and as_json["segment_id"] == 0 and as_json["seq"] == 7
    assert as_json["label"] == moods[-1].label and as_json["score"] == pytest.approx(last.score)
    as_proto = event_proto(event)
    assert as_proto.WhichOneof("event") == "provisional"
    assert as_proto.provisional.channel == CUSTOMER and as_proto.provisional.score == last


# ---------------------------------------------------------------------------------- through the gateway


@pytest.mark.slow
async def test_a_long_objection_gets_its_mood_before_its_final(audio_gateway: RunningGateway) -> None:
    gw, call_id = audio_gateway, f"prov-{uuid.uuid4().hex[:12]}"
    pad = np.zeros(RATE // 2, dtype=np.int16)
    audio = np.concatenate([pad, speak_pcm16(OBJECTION), pad, pad]).astype("<i2").tobytes()
    audio_format = {"encoding": "pcm16", "sample_rate_hz": RATE, "channels": 1, "channel_roles": ["customer"]}
    async with connect(gw.ws_url, additional_headers=gw.headers, max_size=None) as ws:
        await send(
            ws, {"type": "start", "call_id": call_id, "metadata": {"tenant": "acme"}, "audio": audio_format}
        )
        assert (await receive(ws))["type"] == "started"
        # At the pace of a live call: sent all at once, the final would overtake every partial.
        frames = [audio[i : i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]
        await send_audio(ws, frames, 0.05)
        await send(ws, {"type": "stop"})
        events = await receive_until_summary(ws)

    assert not [e for e in events if e["type"] == "error"], events
    provisional = [e for e in events if e["type"] == "provisional"]
    assert provisional, [e["type"] for e in events]
    finals = {e["segment_id"]: e for e in events if e["type"] == "transcript" and e["is_final"]}
    first_score = min(e["seq"] for e in events if e["type"] == "score")
    for p in provisional:
        final = finals[p["segment_id"]]
        assert p["channel"] == "customer" and p["seq"] < final["seq"] < first_score  # before its final
        assert p["end_ms"] <= final["end_ms"]
        # Words the segment's partials said before it (Whisper's reading then, not necessarily the final's).
        earlier = [
            " ".join(normalise_words(e["text"]))
            for e in events
            if e["type"] == "transcript" and e["segment_id"] == p["segment_id"] and e["seq"] < p["seq"]
        ]
        assert any(" ".join(normalise_words(p["text"])) in text for text in earlier), (p, earlier)
    # The objection is heard before its speaker is done: its own words are scored while the turn is still
    # going. (How low they score is the model's judgement, issue 12's business: the shipped model gave
    # these polite words 0.24-0.48 from run to run, depending on where the partials stopped.)
    opener, objection = OBJECTION.split("Honestly", 1)
    objection_words = set(normalise_words(objection)) - set(normalise_words(opener))
    heard = [(normalise_words(p["text"]), round(p["score"], 2)) for p in provisional]
    assert any(len(set(words) & objection_words) >= 3 for words, _ in heard), heard

    # Never stored, never counted: the call's utterances are the finals' alone.
    scores = [e for e in events if e["type"] == "score"]
    stored = await gw.gateway.stores.default.list_events(call_id)
    assert len(stored) == len(scores) == events[-1]["utterance_count"]
    assert [e["seq"] for e in events] == list(range(len(events)))
