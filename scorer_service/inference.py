"""The sentiment model as the serving path sees it: text in, class probabilities out.

Plain Python, no gRPC and no torch: the scorer service, the `callsense score` command and the
benchmarks all score through `SentimentModel`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from callsense.tokenization import (
    SHIPPED_MODEL_DIR,
    EncodedText,
    SentimentTokenizer,
    TextRejected,
    mark_role,
    pad_batch,
)
from scorer_service.backends.base import Backend, softmax

LABELS = ("negative", "neutral", "positive")
DEFAULT_MODEL = SHIPPED_MODEL_DIR / "model.int8.onnx"
# The speaker roles a model may carry a prior for (a call's two sides). Anything else (a mixed channel, a
# text with no speaker) is scored by the words alone.
ROLES = ("agent", "customer")


@dataclass(frozen=True)
class SentimentInput:
    text: str
    previous_text: str = ""
    role: str = ""
    """Who said it: "agent", "customer", or "" (not known, or both speakers on one channel)."""


@dataclass(frozen=True)
class Prediction:
    p_negative: float
    p_neutral: float
    p_positive: float

    @property
    def score(self) -> float:
        """One number in [0, 1] for charts and badges: p_positive + 0.5 * p_neutral."""
        return self.p_positive + 0.5 * self.p_neutral

    @property
    def label(self) -> str:
        probs = (self.p_negative, self.p_neutral, self.p_positive)
        return LABELS[int(np.argmax(probs))]


RolePriors = Mapping[str, tuple[float, float, float]]


@dataclass(frozen=True)
class ModelInfo:
    version: str
    uses_context: bool
    role_priors: RolePriors = field(default_factory=dict)
    """Per speaker role, log-prior shifts added to the model's log-probabilities (negative, neutral,
    positive), fitted on labelled calls: a sales agent is almost never negative, a buyer more often than
    TV dialogue. Empty: every utterance is scored by its words alone."""
    uses_roles: bool = False
    """Trained with the speaker's role before the words ("customer: ..."; tokenization.mark_role)."""


def read_model_info(model_dir: Path) -> ModelInfo:
    """The model's version, whether it was trained with the previous utterance as context, and its role
    priors (the card's ``role_priors.shift``)."""
    card = model_dir / "model_card.json"
    if card.exists():
        data = json.loads(card.read_text())
        return ModelInfo(
            str(data.get("version", "unknown")),
            bool(data.get("uses_context", False)),
            parse_role_priors((data.get("role_priors") or {}).get("shift") or {}),
            bool(data.get("uses_roles", False)),
        )
    return ModelInfo("unversioned", False)


def parse_role_priors(raw: Mapping[str, object]) -> dict[str, tuple[float, float, float]]:
    """Role priors as a card stores them (role -> three numbers); ValueError saying what is wrong."""
    priors = {}
    for role, shift in raw.items():
        if role not in ROLES:
            raise ValueError(f"role_priors: unknown role {role!r}: one of {', '.join(ROLES)}")
        if not isinstance(shift, list | tuple) or len(shift) != len(LABELS):
            raise ValueError(f"role_priors: {role} needs {len(LABELS)} numbers (negative, neutral, positive)")
        values = tuple(float(v) for v in shift)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"role_priors: {role} has a number that is not finite: {shift}")
        priors[role] = (values[0], values[1], values[2])
    return priors


def with_role_prior(prediction: Prediction, shift: tuple[float, float, float] | None) -> Prediction:
    """``prediction`` with a role's log-prior shift applied (renormalised); unchanged without one."""
    if shift is None:
        return prediction
    logits = np.log(np.maximum((prediction.p_negative, prediction.p_neutral, prediction.p_positive), 1e-12))
    p = softmax((logits + np.asarray(shift))[None, :])[0]
    return Prediction(float(p[0]), float(p[1]), float(p[2]))


class SentimentModel:
    """Tokenizer + backend. Not thread-safe: call it from one thread (the scorer's inference thread)."""

    def __init__(self, backend: Backend, tokenizer: SentimentTokenizer, info: ModelInfo) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.info = info

    @classmethod
    def load(cls, model_path: Path | None = None, threads: int = 1, backend: str = "auto") -> SentimentModel:
        from scorer_service.backends import select_backend

        path = model_path or DEFAULT_MODEL
        model_dir = path.parent
        return cls(
            select_backend(path, threads=threads, preference=backend),
            SentimentTokenizer(model_dir / "tokenizer.json"),
            read_model_info(model_dir),
        )

    def warm_up(self) -> None:
        """One forward pass, so that the first real request does not pay for lazy initialisation. Call it
        on the thread that loaded the model, before the model serves."""
        self.predict_encoded([self.encode(SentimentInput("thanks, that sounds good"))])

    def encode(self, item: SentimentInput) -> EncodedText:
        """Raises TextRejected with a message that says what to fix."""
        previous = item.previous_text if self.info.uses_context else ""
        if self.info.uses_roles and item.role in ROLES:
            try:
                return self.tokenizer.encode(mark_role(item.text, item.role), previous)
            except TextRejected:
                # The chopper cuts utterances to fit 128 tokens; one that fits only without the marker is
                # still scored (as text whose speaker is not known) below, or refused for what it is.
                pass
        return self.tokenizer.encode(item.text, previous)

    def for_role(self, prediction: Prediction, role: str) -> Prediction:
        """The model's prediction for an utterance by ``role``: its role prior applied where the model has
        one for that role (the words' own probabilities otherwise)."""
        return with_role_prior(prediction, self.info.role_priors.get(role))

    def predict_encoded(self, batch: Sequence[EncodedText]) -> list[Prediction]:
        """Scores of a group of encoded texts, each the score it gets alone: one forward pass padded to
        the longest item where the backend batches exactly, else one pass per item."""
        if not batch:
            return []
        passes = [list(batch)] if self.backend.batches_exactly else [[item] for item in batch]
        logits = np.concatenate([self.backend.predict(pad_batch(items)) for items in passes])
        return [Prediction(float(p[0]), float(p[1]), float(p[2])) for p in softmax(logits)]

    def predict(
        self, items: Sequence[SentimentInput], max_batch: int = 32
    ) -> list[Prediction | TextRejected]:
        """Score many inputs, batched by length; a rejected input gets its TextRejected in its slot."""
        results: list[Prediction | TextRejected] = [TextRejected("not scored")] * len(items)
        encoded: list[tuple[int, EncodedText]] = []
        for index, item in enumerate(items):
            try:
                encoded.append((index, self.encode(item)))
            except TextRejected as exc:
                results[index] = exc
        encoded.sort(key=lambda pair: len(pair[1]))
        for start in range(0, len(encoded), max_batch):
            chunk = encoded[start : start + max_batch]
            for (index, _), prediction in zip(
                chunk, self.predict_encoded([e for _, e in chunk]), strict=True
            ):
                results[index] = self.for_role(prediction, items[index].role)
        return results

    def timed_predict_one(self, item: SentimentInput) -> tuple[Prediction, float]:
        """Score one input; returns the prediction and the milliseconds spent (tokenise + forward)."""
        started = time.perf_counter()
        prediction = self.for_role(self.predict_encoded([self.encode(item)])[0], item.role)
        return prediction, (time.perf_counter() - started) * 1000
