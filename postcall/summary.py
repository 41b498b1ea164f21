"""The manager's summary of a call: a few lines to scan instead of a 30-minute recording. Plain Python.

``build_report(events, stats, tags)`` reads the call's scored utterances, its statistics and its
objection tags and finds:

- Negative spikes: moments where the customer's mood broke. A customer utterance is a spike when
  1. it is clearly negative: score below ``SPIKE_MAX_SCORE`` (0.30, the badge's red line), and
  2. it fell at least ``SPIKE_MIN_DROP`` (0.25) below the customer's level before its low stretch (the
     customer's utterances below the line in a row): the mean of their last ``BASELINE_UTTERANCES``
     utterances before the stretch, within ``BASELINE_WINDOW_MS`` of its start (a neutral 0.5 when there
     are none), and
  3. it is the first line of its stretch to fall that far, within ``BASELINE_WINDOW_MS`` of the stretch's
     start (later, that level is stale), and no spike was reported in the ``SPIKE_MIN_GAP_MS`` before it.
     A stretch that slides down in steps ("Five thousand a month?" just under 0.30, then "That's well
     over what we budgeted" 0.04) is named by the step that makes the drop, not lost because its first
     step was too small.
  Why not every low sentence: a customer who is sour for ten minutes has one story (told by the averages,
  the quarters and the turning points), not thirty spike lines; and a dip from 0.9 to 0.6 is not negative.
  What the manager needs is *when* it broke and *what* was being discussed then.
- Turning points: where the customer's smoothed trend (the live badge's 30 s time-weighted average) changes
  direction durably: it stayed at least ``TURN_MIN_SWING`` away from its last extreme for
  ``TURN_MIN_UTTERANCES`` customer utterances in a row, so a single outlier is not a turn (it may be a
  spike).
- The topic of a moment: the objection tag of that segment, else the live coach's topic keywords in it,
  else the most recent tag or the detected topic of the ``TOPIC_LOOKBACK_MS`` before it (either channel:
  the agent quoting a price puts pricing on the table).
- Quarters: the call's time split in four, each with the customer's and the agent's average.

The customer side is the ``customer`` channel; on a mono recording (no ``customer`` channel at all) it is
the ``mixed`` one, as for the live badge. Lines hold no utterance text (the PII mask may have missed
something); ``spikes[].text`` does, for the review page.
"""

from __future__ import annotations

from collections.abc import Sequence

from callsense.domain import NEGATIVE_SPIKE_THRESHOLD, CallStatistics, UtteranceScore, format_call_time
from callsense.report import CallReport, Direction, ObjectionTag, QuarterStats, Spike, TurningPoint
from callsense.rolling import RollingAverage
from callsense.topics import DETECTED_TOPICS, detect_topic, topic_hits
from postcall.objections import TAG_TOPICS

SPIKE_MAX_SCORE = NEGATIVE_SPIKE_THRESHOLD
SPIKE_MIN_DROP = 0.25
BASELINE_UTTERANCES = 3
BASELINE_WINDOW_MS = 120_000
NEUTRAL_SCORE = 0.5
SPIKE_MIN_GAP_MS = 30_000
# Lines name at most this many spikes (the sharpest) and turning points (the widest swings); the lists
# hold them all. A noisy call must still read in ten seconds.
SPIKE_LINES = 3
TURN_LINES = 3
SMOOTHING_WINDOW_MS = 30_000
TURN_MIN_SWING = 0.15
TURN_MIN_UTTERANCES = 3
# A turn starts after the last utterance still within this share of the swing from the extreme: a bumpy
# plateau at the top is not yet the decline.
TURN_PLATEAU_SHARE = 0.25
# Below this a trend ended negative ("turned negative"), the badge's way back from red.
NEGATIVE_LEVEL = 0.40
TOPIC_LOOKBACK_MS = 30_000
# The objections line lists at most this many times per tag.
TAG_TIMES_SHOWN = 3

# How the lines name a topic (the JSON keeps the live coach's topic names).
TOPIC_PHRASES = {"competitor": "competitor mention", "need": "questioning the need"}


# ---------------------------------------------------------------------------------------------- helpers


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _in_order(events: Sequence[UtteranceScore]) -> list[UtteranceScore]:
    """Each utterance once (the last copy wins, as in compute_call_stats), in call-time order."""
    unique = {e.utterance_id: e for e in events}
    return sorted(unique.values(), key=lambda e: (e.start_ms, e.utterance_id))


def customer_side(events: Sequence[UtteranceScore]) -> list[UtteranceScore]:
    """The customer's utterances: the ``customer`` channel, or ``mixed`` on a mono recording."""
    customer = [e for e in events if e.channel == "customer"]
    return customer or [e for e in events if e.channel == "mixed"]


class TopicFinder:
    """What was being discussed at a moment of the call (see the module docstring for the order)."""

    def __init__(self, events: Sequence[UtteranceScore], tags: Sequence[ObjectionTag]) -> None:
        self._events = events
        self._tags = sorted(tags, key=lambda t: (t.start_ms, t.utterance_id))

    def at(self, event: UtteranceScore) -> str | None:
        own = [t for t in self._tags if t.utterance_id == event.utterance_id]
        if own:
            return TAG_TOPICS.get(own[0].tag)
        hits = topic_hits(event.text)
        if hits:
            return max(hits, key=lambda t: (hits[t], -DETECTED_TOPICS.index(t)))
        since = event.start_ms - TOPIC_LOOKBACK_MS
        earlier_tags = [t for t in self._tags if since <= t.end_ms and t.start_ms <= event.start_ms]
        if earlier_tags:
            return TAG_TOPICS.get(earlier_tags[-1].tag)
        recent = [
            (e.end_ms, e.text) for e in self._events if since <= e.end_ms and e.start_ms <= event.start_ms
        ]
        return detect_topic(recent, event.end_ms)


# ----------------------------------------------------------------------------------------------- spikes


def _phrase(topic: str) -> str:
    return TOPIC_PHRASES.get(topic, topic)


def _spike_line(at_ms: int, topic: str | None, score: float) -> str:
    after = f" after {_phrase(topic)}" if topic else ""
    return f"negative spike at {format_call_time(at_ms)}{after} (customer score {score:.2f})"


def find_spikes(customer: Sequence[UtteranceScore], topics: TopicFinder) -> list[Spike]:
    spikes: list[Spike] = []
    stretch_start: int | None = None  # index of the first utterance of the current low stretch
    stretch_named = False
    for index, event in enumerate(customer):
        if event.score >= SPIKE_MAX_SCORE:
            stretch_start = None
            continue
        if stretch_start is None:
            stretch_start, stretch_named = index, False
        elif stretch_named or event.start_ms - customer[stretch_start].start_ms > BASELINE_WINDOW_MS:
            continue  # already low: the stretch was named by its break, or the level before it is stale
        # The level the customer fell from: their utterances before the stretch began.
        window_start = customer[stretch_start].start_ms - BASELINE_WINDOW_MS
        earlier = [
            e
            for e in customer[max(0, stretch_start - BASELINE_UTTERANCES) : stretch_start]
            if e.end_ms >= window_start
        ]
        recent_level = _mean([e.score for e in earlier])
        drop = (NEUTRAL_SCORE if recent_level is None else recent_level) - event.score
        if drop < SPIKE_MIN_DROP:
            continue
        close_to_last = bool(spikes) and event.start_ms - spikes[-1].at_ms < SPIKE_MIN_GAP_MS
        if close_to_last and event.score >= spikes[-1].score:
            continue  # the moment is named already, by a deeper line; a deeper one later may still take it
        stretch_named = True
        if close_to_last:
            # One moment is named once, by its deepest point: a dip at a pain point followed by the
            # customer's reaction to the price a few seconds later is the price's spike.
            spikes.pop()
        topic = topics.at(event)
        spikes.append(
            Spike(
                at_ms=event.start_ms,
                utterance_id=event.utterance_id,
                channel=event.channel,
                score=event.score,
                drop=round(drop, 4),
                topic=topic,
                text=event.text,
                line=_spike_line(event.start_ms, topic, event.score),
            )
        )
    return spikes


# -------------------------------------------------------------------------------------- turning points


def smoothed_trend(customer: Sequence[UtteranceScore]) -> list[float]:
    """The live badge's rolling average after each customer utterance (30 s, time-weighted)."""
    rolling = RollingAverage(SMOOTHING_WINDOW_MS)
    trend: list[float] = []
    for event in customer:
        rolling.add(event.start_ms, event.end_ms, event.score)
        value = rolling.value
        assert value is not None  # an utterance was just added
        trend.append(value)
    return trend


def _turn_line(
    direction: Direction, at_ms: int, topic: str | None, from_score: float, to_score: float
) -> str:
    if direction == "down":
        what = "turned negative" if to_score < NEGATIVE_LEVEL else "dropped"
    else:
        what = "recovered" if from_score < NEGATIVE_LEVEL else "rose"
    about = f" ({_phrase(topic)})" if topic else ""
    return (
        f"customer sentiment {what} at {format_call_time(at_ms)}{about}: {from_score:.2f} -> {to_score:.2f}"
    )


def _swings(trend: Sequence[float]) -> list[tuple[Direction, int, int]]:
    """(direction, index of the extreme it turned from, index of the extreme it reached), in order.

    A zig-zag filter: a turn is confirmed once the last ``TURN_MIN_UTTERANCES`` values of the trend all lie
    ``TURN_MIN_SWING`` or more beyond the running extreme (the smoothing spreads one outlier over about two
    values, so three means the change outlasted it). Before the first turn, coming back from an outlier
    (down to a dip, then back up to the level of before) is no turn either."""
    swings: list[tuple[Direction, int, int]] = []
    direction: Direction | None = None
    high = low = 0  # indexes of the running extremes since the last turn

    def moved(i: int, extreme: int, sign: int) -> bool:
        recent = trend[max(0, i - TURN_MIN_UTTERANCES + 1) : i + 1]
        return i - extreme >= TURN_MIN_UTTERANCES and all(
            sign * (v - trend[extreme]) >= TURN_MIN_SWING for v in recent
        )

    def retrace(later: int, earlier: int) -> bool:
        """The extreme ``later`` was reached by an unconfirmed swing away from ``earlier``."""
        return direction is None and earlier < later and abs(trend[later] - trend[earlier]) >= TURN_MIN_SWING

    for i, value in enumerate(trend):
        if value > trend[high]:
            high = i
        if value < trend[low]:
            low = i
        if direction != "down" and moved(i, high, -1) and not retrace(high, low):
            swings.append(("down", high, i))
            direction, low = "down", min(range(high, i + 1), key=lambda j: trend[j])
        elif direction != "up" and moved(i, low, +1) and not retrace(low, high):
            swings.append(("up", low, i))
            direction, high = "up", max(range(low, i + 1), key=lambda j: trend[j])
        if swings:  # the current swing reaches its running extreme
            kind, start, _ = swings[-1]
            swings[-1] = (kind, start, low if kind == "down" else high)
    return swings


def find_turning_points(customer: Sequence[UtteranceScore], topics: TopicFinder) -> list[TurningPoint]:
    trend = smoothed_trend(customer)
    points: list[TurningPoint] = []
    for direction, extreme, reached in _swings(trend):
        tolerance = TURN_PLATEAU_SHARE * abs(trend[reached] - trend[extreme])
        plateau = [j for j in range(extreme, reached) if abs(trend[j] - trend[extreme]) <= tolerance]
        first = customer[plateau[-1] + 1]  # the first utterance of the new direction
        from_score, to_score = round(trend[extreme], 4), round(trend[reached], 4)
        topic = topics.at(first)
        points.append(
            TurningPoint(
                at_ms=first.start_ms,
                utterance_id=first.utterance_id,
                direction=direction,
                from_score=from_score,
                to_score=to_score,
                topic=topic,
                line=_turn_line(direction, first.start_ms, topic, from_score, to_score),
            )
        )
    return points


# --------------------------------------------------------------------------------------------- quarters


def split_quarters(
    events: Sequence[UtteranceScore], customer: Sequence[UtteranceScore]
) -> list[QuarterStats]:
    """The call (0 to the last utterance's end) in four equal parts; an utterance belongs to the part
    holding its midpoint."""
    end = max((e.end_ms for e in events), default=0)
    bounds = [round(end * q / 4) for q in range(5)]
    customer_ids = {e.utterance_id for e in customer}

    def quarter_of(event: UtteranceScore) -> int:
        middle = (event.start_ms + event.end_ms) / 2
        return next((q for q in range(3) if middle < bounds[q + 1]), 3)

    quarters: list[QuarterStats] = []
    for q in range(4):
        inside = [e for e in events if quarter_of(e) == q]
        quarters.append(
            QuarterStats(
                quarter=q + 1,
                start_ms=bounds[q],
                end_ms=bounds[q + 1],
                customer_avg=_mean([e.score for e in inside if e.utterance_id in customer_ids]),
                agent_avg=_mean([e.score for e in inside if e.channel == "agent"]),
                utterances=len(inside),
            )
        )
    return quarters


def _quarters_line(quarters: Sequence[QuarterStats]) -> str | None:
    """Only worth a line when the customer spoke in at least two quarters."""
    if sum(q.customer_avg is not None for q in quarters) < 2:
        return None
    values = ["n/a" if q.customer_avg is None else f"{q.customer_avg:.2f}" for q in quarters]
    return "customer sentiment by quarter: " + " -> ".join(values)


def _objections_line(tags: Sequence[ObjectionTag]) -> str | None:
    if not tags:
        return None
    times: dict[str, list[int]] = {}
    for tag in sorted(tags, key=lambda t: (t.start_ms, t.utterance_id)):
        times.setdefault(tag.tag, []).append(tag.start_ms)
    parts = []
    for name, starts in times.items():
        shown = ", ".join(format_call_time(ms) for ms in starts[:TAG_TIMES_SHOWN])
        more = f" (+{len(starts) - TAG_TIMES_SHOWN} more)" if len(starts) > TAG_TIMES_SHOWN else ""
        parts.append(f"{name} at {shown}{more}")
    return "objections: " + "; ".join(parts)


# ------------------------------------------------------------------------------------------------ report


def _count_line(stats: CallStatistics) -> str:
    mixed = stats.utterance_count - stats.customer_count - stats.agent_count
    extra = f", {mixed} mixed" if mixed else ""
    return (
        f"{stats.utterance_count} utterances scored "
        f"({stats.customer_count} customer, {stats.agent_count} agent{extra})"
    )


def _moment_lines(spikes: Sequence[Spike], turns: Sequence[TurningPoint]) -> list[str]:
    """The sharpest spikes and the widest turns, in call-time order. A downturn that starts with a listed
    spike is left to the spike's line: one moment, one line."""
    sharpest = sorted(spikes, key=lambda s: -s.drop)[:SPIKE_LINES]
    spiked = {s.utterance_id for s in sharpest}
    turns = [t for t in turns if not (t.direction == "down" and t.utterance_id in spiked)]
    widest = sorted(turns, key=lambda t: -abs(t.to_score - t.from_score))[:TURN_LINES]
    moments = [(t.at_ms, 0, t.line) for t in widest] + [(s.at_ms, 1, s.line) for s in sharpest]
    lines = [line for _, _, line in sorted(moments)]
    if len(turns) > TURN_LINES:
        lines.append(f"{len(turns) - TURN_LINES} more turning points")
    if len(spikes) > SPIKE_LINES:
        lines.append(f"{len(spikes) - SPIKE_LINES} more negative spikes")
    return lines


def build_report(
    events: Sequence[UtteranceScore], stats: CallStatistics, tags: Sequence[ObjectionTag] = ()
) -> CallReport:
    ordered = _in_order(events)
    customer = customer_side(ordered)
    sorted_tags = tuple(sorted(tags, key=lambda t: (t.start_ms, t.utterance_id)))
    customer_avg = (
        stats.customer_avg_sentiment if stats.customer_count else _mean([e.score for e in customer])
    )
    quarters = split_quarters(ordered, customer)
    if not ordered:
        return CallReport(("no utterances were scored",), (), (), tuple(quarters), sorted_tags, None, None)
    topics = TopicFinder(ordered, sorted_tags)
    spikes = find_spikes(customer, topics)
    turns = find_turning_points(customer, topics)
    lines = [_count_line(stats)]
    if customer_avg is not None:
        lines.append(f"customer average sentiment {customer_avg:.2f}")
    else:
        lines.append("no customer speech was scored")
    if stats.agent_avg_sentiment is not None:
        lines.append(f"agent average sentiment {stats.agent_avg_sentiment:.2f}")
    lines += [line for line in (_quarters_line(quarters),) if line]
    lines += _moment_lines(spikes, turns)
    lines += [line for line in (_objections_line(sorted_tags),) if line]
    return CallReport(
        lines=tuple(lines),
        spikes=tuple(spikes),
        turning_points=tuple(turns),
        quarters=tuple(quarters),
        tags=sorted_tags,
        customer_avg_sentiment=customer_avg,
        agent_avg_sentiment=stats.agent_avg_sentiment,
    )
