"""The manager's report of a call as data: what the post-call worker builds (postcall/summary.py) and the
gateway stores in ``calls.summary`` (``CallReport.to_json``), and its form on the wire (postcall.proto).

Plain values and their conversions, no logic: the worker finds the spikes, turns and tags; the gateway
only carries the report. ``to_json`` is the stored JSON, field for field (ints stay ints, absent values
are null), and the proto conversions round-trip exactly (scores are doubles on the wire).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from callsense.domain import LABELS, REPORT_PENDING, CallStatistics, UtteranceScore
from callsense.v1 import audio_pb2, postcall_pb2, scorer_pb2

ObjectionName = Literal["pricing pushback", "timeline concern", "competitor mention", "authority", "no need"]
TAGS: tuple[ObjectionName, ...] = get_args(ObjectionName)
Source = Literal["rules", "model", "llm"]
Direction = Literal["down", "up"]


@dataclass(frozen=True)
class ObjectionTag:
    """One objection in one segment; ``confidence`` in [0, 1] (rules: fixed; model: the similarity)."""

    tag: str
    utterance_id: int
    channel: str
    start_ms: int
    end_ms: int
    text: str
    confidence: float
    source: Source

    def __post_init__(self) -> None:
        if self.tag not in TAGS:
            raise ValueError(f"unknown objection tag {self.tag!r}; known: {', '.join(TAGS)}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_event(cls, event: UtteranceScore, tag: str, confidence: float, source: Source) -> ObjectionTag:
        return cls(
            tag=tag,
            utterance_id=event.utterance_id,
            channel=event.channel,
            start_ms=event.start_ms,
            end_ms=event.end_ms,
            text=event.text,
            confidence=round(min(1.0, max(0.0, confidence)), 3),
            source=source,
        )


@dataclass(frozen=True)
class Spike:
    at_ms: int
    utterance_id: int
    channel: str
    score: float
    drop: float  # below the customer's recent level
    topic: str | None
    text: str
    line: str


@dataclass(frozen=True)
class TurningPoint:
    at_ms: int  # start of the first utterance of the new direction
    utterance_id: int
    direction: Direction
    from_score: float  # the smoothed level at the extreme it turned from
    to_score: float  # the next extreme the trend reached (or where the call ended)
    topic: str | None
    line: str


@dataclass(frozen=True)
class QuarterStats:
    quarter: int  # 1..4
    start_ms: int
    end_ms: int
    customer_avg: float | None
    agent_avg: float | None
    utterances: int


@dataclass(frozen=True)
class CallReport:
    lines: tuple[str, ...]
    spikes: tuple[Spike, ...]
    turning_points: tuple[TurningPoint, ...]
    quarters: tuple[QuarterStats, ...]
    tags: tuple[ObjectionTag, ...]
    customer_avg_sentiment: float | None
    agent_avg_sentiment: float | None
    pending: bool = False
    """The empty stand-in of a report the post-call worker could not build when the call ended: its JSON
    says ``REPORT_PENDING``, and the worker's sweep replaces it (and sends the CRM push) later."""
    worker_busy: bool = field(default=False, compare=False)
    """Of a pending report: the worker answered but had too many reports waiting (RESOURCE_EXHAUSTED), as
    opposed to not answering at all; what the call's clients are told (never stored)."""

    @classmethod
    def owed(cls, stats: CallStatistics, *, worker_busy: bool = False) -> CallReport:
        """The stand-in stored while the worker cannot build the report: no lines, tags or moments; the
        averages the gateway knows."""
        return cls(
            (),
            (),
            (),
            (),
            (),
            stats.customer_avg_sentiment,
            stats.agent_avg_sentiment,
            pending=True,
            worker_busy=worker_busy,
        )

    def to_json(self) -> dict[str, Any]:
        stored = {
            "lines": list(self.lines),
            "spikes": [asdict(s) for s in self.spikes],
            "turning_points": [asdict(t) for t in self.turning_points],
            "quarters": [asdict(q) for q in self.quarters],
            "objection_tags": [t.to_json() for t in self.tags],
            "customer_avg_sentiment": self.customer_avg_sentiment,
            "agent_avg_sentiment": self.agent_avg_sentiment,
        }
        if self.pending:
            stored[REPORT_PENDING] = True
        return stored


def tag_names(tags: Sequence[ObjectionTag]) -> list[str]:
    """Distinct tag names in order of first occurrence (call time): the CRM's objections field."""
    names: list[str] = []
    for tag in sorted(tags, key=lambda t: (t.start_ms, t.utterance_id)):
        if tag.tag not in names:
            names.append(tag.tag)
    return names


# --- on the wire (postcall.proto) ---------------------------------------------------------------------------

_CHANNELS = {"customer": audio_pb2.CUSTOMER, "agent": audio_pb2.AGENT, "mixed": audio_pb2.MIXED}
_CHANNEL_NAMES = {number: name for name, number in _CHANNELS.items()}
_LABELS = {"negative": scorer_pb2.NEGATIVE, "neutral": scorer_pb2.NEUTRAL, "positive": scorer_pb2.POSITIVE}
_LABEL_NAMES = {number: name for name, number in _LABELS.items()}
_DIRECTIONS = {"down": postcall_pb2.TREND_DOWN, "up": postcall_pb2.TREND_UP}
_DIRECTION_NAMES = {number: name for name, number in _DIRECTIONS.items()}
_SOURCES = {
    "rules": postcall_pb2.TAG_SOURCE_RULES,
    "model": postcall_pb2.TAG_SOURCE_MODEL,
    "llm": postcall_pb2.TAG_SOURCE_LLM,
}
_SOURCE_NAMES = {number: name for name, number in _SOURCES.items()}
assert set(_LABELS) == set(LABELS)


def _optional(message: Any, field: str) -> Any:
    return getattr(message, field) if message.HasField(field) else None


def _named(names: Mapping[Any, Any], number: int, what: str) -> Any:
    try:
        return names[number]
    except KeyError:
        raise ValueError(f"{what}: {number} is not one of {', '.join(map(str, names.values()))}") from None


def utterance_to_proto(event: UtteranceScore) -> postcall_pb2.UtteranceScore:
    return postcall_pb2.UtteranceScore(
        call_id=event.call_id,
        utterance_id=event.utterance_id,
        channel=_CHANNELS[event.channel],
        start_ms=event.start_ms,
        end_ms=event.end_ms,
        text=event.text,
        label=_LABELS[event.label],
        p_negative=event.p_negative,
        p_neutral=event.p_neutral,
        p_positive=event.p_positive,
        score=event.score,
        model_version=event.model_version,
        inference_ms=event.inference_ms,
    )


def utterance_from_proto(message: postcall_pb2.UtteranceScore) -> UtteranceScore:
    """ValueError, naming the utterance, for an unspecified channel or label."""
    where = f"utterance {message.utterance_id} of call {message.call_id!r}"
    return UtteranceScore(
        call_id=message.call_id,
        utterance_id=message.utterance_id,
        channel=_named(_CHANNEL_NAMES, message.channel, f"{where}: channel"),
        start_ms=message.start_ms,
        end_ms=message.end_ms,
        text=message.text,
        label=_named(_LABEL_NAMES, message.label, f"{where}: label"),
        p_negative=message.p_negative,
        p_neutral=message.p_neutral,
        p_positive=message.p_positive,
        score=message.score,
        model_version=message.model_version,
        inference_ms=_optional(message, "inference_ms"),
    )


def report_to_proto(report: CallReport) -> postcall_pb2.CallReport:
    return postcall_pb2.CallReport(
        lines=report.lines,
        spikes=[
            postcall_pb2.Spike(
                at_ms=s.at_ms,
                utterance_id=s.utterance_id,
                channel=_CHANNELS[s.channel],
                score=s.score,
                drop=s.drop,
                topic=s.topic,
                text=s.text,
                line=s.line,
            )
            for s in report.spikes
        ],
        turning_points=[
            postcall_pb2.TurningPoint(
                at_ms=t.at_ms,
                utterance_id=t.utterance_id,
                direction=_DIRECTIONS[t.direction],
                from_score=t.from_score,
                to_score=t.to_score,
                topic=t.topic,
                line=t.line,
            )
            for t in report.turning_points
        ],
        quarters=[
            postcall_pb2.QuarterStats(
                quarter=q.quarter,
                start_ms=q.start_ms,
                end_ms=q.end_ms,
                customer_avg=q.customer_avg,
                agent_avg=q.agent_avg,
                utterances=q.utterances,
            )
            for q in report.quarters
        ],
        objection_tags=[
            postcall_pb2.ObjectionTag(
                tag=t.tag,
                utterance_id=t.utterance_id,
                channel=_CHANNELS[t.channel],
                start_ms=t.start_ms,
                end_ms=t.end_ms,
                text=t.text,
                confidence=t.confidence,
                source=_SOURCES[t.source],
            )
            for t in report.tags
        ],
        customer_avg_sentiment=report.customer_avg_sentiment,
        agent_avg_sentiment=report.agent_avg_sentiment,
    )


def report_from_proto(message: postcall_pb2.CallReport) -> CallReport:
    """ValueError for an enum value this version does not know (a newer worker)."""
    return CallReport(
        lines=tuple(message.lines),
        spikes=tuple(
            Spike(
                at_ms=s.at_ms,
                utterance_id=s.utterance_id,
                channel=_named(_CHANNEL_NAMES, s.channel, "spike channel"),
                score=s.score,
                drop=s.drop,
                topic=_optional(s, "topic"),
                text=s.text,
                line=s.line,
            )
            for s in message.spikes
        ),
        turning_points=tuple(
            TurningPoint(
                at_ms=t.at_ms,
                utterance_id=t.utterance_id,
                direction=_named(_DIRECTION_NAMES, t.direction, "turning point direction"),
                from_score=t.from_score,
                to_score=t.to_score,
                topic=_optional(t, "topic"),
                line=t.line,
            )
            for t in message.turning_points
        ),
        quarters=tuple(
            QuarterStats(
                quarter=q.quarter,
                start_ms=q.start_ms,
                end_ms=q.end_ms,
                customer_avg=_optional(q, "customer_avg"),
                agent_avg=_optional(q, "agent_avg"),
                utterances=q.utterances,
            )
            for q in message.quarters
        ),
        tags=tuple(
            ObjectionTag(
                tag=t.tag,
                utterance_id=t.utterance_id,
                channel=_named(_CHANNEL_NAMES, t.channel, "objection tag channel"),
                start_ms=t.start_ms,
                end_ms=t.end_ms,
                text=t.text,
                confidence=t.confidence,
                source=_named(_SOURCE_NAMES, t.source, "objection tag source"),
            )
            for t in message.objection_tags
        ),
        customer_avg_sentiment=_optional(message, "customer_avg_sentiment"),
        agent_avg_sentiment=_optional(message, "agent_avg_sentiment"),
    )
