"""The words every layer shares: who spoke, what the model said, one scored utterance, a call's statistics,
and the rows the gateway and the post-call worker both read (a call, a day's roll-up, a day's drift).

Plain data and pure functions, no I/O: the services, the post-call worker and the tools all speak in these
types, so none of them has to import another's persistence or transport module to name a scored utterance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any, Literal

Channel = Literal["customer", "agent", "mixed"]
"""Who spoke: the customer, the rep (agent), or both on one downmixed channel."""

Label = Literal["negative", "neutral", "positive"]
LABELS: tuple[Label, ...] = ("negative", "neutral", "positive")
"""The model's classes, in the order of its outputs."""

NEGATIVE_SPIKE_THRESHOLD = 0.30
"""A customer score below this is a "negative spike" in a call's report (the badge's red line)."""

CallStatus = Literal["live", "ended", "failed"]

REPORT_PENDING = "report_pending"
"""The key, in ``calls.summary``, of a call whose after-call report the post-call worker still owes (it was
unreachable when the call ended): the worker's sweep completes the report, the tags and the CRM push."""


@dataclass(frozen=True, slots=True)
class UtteranceScore:
    """One utterance of a call with its score, flat: a row of nlp_events. `created_at` is set by the database.

    On the wire the same thing is sentiment.proto's ScoredUtterance (a chopper Utterance beside a
    SentimentScore); this flat form is what is stored, reported on and aggregated.
    """

    call_id: str
    utterance_id: int
    channel: Channel
    start_ms: int
    end_ms: int
    text: str  # PII-masked
    label: Label
    p_negative: float
    p_neutral: float
    p_positive: float
    score: float  # p_positive + 0.5 * p_neutral, in [0, 1]
    model_version: str
    inference_ms: float | None = None
    text_p_negative: float | None = None
    """The text model's probabilities alone when the voice's tone was fused into p_* (None: it was not,
    and p_* are the text's)."""
    text_p_neutral: float | None = None
    text_p_positive: float | None = None
    fusion_version: str | None = None
    """The fusion head that fused them; None when the score is the text's alone."""
    created_at: datetime | None = None

    @property
    def tone_fused(self) -> bool:
        return self.fusion_version is not None and self.text_p_negative is not None

    @property
    def text_score(self) -> float:
        """The one-number score of the text alone (``score`` when nothing was fused)."""
        if self.text_p_positive is None or self.text_p_neutral is None:
            return self.score
        return self.text_p_positive + 0.5 * self.text_p_neutral

    @property
    def text_label(self) -> Label:
        if not self.tone_fused:
            return self.label
        probabilities = (self.text_p_negative or 0.0, self.text_p_neutral or 0.0, self.text_p_positive or 0.0)
        return LABELS[probabilities.index(max(probabilities))]

    @property
    def tone_moved(self) -> bool:
        """Whether the voice moved the score enough for a reader to care: another label than the words
        alone, or the score moved by at least ``TONE_MOVED_SCORE``."""
        return self.tone_fused and (
            self.text_label != self.label or abs(self.score - self.text_score) >= TONE_MOVED_SCORE
        )


TONE_MOVED_SCORE = 0.15
"""A fused score this far from the text's alone is shown as moved by tone (a sixth of the scale: about
the gap between a neutral and a mildly negative utterance)."""


@dataclass(frozen=True, slots=True)
class CallRow:
    """A row of calls, with its events in utterance order when read with them (the gateway's get_call)."""

    call_id: str
    tenant: str
    region: str
    agent: str
    team: str
    language: str
    status: CallStatus
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    avg_sentiment: float | None
    min_sentiment: float | None
    customer_avg_sentiment: float | None
    agent_avg_sentiment: float | None
    utterance_count: int
    objection_tags: tuple[str, ...]
    summary: dict[str, Any] | None
    metadata: dict[str, Any]
    events: tuple[UtteranceScore, ...] = ()


CALL_ROW_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(CallRow) if f.name != "events")
"""The columns of calls that make a CallRow (every field but ``events``), in field order."""


def call_row(row: Mapping[str, Any], events: Iterable[UtteranceScore] = ()) -> CallRow:
    """A CallRow from a calls row read as a dict (``CALL_ROW_COLUMNS``)."""
    values = dict(row)
    values["objection_tags"] = tuple(values["objection_tags"] or ())
    return CallRow(**values, events=tuple(events))


@dataclass(frozen=True, slots=True)
class RollupRow:
    """A row of daily_rollups: one agent's day (`agent` set) or one team's day (`agent` == "")."""

    day: date
    tenant: str
    team: str
    agent: str
    calls: int
    utterances: int
    customer_utterances: int
    avg_sentiment: float | None
    negative_rate: float | None


@dataclass(frozen=True)
class DriftRow:
    """A row of drift_daily: one tenant's day of drift indicators (postcall/drift.py) and their checks
    against the trailing days and the training baseline (postcall/drift_rule.py), as the worker stored
    them."""

    tenant: str
    day: date
    utterances: int
    text_utterances: int
    token_length: float | None
    stop_word_ratio: float | None
    oov_rate: float | None
    negative_share: float | None
    neutral_share: float | None
    positive_share: float | None
    mean_confidence: float | None
    checks: list[dict[str, Any]]
    """One object per indicator: name, value, baseline, trailing_mean, trailing_sd, trailing_days, z,
    baseline_change, status ("drift", "usual", "learning", "little_data")."""
    drifting: bool
    alert_key: str | None
    """The Slack message's dedupe key in webhook_outbox; None when no message was due."""
    baseline_model: str
    computed_at: datetime


DRIFT_ROW_COLUMNS = tuple(f.name for f in fields(DriftRow))


@dataclass(frozen=True)
class CallStatistics:
    """Aggregates of a call's scores. Averages are None when the call has no (such) utterance.

    ``avg_sentiment`` and ``min_sentiment`` cover every speaker (as the ``calls`` table stores them);
    the customer's own average and minimum are kept apart because the badge and the public gRPC
    ``CallSummary`` follow the customer.
    """

    utterance_count: int
    avg_sentiment: float | None
    min_sentiment: float | None
    customer_count: int
    customer_avg_sentiment: float | None
    customer_min_sentiment: float | None
    agent_count: int
    agent_avg_sentiment: float | None
    label_counts: Mapping[str, int] = field(default_factory=dict)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def compute_call_stats(events: Iterable[UtteranceScore]) -> CallStatistics:
    """Aggregates over ``events`` (any order; duplicates of one utterance_id count once)."""
    unique = {e.utterance_id: e for e in events}.values()
    scores = [e.score for e in unique]
    customer = [e.score for e in unique if e.channel == "customer"]
    agent = [e.score for e in unique if e.channel == "agent"]
    labels: dict[str, int] = dict.fromkeys(LABELS, 0)
    for e in unique:
        labels[e.label] = labels.get(e.label, 0) + 1
    return CallStatistics(
        utterance_count=len(scores),
        avg_sentiment=_mean(scores),
        min_sentiment=min(scores) if scores else None,
        customer_count=len(customer),
        customer_avg_sentiment=_mean(customer),
        customer_min_sentiment=min(customer) if customer else None,
        agent_count=len(agent),
        agent_avg_sentiment=_mean(agent),
        label_counts=labels,
    )


def format_call_time(ms: int) -> str:
    """Call time as mm:ss (h:mm:ss past an hour), the way a reviewer jumps to a moment."""
    seconds = ms // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
