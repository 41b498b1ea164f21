"""The tone fusion on RAVDESS actors 13-18, through the real path: text only, prosody only, fused.

Each clip is heard as a recording by the ASR's recording path, an actor's clips make one call on the
customer channel, cut by the chopper's code and scored as ``Scorer.ScoreBatch`` scores (training/
fusion_calls.py). Three readings of the same utterances:

- text only: the INT8 text model's probabilities (``text_p_*`` of the score): the words are the same two
  neutral sentences in every mood, so near chance is expected;
- prosody only: the comparison model kept in the head's card (same features and baselines, a learnt
  per-class bias instead of the text);
- fused: the served probabilities (``p_*``).

A clip the ASR heard nothing in has no score; it counts as predicted neutral in all three (a call's
silence moves no badge), and ``heard`` says how many there were. Metrics are over clips; several seeds
(orders of each actor's clips within the call) can be pooled, each clip counted once per seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scorer_service.fusion.calls import CallBaselines
from scorer_service.fusion.features import FloatArray, raw_features
from scorer_service.fusion.head import FusionHead, Layer
from scorer_service.fusion.tone import ToneFuser
from scorer_service.inference import SentimentModel
from training.fusion_calls import LABELS, SessionCall, score_calls, session_calls
from training.fusion_data import REPORT_ACTORS, hear_clips, ravdess_clips
from training.fusion_fit import FEATURE_SETS, FitConfig, Fitted, predict
from training.metrics import classification_report

NEUTRAL = np.array([0.0, 1.0, 0.0])


@dataclass(frozen=True)
class FusionEvaluation:
    clips: int
    heard: int
    fused_clips: int
    """Clips whose score the voice took part in (all but each call's first, and unheard ones)."""
    text: dict[str, Any]
    prosody: dict[str, Any]
    fused: dict[str, Any]

    def summary(self) -> dict[str, float]:
        return {
            f"{name}_{metric}": float(
                report[metric] if metric == "macro_f1" else report["per_class"]["negative"]["recall"]
            )
            for name, report in (("text", self.text), ("prosody", self.prosody), ("fused", self.fused))
            for metric in ("macro_f1", "negative_recall")
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "clips": self.clips,
            "heard": self.heard,
            "fused_clips": self.fused_clips,
            "summary": self.summary(),
            "text_only": self.text,
            "prosody_only": self.prosody,
            "fused": self.fused,
        }


def prosody_only(head: FusionHead) -> Fitted | None:
    """The prosody-only comparison model the head's card keeps, if it keeps one."""
    data = head.card.get("prosody_only")
    if not isinstance(data, dict):
        return None
    layers = tuple(Layer.from_json(x) for x in data["layers"])
    config = FitConfig(
        str(data["features"]),
        str(data["expansion"]),
        int(data["hidden"]),
        float(data["l2"]),
        members=int(data["members"]),
    )
    if config.features not in FEATURE_SETS:
        return None
    return Fitted(config, layers, np.asarray(data["offset"], dtype=np.float64))


def prosody_only_probabilities(
    calls: Sequence[SessionCall], head: FusionHead, model: Fitted
) -> list[FloatArray]:
    """Per clip of each call (in order), the prosody-only probabilities (mean over its utterances)."""
    out = []
    for call in calls:
        baselines = CallBaselines(head.prior)
        per_utterance = []
        for u in call.utterances:
            z = baselines.observe(call.call_id, u.channel, u.utterance_id, raw_features(u.prosody), 0.0)
            per_utterance.append(predict(model, z[None, :], np.zeros((1, 3)))[0])
        for index in range(len(call.clips)):
            mine = [p for p, c in zip(per_utterance, call.clip_of, strict=True) if c == index]
            out.append(np.mean(mine, axis=0) if mine else NEUTRAL)
    return out


def evaluate(
    shared_data: Path,
    head: FusionHead,
    *,
    cache: Path,
    whisper_dir: Path,
    model: SentimentModel | None = None,
    actors: Sequence[int] = REPORT_ACTORS,
    seeds: Sequence[int] = (0,),
    log: Callable[[str], None] | None = None,
) -> FusionEvaluation:
    clips = ravdess_clips(shared_data, actors)
    heard = hear_clips(clips, whisper_dir, cache, log=log)
    calls = session_calls(clips, heard, seeds)
    model = model or SentimentModel.load()
    scored = score_calls(calls, model, ToneFuser(head))
    truth = np.array([LABELS.index(s.clip.label) for s in scored])
    text = np.array([s.text if s.text is not None else NEUTRAL for s in scored])
    fused = np.array([s.served if s.served is not None else NEUTRAL for s in scored])
    comparison = prosody_only(head)
    prosody = (
        np.array(prosody_only_probabilities(calls, head, comparison))
        if comparison is not None
        else np.tile(NEUTRAL, (len(truth), 1))
    )
    return FusionEvaluation(
        clips=len(scored),
        heard=sum(s.text is not None for s in scored),
        fused_clips=sum(s.tone_fused for s in scored),
        text=classification_report(truth, text),
        prosody=classification_report(truth, prosody),
        fused=classification_report(truth, fused),
    )
