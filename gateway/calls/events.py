"""The live events of a call: what its subscribers (the WebSocket, gRPC watchers, the console) are pushed.

A call's events form one sequence (``seq``): transcript segments, provisional scores, scores, badge
changes, coaching cues, errors of the call and, last, its summary. ``CallUpdate`` is their union.
``CallOutcome`` is the end of a call (how it ended, its statistics and report), carried by the
LiveSummary and by a batch's result.
Transports turn these into their wire format (gateway/schemas.py for JSON, gateway/grpc_api.py for
sentiment.proto); the names differ from the proto messages on purpose, these are not the wire types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from callsense.domain import CallStatistics, Channel, UtteranceScore
from callsense.report import CallReport, tag_names
from callsense.v1 import asr_pb2
from gateway.calls.errors import InputError
from gateway.calls.inputs import channel_from_role
from gateway.calls.provisional import ProvisionalMood
from gateway.live import BadgeChange, BadgeState, CoachingCue


@dataclass(frozen=True)
class CallOutcome:
    """The end of a call, live or batch: how it ended (status, reason), its statistics and report.

    Built by ``finish_call`` (gateway/calls/finish.py); the gRPC API sends it as sentiment.proto's
    CallSummary, the JSON APIs as the ``summary`` event."""

    call_id: str
    status: Literal["ended", "failed"]
    reason: str
    stats: CallStatistics
    lines: tuple[str, ...]
    objection_tags: tuple[str, ...] = ()
    badge: BadgeState | None = None
    """The live badge's colour at the end of the call; None for a batch (it had no live badge)."""
    report: CallReport | None = None
    """Spikes, turning points, quarters and tagged segments (callsense/report.py)."""

    @classmethod
    def of(
        cls,
        call_id: str,
        status: Literal["ended", "failed"],
        reason: str,
        stats: CallStatistics,
        report: CallReport,
        badge: BadgeState | None = None,
    ) -> CallOutcome:
        tags = tuple(tag_names(report.tags))
        return cls(call_id, status, reason, stats, report.lines, tags, badge, report)

    def for_store(self) -> dict[str, Any]:
        """What goes into calls.summary (jsonb): the report, the reason and the final badge."""
        stored: dict[str, Any] = {
            **(self.report.to_json() if self.report is not None else {}),
            "reason": self.reason,
            "lines": list(self.lines),
            "customer_min_sentiment": self.stats.customer_min_sentiment,
            "label_counts": dict(self.stats.label_counts),
        }
        if self.badge is not None:
            stored["badge"] = self.badge.value
        return stored


@dataclass(frozen=True)
class LiveScore:
    """An utterance was scored (and stored)."""

    call_id: str
    seq: int
    scored: UtteranceScore


@dataclass(frozen=True)
class LiveBadge:
    """The live badge changed colour (``change.at_ms`` is call time)."""

    call_id: str
    seq: int
    change: BadgeChange


@dataclass(frozen=True)
class LiveCue:
    """A coaching cue for the rep (``cue.at_ms`` is call time)."""

    call_id: str
    seq: int
    cue: CoachingCue


@dataclass(frozen=True)
class LiveSummary:
    """The call has ended: the last event of its sequence."""

    call_id: str
    seq: int
    summary: CallOutcome


@dataclass(frozen=True)
class LiveError:
    """A problem. ``seq`` is None for errors addressed to one client only (its bad input, its backlog):
    they are not events of the call and take no place in its sequence."""

    call_id: str
    seq: int | None
    code: str
    message: str
    fatal: bool
    status: str = "INVALID_ARGUMENT"  # gRPC status code name, for sentiment.proto's Error.code


@dataclass(frozen=True)
class LiveTranscript:
    """A partial or final transcript segment from the ASR (``source`` has words and prosody too)."""

    call_id: str
    seq: int
    source: asr_pb2.TranscriptEvent

    @property
    def channel(self) -> Channel:
        return channel_from_role(self.source.channel)


@dataclass(frozen=True)
class LiveProvisional:
    """The mood of a turn still being spoken (gateway/calls/provisional.py); never stored, not the badge's."""

    call_id: str
    seq: int
    mood: ProvisionalMood


CallUpdate = LiveTranscript | LiveProvisional | LiveScore | LiveBadge | LiveCue | LiveSummary | LiveError


def client_error(call_id: str, err: InputError, *, fatal: bool = False) -> LiveError:
    """A client's bad input as an error for that client only (no ``seq``)."""
    return LiveError(call_id, None, err.code, err.message, fatal, err.status.name)
