"""What a gateway does when a call ends, shared by all its calls: tag objections, build the manager's
report, and hand the CRM push to the outbox (enqueued by the store in the call's closing transaction).

The tagger is CPU work (the MiniLM encoder), so it runs in a thread; it must never cost a call its end:
when it fails, the report goes out without tags and the failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.enrichment.objections import ObjectionTag, ObjectionTagger, tagger_from_env
from gateway.enrichment.summary import CallReport, build_report
from gateway.enrichment.webhooks import crm_outbox
from gateway.stats import CallStatistics
from gateway.store import OutboxSource, ScoredEvent
from gateway.tenants import TenantsConfig

log = logging.getLogger(__name__)


@dataclass
class AfterCall:
    """The post-call steps of one gateway process."""

    tagger: ObjectionTagger = field(default_factory=tagger_from_env)
    tenants: TenantsConfig = field(default_factory=TenantsConfig)
    on_enqueued: Callable[[], None] = lambda: None
    """Called after a call's end was stored with its webhook messages (wakes the outbox dispatcher)."""

    async def report(self, events: Sequence[ScoredEvent], stats: CallStatistics) -> CallReport:
        """Objection tags and the summary of a finished call's scored utterances."""
        return build_report(events, stats, await self._tags(events))

    def outbox(self) -> OutboxSource:
        """The CRM push, built by the store from the call's row as it ends."""
        return crm_outbox(self.tenants)

    async def _tags(self, events: Sequence[ScoredEvent]) -> list[ObjectionTag]:
        if not events:
            return []
        try:
            return await asyncio.to_thread(self.tagger.tag, events)
        except Exception:
            log.exception("objection tagging failed; the summary goes out without tags")
            return []
