"""The gateway carries tone both ways: a recording's prosody to the chopper (and so the scorer), and the
scorer's text-only probabilities beside the fused ones to the store, the WebSocket, gRPC and the review
page's data, with ``tone_moved`` when the voice changed what the words said."""

from __future__ import annotations

import pytest

from callsense.domain import TONE_MOVED_SCORE, UtteranceScore
from callsense.v1 import audio_pb2, chopper_pb2, prosody_pb2, scorer_pb2
from gateway.calls.events import LiveScore
from gateway.calls.inputs import UtteranceInput, transcript_event
from gateway.calls.stages import utterance_score
from gateway.grpc_api import scored_utterance_proto
from gateway.schemas import ScoredUtteranceOut, event_json

UTTERANCE = chopper_pb2.Utterance(
    call_id="c-1", utterance_id=3, channel=audio_pb2.CUSTOMER, start_ms=100, end_ms=900, text="Fine."
)


def scored(fused: bool) -> scorer_pb2.SentimentScore:
    text = (0.1, 0.6, 0.3)
    served = (0.7, 0.2, 0.1) if fused else text
    return scorer_pb2.SentimentScore(
        call_id="c-1",
        utterance_id=3,
        p_negative=served[0],
        p_neutral=served[1],
        p_positive=served[2],
        score=served[2] + 0.5 * served[1],
        label=scorer_pb2.NEGATIVE if fused else scorer_pb2.NEUTRAL,
        model_version="m-1",
        text_p_negative=text[0],
        text_p_neutral=text[1],
        text_p_positive=text[2],
        tone_fused=fused,
        fusion_version="tone-x" if fused else "",
    )


def test_a_recordings_prosody_goes_to_the_chopper() -> None:
    voice = prosody_pb2.Prosody(rms_dbfs=-20.0, pitch_mean_hz=150.0)
    with_voice = UtteranceInput("Fine.", "customer", 0, 900, voice)
    event = transcript_event("c-1", 0, with_voice)
    assert event.prosody == voice and event.is_final
    assert not transcript_event("c-1", 0, UtteranceInput("Fine.", "customer", 0, 900)).HasField("prosody")
    assert with_voice == UtteranceInput(
        "Fine.", "customer", 0, 900
    )  # prosody is not the utterance's identity


def test_a_fused_score_keeps_the_words_alone_beside_it() -> None:
    event = utterance_score(UTTERANCE, scored(fused=True))
    assert event.tone_fused and event.fusion_version == "tone-x"
    assert event.text_p_negative == pytest.approx(0.1) and event.text_label == "neutral"
    assert event.label == "negative"
    assert event.tone_moved and abs(event.text_score - 0.6) < 1e-6
    out = ScoredUtteranceOut.of(event)
    assert (
        out.tone_fused and out.tone_moved and out.text_label == "neutral" and out.fusion_version == "tone-x"
    )
    ws = event_json(LiveScore("c-1", 7, event))
    assert ws["type"] == "score" and ws["tone_moved"] and abs(ws["text_score"] - 0.6) < 1e-6
    proto = scored_utterance_proto(event).score
    assert proto.tone_fused and proto.fusion_version == "tone-x" and abs(proto.text_p_neutral - 0.6) < 1e-6


def test_an_unfused_score_is_the_words_alone() -> None:
    event = utterance_score(UTTERANCE, scored(fused=False))
    assert not event.tone_fused and event.text_p_negative is None and event.fusion_version is None
    assert event.text_score == event.score and event.text_label == event.label and not event.tone_moved
    out = ScoredUtteranceOut.of(event)
    assert (out.text_p_negative, out.text_p_neutral, out.text_p_positive) == (
        event.p_negative,
        event.p_neutral,
        event.p_positive,
    )
    proto = scored_utterance_proto(event).score
    assert not proto.tone_fused and proto.text_p_negative == proto.p_negative


def test_tone_moved_means_another_label_or_a_clear_shift() -> None:
    base = UtteranceScore(
        "c", 0, "customer", 0, 1, "x", "neutral", 0.2, 0.6, 0.2, 0.5, "m", None, 0.2, 0.6, 0.2, "tone-x"
    )
    assert not base.tone_moved  # fused, unmoved
    shifted = UtteranceScore(
        "c", 0, "customer", 0, 1, "x", "neutral", 0.4, 0.5, 0.1, 0.35, "m", None, 0.1, 0.6, 0.3, "tone-x"
    )
    assert shifted.text_score - shifted.score >= TONE_MOVED_SCORE and shifted.tone_moved
