"""The gateway's own metrics; plain Python, no I/O.

A handful of counters, gauges and latency histograms rendered in the Prometheus text format for
``GET /metrics``. Each observation is also sent to the OpenTelemetry instrument of the same name
(``callsense.telemetry``), so an OTLP collector gets the same numbers; without ``setup_telemetry`` those
instruments are no-ops.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from callsense import telemetry

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
