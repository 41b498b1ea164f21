"""What is being talked about: keyword and phrase rules per topic, over one or several utterances.

The live coach (gateway/live.py) picks its cue by the topic under discussion; the post-call worker names a
spike or a turning point by it (postcall/summary.py) and supports an objection tag with its keywords
(postcall/objections.py). Plain Python, no I/O. Named competitors come from the tenant's
``BadgeSettings.competitor_names``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Literal

from callsense.tenants import DEFAULT_SETTINGS, BadgeSettings

Topic = Literal["pricing", "timeline", "competitor", "authority", "need", "general"]

# The topics the keyword rules detect, in tie-break order; "general" is the fallback when none is found.
DETECTED_TOPICS: tuple[Topic, ...] = ("pricing", "timeline", "competitor", "authority", "need")


# Keyword and phrase rules per topic (regular expressions, matched case-insensitively on whole words).
# Both channels count: "our price" from the agent puts pricing on the table as much as "too expensive".
TOPIC_RULES: Mapping[Topic, tuple[str, ...]] = {
    "pricing": (
        r"pric(?:e|es|ed|ey|ing|y)",
        r"costs?",
        r"costly",
        r"expensive",
        r"budget(?:s|ed)?",
        # A price said as an amount over time ("five thousand a month", "forty dollars per seat", "$5,000 a
        # month", "5k a year"). Not "two hundred a month": that is as often a volume (calls, tickets).
        r"(?:thousand|grand|dollars?|euros?|pounds?|bucks|(?<=[$€£])\d[\d,.]*k?|\d[\d,.]*k) (?:a|per) "
        r"(?:month|year|seat|user|licen[cs]e)",
        r"discount(?:s|ed)?",
        r"quot(?:e|es|ed)",
        r"too much",
        r"afford(?:able)?",
        r"cheaper",
        r"fees?",
    ),
    "timeline": (
        r"deadlines?",
        r"next (?:week|month|quarter|year)",
        r"timing",
        r"timelines?",
        r"not (?:right )?now",
        r"roll ?outs?",
        r"roll(?:ing)? (?:it )?out",
        r"too soon",
        r"later this year",
        r"q[1-4]",
    ),
    "competitor": (
        r"competitors?",
        r"other vendors?",
        r"another vendor",
        r"already us(?:e|ing)",
        r"alternatives?",
        r"switch(?:ing)? from",
    ),
    "authority": (
        r"my (?:boss|manager|director|cfo|ceo)",
        r"check with",
        r"run (?:it|this|that) by",
        r"approv(?:al|als|e|ed)",
        r"sign[- ]?off",
        r"procurement",
        r"decision[- ]makers?",
        r"the board",
    ),
    "need": (
        r"(?:don't|do not|dont) (?:really )?need",
        r"no need",
        r"not a priority",
        r"already have",
        r"why would we",
        r"not (?:really )?interested",
        r"works? (?:just )?fine",
    ),
}


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").replace("\u2018", "'").split())


@lru_cache(maxsize=64)
def _topic_patterns(competitor_names: tuple[str, ...]) -> tuple[tuple[Topic, re.Pattern[str]], ...]:
    patterns: list[tuple[Topic, re.Pattern[str]]] = []
    for topic in DETECTED_TOPICS:
        alternatives = list(TOPIC_RULES[topic])
        if topic == "competitor":
            alternatives += [re.escape(_normalise(name)) for name in competitor_names]
        patterns.append((topic, re.compile(r"\b(?:" + "|".join(alternatives) + r")\b")))
    return tuple(patterns)


def topic_hits(text: str, settings: BadgeSettings = DEFAULT_SETTINGS) -> dict[Topic, int]:
    """How many times each topic's rules match ``text`` (topics without a match left out)."""
    normalised = _normalise(text)
    hits: dict[Topic, int] = {}
    for topic, pattern in _topic_patterns(settings.competitor_names):
        count = len(pattern.findall(normalised))
        if count:
            hits[topic] = count
    return hits


def rank_topics(
    recent: Iterable[tuple[int, str]], now_ms: int, settings: BadgeSettings = DEFAULT_SETTINGS
) -> list[Topic]:
    """Topics mentioned in ``recent`` ((end_ms, text) pairs), most relevant first.

    Each match weighs ``0.5 ** (age / topic_half_life)``, so what was just said outweighs what was said
    a while ago; equal weights keep ``DETECTED_TOPICS`` order. Topics never mentioned are left out.
    """
    half_life_ms = round(settings.topic_half_life_s * 1000)
    weights: dict[Topic, float] = {}
    for end_ms, text in recent:
        decay = 0.5 ** (max(0, now_ms - end_ms) / half_life_ms)
        for topic, count in topic_hits(text, settings).items():
            weights[topic] = weights.get(topic, 0.0) + count * decay
    return sorted(weights, key=lambda t: (-weights[t], DETECTED_TOPICS.index(t)))


def detect_topic(
    recent: Iterable[tuple[int, str]], now_ms: int, settings: BadgeSettings = DEFAULT_SETTINGS
) -> Topic | None:
    """The topic under discussion, or None when no rule matches."""
    ranked = rank_topics(recent, now_ms, settings)
    return ranked[0] if ranked else None
