"""Which utterances a training epoch sees, and how much each class counts.

Sales calls vary from one minute to an hour. Drawn uniformly, the utterances of a few long calls would
dominate an epoch, while the short calls that make up most of a sales floor's day would be rare. So
utterances of short calls (under three minutes by default) are drawn more often, and every call's
share is capped so no single long call fills a batch. Class weights are recomputed from each new
training set, since the label mix changes with every month's data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from training.data import LABELS, LabelledUtterance

SHORT_CALL_S = 180.0


def sampling_weights(
    examples: Sequence[LabelledUtterance],
    *,
    short_call_s: float = SHORT_CALL_S,
    short_call_boost: float = 2.0,
) -> np.ndarray:
    """One drawing weight per example, normalised to sum to 1.

    An utterance of a call shorter than `short_call_s` weighs `short_call_boost`; others weigh 1.
    Within a call, weights are divided by sqrt(utterances in the call / median utterances per call)
    when the call is longer than the median, so a long call still counts more than a short one, but
    sub-linearly. Utterances without a known call length count as long calls.
    """
    if not examples:
        raise ValueError("no examples to sample from")
    sizes = Counter(example.call_id or f"#{i}" for i, example in enumerate(examples))
    median_size = float(np.median(list(sizes.values())))
    weights = np.empty(len(examples), dtype=np.float64)
    for i, example in enumerate(examples):
        duration = example.call_duration_s
        weight = short_call_boost if duration is not None and duration < short_call_s else 1.0
        size = sizes[example.call_id or f"#{i}"]
        if size > median_size:
            weight /= float(np.sqrt(size / median_size))
        weights[i] = weight
    normalised: npt.NDArray[np.float64] = weights / weights.sum()
    return normalised


def class_weights(labels: Sequence[int], n_classes: int = len(LABELS)) -> np.ndarray:
    """Inverse-frequency class weights, N / (K * n_c), so a balanced set gets all ones.

    A class absent from the training set gets weight 0 (nothing to learn it from) and a ValueError
    is raised only if no class is present at all.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    total = counts.sum()
    if total == 0:
        raise ValueError("no labels: cannot compute class weights")
    present = counts > 0
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[present] = total / (present.sum() * counts[present])
    return weights


def epoch_order(weights: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Indices for one epoch, drawn with replacement by weight."""
    return rng.choice(len(weights), size=n_draws, replace=True, p=weights)


def length_buckets(
    order: np.ndarray, lengths: Sequence[int], batch_size: int, rng: np.random.Generator, pool: int = 50
) -> list[np.ndarray]:
    """Batches of similar length: sort each pool of `pool` batches by length, cut, then shuffle.

    Padding a batch to its longest item costs compute for nothing; buckets keep that waste small
    while the pools keep the epoch's order random.
    """
    batches: list[np.ndarray] = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort([lengths[i] for i in chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
