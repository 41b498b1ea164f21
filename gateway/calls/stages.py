"""The mesh stages a call goes through (chopper, scorer, ASR) and how their answers become domain values.

Shared by the live path (gateway/calls/session.py) and the batch path (gateway/calls/service.py): both
send the chopper's utterances to the scorer and keep what comes back as UtteranceScores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from callsense.domain import Label, UtteranceScore
from callsense.v1 import asr_pb2_grpc, chopper_pb2, chopper_pb2_grpc, scorer_pb2, scorer_pb2_grpc
from gateway.calls.inputs import channel_from_role

_LABELS: Mapping[int, Label] = {
    scorer_pb2.NEGATIVE: "negative",
    scorer_pb2.NEUTRAL: "neutral",
    scorer_pb2.POSITIVE: "positive",
}


@dataclass(frozen=True)
class Stages:
    """The gRPC stubs of the services a call goes through; shared by every call (they are stateless)."""

    chopper: chopper_pb2_grpc.ChopperStub
    scorer: scorer_pb2_grpc.ScorerStub
    asr: asr_pb2_grpc.AsrStub | None = None
    """Only calls that declare audio open a Transcribe stream (at their first audio frame)."""


def utterance_score(utterance: chopper_pb2.Utterance, score: scorer_pb2.SentimentScore) -> UtteranceScore:
    """The stored form of a scored utterance (with the text's probabilities alone when tone was fused)."""
    fused = score.tone_fused
    return UtteranceScore(
        call_id=utterance.call_id,
        utterance_id=utterance.utterance_id,
        channel=channel_from_role(utterance.channel),
        start_ms=utterance.start_ms,
        end_ms=utterance.end_ms,
        text=utterance.text,
        label=score_label(score),
        p_negative=float(score.p_negative),
        p_neutral=float(score.p_neutral),
        p_positive=float(score.p_positive),
        score=min(1.0, max(0.0, float(score.score))),  # float32 rounding must not break the CHECK
        model_version=score.model_version,
        inference_ms=float(score.inference_ms),
        text_p_negative=float(score.text_p_negative) if fused else None,
        text_p_neutral=float(score.text_p_neutral) if fused else None,
        text_p_positive=float(score.text_p_positive) if fused else None,
        fusion_version=score.fusion_version if fused else None,
    )


def score_label(score: scorer_pb2.SentimentScore) -> Label:
    """The score's label, or its most probable class when the label was left unset."""
    return _LABELS.get(score.label) or _label_of(score)


def _label_of(score: scorer_pb2.SentimentScore) -> Label:
    """The most probable class, for a score whose label was left unset."""
    ranked = sorted(
        [(score.p_negative, "negative"), (score.p_neutral, "neutral"), (score.p_positive, "positive")]
    )
    label = ranked[-1][1]
    return "negative" if label == "negative" else "neutral" if label == "neutral" else "positive"
