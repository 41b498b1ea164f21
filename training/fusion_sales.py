"""The sales test split spoken with espeak-ng: tone fusion must not hurt calls whose voices are flat.

espeak-ng says every line in the same voice at the same speed, pitch and loudness (the agent in one
voice, the customer in another), so the only prosody there is what a synthetic voice varies with the
words. Each line is a recording through the ASR's recording path (training/fusion_data.py), each call's
lines one after another on their speakers' channels, cut by the chopper's code and scored as ScoreBatch
scores (training/fusion_calls.py). The words' probabilities alone (``text_p_*``) and the served ones
(``p_*``) are compared against the adjudicated labels: macro-F1 over the labelled lines, a line split
into several utterances taking the mean of its utterances' probabilities, a line the ASR heard nothing in
predicted neutral.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from callsense.v1 import audio_pb2
from chopper_service.server import ChopperServicer
from scorer_service.fusion.calls import CallBaselines
from scorer_service.fusion.features import BaselinePrior, FloatArray, raw_features
from scorer_service.fusion.tone import ToneFuser
from scorer_service.inference import SentimentModel
from scorer_service.offline import score_offline
from training.data import SALES_DIR
from training.fusion_calls import LABELS, spoken_call
from training.fusion_data import HeardCache, HeardSegment, Hearing, asr_signature, hear_all
from training.fusion_fit import Anchors
from training.metrics import classification_report

VOICES = {"agent": "en-us", "customer": "en-us+f3"}
"""espeak-ng voices: the two speakers sound apart, each always the same (default pitch, speed, level)."""
NEUTRAL = np.array([0.0, 1.0, 0.0])


@dataclass(frozen=True)
class SalesLine:
    line_id: str
    call_id: str
    speaker: str
    text: str
    label: str | None
    """The adjudicated label; None for a line without one (spoken, as context, not scored)."""


def sales_calls(split: str = "test", directory: Path = SALES_DIR) -> dict[str, list[SalesLine]]:
    """The split's calls, each its lines in order."""
    gold = {}
    for raw in (directory / "gold.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(raw)
        if row.get("label") in LABELS:
            gold[row["line_id"]] = row["label"]
    calls: dict[str, list[SalesLine]] = {}
    for raw in (directory / "lines.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(raw)
        if row["split"] == split:
            line = SalesLine(
                row["line_id"], row["call_id"], row["speaker"], row["text"], gold.get(row["line_id"])
            )
            calls.setdefault(line.call_id, []).append(line)
    return calls


def hear_sales(
    calls: dict[str, list[SalesLine]],
    whisper_dir: Path,
    cache_path: Path,
    *,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[HeardSegment]]:
    """Each line spoken and heard through the ASR's recording path as its speaker's channel (cached)."""
    cache = HeardCache(cache_path, asr_signature(whisper_dir) + "-espeak")
    lines = [line for call in calls.values() for line in call]
    hearings = [
        Hearing(line.line_id, line.speaker, text=line.text, voice=VOICES[line.speaker]) for line in lines
    ]
    hear_all(hearings, whisper_dir, cache, workers=workers, log=log)
    return {line.line_id: cache.get(line.line_id) or [] for line in lines}


@dataclass(frozen=True)
class SalesEvaluation:
    lines: int
    fused_lines: int
    text: dict[str, Any]
    fused: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "fused_lines": self.fused_lines,
            "text_macro_f1": self.text["macro_f1"],
            "fused_macro_f1": self.fused["macro_f1"],
            "text_only": self.text,
            "fused": self.fused,
        }


def evaluate_sales(
    calls: dict[str, list[SalesLine]],
    heard: dict[str, list[HeardSegment]],
    model: SentimentModel,
    tone: ToneFuser,
) -> SalesEvaluation:
    chopper = ChopperServicer()
    truth, text, fused = [], [], []
    fused_lines = 0
    roles = {"agent": audio_pb2.AGENT, "customer": audio_pb2.CUSTOMER}
    for call_id, lines in sorted(calls.items()):
        turns = [(roles[line.speaker], heard[line.line_id]) for line in lines]
        utterances, turn_of = spoken_call(call_id, turns, chopper)
        scores = score_offline(model, tone, utterances)
        for index, line in enumerate(lines):
            if line.label is None:
                continue
            mine = [s for s, t in zip(scores, turn_of, strict=True) if t == index]
            truth.append(LABELS.index(line.label))
            text.append(_mean([(s.text_p_negative, s.text_p_neutral, s.text_p_positive) for s in mine]))
            fused.append(_mean([(s.p_negative, s.p_neutral, s.p_positive) for s in mine]))
            fused_lines += any(s.tone_fused for s in mine)
    y = np.array(truth)
    return SalesEvaluation(
        len(truth),
        fused_lines,
        classification_report(y, np.array(text)),
        classification_report(y, np.array(fused)),
    )


@dataclass(frozen=True)
class FlatRows:
    """Per utterance of spoken sales calls: deviations of every feature from its speaker's earlier
    utterances, the text's log-probabilities, the line's label index (-1: none) and the call's index."""

    z: FloatArray
    log_text: FloatArray
    y: np.ndarray
    call: np.ndarray

    def where(self, keep: np.ndarray) -> FlatRows:
        return FlatRows(self.z[keep], self.log_text[keep], self.y[keep], self.call[keep])

    def anchors(self) -> Anchors:
        """The rows the voice deviates in: what a head must leave alone (training/fusion_fit.py)."""
        moved = self.z.any(axis=1)
        return Anchors(self.z[moved], self.log_text[moved])


def flat_rows(
    calls: dict[str, list[SalesLine]],
    heard: dict[str, list[HeardSegment]],
    model: SentimentModel,
    prior: BaselinePrior,
) -> FlatRows:
    """The utterances of ``calls`` spoken by espeak-ng, as the scorer reads them against each speaker."""
    chopper = ChopperServicer()
    roles = {"agent": audio_pb2.AGENT, "customer": audio_pb2.CUSTOMER}
    zs, logs, ys, call_index = [], [], [], []
    for index, (call_id, lines) in enumerate(sorted(calls.items())):
        turns = [(roles[line.speaker], heard[line.line_id]) for line in lines]
        utterances, turn_of = spoken_call(call_id, turns, chopper)
        baselines = CallBaselines(prior)
        for u, s, turn in zip(utterances, score_offline(model, None, utterances), turn_of, strict=True):
            zs.append(baselines.observe(call_id, u.channel, u.utterance_id, raw_features(u.prosody), 0.0))
            logs.append(np.log(np.clip([s.text_p_negative, s.text_p_neutral, s.text_p_positive], 1e-6, 1.0)))
            label = lines[turn].label
            ys.append(LABELS.index(label) if label is not None else -1)
            call_index.append(index)
    return FlatRows(np.array(zs), np.array(logs), np.array(ys), np.array(call_index))


def _mean(rows: Sequence[tuple[float, float, float]]) -> np.ndarray:
    return np.mean(np.array(rows), axis=0) if rows else NEUTRAL
