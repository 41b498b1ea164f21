"""Mismatched context: long lines get an opposite-mood previous line from their own source; short
reactions, whose mood may come from the line before, keep theirs."""

from __future__ import annotations

import numpy as np

from training.context_swap import MIN_WORDS, previous_pools, swap_contexts
from training.data import LABELS, LabelledUtterance

NEG, NEU, POS = (LABELS.index(name) for name in ("negative", "neutral", "positive"))


def _line(
    text: str, label: int, previous: str = "Thanks for making the time today.", source: str = "sales:train"
):
    return LabelledUtterance(text=text, label=label, source=source, previous_text=previous)


CALL = [
    _line("Honestly the demo was lovely, the team would enjoy it.", POS),
    _line("That is quite a bit more than we had set aside this year.", NEG),
    _line("We run about forty trucks out of two depots right now.", NEU),
    _line("Oof. Okay.", NEG),  # short: its mood comes from the price before it
    _line("Where it falls down for us is the cost, I'm afraid.", NEG, previous=""),  # first line: no context
    _line("Yeah, that would save my team a ton of time honestly.", POS),
]
TV = [
    _line("I am so happy for you, this is wonderful news!", POS, source="meld:train"),
    _line("You never listen to me, not even once, do you?", NEG, source="meld:train"),
]


def test_every_long_line_with_context_gets_one_of_the_opposite_mood_from_its_own_source() -> None:
    pools = previous_pools(CALL + TV)
    examples, swapped = swap_contexts(CALL + TV, pools, rate=1.0, rng=np.random.default_rng(0))
    by_text = {e.text: e for e in CALL + TV}
    mood = {e.text: e.label for e in CALL + TV}
    source = {e.text: e.source for e in CALL + TV}
    assert swapped.tolist() == [True, True, True, False, False, True, True, True]
    for example, was_swapped in zip(examples, swapped, strict=True):
        if not was_swapped:
            assert example is by_text[example.text]  # untouched: the same object, its own context
            continue
        before = example.previous_text
        assert source[before] == example.source
        assert len(before.split()) >= MIN_WORDS
        if example.label == NEU:
            assert mood[before] in (NEG, POS)
        else:
            assert mood[before] == {NEG: POS, POS: NEG}[example.label]
        assert example.label == by_text[example.text].label  # the label stays the line's own


def test_the_rate_is_the_share_swapped_and_zero_swaps_nothing() -> None:
    pools = previous_pools(CALL)
    many = CALL * 200
    _, swapped = swap_contexts(many, pools, rate=0.3, rng=np.random.default_rng(1))
    eligible = 4 * 200
    assert 0.25 * eligible < swapped.sum() < 0.35 * eligible
    examples, none = swap_contexts(many, pools, rate=0.0, rng=np.random.default_rng(1))
    assert not none.any() and all(a is b for a, b in zip(examples, many, strict=True))


def test_a_neutral_line_draws_from_both_sides_and_the_seed_fixes_the_draw() -> None:
    pools = previous_pools(CALL)
    neutral = [CALL[2]] * 100
    examples, _ = swap_contexts(neutral, pools, rate=1.0, rng=np.random.default_rng(2))
    mood = {e.text: e.label for e in CALL}
    assert {mood[e.previous_text] for e in examples} == {NEG, POS}
    again, _ = swap_contexts(neutral, pools, rate=1.0, rng=np.random.default_rng(2))
    assert [e.previous_text for e in again] == [e.previous_text for e in examples]


def test_a_source_without_lines_of_the_other_mood_keeps_its_context() -> None:
    only_positive = [_line("This is exactly the kind of thing we were hoping for.", POS, source="s")] * 3
    examples, swapped = swap_contexts(
        only_positive, previous_pools(only_positive), rate=1.0, rng=np.random.default_rng(3)
    )
    assert not swapped.any() and examples[0].previous_text == only_positive[0].previous_text
