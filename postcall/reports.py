"""A finished call's report, built (objection tags, then the manager's summary), and the sweep that
completes the reports the gateway could not get when their call ended.

Building is CPU work (the MiniLM encoder, the stance encoder): ``ReportBuilder.build`` blocks, and callers
on an event loop use ``build_async``, which runs it on the builder's own threads, ``workers`` of them (1 by
default). Post-call work is never urgent and the live path shares the box: however many calls end at once,
the worker takes at most that many cores (a burst of 400 call ends took both cores of a 2-core box through
the default thread pool and pushed the live text path's p95 from 20 ms to 530 ms). A report that waited
past its caller's deadline is not built (``ReportExpiredError``): the gateway has marked it owed, and the
sweep builds it. Tagging must never cost a call its report: when the tagger fails, the report is built
without tags and the failure is logged.

The sweep (``OwedReportSweep``, a task of the worker): at start-up and every ``interval_s``, in every
database, each ended call marked ``REPORT_PENDING`` gets its report built from its stored utterances, then
in one transaction its summary and tags are completed and its CRM push is enqueued (built from the
completed row, as the gateway would have built it).
"""

from __future__ import annotations

import asyncio
import logging
import time
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


class ReportExpiredError(TimeoutError):
    """The report's caller stopped waiting before a thread was free to build it."""


class ReportBuilder:
    """The report of a call's scored utterances, with ``tagger``'s objection tags. Thread-safe.

    ``workers``: how many reports ``build_async`` builds at once (each takes about one core)."""

    def __init__(self, tagger: ObjectionTagger, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.tagger = tagger
        self.workers = workers
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="report")

    def build(self, events: Sequence[UtteranceScore]) -> CallReport:
        """Blocking: from an event loop, use ``build_async``."""
        return build_report(events, compute_call_stats(events), self._tags(events))

    async def build_async(
        self, events: Sequence[UtteranceScore], deadline: float | None = None
    ) -> CallReport:
        """``build`` on the builder's threads, after the reports queued before it. ``deadline`` (a
        ``time.monotonic()`` instant): ReportExpiredError instead of a report nobody waits for any more."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self._build_before, events, deadline)

    def _build_before(self, events: Sequence[UtteranceScore], deadline: float | None) -> CallReport:
        if deadline is not None and time.monotonic() >= deadline:
            raise ReportExpiredError(f"the report of {len(events)} utterances waited past its deadline")
        return self.build(events)

    def close(self) -> None:
        """Stop the threads once the reports queued have been built."""
        self._threads.shutdown(wait=True)

    def warm_up(self) -> None:
        """Load the encoder and embed the labelled examples now (blocking, seconds), so that the first call
        does not wait for it. A tagger that asks an LLM warms up its local fallback, never the endpoint."""
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
        """One pass over every database; returns how many reports it completed."""
        done = 0
        for owed in self._owed:
            for call_id in await owed.pending_calls(self._batch):
                events = await owed.events(call_id)
                report = await self._builder.build_async(events)
                call = await owed.complete(
                    call_id, report.to_json(), tag_names(report.tags), outbox=crm_outbox(self._tenants)
                )
                if call is not None:
                    done += 1
                    log.info("call %s: owed report completed (%d tags)", call_id, len(call.objection_tags))
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
