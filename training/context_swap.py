"""Mismatched context: teach a context model that a line's own words outweigh the line before it.

A model that reads the previous utterance learns a shortcut from sales calls, where moods run in
streaks: "the line before was warm, so this one is too". Then a buyer's objection right after their own
praise ("The demo was lovely." / "Where it falls down for us is the cost.") reads as praise, the weak spot
the scorer's known-gap test holds. Swapping, now and then, a line's previous utterance for one of the
opposite mood breaks the streak, so the model has to read the line itself.

Only lines long enough to carry their own mood are swapped: a short reaction ("Oof. Okay.") takes its
mood from the line before, and with another line before it its label would be wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from training.data import LABELS, LabelledUtterance

MIN_WORDS = 5  # shorter lines keep their own context (their mood may come from it)

_NEGATIVE, _POSITIVE = LABELS.index("negative"), LABELS.index("positive")


Pools = dict[str, dict[int, list[str]]]  # source -> label -> texts


def _carries_its_own_mood(example: LabelledUtterance) -> bool:
    """A line spoken after another, long enough that its words, not the line before, set its mood."""
    return bool(example.previous_text.strip()) and len(example.text.split()) >= MIN_WORDS


def previous_pools(examples: Sequence[LabelledUtterance]) -> Pools:
    """The texts a swapped-in previous line is drawn from, by source and label, each distinct text once:
    a sales line gets a sales line before it, a TV line a TV line; only lines that were spoken after
    another (a tweet was not)."""
    pools: dict[str, dict[int, dict[str, None]]] = {}
    for example in examples:
        # Only lines of a conversation (they have a line before them): a file that mixes corpora, like
        # replayed lines, must not give a TV line a tweet before it.
        if _carries_its_own_mood(example):
            by_label = pools.setdefault(example.source, {label: {} for label in range(len(LABELS))})
            by_label[example.label][example.text] = None
    return {
        source: {label: list(texts) for label, texts in by_label.items()}
        for source, by_label in pools.items()
    }


def _opposite(label: int) -> tuple[int, ...]:
    """The moods a previous line is drawn from: the other side for a side, either side for neutral."""
    if label == _NEGATIVE:
        return (_POSITIVE,)
    if label == _POSITIVE:
        return (_NEGATIVE,)
    return (_NEGATIVE, _POSITIVE)


def _draw(pools: dict[int, list[str]], labels: tuple[int, ...], rng: np.random.Generator) -> str | None:
    """One text, uniformly from the pools of `labels` together; None when they are all empty."""
    pick = int(rng.integers(max(sum(len(pools.get(label, ())) for label in labels), 1)))
    for label in labels:
        pool = pools.get(label, [])
        if pick < len(pool):
            return pool[pick]
        pick -= len(pool)
    return None


def swap_contexts(
    examples: Sequence[LabelledUtterance],
    pools: Pools,
    rate: float,
    rng: np.random.Generator,
) -> tuple[list[LabelledUtterance], np.ndarray]:
    """Each eligible example (it has a previous line and at least MIN_WORDS words of its own) gets, with
    probability `rate`, a previous line of the opposite mood from its own source instead of its own.

    Returns the examples (swapped ones are copies; the rest are the same objects) and which were swapped.
    """
    out: list[LabelledUtterance] = []
    swapped = np.zeros(len(examples), dtype=bool)
    draws = rng.random(len(examples))
    for row, example in enumerate(examples):
        if not _carries_its_own_mood(example) or draws[row] >= rate:
            out.append(example)
            continue
        drawn = _draw(pools.get(example.source, {}), _opposite(example.label), rng)
        if drawn is None:
            out.append(example)
            continue
        out.append(replace(example, previous_text=drawn))
        swapped[row] = True
    return out, swapped
