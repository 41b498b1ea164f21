"""Live calls across gateway replicas: each replica says, every few seconds, which calls it holds.

A live call lives in one replica's memory (Envoy pins it there by call_id), so that replica alone knew it
was live. Now the replica refreshes ``calls.heartbeat_at`` of the calls it holds (``LiveCallHeartbeat``,
an asyncio task of the gateway process), and:
- any replica lists every replica's live calls: those whose heartbeat is fresh (``GET /v1/calls``);
- a call whose heartbeat stopped for ``orphan_after_s`` (its replica died without ending it) is closed as
  failed, reason ``replica_lost``, instead of staying live for ever in the database and the roll-ups.
"""

from __future__ import annotations

import asyncio
import logging

from callsense.background import BackgroundLoop
from gateway.calls.registry import SessionRegistry

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0
FRESH_S = 3 * HEARTBEAT_S
"""A call is listed as live while its heartbeat is younger than this (a beat or two may be late)."""
ORPHAN_AFTER_S = 300.0
"""No heartbeat for this long: the replica is gone. Far above FRESH_S, so a replica that lost its database
for a minute does not see its calls closed under it."""


class LiveCallHeartbeat(BackgroundLoop):
    """Refreshes the heartbeat of the calls ``registry`` holds and closes orphans, every ``interval_s``."""

    task_name = "live-call-heartbeat"

    def __init__(
        self,
        registry: SessionRegistry,
        *,
        interval_s: float = HEARTBEAT_S,
        orphan_after_s: float = ORPHAN_AFTER_S,
    ) -> None:
        self._registry = registry
        self._interval_s = interval_s
        self._orphan_after_s = orphan_after_s

    async def beat(self) -> list[str]:
        """One round in every database; returns the calls closed as orphans."""
        stores = self._registry.stores
        held = self._registry.held_calls()
        closed: list[str] = []
        for _, store in stores.named_stores:
            mine = [s.call_id for s in held if stores.for_region(s.metadata.region) is store]
            await store.heartbeat(mine)
            closed += await store.fail_orphaned_calls(self._orphan_after_s)
        if closed:
            log.warning("closed %d live calls whose replica stopped answering: %s", len(closed), closed)
        return closed

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception:  # the database away: try again next round, calls go on meanwhile
                log.exception("live-call heartbeat failed; again in %.0f s", self._interval_s)
            await asyncio.sleep(self._interval_s)
