"""The live-call rules: the customer-sentiment badge and the coaching cues. Plain Python, no I/O.

Everything here runs on *call time*, the utterances' own ``start_ms`` / ``end_ms``, never on the wall
clock: a replayed or delayed call gives the same badge changes and cues at the same ``at_ms``, and the
rules are testable with scripted score sequences.

- ``BadgeTracker`` follows the time-weighted rolling average of the customer's score (``p_positive +
  0.5 * p_neutral``) over the last ``window_s`` seconds of the customer's speech timeline. AMBER until
  there is enough evidence; RED when the average stays below ``red_enter`` for more than
  ``red_enter_sustain_s``; back to AMBER only above ``red_exit`` for ``red_exit_sustain_s``; GREEN
  above ``green_enter`` for ``green_enter_sustain_s``, back to AMBER below ``green_exit`` for
  ``green_exit_sustain_s``. Each rule is a hysteresis band plus a sustain period, so the badge does not
  flicker around a threshold.
- ``CueEngine`` fires a coaching cue on a sustained slump of the same rolling average, picks the cue
  from the topic under discussion (keyword rules over both channels' recent text) and throttles them.
- ``LiveCoach`` is the per-call facade the ``CallSession`` holds: one ``observe`` per scored utterance,
  a list of events back.

A single low sentence can neither turn the badge red nor fire a cue: the average is time-weighted over
the window (one sentence is a few seconds of thirty), the state needs ``min_evidence_s`` of customer
speech first, the condition must hold across observations for the sustain period, and a slump also needs
``min_low_utterances`` separate low customer utterances in the window (which makes the guarantee hold
even for one very long rant).

Agent utterances never move the badge and never start a cue; their text still counts for the topic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Literal, get_args

Channel = Literal["customer", "agent", "mixed"]
Topic = Literal["pricing", "timeline", "competitor", "authority", "need", "general"]

CHANNELS: tuple[Channel, ...] = get_args(Channel)
# The topics the keyword rules detect, in tie-break order; "general" is the fallback when none is found.
DETECTED_TOPICS: tuple[Topic, ...] = ("pricing", "timeline", "competitor", "authority", "need")


class BadgeState(StrEnum):
    GREEN = "green"
    AMBER = "amber"
    RED = "red"


# ------------------------------------------------------------------------------------------------ settings


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _check_finite_non_negative(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class BadgeSettings:
    """Every threshold and window of the live rules (badge and cues), one object per tenant.

    Times are in seconds of call time; scores are in [0, 1]. The defaults and why:
    """

    # Rolling average over the last 30 s of the customer's timeline: long enough that one sentence (2-5 s)
    # is a small part of it, short enough that the badge reacts within a few exchanges.
    window_s: float = 30.0
    # AMBER (neutral) until the window holds 8 s of customer speech: an opening "hi, yes, go on" says
    # nothing about the mood, and one sentence alone must not decide the colour.
    min_evidence_s: float = 8.0
    # The product rule: RED when the average stays below 0.30 for MORE than 5 s (the score of an
    # utterance that is mostly negative; 0.30 is also the "negative spike" line of the call summary).
    red_enter: float = 0.30
    red_enter_sustain_s: float = 5.0
    # Back to AMBER only above 0.40 held for 5 s: a 0.10 band so that hovering around 0.30 does not flicker.
    red_exit: float = 0.40
    red_exit_sustain_s: float = 5.0
    # GREEN when clearly positive: above 0.65 (a mostly-positive utterance scores above it) for 5 s.
    green_enter: float = 0.65
    green_enter_sustain_s: float = 5.0
    # Leave GREEN below 0.55 for 3 s: again a 0.10 band, but quicker, because a green badge tells the rep
    # that all is well and should stop saying so soon once it is no longer true.
    green_exit: float = 0.55
    green_exit_sustain_s: float = 3.0
    # A slump (RED, or a cue) also needs at least this many separate low customer utterances in the window,
    # so one sentence, however long, never decides it.
    min_low_utterances: int = 2
    # On a mono ("mixed") line the customer's voice is only there, in the mix: ignoring it would leave the
    # badge AMBER for the whole call. Tenants whose mixed lines are mostly the agent can turn this off.
    mixed_is_customer: bool = True

    # Cues: a slump is the average below 0.35 for more than 6 s. The line sits a little above the red one so
    # that advice can come while the call is still recoverable; the sustain is a little longer than the
    # badge's because a cue interrupts the rep and must be beyond doubt.
    cue_threshold: float = 0.35
    cue_sustain_s: float = 6.0
    # No cue in the first 20 s: pleasantries, and too little said to know the topic.
    cue_min_call_s: float = 20.0
    # At most one cue per 45 s (a rep needs time to act on one), and one topic at most once per 3 minutes
    # (the same advice again reads as nagging).
    cue_cooldown_s: float = 45.0
    cue_topic_repeat_s: float = 180.0
    # The topic comes from the last 45 s of both channels; a mention counts half as much every 15 s, so the
    # subject just raised outweighs the one discussed a minute ago.
    topic_window_s: float = 45.0
    topic_half_life_s: float = 15.0
    # Named competitors count as the competitor topic (per tenant: everyone has other rivals).
    competitor_names: tuple[str, ...] = ("Salesforce", "HubSpot", "Pipedrive", "Zoho", "Gong")

    def __post_init__(self) -> None:
        for name in (
            "window_s",
            "min_evidence_s",
            "red_enter_sustain_s",
            "red_exit_sustain_s",
            "green_enter_sustain_s",
            "green_exit_sustain_s",
            "cue_sustain_s",
            "cue_min_call_s",
            "cue_cooldown_s",
            "cue_topic_repeat_s",
            "topic_window_s",
            "topic_half_life_s",
        ):
            _check_finite_non_negative(name, getattr(self, name))
        for name in ("window_s", "topic_window_s", "topic_half_life_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.min_evidence_s > self.window_s:
            raise ValueError(
                f"min_evidence_s ({self.min_evidence_s}) cannot exceed window_s ({self.window_s}): "
                "the window could never hold that much speech"
            )
        for name in ("red_enter", "red_exit", "green_enter", "green_exit", "cue_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not self.red_enter < self.red_exit <= self.green_exit < self.green_enter:
            raise ValueError(
                "thresholds must satisfy red_enter < red_exit <= green_exit < green_enter "
                f"(got {self.red_enter}, {self.red_exit}, {self.green_exit}, {self.green_enter})"
            )
        if self.min_low_utterances < 1:
            raise ValueError(f"min_low_utterances must be >= 1, got {self.min_low_utterances}")
        if any(not name.strip() for name in self.competitor_names):
            raise ValueError("competitor_names must not contain empty names")

    # Call time is in milliseconds; these convert the settings once, rounding to whole milliseconds.
    @property
    def window_ms(self) -> int:
        return _ms(self.window_s)

    @property
    def min_evidence_ms(self) -> int:
        return _ms(self.min_evidence_s)

    def counts_as_customer(self, channel: Channel) -> bool:
        return channel == "customer" or (channel == "mixed" and self.mixed_is_customer)


DEFAULT_SETTINGS = BadgeSettings()


def settings_for(
    tenant: str, overrides: Mapping[str, BadgeSettings], default: BadgeSettings = DEFAULT_SETTINGS
) -> BadgeSettings:
    """The tenant's settings: its entry in ``overrides`` (exact tenant id), else ``default``."""
    return overrides.get(tenant, default)


# ------------------------------------------------------------------------------------------- input, events


@dataclass(frozen=True)
class ScoredUtteranceView:
    """What the live rules need of one scored utterance (times in ms from the start of the call)."""

    utterance_id: int
    channel: Channel
    start_ms: int
    end_ms: int
    text: str
    score: float

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}, got {self.channel!r}")
        if self.start_ms < 0 or self.end_ms < self.start_ms:
            raise ValueError(f"bad span [{self.start_ms}, {self.end_ms}] ms: need 0 <= start_ms <= end_ms")
        if not (math.isfinite(self.score) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"score must be in [0, 1], got {self.score}")


@dataclass(frozen=True)
class BadgeChange:
    """The badge changed colour at ``at_ms`` (call time); ``rolling_score`` is the average then."""

    state: BadgeState
    rolling_score: float
    at_ms: int


@dataclass(frozen=True)
class CoachingCue:
    """A hint for the rep, fired at ``at_ms`` (call time)."""

    topic: Topic
    text: str
    at_ms: int


LiveEvent = BadgeChange | CoachingCue


# ------------------------------------------------------------------------------------------ rolling average


@dataclass(frozen=True)
class _Span:
    start_ms: int
    end_ms: int
    score: float

    def weight_in(self, window_start_ms: int, now_ms: int) -> int:
        """Milliseconds of this utterance inside the window; a zero-length utterance inside weighs 1 ms."""
        if self.start_ms == self.end_ms:
            return 1 if window_start_ms <= self.start_ms <= now_ms else 0
        return max(0, min(self.end_ms, now_ms) - max(self.start_ms, window_start_ms))


class RollingAverage:
    """Time-weighted average of scores over the last ``window_ms`` of call time.

    "Now" is the latest ``end_ms`` added (it never goes back, so a late utterance cannot rewind the clock);
    each utterance weighs by how many of its milliseconds fall inside ``[now - window_ms, now]``.
    """

    def __init__(self, window_ms: int) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms must be > 0, got {window_ms}")
        self._window_ms = window_ms
        self._spans: list[_Span] = []
        self._now_ms: int | None = None

    def add(self, start_ms: int, end_ms: int, score: float) -> None:
        self._now_ms = end_ms if self._now_ms is None else max(self._now_ms, end_ms)
        self._spans.append(_Span(start_ms, end_ms, score))
        start = self._window_start()
        self._spans = [s for s in self._spans if s.weight_in(start, self._now_ms) > 0]

    @property
    def now_ms(self) -> int | None:
        return self._now_ms

    @property
    def weight_ms(self) -> int:
        """Milliseconds of speech inside the window (overlaps count twice)."""
        return sum(w for w, _ in self._weighted())

    @property
    def value(self) -> float | None:
        """The average, or None before any utterance."""
        weighted = self._weighted()
        total = sum(w for w, _ in weighted)
        return sum(w * s for w, s in weighted) / total if total else None

    def count_below(self, threshold: float) -> int:
        """How many utterances in the window scored below ``threshold``."""
        return sum(1 for _, score in self._weighted() if score < threshold)

    def _window_start(self) -> int:
        return (self._now_ms or 0) - self._window_ms

    def _weighted(self) -> list[tuple[int, float]]:
        if self._now_ms is None:
            return []
        start = self._window_start()
        return [(s.weight_in(start, self._now_ms), s.score) for s in self._spans]


@dataclass
class _Hold:
    """Since when (call time) a condition has held at every observation; None while it does not."""

    since_ms: int | None = None

    def update(self, holds: bool, now_ms: int) -> None:
        if not holds:
            self.since_ms = None
        elif self.since_ms is None:
            self.since_ms = now_ms

    def held_over(self, now_ms: int, sustain_ms: int) -> bool:
        """Held for MORE than ``sustain_ms`` (a sustain of 0 means: holds now)."""
        if self.since_ms is None:
            return False
        return sustain_ms == 0 or now_ms - self.since_ms > sustain_ms


# ---------------------------------------------------------------------------------------------------- badge


class BadgeTracker:
    """The badge of one call. ``observe`` every scored utterance; it returns a change, or None."""

    def __init__(self, settings: BadgeSettings = DEFAULT_SETTINGS) -> None:
        self._settings = settings
        self._rolling = RollingAverage(settings.window_ms)
        self._state = BadgeState.AMBER
        self._below_red = _Hold()
        self._above_red_exit = _Hold()
        self._above_green = _Hold()
        self._below_green_exit = _Hold()

    @property
    def state(self) -> BadgeState:
        return self._state

    @property
    def rolling_score(self) -> float | None:
        return self._rolling.value

    def observe(self, utterance: ScoredUtteranceView) -> BadgeChange | None:
        if not self._settings.counts_as_customer(utterance.channel):
            return None
        self._rolling.add(utterance.start_ms, utterance.end_ms, utterance.score)
        now, average = self._rolling.now_ms, self._rolling.value
        assert now is not None and average is not None  # one utterance was just added
        if self._rolling.weight_ms < self._settings.min_evidence_ms:
            # Not enough speech in the window to judge: keep the colour, and let no condition start its
            # sustain clock on such thin evidence.
            self._reset_holds()
            return None
        self._update_holds(average, now)
        new_state = self._settle(now)
        if new_state is self._state:
            return None
        self._state = new_state
        return BadgeChange(state=new_state, rolling_score=average, at_ms=now)

    def _holds(self) -> tuple[_Hold, ...]:
        return (self._below_red, self._above_red_exit, self._above_green, self._below_green_exit)

    def _reset_holds(self) -> None:
        for hold in self._holds():
            hold.since_ms = None

    def _update_holds(self, average: float, now_ms: int) -> None:
        s = self._settings
        self._below_red.update(average < s.red_enter, now_ms)
        self._above_red_exit.update(average > s.red_exit, now_ms)
        self._above_green.update(average > s.green_enter, now_ms)
        self._below_green_exit.update(average < s.green_exit, now_ms)

    def _settle(self, now_ms: int) -> BadgeState:
        """Apply the transitions until none applies: GREEN can fall through AMBER to RED in one
        observation when both conditions have long held, and only the final colour is reported."""
        state = self._state
        for _ in range(len(BadgeState)):
            following = self._step(state, now_ms)
            if following is None:
                break
            state = following
        return state

    def _step(self, state: BadgeState, now_ms: int) -> BadgeState | None:
        s = self._settings
        if state is BadgeState.AMBER:
            if (
                self._below_red.held_over(now_ms, _ms(s.red_enter_sustain_s))
                and self._rolling.count_below(s.red_enter) >= s.min_low_utterances
            ):
                return BadgeState.RED
            if self._above_green.held_over(now_ms, _ms(s.green_enter_sustain_s)):
                return BadgeState.GREEN
        elif state is BadgeState.RED:
            if self._above_red_exit.held_over(now_ms, _ms(s.red_exit_sustain_s)):
                return BadgeState.AMBER
        elif self._below_green_exit.held_over(now_ms, _ms(s.green_exit_sustain_s)):
            return BadgeState.AMBER
        return None


# ----------------------------------------------------------------------------------------------- topics

# Keyword and phrase rules per topic (regular expressions, matched case-insensitively on whole words).
# Both channels count: "our price" from the agent puts pricing on the table as much as "too expensive".
TOPIC_RULES: Mapping[Topic, tuple[str, ...]] = {
    "pricing": (
        r"pric(?:e|es|ed|ey|ing|y)",
        r"costs?",
        r"costly",
        r"expensive",
        r"budgets?",
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

# Cue texts per topic; a call rotates through them so a topic that comes back gets a fresh angle.
CUE_TEXTS: Mapping[Topic, tuple[str, ...]] = {
    "pricing": (
        "Try the value-based angle: tie the price to the outcome they care about.",
        "Park pricing until rapport is rebuilt: ask what success looks like for them.",
        "Put the cost next to what the problem costs them today.",
    ),
    "timeline": (
        "Ask what is driving their timing before proposing a date.",
        "Offer a phased rollout so a first step fits their schedule.",
        "Ask what would have to be true to start sooner.",
    ),
    "competitor": (
        "Don't knock the competitor: ask what they like about their current tool.",
        "Differentiate on the one thing they said matters most.",
        "Ask what made them look at alternatives in the first place.",
    ),
    "authority": (
        "Ask who else is involved and offer to help build the internal case.",
        "Offer a short summary they can forward for sign-off.",
        "Propose a joint call with the decision maker.",
    ),
    "need": (
        "Go back to discovery: ask about the problem before the product.",
        "Ask what happens if nothing changes this year.",
        "Share how a similar customer found the gap they did not see at first.",
    ),
    "general": (
        "Slow down and acknowledge their concern before moving on.",
        "Ask an open question: what is behind the hesitation?",
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
    half_life_ms = _ms(settings.topic_half_life_s)
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


# ------------------------------------------------------------------------------------------------- cues


@dataclass
class _Throttle:
    """The cue budget of one call: a global cooldown and a longer per-topic repeat period."""

    cooldown_ms: int
    topic_repeat_ms: int
    last_cue_ms: int | None = None
    last_by_topic: dict[Topic, int] = field(default_factory=dict)

    def cooling_down(self, now_ms: int) -> bool:
        return self.last_cue_ms is not None and now_ms - self.last_cue_ms < self.cooldown_ms

    def topic_allowed(self, topic: Topic, now_ms: int) -> bool:
        last = self.last_by_topic.get(topic)
        return last is None or now_ms - last >= self.topic_repeat_ms

    def record(self, topic: Topic, now_ms: int) -> None:
        self.last_cue_ms = now_ms
        self.last_by_topic[topic] = now_ms


class CueEngine:
    """Coaching cues of one call. ``observe`` every scored utterance (both channels); a cue, or None."""

    def __init__(self, settings: BadgeSettings = DEFAULT_SETTINGS) -> None:
        self._settings = settings
        self._rolling = RollingAverage(settings.window_ms)
        self._slump = _Hold()
        self._recent_text: list[tuple[int, str]] = []
        self._text_now_ms = 0
        self._throttle = _Throttle(_ms(settings.cue_cooldown_s), _ms(settings.cue_topic_repeat_s))
        self._rotation: dict[Topic, int] = {}

    def observe(self, utterance: ScoredUtteranceView) -> CoachingCue | None:
        self._remember_text(utterance)
        if not self._settings.counts_as_customer(utterance.channel):
            return None  # the agent's mood never triggers a cue; the text above still sets the topic
        self._rolling.add(utterance.start_ms, utterance.end_ms, utterance.score)
        now = self._rolling.now_ms
        assert now is not None
        if not self._in_slump(now):
            return None
        if now < _ms(self._settings.cue_min_call_s) or self._throttle.cooling_down(now):
            return None
        topic = self._choose_topic(now)
        if topic is None:
            return None
        self._throttle.record(topic, now)
        return CoachingCue(topic=topic, text=self._next_text(topic), at_ms=now)

    def _remember_text(self, utterance: ScoredUtteranceView) -> None:
        self._text_now_ms = max(self._text_now_ms, utterance.end_ms)
        self._recent_text.append((utterance.end_ms, utterance.text))
        oldest = self._text_now_ms - _ms(self._settings.topic_window_s)
        self._recent_text = [(end, text) for end, text in self._recent_text if end >= oldest]

    def _in_slump(self, now_ms: int) -> bool:
        """The average has stayed below the cue line for the sustain period, on enough evidence and on
        more than one low utterance."""
        s = self._settings
        average = self._rolling.value
        enough = self._rolling.weight_ms >= s.min_evidence_ms
        self._slump.update(enough and average is not None and average < s.cue_threshold, now_ms)
        return (
            self._slump.held_over(now_ms, _ms(s.cue_sustain_s))
            and self._rolling.count_below(s.cue_threshold) >= s.min_low_utterances
        )

    def _choose_topic(self, now_ms: int) -> Topic | None:
        """The most relevant detected topic not used recently; "general" when none is left."""
        for topic in rank_topics(self._recent_text, self._text_now_ms, self._settings):
            if self._throttle.topic_allowed(topic, now_ms):
                return topic
        return "general" if self._throttle.topic_allowed("general", now_ms) else None

    def _next_text(self, topic: Topic) -> str:
        texts = CUE_TEXTS[topic]
        turn = self._rotation.get(topic, 0)
        self._rotation[topic] = turn + 1
        return texts[turn % len(texts)]


# ------------------------------------------------------------------------------------------------- facade


class LiveCoach:
    """The live rules of one call: badge and cues behind one ``observe``.

    An utterance id seen before is ignored (a client re-sending after a reconnect must not count twice).
    """

    def __init__(self, settings: BadgeSettings = DEFAULT_SETTINGS) -> None:
        self.settings = settings
        self._badge = BadgeTracker(settings)
        self._cues = CueEngine(settings)
        self._seen: set[int] = set()

    @property
    def badge_state(self) -> BadgeState:
        return self._badge.state

    @property
    def rolling_score(self) -> float | None:
        return self._badge.rolling_score

    def observe(self, utterance: ScoredUtteranceView) -> list[LiveEvent]:
        """The events this utterance causes: a badge change first, then a cue; usually none."""
        if utterance.utterance_id in self._seen:
            return []
        self._seen.add(utterance.utterance_id)
        events: list[LiveEvent] = []
        change = self._badge.observe(utterance)
        if change is not None:
            events.append(change)
        cue = self._cues.observe(utterance)
        if cue is not None:
            events.append(cue)
        return events

    def observe_all(self, utterances: Iterable[ScoredUtteranceView]) -> list[LiveEvent]:
        """``observe`` each in turn (a convenience for replays and tests)."""
        return [event for utterance in utterances for event in self.observe(utterance)]
