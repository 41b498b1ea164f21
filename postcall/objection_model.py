"""The local objection tagger's learned classifier, run in NumPy: weights in ``objection_model.json``.

A multinomial logistic regression over one segment's features (``postcall.objections.segment_features``:
the MiniLM embedding of the segment, its phrase-rule and topic-keyword hits, and the embeddings of the
segments just before and after it in the call, scaled by ``context_weight``, and, when the weights name a
``stance_model_sha256``, the segment's stance from that sentiment model, postcall/stance.py) into six
classes: "none" and
the five tags. A tag is given where its probability reaches ``threshold`` and one of the segment's
sentences alone (in the segment's context) gives it at least ``sentence_threshold``: "I love the idea.
What would it cost for forty seats?" resembles pushback as a whole, but neither sentence is pushback.

The file is written by ``callsense objections train`` (training/objection_tagger.py, scikit-learn), which
also records what it was fitted on and its cross-validated figures under ``card``; the classifier itself
is NumPy only (the stance features need ONNX Runtime). A missing or malformed file is an error at
start-up, with the file's name and what is wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from callsense.report import TAGS

MODEL_PATH = Path(__file__).with_name("objection_model.json")
FORMAT = "callsense-objection-model/1"
NONE_CLASS = "none"
CLASSES: tuple[str, ...] = (NONE_CLASS, *TAGS)

Array = NDArray[np.float64]


def tags_at(
    probabilities: Array,
    threshold: float,
    sentence_best: Array | None = None,
    sentence_threshold: float = 0.0,
) -> list[list[tuple[str, float]]]:
    """Per row of class probabilities, the tags (with their probability) at or over ``threshold`` whose
    best sentence (``sentence_best``: per row, each class's highest probability over the segment's
    sentences) reaches ``sentence_threshold``: one sentence must carry the objection."""
    found = []
    for row, probs in enumerate(probabilities):
        found.append(
            [
                (tag, float(probs[i]))
                for i, tag in enumerate(CLASSES)
                if i
                and probs[i] >= threshold
                and (sentence_best is None or sentence_best[row, i] >= sentence_threshold)
            ]
        )
    return found


class ObjectionModelError(ValueError):
    """The weights file is missing, of another format, or inconsistent."""


def _optional_sha(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"stance_model_sha256 must be a SHA-256 in hex or null, got {value!r}")
    return value


@dataclass(frozen=True)
class ObjectionModel:
    weights: Array  # (len(CLASSES), features)
    bias: Array  # (len(CLASSES),)
    threshold: float
    context_weight: float
    sentence_threshold: float = 0.0
    card: dict[str, Any] = field(default_factory=dict)
    # The SHA-256 of the sentiment model whose pooled state the weights read as stance features
    # (postcall/stance.py); None: weights without stance features.
    stance_model_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.weights.ndim != 2 or self.weights.shape[0] != len(CLASSES):
            raise ObjectionModelError(f"weights must be ({len(CLASSES)}, features), got {self.weights.shape}")
        if self.bias.shape != (len(CLASSES),):
            raise ObjectionModelError(f"bias must have {len(CLASSES)} values, got {self.bias.shape}")
        if not 0.0 < self.threshold <= 1.0:
            raise ObjectionModelError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 <= self.sentence_threshold <= 1.0:
            raise ObjectionModelError(f"sentence_threshold must be in [0, 1], got {self.sentence_threshold}")
        if not 0.0 <= self.context_weight <= 1.0:
            raise ObjectionModelError(f"context_weight must be in [0, 1], got {self.context_weight}")
        if not (np.isfinite(self.weights).all() and np.isfinite(self.bias).all()):
            raise ObjectionModelError("weights and bias must be finite numbers")

    @property
    def features(self) -> int:
        return int(self.weights.shape[1])

    def probabilities(self, features: NDArray[np.floating[Any]]) -> Array:
        """(segments, len(CLASSES)) class probabilities of feature rows (segments, features)."""
        if features.ndim != 2 or features.shape[1] != self.features:
            raise ValueError(f"expected (segments, {self.features}) features, got {features.shape}")
        logits = features.astype(np.float64) @ self.weights.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float64)

    def tags(self, probabilities: Array, sentence_best: Array | None = None) -> list[list[tuple[str, float]]]:
        """Per row, the tags (with their probability) the model gives: usually none or one."""
        return tags_at(probabilities, self.threshold, sentence_best, self.sentence_threshold)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "classes": list(CLASSES),
            "threshold": self.threshold,
            "sentence_threshold": self.sentence_threshold,
            "context_weight": self.context_weight,
            "stance_model_sha256": self.stance_model_sha256,
            "card": self.card,
            "bias": [round(float(v), 6) for v in self.bias],
            "weights": [[round(float(v), 6) for v in row] for row in self.weights],
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "objection model") -> ObjectionModel:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ObjectionModelError(
                f"{source}: not a {FORMAT} file (callsense objections train writes one)"
            )
        if data.get("classes") != list(CLASSES):
            raise ObjectionModelError(f"{source}: classes must be {list(CLASSES)}, got {data.get('classes')}")
        try:
            return cls(
                weights=np.asarray(data["weights"], dtype=np.float64),
                bias=np.asarray(data["bias"], dtype=np.float64),
                threshold=float(data["threshold"]),
                context_weight=float(data["context_weight"]),
                sentence_threshold=float(data["sentence_threshold"]),
                card=dict(data.get("card") or {}),
                stance_model_sha256=_optional_sha(data.get("stance_model_sha256")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ObjectionModelError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> ObjectionModel:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ObjectionModelError(f"{path}: cannot read the objection model ({exc})") from exc
        return cls.from_json(data, str(path))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
