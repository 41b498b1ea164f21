"""Numbers about calls and about the gateway itself; plain Python, no I/O.

- Call statistics: the aggregates of one call's scored utterances (stored with the call, sent in the
  summary event) and the human-readable summary lines a manager scans.
- Gateway metrics: a handful of counters, gauges and latency histograms rendered in the Prometheus text
  format for ``GET /metrics``. Each observation is also sent to the OpenTelemetry instrument of the same
  name (``callsense.telemetry``), so an OTLP collector gets the same numbers; without ``setup_telemetry``
  those instruments are no-ops.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from callsense import telemetry
from gateway.store import CallStats, ScoredEvent

# A customer score below this marks a "negative spike" in the summary (the badge's red threshold).
NEGATIVE_SPIKE_THRESHOLD = 0.30


# --------------------------------------------------------------------------------------------- call stats


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

    def to_store(self) -> CallStats:
        """The subset the ``calls`` row holds."""
        return CallStats(
            utterance_count=self.utterance_count,
            avg_sentiment=self.avg_sentiment,
            min_sentiment=self.min_sentiment,
            customer_avg_sentiment=self.customer_avg_sentiment,
            agent_avg_sentiment=self.agent_avg_sentiment,
        )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def compute_call_stats(events: Iterable[ScoredEvent]) -> CallStatistics:
    """Aggregates over ``events`` (any order; duplicates of one utterance_id count once)."""
    unique = {e.utterance_id: e for e in events}.values()
    scores = [e.score for e in unique]
    customer = [e.score for e in unique if e.channel == "customer"]
    agent = [e.score for e in unique if e.channel == "agent"]
    labels: dict[str, int] = {"negative": 0, "neutral": 0, "positive": 0}
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


# --------------------------------------------------------------------------------------------- metrics

# Stage latencies in ms; the same buckets as every other callsense histogram.
LATENCY_BUCKETS_MS: tuple[float, ...] = tuple(float(b) for b in telemetry.LATENCY_MS_BUCKETS)


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int]
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1


def _label_text(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""

    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class GatewayMetrics:
    """The gateway's Prometheus metrics; thread-safe, cheap enough to call per utterance."""

    STAGES = ("chopper", "scorer", "store", "end_to_end")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active_calls = 0
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._histograms: dict[str, _Histogram] = {}
        self._active_otel = telemetry.up_down_counter(
            "callsense.gateway.active_calls", description="live calls held by this gateway"
        )

    # -- recording

    def call_started(self) -> None:
        with self._lock:
            self._active_calls += 1
        self._active_otel.add(1)

    def call_ended(self, status: str, reason: str) -> None:
        with self._lock:
            self._active_calls -= 1
        self._active_otel.add(-1)
        self.count("callsense_gateway_calls_total", status=status, reason=reason)

    def count(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add to the counter ``name`` (a Prometheus name ending in ``_total``) with ``labels``."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + amount
        telemetry.counter("callsense.gateway." + name.removeprefix("callsense_gateway_")).add(amount, labels)

    def observe_latency(self, stage: str, ms: float) -> None:
        """One latency of ``stage`` (chopper, scorer, store, end_to_end) in milliseconds."""
        with self._lock:
            hist = self._histograms.get(stage)
            if hist is None:
                hist = self._histograms[stage] = _Histogram(LATENCY_BUCKETS_MS, [0] * len(LATENCY_BUCKETS_MS))
            hist.observe(ms)
        telemetry.histogram(f"callsense.gateway.{stage}_latency").record(ms)

    # -- reading

    @property
    def active_calls(self) -> int:
        with self._lock:
            return self._active_calls

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            lines = [
                "# HELP callsense_gateway_active_calls Live calls held by this gateway.",
                "# TYPE callsense_gateway_active_calls gauge",
                f"callsense_gateway_active_calls {self._active_calls}",
            ]
            lines += self._render_counters()
            lines += self._render_histograms()
        return "\n".join(lines) + "\n"

    def _render_counters(self) -> list[str]:
        lines: list[str] = []
        for name in sorted({name for name, _ in self._counters}):
            lines.append(f"# TYPE {name} counter")
            for (metric, labels), value in sorted(self._counters.items()):
                if metric == name:
                    lines.append(f"{name}{_label_text(dict(labels))} {_number(value)}")
        return lines

    def _render_histograms(self) -> list[str]:
        if not self._histograms:
            return []
        name = "callsense_gateway_stage_latency_ms"
        lines = [
            f"# HELP {name} Latency of each pipeline stage as the gateway sees it, in milliseconds.",
            f"# TYPE {name} histogram",
        ]
        for stage, hist in sorted(self._histograms.items()):
            for bound, count in zip(hist.buckets, hist.counts, strict=True):
                lines.append(f"{name}_bucket{_label_text({'stage': stage, 'le': _number(bound)})} {count}")
            lines.append(f"{name}_bucket{_label_text({'stage': stage, 'le': '+Inf'})} {hist.count}")
            lines.append(f"{name}_sum{_label_text({'stage': stage})} {_number(hist.total)}")
            lines.append(f"{name}_count{_label_text({'stage': stage})} {hist.count}")
        return lines
