"""The sampler that favours short calls, and class weights recomputed from each training set."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import LabelledUtterance
from training.sampler import class_weights, epoch_order, length_buckets, sampling_weights


def _call(call_id: str, n: int, duration: float | None) -> list[LabelledUtterance]:
    return [LabelledUtterance(f"u{i}", 1, "t", call_id, duration) for i in range(n)]


def test_short_call_utterances_are_drawn_more_often() -> None:
    examples = _call("short", 4, 60.0) + _call("long", 4, 1200.0)
    weights = sampling_weights(examples, short_call_boost=2.0)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[0] == pytest.approx(2 * weights[4])


def test_a_long_call_counts_sub_linearly() -> None:
    examples = _call("a", 4, 400.0) + _call("b", 4, 400.0) + _call("huge", 64, 400.0)
    weights = sampling_weights(examples)
    per_call = {cid: weights[[e.call_id == cid for e in examples]].sum() for cid in ("a", "huge")}
    # 16x the utterances earns 4x (sqrt) the share, not 16x.
    assert per_call["huge"] / per_call["a"] == pytest.approx(4.0)


def test_unknown_duration_counts_as_long() -> None:
    examples = _call("x", 2, None) + _call("y", 2, 30.0)
    weights = sampling_weights(examples, short_call_boost=3.0)
    assert weights[2] == pytest.approx(3 * weights[0])


def test_draws_follow_the_weights() -> None:
    examples = _call("short", 10, 60.0) + _call("long", 10, 900.0)
    weights = sampling_weights(examples, short_call_boost=3.0)
    order = epoch_order(weights, 20_000, np.random.default_rng(0))
    short_share = float(np.mean(order < 10))
    assert short_share == pytest.approx(0.75, abs=0.02)


def test_class_weights_are_inverse_frequency() -> None:
    weights = class_weights([0, 1, 1, 1, 2, 2])
    assert weights.tolist() == pytest.approx([2.0, 2 / 3, 1.0])
    assert class_weights([0, 1, 2]).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert class_weights([1, 1]).tolist() == pytest.approx([0.0, 1.0, 0.0])
    with pytest.raises(ValueError):
        class_weights([])


def test_length_buckets_cover_every_draw_with_similar_lengths() -> None:
    rng = np.random.default_rng(1)
    lengths = list(rng.integers(3, 120, size=500))
    order = rng.permutation(500)
    batches = length_buckets(order, lengths, batch_size=16, rng=rng, pool=50)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    random_spread = np.mean([np.ptp([lengths[i] for i in order[k : k + 16]]) for k in range(0, 500, 16)])
    assert spread < random_spread / 4
