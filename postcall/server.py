"""The PostCall gRPC service: a thin layer over ``ReportBuilder``.

``Report`` converts the request's utterances (INVALID_ARGUMENT, naming the utterance, for a channel or a
label left unspecified), builds the report on the builder's threads (the tagger's encoders are CPU work: the
event loop keeps serving health checks and other calls meanwhile; reports queue for a free thread), and
answers it. A full queue answers RESOURCE_EXHAUSTED at once; a caller whose deadline passes while its report
is queued cancels it (grpc.aio cancels the handler). Either way the gateway ends the call with its report
owed, and the sweep builds it. Each request is handled inside ``call_context(call_id)``, so its span and
log lines carry ``call.id``, the report's own included (``ReportBuilder.build_async`` carries the context).
"""

from __future__ import annotations

import logging

import grpc
import grpc.aio

from callsense.grpc_runtime import service_name
from callsense.report import report_to_proto, utterance_from_proto
from callsense.telemetry import call_context
from callsense.v1 import postcall_pb2, postcall_pb2_grpc
from postcall.reports import ReportBuilder, ReportQueueFullError

log = logging.getLogger(__name__)

SERVICE_NAME = service_name(postcall_pb2, "PostCall")


class PostCallServicer(postcall_pb2_grpc.PostCallServicer):
    def __init__(self, builder: ReportBuilder) -> None:
        self._builder = builder

    async def Report(
        self, request: postcall_pb2.ReportRequest, context: grpc.aio.ServicerContext
    ) -> postcall_pb2.CallReport:
        with call_context(request.call_id):
            try:
                events = [utterance_from_proto(u) for u in request.utterances]
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            try:
                report = await self._builder.build_async(events)
            except ReportQueueFullError as exc:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"the post-call worker is busy: {exc}"
                )
            log.debug("call %s: report of %d utterances", request.call_id, len(events))
            return report_to_proto(report)


def add_postcall(server: grpc.aio.Server, servicer: PostCallServicer) -> list[str]:
    """Register ``servicer`` on ``server``; returns the service names (for ``grpc_runtime``)."""
    postcall_pb2_grpc.add_PostCallServicer_to_server(servicer, server)
    return [SERVICE_NAME]
