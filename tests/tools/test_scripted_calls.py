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
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from callsense.domain import UtteranceScore, compute_call_stats
from gateway.live import BadgeChange, LiveCoach, ScoredUtteranceView
from postcall.summary import build_report
from tests.support.audio import normalise_words
from tools.cli import main as cli_main
from tools.demo import DEMO_SCRIPT, RATE_HZ, lay_out, natural_gaps
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
SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


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

SECONDS_PER_CHAR, SECONDS_PER_SENTENCE, SECONDS_OFFSET = 0.060, 0.43, -0.24
"""espeak-ng at 150 words a minute, fitted over the scripts' lines (within 0.7 s of the real length)."""


def estimated_spans(call: ScriptedCall) -> list[Span]:
    """Where the demo would lay each line (tools/demo.py's gaps and lead-in), from estimated lengths."""
    spoken = []
    for line in call.lines:
        sentences = len(SENTENCE_END.split(line.text.strip()))
        seconds = SECONDS_PER_CHAR * len(line.text) + SECONDS_PER_SENTENCE * sentences + SECONDS_OFFSET
        spoken.append((line.turn, np.zeros(round(seconds * 1000) * RATE_HZ // 1000, dtype=np.int16)))
    audio = lay_out(spoken, natural_gaps(len(spoken) - 1), rate_hz=RATE_HZ)
    return [(p.start_ms, p.end_ms) for p in audio.turns]


def sentences_of(text: str, start_ms: int, end_ms: int) -> list[tuple[str, int, int]]:
    """The chopper's utterances of one line: its sentences, a fragment under three words joined to the
    next, each timed by its share of the characters."""
    pieces: list[str] = []
    for sentence in SENTENCE_END.split(text.strip()):
        if pieces and len(pieces[-1].split()) < 3:
            pieces[-1] += " " + sentence
        else:
            pieces.append(sentence)
    total, cursor, out = sum(len(p) for p in pieces), start_ms, []
    for piece in pieces:
        end = cursor + (end_ms - start_ms) * len(piece) // total
        out.append((piece, cursor, end))
        cursor = end
    return out


def replay(
    call: ScriptedCall, spans: list[Span], scores: Mapping[Mood, float], *, whole_lines: bool = False
) -> list[dict[str, Any]]:
    """The events the mesh would send for the call if every sentence scored its line's mood; with
    ``whole_lines`` each line is one utterance, as when the ASR hears no sentence end inside it."""
    coach = LiveCoach()
    utterances: list[UtteranceScore] = []
    events: list[dict[str, Any]] = []
    for line, (start, end) in zip(call.lines, spans, strict=True):
        pieces = [(line.text, start, end)] if whole_lines else sentences_of(line.text, start, end)
        for text, a, b in pieces:
            utterance_id = len(utterances)
            score = scores[line.mood]
            utterances.append(
                UtteranceScore(call.name, utterance_id, line.speaker, a, b, text, line.mood, 0.0, 0.0, 0.0,
                               score, "ideal")
            )  # fmt: skip
            view = ScoredUtteranceView(utterance_id, line.speaker, a, b, text, score)
            for live in coach.observe(view):
                if isinstance(live, BadgeChange):
                    events.append({"type": "badge", "state": live.state.value, "at_ms": live.at_ms})
                else:
                    events.append({"type": "cue", "topic": live.topic, "at_ms": live.at_ms})
    report = build_report(utterances, compute_call_stats(utterances))
    events.append({"type": "summary", "badge": coach.badge_state.value, "lines": list(report.lines)})
    return events


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
