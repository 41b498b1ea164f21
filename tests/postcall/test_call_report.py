"""The manager's call report: a scripted sales call scored by the shipped model and tagged by the local
objection tagger, then the rules (spikes, turning points, quarters) on chosen score sequences."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence

import pytest

from callsense.domain import UtteranceScore, compute_call_stats
from callsense.report import (
    CallReport,
    ObjectionTag,
    report_from_proto,
    report_to_proto,
    tag_names,
    utterance_from_proto,
    utterance_to_proto,
)
from postcall.objections import LocalObjectionTagger
from postcall.summary import build_report
from scorer_service.inference import DEFAULT_MODEL, SentimentModel
from tests.support.scored_lines import score_lines

# (channel, start second, text): a friendly demo that turns sour at the price (03:12), names a rival,
# needs the boss, and recovers with a discount.
SALES_CALL = [
    ("agent", 0, "Hi Dana, thanks for making time today. How are things going?"),
    ("customer", 8, "Great, thanks! We've been looking forward to this."),
    ("agent", 20, "Let me show you the dashboard we built for sales managers."),
    ("customer", 45, "Oh, that looks really nice. I love how clear the reports are."),
    ("agent", 70, "It also coaches your reps live during their calls."),
    ("customer", 95, "That's fantastic, our new reps would really benefit from that."),
    ("agent", 120, "Happy to hear it. Shall we go through the team's goals for next year?"),
    ("customer", 140, "Sure, we'd love to get every new rep ramped up in half the time!"),
    ("agent", 170, "For fifty seats the price would be forty thousand a year."),
    ("customer", 192, "What? Forty thousand is outrageous, that's way too expensive."),
    ("agent", 205, "I understand. We can look at a smaller package."),
    ("customer", 215, "That's terrible news, we can't spend anything like that."),
    ("customer", 241, "We already pay HubSpot a fraction of that."),
    ("agent", 255, "Let me see what we can do on the discount side."),
    ("customer", 280, "Okay, a discount would definitely help, thank you."),
    ("customer", 300, "I'd still need to run it by my boss before we commit."),
    ("agent", 320, "Of course, I'll send a proposal you can share with her."),
    ("customer", 340, "Thanks, that sounds good. I'm glad we talked."),
    ("customer", 360, "Great, this was really helpful, thank you!"),
]
PRICE_SHOCK = 9  # utterance id of "What? Forty thousand is outrageous..."
REPORT_KEYS = {
    "lines",
    "spikes",
    "turning_points",
    "quarters",
    "objection_tags",
    "customer_avg_sentiment",
    "agent_avg_sentiment",
}


def utterance(
    utterance_id: int,
    score: float,
    start_s: float,
    channel: str = "customer",
    text: str = "mm",
    length_s: float = 4,
) -> UtteranceScore:
    """An utterance with a chosen score: the report's rules are about score sequences."""
    return UtteranceScore(
        call_id="c",
        utterance_id=utterance_id,
        channel=channel,  # type: ignore[arg-type]
        start_ms=round(start_s * 1000),
        end_ms=round((start_s + length_s) * 1000),
        text=text,
        label="neutral",
        p_negative=1 - score,
        p_neutral=0.0,
        p_positive=score,
        score=score,
        model_version="test",
    )


def customer_run(scores: Sequence[float], every_s: float = 10, first_id: int = 0) -> list[UtteranceScore]:
    return [utterance(first_id + i, s, i * every_s) for i, s in enumerate(scores)]


def report_of(events: Sequence[UtteranceScore], tags: Sequence[ObjectionTag] = ()) -> CallReport:
    return build_report(events, compute_call_stats(events), tags)


# ----------------------------------------------------------------------------------------- scripted call


@pytest.fixture(scope="module")
def sales_call() -> list[UtteranceScore]:
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"SHIPPED MODEL ABSENT: {DEFAULT_MODEL} not found; the scripted call is scored with it")
    return score_lines(SentimentModel.load(), SALES_CALL, call_id="sales-call", utterance_ms=6000)


@pytest.fixture(scope="module")
def sales_report(sales_call: list[UtteranceScore]) -> CallReport:
    tags = LocalObjectionTagger().tag(sales_call)
    return build_report(sales_call, compute_call_stats(sales_call), tags)


def test_scripted_call_spike_line_and_tags(
    sales_call: list[UtteranceScore], sales_report: CallReport
) -> None:
    shock = sales_call[PRICE_SHOCK]
    assert shock.score < 0.3, "the shipped model must hear the price shock as negative"
    # One spike: the price shock at 03:12. The next sour sentence continues it, it is not a new spike.
    assert [(s.utterance_id, s.at_ms, s.topic) for s in sales_report.spikes] == [
        (PRICE_SHOCK, 192_000, "pricing")
    ]
    spike = sales_report.spikes[0]
    assert spike.line == f"negative spike at 03:12 after pricing (customer score {shock.score:.2f})"
    assert spike.line in sales_report.lines
    assert spike.drop > 0.5 and spike.text == shock.text
    # The objections: the price and the boss (the rival: below); the first is the CRM field's first entry.
    assert tag_names(sales_report.tags)[:1] == ["pricing pushback"]
    assert {"pricing pushback", "authority"} <= set(tag_names(sales_report.tags))
    by_utterance = {(t.utterance_id, t.tag) for t in sales_report.tags}
    assert {(PRICE_SHOCK, "pricing pushback"), (15, "authority")} <= by_utterance
    tagged = {t.utterance_id for t in sales_report.tags}
    assert not tagged & {e.utterance_id for e in sales_call if e.channel == "agent"}
    assert not tagged & {1, 3, 5, 7, 17, 18}  # the friendly lines
    objections = next(line for line in sales_report.lines if line.startswith("objections: "))
    assert objections.startswith("objections: pricing pushback at 03:12")
    assert "authority at 05:00" in objections


@pytest.mark.xfail(
    strict=True,
    reason="known gap of the fine-tuned tagger (2026-12-06): 'We already pay HubSpot a fraction of that.' "
    "after the price reads pricing pushback 0.56, competitor mention 0.40, under the 0.8 threshold: no tag",
)
def test_scripted_call_names_the_rival(sales_report: CallReport) -> None:
    assert (12, "competitor mention") in {(t.utterance_id, t.tag) for t in sales_report.tags}
    objections = next(line for line in sales_report.lines if line.startswith("objections: "))
    assert "competitor mention at 04:01" in objections


def test_scripted_call_turning_points_and_quarters(
    sales_call: list[UtteranceScore], sales_report: CallReport
) -> None:
    turns = [(t.direction, t.utterance_id, t.topic) for t in sales_report.turning_points]
    # Up again at "a discount would definitely help" (04:40); the HubSpot line before it is neutral (0.48).
    assert turns == [("down", PRICE_SHOCK, "pricing"), ("up", 14, "pricing")]
    down, up = sales_report.turning_points
    assert down.from_score > 0.8 and down.to_score < 0.3
    assert up.from_score == down.to_score and up.to_score > 0.7
    assert up.line.startswith("customer sentiment recovered at 04:40")
    # The downturn starts with the spike: one moment, one line (the spike's).
    assert down.line not in sales_report.lines and up.line in sales_report.lines

    quarters = sales_report.quarters
    assert [q.quarter for q in quarters] == [1, 2, 3, 4]
    assert quarters[0].start_ms == 0 and quarters[-1].end_ms == 366_000
    assert sum(q.utterances for q in quarters) == len(SALES_CALL)
    customer_avgs = [q.customer_avg for q in quarters]
    assert all(a is not None for a in customer_avgs)
    assert min(customer_avgs, key=lambda a: a or 1.0) == customer_avgs[2]  # the price quarter is the worst
    expected = " -> ".join(f"{a:.2f}" for a in customer_avgs if a is not None)
    assert f"customer sentiment by quarter: {expected}" in sales_report.lines

    stats = compute_call_stats(sales_call)
    assert sales_report.customer_avg_sentiment == stats.customer_avg_sentiment
    assert sales_report.agent_avg_sentiment == stats.agent_avg_sentiment
    assert f"customer average sentiment {stats.customer_avg_sentiment:.2f}" in sales_report.lines
    assert sales_report.lines[0] == "19 utterances scored (11 customer, 8 agent)"


def test_lines_hold_no_utterance_text(sales_call: list[UtteranceScore], sales_report: CallReport) -> None:
    words = {w for e in sales_call for w in re.findall(r"[a-z]{5,}", e.text.lower())}
    allowed = {
        "customer",
        "agent",
        "average",
        "sentiment",
        "quarter",
        "spike",
        "negative",
        "pricing",
        "score",
    }
    leaked = {w for line in sales_report.lines for w in re.findall(r"[a-z]{5,}", line.lower())} & (
        words - allowed
    )
    assert not leaked, leaked
    assert len(sales_report.lines) <= 8


def test_report_json_shape(sales_report: CallReport) -> None:
    data = json.loads(json.dumps(sales_report.to_json()))
    assert set(data) == REPORT_KEYS
    assert data["lines"] == list(sales_report.lines)
    assert set(data["spikes"][0]) == {
        "at_ms",
        "utterance_id",
        "channel",
        "score",
        "drop",
        "topic",
        "text",
        "line",
    }
    assert set(data["turning_points"][0]) == {
        "at_ms",
        "utterance_id",
        "direction",
        "from_score",
        "to_score",
        "topic",
        "line",
    }
    assert {t["direction"] for t in data["turning_points"]} == {"down", "up"}
    assert set(data["quarters"][0]) == {
        "quarter",
        "start_ms",
        "end_ms",
        "customer_avg",
        "agent_avg",
        "utterances",
    }
    assert data["objection_tags"] == [t.to_json() for t in sales_report.tags]


def test_the_wire_form_round_trips_exactly(
    sales_call: list[UtteranceScore], sales_report: CallReport
) -> None:
    """What the gateway stores from PostCall.Report is what the worker built: the same JSON, byte for byte
    (ints stay ints, absent values null), and the utterances reach the worker unchanged."""
    assert [utterance_from_proto(utterance_to_proto(e)) for e in sales_call] == sales_call
    wire = report_to_proto(sales_report).SerializeToString()
    received = report_from_proto(type(report_to_proto(sales_report)).FromString(wire))
    assert received == sales_report
    assert json.dumps(received.to_json()) == json.dumps(sales_report.to_json())
    empty = build_report([], compute_call_stats([]))
    assert json.dumps(report_from_proto(report_to_proto(empty)).to_json()) == json.dumps(empty.to_json())


def test_without_tags_the_spike_topic_comes_from_what_was_said(sales_call: list[UtteranceScore]) -> None:
    stats = compute_call_stats(sales_call)
    # The agent's price and "expensive" name the topic even when the tagger found nothing.
    assert "negative spike at 03:12 after pricing" in " | ".join(build_report(sales_call, stats).lines)


# ----------------------------------------------------------------------------------------------- spikes


def test_a_customer_sour_throughout_has_one_spike_not_one_per_sentence() -> None:
    report = report_of(customer_run([0.1] * 12))
    assert [s.utterance_id for s in report.spikes] == [0]  # fell from a neutral start, then stayed low
    assert report.spikes[0].drop == pytest.approx(0.4)


def test_mild_dips_and_low_hovering_are_not_spikes() -> None:
    assert report_of(customer_run([0.9, 0.9, 0.6, 0.9, 0.55])).spikes == ()  # lower, not negative
    assert report_of(customer_run([0.36, 0.33, 0.35, 0.28, 0.34])).spikes == ()  # low, but no drop


def test_separate_breaks_are_separate_spikes() -> None:
    scores = [0.8, 0.8, 0.15, 0.2, 0.7, 0.8, 0.8, 0.1, 0.75, 0.15]
    report = report_of(customer_run(scores, every_s=12))
    # 02 breaks; 03 continues it; 07 breaks again; 09 is 24 s after 07: the same moment.
    assert [s.utterance_id for s in report.spikes] == [2, 7]
    assert [s.at_ms for s in report.spikes] == [24_000, 84_000]


def test_a_deeper_break_soon_after_names_the_moment() -> None:
    # 02 dips at a pain point; 04, 20 s later, is the customer's reaction to the price: one moment,
    # named by its deepest point (the manager must see the price, not the warm-up to it).
    report = report_of(customer_run([0.8, 0.8, 0.25, 0.7, 0.1], every_s=10))
    assert [s.utterance_id for s in report.spikes] == [4]
    assert report.spikes[0].drop == pytest.approx((0.8 + 0.25 + 0.7) / 3 - 0.1, abs=1e-4)


def test_a_stretch_that_slides_down_in_steps_is_named_by_the_step_that_breaks() -> None:
    # The buyer echoes the price a hair under the line, not far enough below their level to be a break,
    # then says what it means: the second line is the spike, named after the price (the model of
    # 2026-12-07 04:55 scores these two lines just under 0.30 and 0.04 in the scripted call sours-at-price;
    # here the first falls 0.242 below the level before it, the second 0.50).
    events = [
        utterance(0, 0.18, 0, text="We lose a lot of time on it, and we miss things."),
        utterance(1, 0.92, 10, text="That sounds really useful."),
        utterance(2, 0.52, 20, text="How quickly could we get started?"),
        utterance(3, 0.5, 30, channel="agent", text="For twenty seats it comes to five thousand a month."),
        utterance(4, 0.298, 40, text="Five thousand a month?"),
        utterance(5, 0.04, 45, text="That's well over what we budgeted for this, I'm afraid."),
        utterance(6, 0.05, 50, text="Honestly, that's not where we need to be."),
    ]
    spikes = report_of(events).spikes
    assert [(s.utterance_id, s.topic) for s in spikes] == [(0, None), (5, "pricing")]
    assert spikes[1].drop == pytest.approx((0.18 + 0.92 + 0.52) / 3 - 0.04, abs=1e-4)


def test_a_stretch_is_measured_against_its_level_for_two_minutes_only() -> None:
    # Low from the start, but only 0.22 under a neutral start; a deep line within two minutes of the
    # stretch's start is its break, one later is not (the level before the stretch is stale by then).
    assert [s.utterance_id for s in report_of(customer_run([0.28, 0.28, 0.05], every_s=30)).spikes] == [2]
    assert report_of(customer_run([0.28, 0.28, 0.28, 0.28, 0.28, 0.05], every_s=30)).spikes == ()


def test_a_line_passed_over_for_a_deeper_spike_leaves_its_stretch_open_for_a_deeper_one() -> None:
    events = [
        utterance(0, 0.8, 0),
        utterance(1, 0.8, 10),
        utterance(2, 0.1, 20),  # the break
        utterance(3, 0.8, 30),
        utterance(4, 0.2, 40),  # 20 s after the break and not as deep: the same moment, passed over
        utterance(5, 0.05, 45),  # deeper, in the same stretch: it names the moment
    ]
    assert [s.utterance_id for s in report_of(events).spikes] == [5]


def test_spike_topic_comes_from_the_moment_before() -> None:
    events = [
        utterance(0, 0.8, 0, text="Morning! Good to hear from you."),
        utterance(1, 0.5, 10, channel="agent", text="The licence would cost forty thousand a year."),
        utterance(2, 0.1, 20, text="Hmm. That's a real shame."),  # no keyword of its own
        utterance(3, 0.9, 80, text="Lovely weather today."),
        utterance(4, 0.1, 120, text="Ugh, what a mess."),  # nothing discussed in the 30 s before
    ]
    report = report_of(events)
    assert [(s.utterance_id, s.topic) for s in report.spikes] == [(2, "pricing"), (4, None)]
    assert report.spikes[1].line == "negative spike at 02:00 (customer score 0.10)"
    # An objection tag on the spike segment names the topic first.
    tag = ObjectionTag("authority", 4, "customer", 120_000, 124_000, "Ugh, what a mess.", 0.9, "rules")
    assert report_of(events, [tag]).spikes[1].topic == "authority"
    no_need = ObjectionTag("no need", 4, "customer", 120_000, 124_000, "Ugh, what a mess.", 0.9, "rules")
    spike = report_of(events, [no_need]).spikes[1]
    assert (spike.topic, spike.line) == (
        "need",
        "negative spike at 02:00 after questioning the need (customer score 0.10)",
    )


def test_lines_name_the_sharpest_spikes_only() -> None:
    scores = [0.9, 0.05, 0.9, 0.2, 0.9, 0.1, 0.9, 0.25, 0.9, 0.12]
    report = report_of(customer_run(scores, every_s=40))
    assert len(report.spikes) == 5
    spike_lines = [line for line in report.lines if line.startswith("negative spike")]
    assert len(spike_lines) == 3 and "2 more negative spikes" in report.lines
    assert "negative spike at 00:40 (customer score 0.05)" in spike_lines  # the sharpest drop
    assert not any("0.25" in line for line in spike_lines)  # the mildest is left to the list


def test_a_noisy_call_still_reads_short() -> None:
    noise = random.Random(7)
    events = [
        utterance(i, noise.random(), 3 * i, channel=noise.choice(["customer", "agent"])) for i in range(400)
    ]
    report = report_of(events)
    assert len(report.spikes) > 3 and len(report.turning_points) > 3
    assert sum(line.startswith("negative spike") for line in report.lines) == 3
    assert sum(line.startswith("customer sentiment") and " at " in line for line in report.lines) <= 3
    assert len(report.lines) <= 12, report.lines


# --------------------------------------------------------------------------------------- turning points


def test_turning_points_follow_durable_changes_only() -> None:
    up_down_up = [0.8] * 5 + [0.2] * 5 + [0.8] * 5
    report = report_of(customer_run(up_down_up, every_s=15))
    assert [(t.direction, t.utterance_id) for t in report.turning_points] == [("down", 5), ("up", 10)]
    assert report.turning_points[0].line == "customer sentiment turned negative at 01:15: 0.80 -> 0.20"
    # One sour sentence in a good call is a spike at most, never a change of trend.
    outlier = report_of(customer_run([0.8] * 5 + [0.1] + [0.8] * 5, every_s=15))
    assert outlier.turning_points == ()
    assert [s.utterance_id for s in outlier.spikes] == [5]
    # Nor is one bright sentence in a sour stretch.
    assert report_of(customer_run([0.3] * 5 + [0.95] + [0.3] * 5, every_s=15)).turning_points == ()


def test_a_dip_that_stays_positive_is_a_drop_not_negative() -> None:
    report = report_of(customer_run([0.9] * 4 + [0.65] * 4, every_s=15))
    assert [t.line for t in report.turning_points] == ["customer sentiment dropped at 01:00: 0.90 -> 0.65"]


# --------------------------------------------------------------------------------------------- edges


def test_empty_call() -> None:
    report = report_of([])
    assert report.lines == ("no utterances were scored",)
    assert report.spikes == () and report.turning_points == () and report.tags == ()
    assert [(q.quarter, q.utterances, q.customer_avg) for q in report.quarters] == [
        (i, 0, None) for i in (1, 2, 3, 4)
    ]
    assert report.customer_avg_sentiment is None and report.agent_avg_sentiment is None
    assert set(report.to_json()) == REPORT_KEYS


def test_agent_only_call() -> None:
    events = [utterance(i, 0.1, 10 * i, channel="agent", text="price price") for i in range(4)]
    report = report_of(events)
    assert report.spikes == () and report.turning_points == ()
    assert report.lines == (
        "4 utterances scored (0 customer, 4 agent)",
        "no customer speech was scored",
        "agent average sentiment 0.10",
    )
    assert all(q.customer_avg is None for q in report.quarters)
    assert [q.agent_avg for q in report.quarters] == [0.1] * 4


def test_one_utterance_call() -> None:
    report = report_of([utterance(0, 0.2, 3)])
    assert report.lines == (
        "1 utterances scored (1 customer, 0 agent)",
        "customer average sentiment 0.20",
        "negative spike at 00:03 (customer score 0.20)",
    )
    assert [q.utterances for q in report.quarters] == [0, 0, 1, 0]  # 3-7 s: its midpoint is in the third


def test_mono_call_follows_the_mixed_channel_and_counts_each_utterance_once() -> None:
    events = [utterance(i, s, 10 * i, channel="mixed") for i, s in enumerate([0.8, 0.8, 0.1])]
    report = report_of(events + events[:1])  # a replayed utterance
    assert report.lines[0] == "3 utterances scored (0 customer, 0 agent, 3 mixed)"
    assert report.customer_avg_sentiment == pytest.approx(1.7 / 3)
    assert [(s.utterance_id, s.channel) for s in report.spikes] == [(2, "mixed")]


def test_tag_names_in_order_of_first_occurrence() -> None:
    def tag(name: str, at_s: int) -> ObjectionTag:
        return ObjectionTag(name, at_s, "customer", at_s * 1000, at_s * 1000 + 1, "x", 0.9, "rules")

    tags = [tag("authority", 50), tag("pricing pushback", 10), tag("authority", 20), tag("no need", 60)]
    assert tag_names(tags) == ["pricing pushback", "authority", "no need"]
    assert tag_names([]) == []
    line = next(x for x in report_of([utterance(0, 0.5, 0)], tags).lines if x.startswith("objections"))
    assert line == "objections: pricing pushback at 00:10; authority at 00:20, 00:50; no need at 01:00"
