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
even for one very long rant). Leaving green needs the same count under its exit line, unless the average
has fallen under the red line: one sharp worry in a happy call ("three weeks is a bit longer than I'd
hoped" between warm lines, which a model that hears polite negativity scores near 0.1) keeps it green, one
long rant does not.

Agent utterances never move the badge and never start a cue; their text still counts for the topic.

The thresholds and windows are the tenant's ``BadgeSettings`` (callsense/tenants.py); the topic rules
(callsense/topics.py) and the rolling average (callsense/rolling.py) are shared with the post-call report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import get_args

from callsense.domain import Channel
from callsense.rolling import RollingAverage
from callsense.tenants import DEFAULT_SETTINGS, BadgeSettings
from callsense.topics import Topic, rank_topics

CHANNELS: tuple[Channel, ...] = get_args(Channel)


class BadgeState(StrEnum):
    GREEN = "green"
    AMBER = "amber"
    RED = "red"


# ------------------------------------------------------------------------------------------------ settings


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


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
        elif (
            self._below_green_exit.held_over(now_ms, _ms(s.green_exit_sustain_s))
            # one worry in a happy call is not a change of mood; an average under the red line is, even
            # from one long utterance (it cannot turn the badge red alone, but it must not stay green)
            and (
                self._rolling.count_below(s.green_exit) >= s.min_low_utterances
                or (self._rolling.value or 0.0) < s.red_enter
            )
        ):
            return BadgeState.AMBER
        return None


# ----------------------------------------------------------------------------------------------- topics

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
