"""What a gateway does when a call ends, shared by all its calls: ask the post-call worker for the call's
report (``PostCall.Report`` over gRPC), and hand the CRM push to the outbox (enqueued by the store in the
call's closing transaction, from the runtime's builder; the worker delivers it, woken by the database's
notification).

The worker must never cost a call its end. When it cannot answer (down, too busy, past ``timeout_s``),
the call ends all the same with an empty report that says it is owed (``CallReport.owed``: no lines and no
tags, the averages the gateway knows, ``report_pending`` in the stored JSON), every score stays stored,
the call's session tells its driver and watchers with a non-fatal ``error`` event (code
``postcall_unavailable``), and no CRM push is enqueued: the worker's sweep builds the report from the
stored utterances once it is back, completes the call's summary and tags, and pushes the CRM fields then.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
import grpc.aio

from callsense.config import Config, load_config
from callsense.domain import CallStatistics, UtteranceScore
from callsense.grpc_runtime import service_channel
from callsense.outbox import OutboxSource, crm_outbox
from callsense.report import CallReport, report_from_proto, utterance_to_proto
from callsense.telemetry import current_call_id
from callsense.tenants import TenantsConfig
from callsense.v1 import postcall_pb2, postcall_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
"""How long a call's end waits for its report: a long call's tagging takes seconds on a busy worker."""


class AfterCall:
    """The post-call steps of one gateway process (one channel to the worker, for all its calls).

    ``address`` defaults to ``CALLSENSE_POSTCALL_ADDR`` (then through ``CALLSENSE_MESH_PROXY`` when set);
    the channel is opened on first use, in the running event loop."""

    def __init__(
        self,
        address: str | None = None,
        *,
        tenants: TenantsConfig | None = None,
        mesh_proxy: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._address = address
        self._mesh_proxy = mesh_proxy
        self.tenants = tenants or TenantsConfig()
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: postcall_pb2_grpc.PostCallStub | None = None

    @classmethod
    def for_config(
        cls, config: Config, tenants: TenantsConfig | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> AfterCall:
        """The worker at ``config.postcall_addr``, through ``config.mesh_proxy`` when set."""
        return cls(config.postcall_addr, tenants=tenants, mesh_proxy=config.mesh_proxy, timeout_s=timeout_s)

    async def report(self, events: Sequence[UtteranceScore], stats: CallStatistics) -> CallReport:
        """Objection tags and the summary of a finished call's scored utterances, from the worker; the owed
        stand-in (``CallReport.owed``, ``pending``) when the worker does not answer."""
        call_id = events[0].call_id if events else current_call_id() or ""
        request = postcall_pb2.ReportRequest(
            call_id=call_id, utterances=[utterance_to_proto(e) for e in events]
        )
        try:
            reply = await self._postcall().Report(request, timeout=self.timeout_s)
            return report_from_proto(reply)
        except (grpc.aio.AioRpcError, ValueError) as exc:
            why = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else f"a bad reply ({exc})"
            log.warning("call %s: no report from the post-call worker (%s); its report is owed", call_id, why)
            return CallReport.owed(stats, worker_busy=_worker_busy(exc))

    def outbox(self) -> OutboxSource:
        """The CRM push, built by the store from the call's row as it ends (none while its report is owed)."""
        return crm_outbox(self.tenants)

    async def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    def _postcall(self) -> postcall_pb2_grpc.PostCallStub:
        if self._stub is None:
            address, proxy = self._address, self._mesh_proxy
            if address is None:
                config = load_config()
                address, proxy = config.postcall_addr, config.mesh_proxy
            self._channel = service_channel(address, "postcall", proxy)
            self._stub = postcall_pb2_grpc.PostCallStub(self._channel)
        return self._stub


def _worker_busy(exc: Exception) -> bool:
    """Whether the worker is up but behind: its own RESOURCE_EXHAUSTED (too many reports waiting; not the
    channel's, which says a request is too large), or the deadline passing while the report was queued
    (postcall/server.py)."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return False
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return True
    return exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in (exc.details() or "")
