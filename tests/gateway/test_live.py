"""The live-call rules (gateway/live.py) on scripted score sequences: badge colours, coaching cues, topics.

Times in the comments are seconds of call time; the rolling average uses the default 30 s window.
"""

from __future__ import annotations

import dataclasses

import pytest

from callsense.domain import Channel
from callsense.rolling import RollingAverage
from callsense.tenants import DEFAULT_SETTINGS, BadgeSettings
from callsense.topics import Topic, detect_topic, rank_topics, topic_hits
from gateway.live import (
    CUE_TEXTS,
    BadgeChange,
    BadgeState,
    BadgeTracker,
    CoachingCue,
    CueEngine,
    LiveCoach,
    LiveEvent,
    ScoredUtteranceView,
    settings_for,
)

RED, AMBER, GREEN = BadgeState.RED, BadgeState.AMBER, BadgeState.GREEN


class Script:
    """A call written as back-to-back utterances; ids and times are filled in."""

    def __init__(self) -> None:
        self.utterances: list[ScoredUtteranceView] = []
        self.now_ms = 0

    def say(
        self,
        seconds: float,
        score: float,
        text: str = "okay",
        *,
        times: int = 1,
        channel: Channel = "customer",
    ) -> Script:
        for _ in range(times):
            end_ms = self.now_ms + round(seconds * 1000)
            self.utterances.append(
                ScoredUtteranceView(len(self.utterances), channel, self.now_ms, end_ms, text, score)
            )
            self.now_ms = end_ms
        return self

    def agent(self, seconds: float, score: float, text: str = "sure") -> Script:
        return self.say(seconds, score, text, channel="agent")


def run(script: Script, settings: BadgeSettings = DEFAULT_SETTINGS) -> list[LiveEvent]:
    return LiveCoach(settings).observe_all(script.utterances)


def badges(events: list[LiveEvent]) -> list[tuple[BadgeState, int]]:
    return [(e.state, e.at_ms) for e in events if isinstance(e, BadgeChange)]


def cues(events: list[LiveEvent]) -> list[CoachingCue]:
    return [e for e in events if isinstance(e, CoachingCue)]


def red_script() -> Script:
    """10 s at 0.5, then 2.5 s utterances at 0.0. The average at each end: 12.5 s 0.40, 15 s 0.33,
    17.5 s 0.286 (below 0.30 from here), 20 s 0.25 (2.5 s below), 22.5 s 0.22 (exactly 5 s: not MORE
    than five), 25 s 0.20 (7.5 s below: RED)."""
    return Script().say(2, 0.5, times=5).say(2.5, 0.0, "this is bad", times=6)


# ---------------------------------------------------------------------------------------- rolling average


def test_rolling_average_weighs_by_time_inside_the_window() -> None:
    rolling = RollingAverage(window_ms=10_000)
    assert rolling.value is None and rolling.weight_ms == 0
    rolling.add(0, 8_000, 1.0)
    rolling.add(8_000, 12_000, 0.0)
    # Window [2 s, 12 s]: 6 s of the first utterance at 1.0, 4 s of the second at 0.0.
    assert rolling.now_ms == 12_000
    assert rolling.weight_ms == 10_000
    assert rolling.value == pytest.approx(0.6)
    assert rolling.count_below(0.5) == 1
    rolling.add(12_000, 20_000, 0.0)  # the first utterance has left the window
    assert rolling.value == 0.0 and rolling.count_below(0.5) == 2


def test_rolling_average_never_rewinds_and_counts_zero_length_utterances() -> None:
    rolling = RollingAverage(window_ms=10_000)
    rolling.add(5_000, 5_000, 0.8)  # zero-length: weighs 1 ms rather than nothing
    assert rolling.value == pytest.approx(0.8)
    rolling.add(20_000, 22_000, 0.2)
    rolling.add(1_000, 3_000, 1.0)  # late and outside the window: the clock stays at 22 s
    assert rolling.now_ms == 22_000
    assert rolling.value == pytest.approx(0.2)


# -------------------------------------------------------------------------------------------------- badge


def test_turns_red_at_the_utterance_that_makes_the_low_span_exceed_five_seconds() -> None:
    events = run(red_script())
    assert badges(events) == [(RED, 25_000)]
    change = next(e for e in events if isinstance(e, BadgeChange))
    assert change.rolling_score == pytest.approx(5 / 25)  # 10 s at 0.5 and 15 s at 0.0


def test_exactly_five_seconds_below_is_not_enough() -> None:
    script = red_script()
    script.utterances.pop()  # stop at 22.5 s: below 0.30 since 17.5 s, i.e. exactly 5 s
    tracker = BadgeTracker()
    assert [tracker.observe(u) for u in script.utterances] == [None] * len(script.utterances)
    assert tracker.state is AMBER
    assert tracker.rolling_score == pytest.approx(5 / 22.5)


def test_a_single_very_low_sentence_does_not_turn_red() -> None:
    # 12 s at 0.6, one 4 s sentence at 0.0, then 0.6 again: the average bottoms out at 7.2 / 16 = 0.45.
    script = Script().say(2, 0.6, times=6).say(4, 0.0, "this is a disaster").say(2, 0.6, times=10)
    assert badges(run(script)) == []


def test_a_single_long_rant_does_not_turn_red_on_its_own() -> None:
    # 8 s at 0.5 then one 10 s utterance at 0.0: the average is below 0.30 from 18 s on and stays there
    # past 24 s while the customer goes on neutrally (0.27 at 24 s, 0.29 at 26 s), but only one
    # utterance was low.
    script = Script().say(2, 0.5, times=4).say(10, 0.0, "no no no").say(2, 0.5, times=4)
    assert badges(run(script)) == []
    # It is the min_low_utterances rule that keeps it amber: with 1, the same call turns red at 24 s.
    assert badges(run(script, BadgeSettings(min_low_utterances=1))) == [(RED, 24_000)]


def test_stays_amber_until_there_is_enough_customer_speech() -> None:
    # A sour opening: 6 s at 0.0 is below the 8 s of evidence, so no sustain clock runs yet.
    tracker = BadgeTracker()
    script = Script().say(2, 0.0, times=3)
    assert [tracker.observe(u) for u in script.utterances] == [None, None, None]
    assert tracker.state is AMBER


def test_recovers_from_red_only_above_the_exit_threshold_held_long_enough() -> None:
    # RED at 25 s; then 60 s at 0.35: the average climbs back above 0.30 but not above 0.40, so it stays
    # RED. At 85 s the window holds only 0.35; then 2 s utterances at 0.95: 87 s 0.39, 89 s 0.43 (above
    # 0.40 from here), 91 s, 93 s, 95 s (6 s above: AMBER).
    script = red_script().say(2, 0.35, times=30)
    tracker = BadgeTracker()
    changes = [c for u in script.utterances if (c := tracker.observe(u)) is not None]
    assert [(c.state, c.at_ms) for c in changes] == [(RED, 25_000)]
    assert tracker.rolling_score == pytest.approx(0.35)
    assert tracker.state is RED  # above 0.30 for a minute, still red: hysteresis

    script.say(2, 0.95, "that sounds great", times=5)
    assert badges(run(script)) == [(RED, 25_000), (AMBER, 95_000)]


def test_a_rise_above_the_exit_threshold_shorter_than_its_sustain_does_not_recover() -> None:
    # After the plateau at 0.35: 87 s 0.39, 89 s 0.43 (above 0.40), then 0.0 again: 91 s 0.407 (2 s
    # above), 93 s 0.383 (below: the clock resets).
    script = red_script().say(2, 0.35, times=30).say(2, 0.95, times=2).say(2, 0.0, times=5)
    assert badges(run(script)) == [(RED, 25_000)]


def test_a_clearly_positive_call_turns_green_and_leaves_it_with_hysteresis() -> None:
    # 2 s utterances at 0.9: enough evidence at 8 s, above 0.65 since then, MORE than 5 s at 14 s.
    script = Script().say(2, 0.9, "this is great", times=20)
    assert badges(run(script)) == [(GREEN, 14_000)]
    # From a window full of 0.9 (40 s), 2 s utterances at 0.3 lower the average by 0.04 each:
    # 56 s 0.58 (below 0.65, above 0.55: still green), 58 s 0.54 (below 0.55 from here), 60 s, 62 s
    # (4 s below, more than the 3 s exit sustain: AMBER).
    script.say(2, 0.3, "hmm", times=8)
    assert badges(run(script)) == [(GREEN, 14_000)]
    script.say(2, 0.3, "hmm", times=3)
    assert badges(run(script)) == [(GREEN, 14_000), (AMBER, 62_000)]


def test_one_sharp_worry_in_a_happy_call_does_not_take_the_badge_off_green() -> None:
    # Warm lines at 0.7 (green from 14 s), then at 40 s one 8 s worry at 0.0 ("three weeks is a bit longer
    # than I'd hoped, to be honest, ..."): from 48 s the window holds 22 s at 0.7 and 8 s at 0.0, an
    # average of 0.51, under the 0.55 exit line for well over its 3 s sustain, but from one utterance.
    def call(worries: int) -> Script:
        return (
            Script()
            .say(2, 0.7, times=20)
            .say(8, 0.0, "a bit longer than I'd hoped", times=worries)
            .say(2, 0.7, times=10)
        )

    assert badges(run(call(1))) == [(GREEN, 14_000)]
    # Without the rule (one utterance may decide), the same worry takes it off green at 52 s (4 s under).
    assert badges(run(call(1), BadgeSettings(min_low_utterances=1))) == [(GREEN, 14_000), (AMBER, 52_000)]
    # Two such lines are a change of mood, not a worry: off green as the second ends (under 0.55 since 48 s).
    assert badges(run(call(2)))[:2] == [(GREEN, 14_000), (AMBER, 56_000)]


def test_one_long_rant_takes_the_badge_off_green_but_not_to_red() -> None:
    # Green from 14 s at 0.9; from 40 s one 25 s utterance at 0.0, then two warm lines: at 67 s and 69 s the
    # window (3 or 1 s at 0.9, the rant, 2 or 4 s at 0.9) averages 0.15, under the red line since 65 s. One
    # utterance cannot make it RED, but it must not stay GREEN: off at 69 s (4 s under the exit line).
    script = (
        Script().say(2, 0.9, times=20).say(25, 0.0, "this is not what we were promised").say(2, 0.9, times=2)
    )
    assert badges(run(script)) == [(GREEN, 14_000), (AMBER, 69_000)]


def test_falling_from_green_through_amber_to_red_reports_one_change() -> None:
    # A slow green exit (15 s) lets the red condition ripen first. 40 s at 0.9, then 3 s at 0.0: below
    # 0.55 from 52 s, below 0.30 from 61 s (RED due at 67 s but still GREEN), the green exit at 70 s
    # (18 s below) falls straight through to RED.
    settings = BadgeSettings(green_exit_sustain_s=15.0)
    script = Script().say(2, 0.9, times=20).say(3, 0.0, "no", times=10)
    assert badges(run(script, settings)) == [(GREEN, 14_000), (RED, 70_000)]


@pytest.mark.parametrize(
    ("customer", "agent_score"),
    [(red_script(), 1.0), (Script().say(2, 0.9, times=10), 0.0)],
    ids=["sour customer, cheerful agent", "happy customer, sour agent"],
)
def test_agent_utterances_do_not_move_the_badge(customer: Script, agent_score: float) -> None:
    with_agent: list[ScoredUtteranceView] = []
    for u in customer.utterances:
        # The agent talks over each customer utterance and for 20 s after it.
        agent_line = ScoredUtteranceView(
            1_000 + u.utterance_id, "agent", u.start_ms, u.end_ms + 20_000, "x", agent_score
        )
        with_agent += [u, agent_line]
    expected = LiveCoach().observe_all(customer.utterances)
    assert badges(expected) != []
    assert LiveCoach().observe_all(with_agent) == expected
    tracker = BadgeTracker()
    assert tracker.observe(ScoredUtteranceView(0, "agent", 0, 30_000, "great", 1.0)) is None
    assert tracker.rolling_score is None and tracker.state is AMBER


def test_mixed_channel_counts_as_the_customer_unless_the_tenant_says_otherwise() -> None:
    script = Script().say(2, 0.9, times=10, channel="mixed")
    assert badges(run(script)) == [(GREEN, 14_000)]
    assert badges(run(script, BadgeSettings(mixed_is_customer=False))) == []


def test_tenant_settings_are_honoured() -> None:
    overrides = {"acme": BadgeSettings(red_enter_sustain_s=2.0)}
    acme, other = settings_for("acme", overrides), settings_for("globex", overrides)
    assert acme.red_enter_sustain_s == 2.0
    assert other is DEFAULT_SETTINGS
    assert settings_for("globex", overrides, default=acme) is acme
    # Below 0.30 since 17.5 s: acme's 2 s sustain is exceeded at 20 s, the default 5 s at 25 s.
    assert badges(run(red_script(), acme)) == [(RED, 20_000)]
    assert badges(run(red_script(), other)) == [(RED, 25_000)]


def test_tenant_thresholds_move_the_red_line() -> None:
    # With the red line at 0.35 the average (0.33 at 15 s) is below it from 15 s: RED at 22.5 s.
    settings = BadgeSettings(red_enter=0.35, red_exit=0.45)
    assert badges(run(red_script(), settings)) == [(RED, 22_500)]


@pytest.mark.parametrize(
    "changes",
    [
        {"red_enter": 0.45},  # above red_exit: no hysteresis band
        {"green_exit": 0.7},  # above green_enter
        {"red_exit": 0.6},  # above green_exit
        {"green_enter": 1.5},
        {"window_s": 0.0},
        {"min_evidence_s": 40.0},  # more than the window can hold
        {"red_enter_sustain_s": -1.0},
        {"cue_cooldown_s": float("nan")},
        {"min_low_utterances": 0},
        {"competitor_names": ("",)},
    ],
)
def test_settings_reject_inconsistent_values(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(DEFAULT_SETTINGS, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("channel", "start_ms", "end_ms", "score"),
    [("boss", 0, 1, 0.5), ("agent", 10, 5, 0.5), ("agent", -1, 5, 0.5), ("customer", 0, 1, 1.2)],
)
def test_utterance_view_rejects_bad_input(channel: str, start_ms: int, end_ms: int, score: float) -> None:
    with pytest.raises(ValueError):
        ScoredUtteranceView(1, channel, start_ms, end_ms, "x", score)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- topics


@pytest.mark.parametrize(
    ("text", "topics"),
    [
        ("Honestly that price is ridiculous.", {"pricing"}),
        ("That's way too much for us, is there a discount?", {"pricing"}),
        ("It's not in this year's budget, the quote was expensive.", {"pricing"}),
        ("That's well over what we budgeted.", {"pricing"}),
        ("For twenty seats it comes to five thousand a month.", {"pricing"}),  # an amount over time
        ("So $5,000 a month, or 50k a year.", {"pricing"}),  # as Whisper writes amounts
        ("We do about two hundred a month.", set()),  # a volume, not a price
        ("We log 200 calls per month.", set()),
        ("We have a hard deadline, maybe next quarter.", {"timeline"}),
        ("Not now, the rollout would clash with our migration.", {"timeline"}),
        ("Timing is bad, let's talk in Q3.", {"timeline"}),
        ("We already use HubSpot for that.", {"competitor"}),
        ("Another vendor offered us the same thing.", {"competitor"}),
        ("Your competitors are cheaper.", {"competitor", "pricing"}),
        ("I need to check with my boss first.", {"authority"}),
        ("This needs sign-off from procurement.", {"authority"}),
        ("Any purchase needs approval from the board.", {"authority"}),
        ("We don\u2019t need this, it's not a priority.", {"need"}),  # curly apostrophe
        ("Why would we change? We already have a tool that works fine.", {"need"}),
        ("Thanks, that sounds great!", set()),
        ("I need a minute.", set()),  # "need" alone is not the need objection
        ("Surprised by the prices? Priceless.", {"pricing"}),
        ("The costume party is next door.", set()),  # whole words only
    ],
)
def test_topic_rules(text: str, topics: set[Topic]) -> None:
    assert set(topic_hits(text)) == topics


def test_competitor_names_are_per_tenant() -> None:
    settings = BadgeSettings(competitor_names=("Acme CRM", "Initech"))
    assert topic_hits("We run on Acme CRM today.", settings) == {"competitor": 1}
    assert topic_hits("We already pay Salesforce.", settings) == {}
    assert topic_hits("We already pay Salesforce.") == {"competitor": 1}


def test_topic_counts_what_was_said_recently_most() -> None:
    recent = [(10_000, "The price, the price, the price."), (50_000, "I need to check with my boss.")]
    # At 50 s the pricing mentions are 40 s old: 3 * 0.5 ** (40 / 15) = 0.47 < 1 authority mention now.
    assert rank_topics(recent, 50_000) == ["authority", "pricing"]
    assert rank_topics(recent, 10_000) == ["pricing", "authority"]
    assert detect_topic([(0, "lovely weather")], 0) is None


# --------------------------------------------------------------------------------------------------- cues


def pricing_slump() -> Script:
    """20 s of friendly talk, the agent names the price, then the customer sours on it (2 s at 0.05)."""
    script = Script()
    for _ in range(5):
        script.agent(2, 0.7, "so how is the quarter going").say(2, 0.6, "pretty good thanks")
    script.agent(3, 0.5, "the license is 40 dollars per seat per month")
    return script.say(2, 0.05, "that is way too expensive for us", times=10)


def test_a_sustained_pricing_slump_gets_a_pricing_cue() -> None:
    # Customer speech: 10 s at 0.6 (between the agent's turns), then 2 s at 0.05 from 23 s. Averages:
    # 25 s 0.51, 27 s 0.44, 29 s 0.39, 31 s 0.36, 33 s 0.31 (below 0.35 from here), 35 s 0.27 (below
    # 0.30 from here), 37 s, 39 s (6 s below 0.35: not more), 41 s (8 s below 0.35, 6 s below 0.30).
    events = run(pricing_slump())
    found = cues(events)
    assert [(c.topic, c.at_ms) for c in found] == [("pricing", 41_000)]
    assert found[0].text == CUE_TEXTS["pricing"][0]
    assert badges(events) == [(RED, 41_000)]
    assert events == [events[0], found[0]]  # the badge change comes before the cue


def test_no_cue_on_a_single_low_sentence() -> None:
    script = Script().say(2, 0.6, "sounds fine", times=12)
    script.say(5, 0.0, "wait, that price is outrageous").say(2, 0.6, "okay, go on", times=20)
    assert cues(run(script)) == []


def test_no_cue_on_a_single_long_rant() -> None:
    script = Script().say(2, 0.5, times=10).say(12, 0.0, "way too expensive").say(2, 0.4, times=5)
    assert cues(run(script)) == []


def test_no_cue_during_the_first_seconds_of_a_call() -> None:
    # Sour from the first word: the slump is established at 16 s (8 s of evidence + more than 6 s), but
    # cues wait for 20 s of call time.
    script = Script().say(2, 0.05, "your pricing is a joke", times=15)
    found = cues(run(script))
    assert [(c.topic, c.at_ms) for c in found] == [("pricing", 20_000)]


def test_agent_mood_never_triggers_a_cue() -> None:
    script = Script()
    for _ in range(30):
        script.say(2, 0.7, "right").agent(2, 0.0, "sorry, the price went up again")
    assert cues(run(script)) == []


def test_a_long_slump_is_throttled_and_falls_back_to_a_general_cue() -> None:
    # 0.0 from 10 s on: the slump holds from 22.5 s to the end (275 s). At most one cue per 45 s; pricing
    # only every 180 s, so the general cue fills the gaps; a topic that comes back gets its next text.
    script = Script().say(2, 0.5, times=5).say(2.5, 0.0, "far too expensive", times=106)
    found = cues(run(script))
    assert [(c.topic, c.at_ms) for c in found] == [
        ("pricing", 22_500),
        ("general", 67_500),
        ("pricing", 202_500),
        ("general", 247_500),
    ]
    assert [c.text for c in found] == [
        CUE_TEXTS["pricing"][0],
        CUE_TEXTS["general"][0],
        CUE_TEXTS["pricing"][1],
        CUE_TEXTS["general"][1],
    ]


def test_a_long_sour_stretch_over_several_topics_respects_both_throttles() -> None:
    settings = DEFAULT_SETTINGS
    lines = [
        "the price is far too high",
        "and we have no budget until next quarter",
        "the timing is wrong, the rollout would be a mess",
        "I need to check with my boss anyway",
        "procurement would never sign off",
        "we already use Salesforce",
        "why would we switch, we don't need it",
    ]
    script = Script().say(2, 0.5, "hello", times=5)
    for minute in range(10):
        for line in lines:
            script.agent(2, 0.6, "I hear you").say(3, 0.1 if minute % 3 else 0.2, line)
    found = cues(run(script, settings))
    times = [c.at_ms for c in found]
    assert len(found) >= 8  # a ten-minute slump keeps getting advice
    assert all(b - a >= 45_000 for a, b in zip(times, times[1:], strict=False))
    for topic in {c.topic for c in found}:
        same = [c.at_ms for c in found if c.topic == topic]
        assert all(b - a >= 180_000 for a, b in zip(same, same[1:], strict=False)), topic
    assert len({c.topic for c in found}) >= 4  # the topic follows the conversation
    assert found[0].at_ms >= 20_000


def test_a_recovered_call_needs_a_new_sustained_slump_for_the_next_cue() -> None:
    script = pricing_slump().say(2, 0.9, "okay, that discount helps", times=20)
    script.say(2, 0.05, "but the price is still too high", times=2)  # a short dip: no new cue
    assert [c.at_ms for c in cues(run(script))] == [41_000]


# ------------------------------------------------------------------------------------------------- facade


def test_live_coach_ignores_a_resent_utterance() -> None:
    coach = LiveCoach()
    script = red_script()
    events = coach.observe_all(script.utterances)
    assert badges(events) == [(RED, 25_000)]
    assert coach.observe_all(script.utterances) == []  # a reconnecting client re-sends everything
    assert coach.badge_state is RED
    assert coach.rolling_score == pytest.approx(0.2)


def test_cue_engine_and_badge_tracker_work_alone() -> None:
    engine, tracker = CueEngine(), BadgeTracker()
    results = [(tracker.observe(u), engine.observe(u)) for u in pricing_slump().utterances]
    assert [b.at_ms for b, _ in results if b] == [41_000]
    assert [c.at_ms for _, c in results if c] == [41_000]
