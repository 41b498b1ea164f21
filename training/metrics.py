"""Classification metrics for a three-way sentiment model, as the model card reports them."""

from __future__ import annotations

from typing import Any

import numpy as np

from callsense.domain import NEGATIVE_SPIKE_THRESHOLD
from training.data import LABELS


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE: the gap between confidence and accuracy, averaged over confidence bins."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        mask = (confidence > low) & (confidence <= high)
        if mask.any():
            error += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(error)


def classification_report(y_true: np.ndarray | list[int], probs: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class P/R/F1, one-vs-rest ROC-AUC, confusion matrix, ECE."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    truth = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    predicted = probs.argmax(axis=1)
    labels = list(range(len(LABELS)))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    auc: dict[str, float | None] = {}
    for index, name in enumerate(LABELS):
        positives = truth == index
        auc[name] = (
            float(roc_auc_score(positives, probs[:, index])) if 0 < positives.sum() < len(truth) else None
        )
    return {
        "n": int(len(truth)),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(truth, predicted, labels=labels, average="weighted", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(LABELS)
        },
        "roc_auc_ovr": auc,
        "confusion_matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        "ece": expected_calibration_error(truth, probs),
        "negative_below_red": _negative_below_red(truth, probs),
        "rest_below_red": _rest_below_red(truth, probs),
    }


def _negative_below_red(truth: np.ndarray, probs: np.ndarray) -> float | None:
    """Share of the truly negative lines whose score (p_pos + 0.5 p_neu) is under the badge's red line:
    the lines that can turn the live badge red at all. None without negative lines."""
    negatives = truth == LABELS.index("negative")
    if not negatives.any():
        return None
    scores = probs[:, 2] + 0.5 * probs[:, 1]
    return float((scores[negatives] < NEGATIVE_SPIKE_THRESHOLD).mean())


def _rest_below_red(truth: np.ndarray, probs: np.ndarray) -> float | None:
    """Share of the neutral and positive lines whose score is under the red line: false alarms the badge
    would count as low. None without such lines."""
    rest = truth != LABELS.index("negative")
    if not rest.any():
        return None
    scores = probs[:, 2] + 0.5 * probs[:, 1]
    return float((scores[rest] < NEGATIVE_SPIKE_THRESHOLD).mean())
