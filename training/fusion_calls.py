"""RAVDESS clips as calls: one actor's clips, each heard as a recording, one after another on the customer
channel of one call, through the chopper and the scorer as the mesh runs them.

Why one call per actor: the fusion reads a voice against the same speaker's earlier utterances in the
call, and a RAVDESS clip alone is one utterance (nothing to compare with, so text alone). An actor's
clips in a seeded random order make a call whose customer says the same two sentences in every mood; the
first clip of each call is scored on text alone, as a customer's first utterance is on the mesh.

The path per call: each clip's heard segments (training/fusion_data.py: the ASR recording path) become
final TranscriptEvents placed one after another in call time, cut by the chopper's own code
(``chopper_service.server.chop_offline``: masks, ids, prosody carried), scored as ``Scorer.ScoreBatch``
scores them (``scorer_service.offline.score_offline``: the INT8 text model, then the fusion head).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from callsense.v1 import asr_pb2, audio_pb2, chopper_pb2, scorer_pb2
from chopper_service.server import ChopperServicer, chop_offline
from scorer_service.fusion.calls import CallBaselines
from scorer_service.fusion.features import BaselinePrior, FloatArray, raw_features
from scorer_service.fusion.tone import ToneFuser
from scorer_service.inference import SentimentModel
from scorer_service.offline import score_offline
from training.fusion_data import EmotionClip, HeardSegment

LABELS = ("negative", "neutral", "positive")
GAP_MS = 1_000
"""Call time between one clip's end and the next one's start."""


@dataclass(frozen=True)
class SessionCall:
    """One call: clips in the order spoken, their utterances (with the clip each came from)."""

    call_id: str
    clips: tuple[EmotionClip, ...]
    utterances: tuple[chopper_pb2.Utterance, ...]
    clip_of: tuple[int, ...]
    """Per utterance, the index in ``clips`` of the clip it came from."""


def session_calls(
    clips: Sequence[EmotionClip], heard: Mapping[str, Sequence[HeardSegment]], seeds: Sequence[int]
) -> list[SessionCall]:
    """For each seed and actor, the actor's clips in that seed's order as one call (cut by the chopper)."""
    chopper = ChopperServicer()
    by_actor: dict[int, list[EmotionClip]] = {}
    for clip in clips:
        by_actor.setdefault(clip.actor, []).append(clip)
    calls = []
    for seed in seeds:
        for actor, own in sorted(by_actor.items()):
            ordered = sorted(own, key=lambda c: c.name)
            random.Random(seed * 1000 + actor).shuffle(ordered)
            calls.append(_session(f"ravdess-{actor:02d}-s{seed}", ordered, heard, chopper))
    return calls


def _session(
    call_id: str,
    ordered: list[EmotionClip],
    heard: Mapping[str, Sequence[HeardSegment]],
    chopper: ChopperServicer,
) -> SessionCall:
    turns = [(audio_pb2.CUSTOMER, heard.get(clip.name, ())) for clip in ordered]
    utterances, turn_of = spoken_call(call_id, turns, chopper)
    return SessionCall(call_id, tuple(ordered), tuple(utterances), turn_of)


def spoken_call(
    call_id: str, turns: Sequence[tuple[int, Sequence[HeardSegment]]], chopper: ChopperServicer | None = None
) -> tuple[list[chopper_pb2.Utterance], tuple[int, ...]]:
    """Turns (a channel role and what the ASR heard of the turn's recording) one after another in call time,
    cut by the chopper's code: the utterances, and for each the index of the turn it came from."""
    events: list[asr_pb2.TranscriptEvent] = []
    turn_of_segment: dict[int, int] = {}
    offset = 0
    for index, (role, segments) in enumerate(turns):
        for segment in segments:
            turn_of_segment[len(events)] = index
            event = segment.event(len(events), offset, role)
            event.call_id = call_id
            events.append(event)
        offset += max((s.end_ms for s in segments), default=0) + GAP_MS
    utterances = chop_offline(call_id, events, chopper)
    return utterances, tuple(turn_of_segment[u.source_segment_id] for u in utterances)


@dataclass(frozen=True)
class ClipScores:
    """A clip's text-only and served probabilities (the mean over its utterances; None: nothing heard)."""

    clip: EmotionClip
    text: FloatArray | None
    served: FloatArray | None
    tone_fused: bool


def score_calls(
    calls: Sequence[SessionCall], model: SentimentModel, tone: ToneFuser | None
) -> list[ClipScores]:
    """Every clip of every call, scored as the scorer's ScoreBatch scores the call."""
    out = []
    for call in calls:
        scores = score_offline(model, tone, call.utterances)
        out += _per_clip(call, scores)
    return out


def _per_clip(call: SessionCall, scores: Sequence[scorer_pb2.SentimentScore]) -> list[ClipScores]:
    rows = []
    for index, clip in enumerate(call.clips):
        mine = [s for s, c in zip(scores, call.clip_of, strict=True) if c == index]
        if not mine:
            rows.append(ClipScores(clip, None, None, False))
            continue
        text = np.mean([[s.text_p_negative, s.text_p_neutral, s.text_p_positive] for s in mine], axis=0)
        served = np.mean([[s.p_negative, s.p_neutral, s.p_positive] for s in mine], axis=0)
        rows.append(ClipScores(clip, text, served, any(s.tone_fused for s in mine)))
    return rows


@dataclass(frozen=True)
class TrainingRows:
    """Per utterance: deviations of every feature, the text's log-probabilities, the clip's class and
    actor. What the head is fitted on."""

    z: FloatArray
    log_text: FloatArray
    y: np.ndarray
    actor: np.ndarray


def training_rows(
    calls: Sequence[SessionCall], text_probs: Sequence[FloatArray], prior: BaselinePrior
) -> TrainingRows:
    """The rows of ``calls`` under ``prior`` (``text_probs``: per call, its utterances' text probabilities,
    which do not depend on the prior). Utterances of a speaker's first turn (no baseline) are left out: the
    head never sees them."""
    zs, logs, ys, actors = [], [], [], []
    for call, probs in zip(calls, text_probs, strict=True):
        baselines = CallBaselines(prior)
        for u, p, clip_index in zip(call.utterances, probs, call.clip_of, strict=True):
            z = baselines.observe(call.call_id, u.channel, u.utterance_id, raw_features(u.prosody), 0.0)
            if not np.any(z):
                continue
            clip = call.clips[clip_index]
            zs.append(z)
            logs.append(np.log(np.clip(p, 1e-6, 1.0)))
            ys.append(LABELS.index(clip.label))
            actors.append(clip.actor)
    return TrainingRows(np.array(zs), np.array(logs), np.array(ys), np.array(actors))


def text_probabilities(calls: Sequence[SessionCall], model: SentimentModel) -> list[FloatArray]:
    """Per call, its utterances' text-only probabilities (rows of negative, neutral, positive)."""
    out = []
    for call in calls:
        scores = score_offline(model, None, call.utterances)
        out.append(np.array([[s.text_p_negative, s.text_p_neutral, s.text_p_positive] for s in scores]))
    return out
