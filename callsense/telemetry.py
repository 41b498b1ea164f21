"""Traces, metrics and logs for every callsense process, tied together by the call id.

Call ``setup_telemetry("scorer")`` once at start-up, before any gRPC server or channel is created (the
gRPC instrumentation wraps ``grpc.aio.server`` and ``grpc.aio.insecure_channel`` when it is installed).

Where spans go:
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` set (a collector's OTLP/gRPC endpoint, e.g. http://otel:4317): batched
  OTLP export of spans and metrics.
- else ``CALLSENSE_TRACE_FILE`` set: one JSON object per finished span appended to that file (shared by
  all processes of a mesh; written synchronously so tests can read it as soon as a call returns).
- else spans are made (so trace ids reach the logs) but not exported.

How every span gets ``call.id``: ``call_context(call_id)`` puts the call id in OpenTelemetry baggage;
baggage travels with the W3C ``baggage`` header on every outgoing gRPC call, and the CallIdSpanProcessor
copies it onto each span as it starts, client and server side alike. (The gRPC client request_hook is not
called for streaming calls, so an attribute hook could not do this.)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import baggage, context, metrics, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, get_current
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from callsense.ids import is_valid_call_id

log = logging.getLogger(__name__)

CALL_ID_KEY = "call.id"
"""Baggage key and span attribute that carry the call id across every hop."""

TRACE_FILE_ENV = "CALLSENSE_TRACE_FILE"
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
LOG_LEVEL_ENV = "CALLSENSE_LOG_LEVEL"

LATENCY_MS_BUCKETS: Sequence[float] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
"""Histogram buckets for stage latencies in milliseconds (the SDK default tops out too coarsely)."""

_METER_NAME = "callsense"


@dataclass(frozen=True)
class Telemetry:
    """The providers set up for this process; ``metric_reader`` lets /metrics or a test read metrics."""

    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    metric_reader: InMemoryMetricReader

    def force_flush(self) -> None:
        """Export pending spans and metrics now (before a test reads them, or before exit)."""
        self.tracer_provider.force_flush()
        self.meter_provider.force_flush()

    def shutdown(self) -> None:
        """Flush and stop exporters; also done automatically at interpreter exit."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


_telemetry: Telemetry | None = None
_setup_lock = threading.Lock()


# --------------------------------------------------------------------------------------------- tracing


class CallIdSpanProcessor(SpanProcessor):
    """Copies the ``call.id`` baggage entry onto every span as it starts."""

    def on_start(self, span: Span, parent_context: context.Context | None = None) -> None:
        call_id = baggage.get_baggage(CALL_ID_KEY, parent_context)  # None context: the current one
        if call_id:
            span.set_attribute(CALL_ID_KEY, str(call_id))


CALL_ID_HEADER = "x-call-id"
"""The header Envoy hashes on (pins a call to one gateway replica) and copies into its spans' call.id."""


class CallIdHeaderPropagator(TextMapPropagator):
    """Carries the call id as the ``x-call-id`` header next to W3C baggage, both ways.

    Out: every instrumented outgoing call of a call's context names the call in ``x-call-id``, so Envoy's
    spans of internal hops (gateway -> Envoy -> scorer) carry ``call.id`` too (Envoy reads no baggage).
    In: a request that names its call only in ``x-call-id`` (what Envoy asks of clients) gets it as
    baggage before its first span starts, so the server span of a WebSocket or gRPC stream, opened
    before the first message says which call it is, carries ``call.id`` as well.
    """

    def extract(
        self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter
    ) -> Context:
        ctx = context if context is not None else get_current()
        if baggage.get_baggage(CALL_ID_KEY, ctx):
            return ctx  # the caller's baggage wins
        values = getter.get(carrier, CALL_ID_HEADER)
        value = values[0].strip() if values else ""
        if not is_valid_call_id(value):
            return ctx  # absent, or not a call id: never let a header put junk into every span
        return baggage.set_baggage(CALL_ID_KEY, value, context=ctx)

    def inject(
        self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter
    ) -> None:
        call_id = baggage.get_baggage(CALL_ID_KEY, context)
        if call_id:
            setter.set(carrier, CALL_ID_HEADER, str(call_id))

    @property
    def fields(self) -> set[str]:
        return {CALL_ID_HEADER}


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as a JSON-ready dict (the line format of the trace file)."""
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "trace_id": format_trace_id(ctx.trace_id) if ctx else None,
        "span_id": format_span_id(ctx.span_id) if ctx else None,
        "parent_id": format_span_id(parent.span_id) if parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service.name": span.resource.attributes.get("service.name"),
        "attributes": {k: list(v) if isinstance(v, tuple) else v for k, v in (span.attributes or {}).items()},
        "status": span.status.status_code.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON line per span to a file that several processes may share.

    Each export is a single ``write`` on an O_APPEND descriptor, so lines from different processes never
    interleave mid-line.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        parent = os.path.dirname(self._path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self._fd: int | None = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans).encode()
        with self._lock:
            if self._fd is None:
                return SpanExportResult.FAILURE
            os.write(self._fd, data)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # every export is written through


def read_trace_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The span records of a trace file (for tests and debugging); skips a torn last line."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _span_processors() -> list[SpanProcessor]:
    """Exporting processors chosen from the environment (see the module docstring)."""
    if os.environ.get(OTLP_ENDPOINT_ENV):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return [BatchSpanProcessor(OTLPSpanExporter())]
    trace_file = os.environ.get(TRACE_FILE_ENV)
    if trace_file:
        return [SimpleSpanProcessor(JsonLinesSpanExporter(trace_file))]
    return []


def _grpc_filter() -> Any:
    """Health checks and reflection are polled constantly by Envoy and probes: keep them out of traces."""
    from opentelemetry.instrumentation.grpc import filters

    return filters.negate(filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection")))


def _instrument_grpc(tracer_provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer

    GrpcAioInstrumentorServer(filter_=_grpc_filter()).instrument(tracer_provider=tracer_provider)
    GrpcAioInstrumentorClient(filter_=_grpc_filter()).instrument(tracer_provider=tracer_provider)


@contextmanager
def call_context(call_id: str) -> Iterator[None]:
    """Within this block every new span, log record and outgoing gRPC call carries ``call_id``.

    Also tags the current span (e.g. a server span that learnt the call id from its first message).
    Enter and leave it in the same task.
    """
    token = context.attach(baggage.set_baggage(CALL_ID_KEY, call_id))
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(CALL_ID_KEY, call_id)
    try:
        yield
    finally:
        context.detach(token)


def current_call_id() -> str | None:
    """The call id of the current context, if any."""
    value = baggage.get_baggage(CALL_ID_KEY)
    return str(value) if value else None


def tracer(name: str = "callsense") -> trace.Tracer:
    """A tracer for spans of your own (``with tracer().start_as_current_span("score_batch"):``)."""
    return trace.get_tracer(name)


# --------------------------------------------------------------------------------------------- metrics


_instruments: dict[tuple[str, str], Any] = {}
_instruments_lock = threading.Lock()


def _instrument(kind: str, name: str, factory: Any) -> Any:
    # The SDK warns on a second create with the same name; services ask by name from many places.
    with _instruments_lock:
        key = (kind, name)
        if key not in _instruments:
            _instruments[key] = factory()
        return _instruments[key]


def histogram(
    name: str, *, unit: str = "ms", description: str = "", boundaries: Sequence[float] = LATENCY_MS_BUCKETS
) -> metrics.Histogram:
    """A histogram by name, created once; defaults suit latencies in ms ("callsense.scorer.inference")."""
    return _instrument(  # type: ignore[no-any-return]
        "histogram",
        name,
        lambda: metrics.get_meter(_METER_NAME).create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=boundaries
        ),
    )


def counter(name: str, *, unit: str = "1", description: str = "") -> metrics.Counter:
    """A monotonic counter by name, created once (e.g. "callsense.gateway.utterances")."""
    return _instrument(  # type: ignore[no-any-return]
        "counter",
        name,
        lambda: metrics.get_meter(_METER_NAME).create_counter(name, unit=unit, description=description),
    )


def up_down_counter(name: str, *, unit: str = "1", description: str = "") -> metrics.UpDownCounter:
    """A counter that goes both ways by name, created once (e.g. active calls, queue depth)."""
    return _instrument(  # type: ignore[no-any-return]
        "up_down_counter",
        name,
        lambda: metrics.get_meter(_METER_NAME).create_up_down_counter(
            name, unit=unit, description=description
        ),
    )


def gauge(name: str, *, unit: str = "1", description: str = "") -> metrics._Gauge:
    """A gauge by name, created once: the last value set per attribute set (e.g. a tenant's drift
    indicators of its last computed day)."""
    return _instrument(  # type: ignore[no-any-return]
        "gauge",
        name,
        lambda: metrics.get_meter(_METER_NAME).create_gauge(name, unit=unit, description=description),
    )


def _metric_readers() -> tuple[InMemoryMetricReader, list[MetricReader]]:
    """Always an in-memory reader (for /metrics and tests); OTLP export too when an endpoint is set."""
    memory = InMemoryMetricReader()
    readers: list[MetricReader] = [memory]
    if os.environ.get(OTLP_ENDPOINT_ENV):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    return memory, readers


# --------------------------------------------------------------------------------------------- logging


class TraceContextFilter(logging.Filter):
    """Adds ``call_id`` and ``trace_id`` to every record ("-" when there is none), for the log format."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "call_id", None):
            record.call_id = current_call_id() or "-"
        ctx = trace.get_current_span().get_span_context()
        record.trace_id = format_trace_id(ctx.trace_id) if ctx.is_valid else "-"
        return True


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [call=%(call_id)s trace=%(trace_id)s] %(message)s"


def setup_logging(service_name: str, level: int | str | None = None) -> None:
    """Log to stderr with call_id and trace_id on every line; level from CALLSENSE_LOG_LEVEL (INFO).

    Idempotent: a second call only adjusts the level.
    """
    root = logging.getLogger()
    root.setLevel(level or os.environ.get(LOG_LEVEL_ENV, "INFO").upper())
    if any(isinstance(f, TraceContextFilter) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(logging.Formatter(f"{service_name} {LOG_FORMAT}"))
    root.addHandler(handler)


# --------------------------------------------------------------------------------------------- set-up


def setup_telemetry(service_name: str, *, configure_logging: bool = True) -> Telemetry:
    """Set up tracing, metrics, propagation, gRPC instrumentation (and logging) for this process.

    Idempotent: OpenTelemetry allows one global provider per process, so a second call (several services
    started in one test process) returns the first set-up unchanged.
    """
    global _telemetry
    with _setup_lock:
        if _telemetry is not None:
            if _telemetry.service_name != service_name:
                log.debug("telemetry already set up as %r; not as %r", _telemetry.service_name, service_name)
            return _telemetry
        resource = Resource.create(
            {"service.name": service_name, "service.instance.id": f"{socket.gethostname()}-{os.getpid()}"}
        )
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(CallIdSpanProcessor())  # first: exporters see the attribute
        for processor in _span_processors():
            tracer_provider.add_span_processor(processor)
        trace.set_tracer_provider(tracer_provider)

        memory_reader, readers = _metric_readers()
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics.set_meter_provider(meter_provider)

        propagate.set_global_textmap(
            CompositePropagator(
                [TraceContextTextMapPropagator(), W3CBaggagePropagator(), CallIdHeaderPropagator()]
            )
        )
        _instrument_grpc(tracer_provider)
        if configure_logging:
            setup_logging(service_name)
        _telemetry = Telemetry(service_name, tracer_provider, meter_provider, memory_reader)
        return _telemetry


def get_telemetry() -> Telemetry | None:
    """The set-up of this process, or None before setup_telemetry."""
    return _telemetry
