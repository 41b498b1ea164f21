"""Fitting the fusion head (scorer_service/fusion/head.py) in NumPy and SciPy, and choosing its shape.

The head's logits are ``offset + g(e(z)) - g(e(0))`` where the offset is the text's log-probabilities
(the served head) or a learnt per-class bias (the "prosody only" comparison, which ignores text). The
loss is class-weighted cross-entropy (RAVDESS is 62 % negative: unweighted, the head would learn that
most voices are unhappy, and say so on every sales call) plus an L2 penalty on the weights; L-BFGS
minimises it with exact gradients (written out below: one linear layer, or a tanh layer then a linear
one).

Choosing: every ``FitConfig`` of a small grid is scored by leave-actors-out cross-validation on the
choosing actors (01-12; 4 folds of 3 actors), macro-F1 of the fused probabilities; the best is refitted
on all of them. The report actors (13-18) are never seen here.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from scorer_service.fusion.features import CORE_FEATURES, FEATURE_NAMES, FloatArray
from scorer_service.fusion.gate import GATE_FEATURES, Gate
from scorer_service.fusion.head import Layer
from training.fusion_calls import TrainingRows

N_CLASSES = 3
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "core": CORE_FEATURES,
    "core+mfcc": FEATURE_NAMES,
}


@dataclass(frozen=True)
class FitConfig:
    features: str = "core"
    """A key of FEATURE_SETS."""
    expansion: str = "linear"
    hidden: int = 0
    """0: a logistic regression; else a tanh layer of this width."""
    l2: float = 0.1
    seed: int = 0
    anchor_weight: float = 0.0
    """Weight of the flat-voice anchors (``Anchors``) against the labelled rows (which weigh 1 in all)."""
    gate: float | None = None
    """The threshold of the pitch-and-level gate (scorer_service/fusion/gate.py); None: no gate."""
    members: int = 1
    """MLPs fitted from different random starts and averaged (in logits: one MLP as wide as all of them,
    its output layer divided by their number, so the head's file format does not change)."""

    @property
    def names(self) -> tuple[str, ...]:
        return FEATURE_SETS[self.features]


@dataclass(frozen=True)
class Anchors:
    """Utterances whose voice says nothing: sales lines spoken by espeak-ng, one flat voice per speaker,
    whose deviations come from the words alone (an MFCC mean moves with the phonemes said). The head is
    taught to leave their text probabilities where they are: cross-entropy against the text's own
    probabilities. RAVDESS cannot teach this: its two sentences never change, so every deviation there is
    the voice's."""

    z: FloatArray
    log_text: FloatArray


@dataclass(frozen=True)
class Fitted:
    config: FitConfig
    layers: tuple[Layer, ...]
    offset: FloatArray | None
    """The learnt per-class bias of a prosody-only model; None for a head fused with text."""


def select(z: FloatArray, names: Sequence[str]) -> FloatArray:
    return np.asarray(z[:, [FEATURE_NAMES.index(n) for n in names]], dtype=np.float64)


def expand(z: FloatArray, expansion: str) -> FloatArray:
    return np.concatenate([z, z * z], axis=1) if expansion == "quadratic" else z


def class_weights(y: np.ndarray) -> FloatArray:
    counts = np.bincount(y, minlength=N_CLASSES).astype(np.float64)
    weights = len(y) / (N_CLASSES * np.maximum(counts, 1.0))
    return np.asarray(weights[y], dtype=np.float64)


def fit(
    rows: TrainingRows, config: FitConfig, *, with_text: bool = True, anchors: Anchors | None = None
) -> Fitted:
    """The head of ``config`` fitted on ``rows`` (with the text offset, or a learnt bias instead), held to
    ``anchors`` with ``config.anchor_weight`` (with the text offset only)."""
    if config.members > 1 and config.hidden:
        members = [
            _fit_one(rows, dataclasses.replace(config, seed=config.seed + i), with_text, anchors)
            for i in range(config.members)
        ]
        return _averaged(config, members)
    return _fit_one(rows, config, with_text, anchors)


def _averaged(config: FitConfig, members: Sequence[Fitted]) -> Fitted:
    k = len(members)
    hidden = Layer(
        np.concatenate([m.layers[0].weights for m in members], axis=1),
        np.concatenate([m.layers[0].bias for m in members]),
        "tanh",
    )
    output = Layer(
        np.concatenate([m.layers[1].weights for m in members], axis=0) / k, np.zeros(N_CLASSES), "linear"
    )
    offsets = [m.offset for m in members if m.offset is not None]
    return Fitted(config, (hidden, output), np.mean(offsets, axis=0) if offsets else None)


def _fit_one(rows: TrainingRows, config: FitConfig, with_text: bool, anchors: Anchors | None) -> Fitted:
    z, log_text = rows.z, rows.log_text
    weights = class_weights(rows.y)
    weights = weights / weights.sum()
    targets = np.eye(N_CLASSES)[rows.y]
    if anchors is not None and with_text and config.anchor_weight > 0 and len(anchors.z):
        z = np.concatenate([z, anchors.z])
        log_text = np.concatenate([log_text, anchors.log_text])
        weights = np.concatenate([weights, np.full(len(anchors.z), config.anchor_weight / len(anchors.z))])
        targets = np.concatenate([targets, np.exp(anchors.log_text)])
    e = expand(select(z, config.names), config.expansion)
    n, d = e.shape
    h = config.hidden
    rng = np.random.default_rng(config.seed)
    shapes: list[tuple[int, ...]] = [(d, h), (h,), (h, N_CLASSES)] if h else [(d, N_CLASSES)]
    if not with_text:
        shapes.append((N_CLASSES,))
    sizes = [int(np.prod(s)) for s in shapes]
    init = np.concatenate([rng.normal(0, 0.1, size) for size in sizes])
    offset_rows = log_text if with_text else np.zeros((n, N_CLASSES))
    openness = gate_openness(config, z)

    def unpack(theta: FloatArray) -> list[FloatArray]:
        out, at = [], 0
        for shape, size in zip(shapes, sizes, strict=True):
            out.append(theta[at : at + size].reshape(shape))
            at += size
        return out

    def loss_and_grad(theta: FloatArray) -> tuple[float, FloatArray]:
        parts = unpack(theta)
        if h:
            w1, b1, w2 = parts[:3]
            hidden = np.tanh(e @ w1 + b1)
            at0 = np.tanh(b1)
            shift = (hidden - at0) @ w2
        else:
            w = parts[0]
            shift = e @ w
        bias = parts[-1] if not with_text else np.zeros(N_CLASSES)
        logits = offset_rows + openness[:, None] * shift + bias
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -float((weights * (targets * log_p).sum(axis=1)).sum())
        g = weights[:, None] * (np.exp(log_p) - targets)  # d loss / d logits (targets sum to 1)
        gs = g * openness[:, None]  # d loss / d shift
        grads: list[FloatArray] = []
        if h:
            loss += config.l2 * float((w1**2).sum() + (w2**2).sum())
            grads.append(e.T @ ((gs @ w2.T) * (1 - hidden**2)) + 2 * config.l2 * w1)
            d_hidden0 = -(gs.sum(axis=0) @ w2.T)
            grads.append(((gs @ w2.T) * (1 - hidden**2)).sum(axis=0) + d_hidden0 * (1 - at0**2))
            grads.append((hidden - at0).T @ gs + 2 * config.l2 * w2)
        else:
            loss += config.l2 * float((w**2).sum())
            grads.append(e.T @ gs + 2 * config.l2 * w)
        if not with_text:
            grads.append(g.sum(axis=0))
        return loss, np.concatenate([x.reshape(-1) for x in grads])

    result = minimize(loss_and_grad, init, jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    parts = unpack(np.asarray(result.x))
    layers: tuple[Layer, ...] = (
        (Layer(parts[0], parts[1], "tanh"), Layer(parts[2], np.zeros(N_CLASSES), "linear"))
        if h
        else (Layer(parts[0], np.zeros(N_CLASSES), "linear"),)
    )
    return Fitted(config, layers, None if with_text else parts[-1])


def gate_of(config: FitConfig) -> Gate | None:
    return Gate(GATE_FEATURES, config.gate) if config.gate is not None else None


def gate_openness(config: FitConfig, z: FloatArray) -> FloatArray:
    """Per row (deviations of all FEATURE_NAMES), how far the config's gate lets the shift through."""
    gate = gate_of(config)
    return np.ones(len(z)) if gate is None else gate.openness(z, FEATURE_NAMES)


def predict(fitted: Fitted, z: FloatArray, log_text: FloatArray) -> FloatArray:
    """Probabilities of rows (deviations of all FEATURE_NAMES; the text's log-probabilities)."""
    e = expand(select(z, fitted.config.names), fitted.config.expansion)
    h = e
    h0 = np.zeros((1, e.shape[1]))
    for layer in fitted.layers:
        h = h @ layer.weights + layer.bias
        h0 = h0 @ layer.weights + layer.bias
        if layer.activation == "tanh":
            h, h0 = np.tanh(h), np.tanh(h0)
    offset = log_text if fitted.offset is None else np.broadcast_to(fitted.offset, log_text.shape)
    logits = offset + gate_openness(fitted.config, z)[:, None] * (h - h0)
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return np.asarray(p / p.sum(axis=1, keepdims=True), dtype=np.float64)


def macro_f1(y: np.ndarray, probs: FloatArray) -> float:
    predicted = probs.argmax(axis=1)
    scores = []
    for k in range(N_CLASSES):
        tp = float(((predicted == k) & (y == k)).sum())
        fp = float(((predicted == k) & (y != k)).sum())
        fn = float(((predicted != k) & (y == k)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores))


def actor_folds(actors: Sequence[int], k: int = 4) -> list[tuple[int, ...]]:
    ordered = sorted(set(actors))
    return [tuple(ordered[i::k]) for i in range(k)]


def cross_validate(
    rows: TrainingRows, config: FitConfig, *, with_text: bool = True, anchors: Anchors | None = None
) -> float:
    """Macro-F1 over the held-out actors of each fold, all folds' predictions pooled."""
    truth, probs = [], []
    for held in actor_folds(rows.actor.tolist()):
        test = np.isin(rows.actor, held)
        train = TrainingRows(rows.z[~test], rows.log_text[~test], rows.y[~test], rows.actor[~test])
        fitted = fit(train, config, with_text=with_text, anchors=anchors)
        probs.append(predict(fitted, rows.z[test], rows.log_text[test]))
        truth.append(rows.y[test])
    return macro_f1(np.concatenate(truth), np.concatenate(probs))


def grid() -> list[FitConfig]:
    """Averaged tanh MLPs on every feature, with and without the pitch-and-level gate and the flat-voice
    anchors. What earlier runs ruled out: logistic regressions, plain or quadratic (0.1-0.2 below an MLP
    in cross-validation), the five core features alone (0.07 below), 8 hidden units (0.01-0.02 below 16),
    L2 of 0.01 and more (the loss is a weighted mean over a thousand rows: it flattens the head onto the
    text), anchors three times RAVDESS's weight (no better on flat voices than once, worse on RAVDESS), a
    gate at 1.5 spreads (RAVDESS 0.28: barely above text)."""
    return [
        FitConfig("core+mfcc", "linear", 16, 0.001, gate=gate, anchor_weight=anchor, members=5)
        for gate, anchor in itertools.product((None, 0.5, 1.0), (0.0, 1.0))
    ]


def within_speaker_spread(rows_raw: FloatArray, actors: np.ndarray) -> tuple[float, ...]:
    """Per feature, the mean over actors of the spread of their own values (the baseline's prior): what
    one speaker's voice varies by within a session."""
    spreads = []
    for actor in sorted(set(actors.tolist())):
        mine = rows_raw[actors == actor]
        spreads.append(np.nanstd(mine, axis=0))
    mean = np.nanmean(np.array(spreads), axis=0)
    return tuple(float(s) if np.isfinite(s) and s > 1e-6 else 1.0 for s in mean)
