"""The retention purge: every ``interval_s`` (an hour), each tenant's ended calls older than its
``retention_days`` are removed from every database, with their utterances and outbox rows, and audited
(callsense/privacy.py). Hourly rather than nightly: a call leaves within an hour of its period's end
whatever the tenant's time zone, and a run over nothing expired costs one indexed query per tenant."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from callsense.background import BackgroundLoop
from callsense.privacy import Purge, purge_expired
from callsense.storage import Database
from callsense.tenants import TenantsConfig

log = logging.getLogger(__name__)


class RetentionPurge(BackgroundLoop):
    task_name = "retention-purge"

    def __init__(
        self,
        stores: Sequence[Database],
        tenants: TenantsConfig,
        *,
        interval_s: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._stores = list(stores)
        self._tenants = tenants
        self._interval_s = interval_s
        self._clock = clock

    @property
    def enabled(self) -> bool:
        """Whether any tenant has a retention period (else the loop never queries)."""
        settings = (self._tenants.default, *self._tenants.tenants.values())
        return any(s.retention_days is not None for s in settings)

    async def run_once(self) -> list[Purge]:
        """One purge of every database; a database that fails is logged and tried at the next run."""
        purges = []
        for store in self._stores:
            try:
                async with store.pool.connection() as conn:
                    purge = await purge_expired(conn, self._tenants, self._clock())
            except Exception:
                log.exception("retention purge failed; again in %.0f s", self._interval_s)
                continue
            if purge.total:
                log.info("retention purge removed %d calls: %s", purge.total, purge.calls)
            purges.append(purge)
        return purges

    async def _run(self) -> None:
        while self.enabled:
            await self.run_once()
            await asyncio.sleep(self._interval_s)
