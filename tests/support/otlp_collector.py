"""A stand-in OpenTelemetry collector for tests: receives OTLP/gRPC traces (and swallows metrics and logs).

Services export with ``OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint``; Envoy with the same endpoint in its
bootstrap (``MeshLayout.otlp_endpoint``). Every exported span is kept, flattened into an ``ExportedSpan``
that carries its resource (``service.name``, ``service.instance.id``), so a test can ask which processes
a trace went through.

The server is a plain (threaded) ``grpc.server``, not ``grpc.aio``: it runs beside any event loop, and a
test's loop that blocks for a moment never makes an exporter time out.

    with OtlpCollector() as collector:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.endpoint
        ...
        spans = collector.wait_for(lambda spans: any(s.service_name == "envoy" for s in spans), 15)

Metrics and logs are accepted and counted (an exporter that gets UNIMPLEMENTED logs an error at every
export and at shutdown), not decoded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["ExportedSpan", "OtlpCollector", "any_value", "attributes_of"]


def any_value(value: common_pb2.AnyValue) -> Any:
    """An OTLP AnyValue as plain Python (str, bool, int, float, bytes, list, dict; None when unset)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_of(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, Any]:
    return {pair.key: any_value(pair.value) for pair in pairs}


@dataclass(frozen=True)
class ExportedSpan:
    """One span as the collector received it, with the resource of the batch it came in."""

    trace_id: str
    span_id: str
    parent_span_id: str
    """"" for a root span."""
    name: str
    kind: int
    """trace_pb2.Span.SpanKind (SPAN_KIND_SERVER, ...)."""
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]
    scope: str

    @property
    def service_name(self) -> str:
        return str(self.resource.get("service.name", ""))

    @property
    def instance(self) -> str:
        """Which process: ``service.instance.id`` where the exporter sets it, else the service name."""
        return str(self.resource.get("service.instance.id", self.service_name))

    @property
    def kind_name(self) -> str:
        return trace_pb2.Span.SpanKind.Name(self.kind)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.service_name}:{self.name} trace={self.trace_id[:8]} attrs={dict(self.attributes)}"


def flatten(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ExportedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ExportedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=attributes_of(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                    )
                )
    return spans


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: OtlpCollector) -> None:
        self._collector = collector

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._collector._add(flatten(request))
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, collector: OtlpCollector) -> None:
        self._collector = collector

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._collector._count("metrics")
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, collector: OtlpCollector) -> None:
        self._collector = collector

    def Export(
        self, request: logs_service_pb2.ExportLogsServiceRequest, context: grpc.ServicerContext
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        self._collector._count("logs")
        return logs_service_pb2.ExportLogsServiceResponse()


class OtlpCollector:
    """An OTLP/gRPC receiver on ``host`` (port 0: a free one); start with ``start()`` or ``with``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._server: grpc.Server | None = None
        self._spans: list[ExportedSpan] = []
        self._exports: dict[str, int] = defaultdict(int)
        self._changed = threading.Condition()

    # -- life cycle

    def start(self) -> OtlpCollector:
        # A few workers: Envoy and every service export concurrently, each waiting for its answer.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="otlp"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self), server)
        self._port = server.add_insecure_port(f"{self._host}:{self._requested_port}")
        if not self._port:
            raise RuntimeError(f"the OTLP collector could not bind {self._host}:{self._requested_port}")
        server.start()
        self._server = server
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None

    def __enter__(self) -> OtlpCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``host:port`` as Envoy's cluster wants it."""
        if self._port is None:
            raise RuntimeError("the collector is not started")
        return f"{self._host}:{self._port}"

    @property
    def endpoint(self) -> str:
        """The value for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (plaintext gRPC)."""
        return f"http://{self.address}"

    # -- what was received

    def _add(self, spans: Sequence[ExportedSpan]) -> None:
        with self._changed:
            self._spans.extend(spans)
            self._exports["traces"] += 1
            self._changed.notify_all()

    def _count(self, signal: str) -> None:
        with self._changed:
            self._exports[signal] += 1

    @property
    def exports(self) -> dict[str, int]:
        """Export requests received so far, by signal ("traces", "metrics", "logs")."""
        with self._changed:
            return dict(self._exports)

    def spans(self, where: Callable[[ExportedSpan], bool] | None = None) -> list[ExportedSpan]:
        """Every span received so far (that ``where`` accepts)."""
        with self._changed:
            spans = list(self._spans)
        return [s for s in spans if where is None or where(s)]

    def trace(self, trace_id: str) -> list[ExportedSpan]:
        return self.spans(lambda s: s.trace_id == trace_id)

    def traces(self, where: Callable[[ExportedSpan], bool] | None = None) -> dict[str, list[ExportedSpan]]:
        """trace id -> all its spans, for every trace that holds a span ``where`` accepts."""
        ids = {s.trace_id for s in self.spans(where)}
        grouped: dict[str, list[ExportedSpan]] = {}
        for span in self.spans(lambda s: s.trace_id in ids):
            grouped.setdefault(span.trace_id, []).append(span)
        return grouped

    def wait_for(
        self, condition: Callable[[list[ExportedSpan]], bool], timeout_s: float
    ) -> list[ExportedSpan]:
        """Block until ``condition(all spans)`` holds; return the spans. TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not condition(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"the collector's {len(self._spans)} spans did not satisfy the condition"
                    )
                self._changed.wait(min(left, 0.5))
            return list(self._spans)

    async def wait_for_async(
        self, condition: Callable[[list[ExportedSpan]], bool], timeout_s: float, poll_s: float = 0.1
    ) -> list[ExportedSpan]:
        """``wait_for`` for asyncio code: polls without blocking the event loop."""
        deadline = time.monotonic() + timeout_s
        while not condition(spans := self.spans()):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the collector's {len(spans)} spans did not satisfy the condition")
            await asyncio.sleep(poll_s)
        return spans
