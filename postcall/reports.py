"""A finished call's report, built (objection tags, then the manager's summary), and the sweep that
completes the reports the gateway could not get when their call ended.

Building is CPU work (the objection tagger's MiniLM): ``ReportBuilder.build`` blocks, and callers
on an event loop use ``build_async``, which runs it on the builder's own threads, ``workers`` of them (1 by
default), with the caller's context (the call id and trace of its logs and spans). Post-call work is never
urgent and the live path shares the box: however many calls end at once, the worker takes at most that many
cores (a burst of 400 call ends took both cores of a 2-core box through asyncio's default threads and pushed
the live text path's p95 to 530 ms). The queue is bounded: past ``max_waiting`` reports waiting or being
built, ``build_async`` refuses at once (``ReportQueueFullError``); a caller that stops waiting (the
gateway's deadline) cancels its report if no thread has started it. Either way the gateway ends the call
with its report owed and the sweep builds it: nothing is lost, nothing is built for nobody. Tagging must
never cost a call its report: when the tagger fails, the report is built without tags and the failure is
logged.

The sweep (``OwedReportSweep``, a task of the worker): at start-up and every ``interval_s``, in every
database, each ended call marked ``REPORT_PENDING`` gets its report built from its stored utterances, then
in one transaction its summary and tags are completed and its CRM push is enqueued (built from the
completed row, as the gateway would have built it).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from callsense.background import BackgroundLoop
from callsense.domain import UtteranceScore, compute_call_stats
from callsense.outbox import crm_outbox
from callsense.report import CallReport, ObjectionTag, tag_names
from callsense.storage import Database
from callsense.tenants import TenantsConfig
from postcall.objections import LocalObjectionTagger, ObjectionTagger
from postcall.report_store import OwedReports
from postcall.summary import build_report

log = logging.getLogger(__name__)

DEFAULT_SWEEP_INTERVAL_S = 30.0
_WARM_UP = UtteranceScore(
    call_id="warm-up",
    utterance_id=0,
    channel="customer",
    start_ms=0,
    end_ms=2000,
    text="that price is more than we can pay",
    label="negative",
    p_negative=0.8,
    p_neutral=0.15,
    p_positive=0.05,
    score=0.125,
    model_version="warm-up",
)


DEFAULT_MAX_WAITING = 64
"""Reports queued or being built at most (a long call's request holds its utterances: about 100 KB)."""


class ReportQueueFullError(RuntimeError):
    """The builder has ``max_waiting`` reports queued or in progress already."""


class ReportBuilder:
    """The report of a call's scored utterances, with ``tagger``'s objection tags. Thread-safe.

    ``workers``: how many reports ``build_async`` builds at once (each takes about one core);
    ``max_waiting``: how many it holds, queued or in progress, before it refuses more."""

    def __init__(
        self, tagger: ObjectionTagger, workers: int = 1, max_waiting: int = DEFAULT_MAX_WAITING
    ) -> None:
        if workers < 1 or max_waiting < workers:
            raise ValueError(f"need 1 <= workers <= max_waiting, got {workers} and {max_waiting}")
        self.tagger = tagger
        self.max_waiting = max_waiting
        self.waiting = 0
        """Reports accepted by ``build_async`` whose callers still wait (queued or in progress; a cancelled
        caller's report leaves the count at once, even while a thread finishes it); event loop only."""
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="report")

    def build(self, events: Sequence[UtteranceScore]) -> CallReport:
        """Blocking: from an event loop, use ``build_async``."""
        return build_report(events, compute_call_stats(events), self._tags(events))

    async def build_async(self, events: Sequence[UtteranceScore]) -> CallReport:
        """``build`` on the builder's threads, after the reports queued before it; ReportQueueFullError at
        once when ``max_waiting`` are waiting. Cancelling the caller cancels a report not yet started."""
        if self.waiting >= self.max_waiting:
            raise ReportQueueFullError(f"{self.waiting} reports are queued or being built already")
        self.waiting += 1
        try:
            # run_in_executor, unlike asyncio.to_thread, does not carry the caller's context: copy it, so
            # the report's log lines and spans keep the call's id and trace.
            job = functools.partial(contextvars.copy_context().run, self.build, events)
            return await asyncio.get_running_loop().run_in_executor(self._threads, job)
        finally:
            self.waiting -= 1

    def close(self) -> None:
        """Drop the reports not started (they stay owed; the sweep builds them) and wait for the rest."""
        self._threads.shutdown(wait=True, cancel_futures=True)

    def warm_up(self) -> None:
        """Run the tagger once now (blocking), so that the first call does not wait for its first pass. A
        tagger that asks an LLM warms up its local fallback, never the endpoint."""
        local = self.tagger if isinstance(self.tagger, LocalObjectionTagger) else None
        local = local or getattr(self.tagger, "fallback", None)
        if isinstance(local, LocalObjectionTagger):
            local.tag([_WARM_UP])

    def _tags(self, events: Sequence[UtteranceScore]) -> list[ObjectionTag]:
        if not events:
            return []
        try:
            return self.tagger.tag(events)
        except Exception:
            log.exception("objection tagging failed; the report goes out without tags")
            return []


class OwedReportSweep(BackgroundLoop):
    """Completes the owed reports of every database (see the module docstring); an asyncio task."""

    task_name = "owed-report-sweep"

    def __init__(
        self,
        databases: Sequence[Database],
        builder: ReportBuilder,
        tenants: TenantsConfig,
        *,
        interval_s: float = DEFAULT_SWEEP_INTERVAL_S,
        batch: int = 100,
        on_enqueued: Callable[[], None] | None = None,
    ) -> None:
        self._owed = [OwedReports(db.pool) for db in databases]
        self._builder = builder
        self._tenants = tenants
        self._interval_s = interval_s
        self._batch = batch
        self._on_enqueued = on_enqueued
        self.completed = 0
        """Reports completed by this sweep, for tests and logs."""

    async def sweep(self) -> int:
        """One pass over every database; returns how many reports it completed. A full report queue (a
        burst of call ends) ends the pass early: the rest wait for the next one."""
        done = 0
        try:
            for owed in self._owed:
                for call_id in await owed.pending_calls(self._batch):
                    events = await owed.events(call_id)
                    report = await self._builder.build_async(events)
                    call = await owed.complete(
                        call_id, report.to_json(), tag_names(report.tags), outbox=crm_outbox(self._tenants)
                    )
                    if call is not None:
                        done += 1
                        log.info(
                            "call %s: owed report completed (%d tags)", call_id, len(call.objection_tags)
                        )
        except ReportQueueFullError:
            log.info("the report queue is full; the owed reports left wait for the next sweep")
        self.completed += done
        if done and self._on_enqueued is not None:
            self._on_enqueued()
        return done

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("completing owed reports failed; again in %.0f s", self._interval_s)
            await asyncio.sleep(self._interval_s)
