"""The scripted calls (tools/scripted_calls.py): their shape, their language, and expectations that hold.

Fast: no espeak-ng, no mesh. Each script's expectation is checked for consistency (its marks exist and sit
on customer lines, its windows run forwards), and then replayed: the lines laid out as the demo lays them
(speech lengths estimated from the text, the demo's gaps), cut into sentences as the chopper cuts them,
each sentence scored with its line's mood as a right model would score it, through the real live rules
(gateway/live.py) and the real post-call summary (postcall/summary.py). The badge changes, cues and
summary lines that come out must meet the script's expectation, for a range of plausible "right" scores:
an expectation no right model could meet is a bug in the script, not in the model.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from tests.support.audio import normalise_words
from tools import scripted_replay
from tools.cli import main as cli_main
from tools.demo import DEMO_SCRIPT
from tools.scripted_calls import (
    DEFAULT_SCRIPT,
    SCRIPTS,
    At,
    Mood,
    ScriptedCall,
    Span,
    UnknownScript,
    check_events,
    script_named,
    verdict,
)
from tools.scripted_replay import SENTENCE_END, estimated_spans

NAMES = (
    "happy-close",
    "sours-at-price",
    "sours-at-timeline",
    "recovers-after-concession",
    "polite-but-lost",
    "neutral-discovery",
)
# Words a B2B buyer does not say on a call; the scripts are about polite, plain language.
BLATANT = frozenset(
    {
        "hate", "ridiculous", "insult", "insulting", "waste", "terrible", "awful", "furious", "frustrated",
        "frustrating", "disappointed", "disappointing", "angry", "annoyed", "scam", "rip", "stupid", "worst",
        "useless", "horrible", "garbage", "joke", "outrageous", "crazy", "nonsense", "pathetic",
    }
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ structure


def test_the_six_scripts_are_there_and_the_demo_plays_the_price_one() -> None:
    assert tuple(SCRIPTS) == NAMES
    assert DEFAULT_SCRIPT == "sours-at-price"
    assert SCRIPTS["sours-at-price"].turns == DEMO_SCRIPT
    assert all(name == call.name for name, call in SCRIPTS.items())


@pytest.mark.parametrize("name", NAMES)
def test_a_script_is_a_plain_two_party_call(name: str) -> None:
    call = SCRIPTS[name]
    assert 10 <= len(call.lines) <= 16, len(call.lines)
    speakers = [line.speaker for line in call.lines]
    assert speakers[0] == "agent" and set(speakers) == {"agent", "customer"}
    assert all(a != b for a, b in itertools.pairwise(speakers)), "turns alternate"
    for line in call.lines:
        sentences = [s for s in SENTENCE_END.split(line.text.strip()) if s]
        assert line.text == line.text.strip() and line.text[-1] in ".?!", line.text
        if line.speaker == "customer":
            assert 1 <= len(sentences) <= 2, line.text
        assert not set(normalise_words(line.text)) & BLATANT, line.text
    assert call.about and call.name == call.name.lower() and " " not in call.name


@pytest.mark.parametrize("name", NAMES)
def test_an_expectation_points_at_lines_of_its_own_script(name: str) -> None:
    call = SCRIPTS[name]
    marks = call.marks()
    assert len(marks) == len(set(marks)), f"a mark is used twice: {marks}"
    windows = [(s.not_before, s.by) for s in call.expect.badges] + [
        (s.not_before, s.by) for s in call.expect.cues
    ]
    anchors: list[At] = [a for window in windows for a in window if a is not None]
    for anchor in anchors:
        assert call.lines[call.index(anchor.mark)].speaker == "customer", anchor
        assert anchor.plus_s >= 0, anchor
    steps = call.expect.badges
    colours = [s.colour for s in steps]
    for before, after in itertools.pairwise(steps):  # a change goes to another colour
        assert before.alternatives or after.alternatives or before.colour != after.colour, colours
    assert not steps or "amber" not in steps[0].colours or steps[0].optional, "every call starts amber"
    negative = [line for line in call.lines if line.speaker == "customer" and line.mood == "negative"]
    if "red" in colours:  # red needs two low customer utterances, so at least two negative lines
        assert len(negative) >= 2 and call.lines.index(negative[1]) == call.index("second-no")
    assert call.expect.summary_has or call.expect.summary_lacks


def test_unknown_script_names_the_choices() -> None:
    assert script_named("happy-close") is SCRIPTS["happy-close"]
    with pytest.raises(UnknownScript) as caught:
        script_named("angry-customer")
    assert "angry-customer" in str(caught.value) and all(name in str(caught.value) for name in NAMES)


def test_the_demo_command_lists_the_scripts_and_rejects_an_unknown_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_main(["demo", "--list"]) == 0
    out = capsys.readouterr().out
    for call in SCRIPTS.values():
        assert call.name in out and call.badge_timeline() in out
    assert next(line for line in out.splitlines() if line.startswith(DEFAULT_SCRIPT)).endswith("(default)")

    assert cli_main(["demo", "--script", "angry-customer", "--url", "ws://127.0.0.1:9/x"]) == 2
    err = capsys.readouterr().err
    assert "angry-customer" in err and all(name in err for name in NAMES), err


# ------------------------------------------------------------------------------------------------ replay


def replay(
    call: ScriptedCall, spans: list[Span], scores: Mapping[Mood, float], *, whole_lines: bool = False
) -> list[dict[str, Any]]:
    """The events the mesh would send for the call if every sentence scored its line's mood."""
    return scripted_replay.replay(
        call, spans, lambda line, texts, _previous: [scores[line.mood]] * len(texts), whole_lines=whole_lines
    )


# A right model's scores (p_positive + 0.5 * p_neutral): a clearly positive line 0.8-0.9, a polite but
# clear no 0.1-0.2 (not 0.2 together with 0.9: a model that sure of the yeses is as sure of the noes), a
# calm statement around 0.5.
RIGHT_SCORES: list[dict[Mood, float]] = [
    {"positive": positive, "neutral": neutral, "negative": negative}
    for (positive, negative), neutral in itertools.product(
        ((0.8, 0.1), (0.8, 0.2), (0.9, 0.1), (0.9, 0.15)), (0.45, 0.5, 0.55)
    )
]


@pytest.mark.parametrize("whole_lines", [False, True], ids=["sentences", "whole-lines"])
@pytest.mark.parametrize("name", NAMES)
def test_a_right_model_meets_the_expectation_under_the_live_rules(name: str, whole_lines: bool) -> None:
    call = SCRIPTS[name]
    spans = estimated_spans(call)
    for scores in RIGHT_SCORES:
        problems = check_events(call, spans, replay(call, spans, scores, whole_lines=whole_lines))
        assert not problems, f"{name} with {scores}: {problems}"


def test_the_expectations_are_no_rubber_stamp() -> None:
    """A model that hears polite negatives as neutral (today's failure) does not pass the negative calls,
    and one that hears everything as neutral passes only the neutral call."""
    flat: dict[Mood, float] = {"positive": 0.8, "neutral": 0.5, "negative": 0.4}
    grey: dict[Mood, float] = {"positive": 0.5, "neutral": 0.5, "negative": 0.5}
    for name in ("sours-at-price", "sours-at-timeline", "recovers-after-concession", "polite-but-lost"):
        call = SCRIPTS[name]
        spans = estimated_spans(call)
        assert check_events(call, spans, replay(call, spans, flat)), name
    passing = [
        name
        for name, call in SCRIPTS.items()
        if not check_events(call, estimated_spans(call), replay(call, estimated_spans(call), grey))
    ]
    assert passing == ["neutral-discovery"], passing


def test_the_verdict_says_what_came_back_differently() -> None:
    call = SCRIPTS["sours-at-price"]
    spans = estimated_spans(call)
    right = replay(call, spans, RIGHT_SCORES[0])
    assert verdict(call, spans, right).endswith(": as scripted")
    late = [{**e, "at_ms": e["at_ms"] + 20_000} if e["type"] == "badge" else e for e in right]
    text = verdict(call, spans, late)
    assert (
        "NOT as scripted" in text and "badge red at" in text and "after the end of 'second-no' + 10 s" in text
    )
    flat = replay(call, spans, {"positive": 0.5, "neutral": 0.5, "negative": 0.5})
    text = verdict(call, spans, flat)
    assert "badge: expected amber -> (green) -> (amber) -> red, got amber" in text, text
    assert "cues: expected pricing, got none" in text, text


def test_evaluate_replays_the_scripted_calls_with_a_real_model(capsys: pytest.CaptureFixture[str]) -> None:
    """`callsense evaluate --scripted-calls`: the served model's real scores through the live rules, one
    verdict per script with its customer lines scored, and an exit code that says whether all were met."""
    code = cli_main(["evaluate", "--scripted-calls"])
    out = capsys.readouterr().out.splitlines()
    verdicts = {line.split(":")[0]: line for line in out if line.split(":")[0] in SCRIPTS}
    assert list(verdicts) == list(SCRIPTS)
    met = [name for name, line in verdicts.items() if "meets its expectation" in line]
    assert out[-1].startswith(f"{len(met)} of {len(SCRIPTS)} scripted calls meet their expectation")
    assert code == (0 if len(met) == len(SCRIPTS) else 1)
    scored = [line for line in out if line.startswith("    ")]
    assert len(scored) >= sum(
        1 for call in SCRIPTS.values() for line in call.lines if line.speaker == "customer"
    )
    assert all(0.0 <= float(line.split()[0]) <= 1.0 for line in scored)


def test_the_replay_gives_each_utterance_the_one_before_as_the_chopper_does() -> None:
    """A model that reads context must be replayed with it: each utterance after the call's previous one
    (either speaker), the first after nothing."""
    call = SCRIPTS["sours-at-price"]
    seen: list[tuple[str, str]] = []

    def score_lines(line: Any, texts: Any, previous: Any) -> list[float]:
        seen.extend(zip(texts, previous, strict=True))
        return [0.5] * len(texts)

    scripted_replay.replay(call, estimated_spans(call), score_lines)
    utterances = [text for text, _ in seen]
    assert [before for _, before in seen] == ["", *utterances[:-1]]
    assert len(utterances) > len(call.lines)  # lines of two sentences are two utterances
