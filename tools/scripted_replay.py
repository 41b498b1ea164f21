"""The scripted calls replayed offline: what a sentiment model would make the live badge do, in a second.

`callsense evaluate --scripted-calls [--model M]` plays no audio: each script's lines are laid out on the
call's clock as `callsense demo` lays them (their spoken length estimated from their text), cut into the
sentences the chopper would send, scored by the model, and fed through the live rules (gateway/live.py)
and the post-call summary; what comes back is checked against the script's expectation
(tools/scripted_calls.py ``check_events``). It answers "would this model turn the badge red on the polite
no?" before an export and an end-to-end run (tests/e2e/test_scripted_calls.py). It is an estimate: the
ASR softens the buyers' lines further and lays them out a little differently, so the two can disagree
either way (the shipped model misses the happy call here and meets it over mu-law end to end).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from callsense.domain import UtteranceScore, compute_call_stats
from gateway.live import BadgeChange, LiveCoach, ScoredUtteranceView
from postcall.summary import build_report
from tools.demo import RATE_HZ, lay_out, natural_gaps
from tools.scripted_calls import SCRIPTS, Line, ScriptedCall, Span, check_events

SECONDS_PER_CHAR, SECONDS_PER_SENTENCE, SECONDS_OFFSET = 0.060, 0.43, -0.24
"""espeak-ng at 150 words a minute, fitted over the scripts' lines (within 0.7 s of the real length)."""
SENTENCE_END = re.compile(r"(?<=[.?!])\s+")

ScoreLines = Callable[[Sequence[str], Sequence[str], str], Sequence[float]]
"""Scores (p_positive + 0.5 * p_neutral) of a batch of texts by one speaker ("agent" or "customer": the
model's role prior, as the scorer reads the channel), each with the call's utterance before it (either
speaker, as the chopper's previous_text; a model that takes no context ignores it)."""


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
    call: ScriptedCall,
    spans: list[Span],
    score_lines: Callable[[Line, Sequence[str], Sequence[str]], Sequence[float]],
    *,
    whole_lines: bool = False,
) -> list[dict[str, Any]]:
    """The events the mesh would send for the call, each utterance scored by
    ``score_lines(line, texts, previous_texts)`` (previous: the call's utterance before each, as the chopper
    sends it); with ``whole_lines`` each line is one utterance, as when the ASR hears no sentence end
    inside it."""
    coach = LiveCoach()
    utterances: list[UtteranceScore] = []
    events: list[dict[str, Any]] = []
    for line, (start, end) in zip(call.lines, spans, strict=True):
        pieces = [(line.text, start, end)] if whole_lines else sentences_of(line.text, start, end)
        texts = [text for text, _, _ in pieces]
        before = utterances[-1].text if utterances else ""
        scores = score_lines(line, texts, [before, *texts[:-1]])
        for (text, a, b), score in zip(pieces, scores, strict=True):
            utterance_id = len(utterances)
            utterances.append(
                UtteranceScore(call.name, utterance_id, line.speaker, a, b, text, line.mood, 0.0, 0.0, 0.0,
                               score, "replay")
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


@dataclass(frozen=True)
class ReplayVerdict:
    name: str
    badges: str
    """The badge's changes, e.g. "green 22.0 s -> amber 58.7 s"."""
    problems: list[str]
    customer_lines: list[str]
    """Each customer utterance with its score and the mood the script gives its line."""


def replay_with(
    score: ScoreLines, scripts: Sequence[ScriptedCall] = tuple(SCRIPTS.values())
) -> list[ReplayVerdict]:
    """Every script replayed with the model behind ``score``."""
    return [_replay_one(call, score) for call in scripts]


def _replay_one(call: ScriptedCall, score: ScoreLines) -> ReplayVerdict:
    spans = estimated_spans(call)
    lines: list[str] = []

    def score_lines(line: Line, texts: Sequence[str], previous: Sequence[str]) -> Sequence[float]:
        scores = score(texts, previous, line.speaker)
        if line.speaker == "customer":
            lines.extend(f"{s:.2f} {line.mood:<8} {t}" for t, s in zip(texts, scores, strict=True))
        return scores

    events = replay(call, spans, score_lines)
    changes = [f"{e['state']} {e['at_ms'] / 1000:.1f} s" for e in events if e["type"] == "badge"]
    return ReplayVerdict(
        call.name, " -> ".join(["amber", *changes]), check_events(call, spans, events), lines
    )
