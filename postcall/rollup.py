"""Daily roll-ups per agent and team, and the Slack alert when a team's day went badly.

``run_rollup(db, day, tenants)`` recomputes one day (calls that *started* in [day 00:00, day+1 00:00) in
their tenant's time zone, ``timezone`` in the tenants file, UTC by default; whatever their status) into
``daily_rollups``:
- one row per (tenant, team, agent), and one per (tenant, team) with ``agent = ''`` for the whole team
  (calls without an agent count in their team's row only);
- ``calls``; ``utterances``: every scored utterance; ``avg_sentiment``: the mean score of those utterances
  (each utterance weighs the same, every speaker counts, as in ``calls.avg_sentiment``);
- ``negative_rate``: the share of the *customer's* scored utterances labelled negative, the customer being
  the ``customer`` channel and ``mixed`` (a mono line, where the customer's voice is in the mix). Agent
  utterances never count: the rate is about how customers felt. A call with agent utterances only adds
  nothing to it; a team whose day has no customer utterance has no rate (NULL) and no alert.
  ``customer_utterances`` is its denominator.

Re-running a day gives the same rows (they are replaced in one transaction). Then, for each team whose
rate is above its tenant's ``negative_rate_alert`` (strictly: "crosses 30 %" means more than 30 %), on at
least ``alert_min_utterances`` customer utterances, and whose tenant has a ``slack_webhook_url``, one
Slack message is enqueued in the outbox under the key ``slack:<day>:<tenant>:<team>``: however many times
the day is rolled up, by however many replicas, the team gets one post for that day.

With a ``DriftJob`` (``run_rollup(..., drift=job)``; the worker and ``callsense rollup`` pass one) the same
run computes the day's drift indicators per tenant, checks them against the tenant's trailing days and the
training baseline, stores them and enqueues at most one Slack message per tenant and day
(postcall/drift_job.py): scheduled, caught up and re-run with the roll-up.

``RollupScheduler`` runs this inside the post-call worker: each night, ``CALLSENSE_ROLLUP_AT`` (default
00:15, late enough for the day's calls to have ended) past the midnight that ends the day in the last of the
tenants' time zones (with every tenant on UTC: at 00:15 UTC; with one in California too: at 00:15 there),
and at start-up for the last due day if no run since its due time is recorded (a worker that was down
catches up).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from urllib.parse import quote

from callsense.background import BackgroundLoop
from callsense.config import Config, ConfigError
from callsense.domain import RollupRow
from callsense.outbox import OutboxMessage
from callsense.storage import Database, command_databases
from callsense.tenants import TenantsConfig
from postcall.drift import INDICATORS
from postcall.drift_job import DriftJob, DriftRun
from postcall.outbox_store import OutboxStore
from postcall.rollup_store import DayWindow, RollupStore
from postcall.webhooks import DeliveryPolicy, OutboxDispatcher

log = logging.getLogger(__name__)

ROLLUP_AT_ENV = "CALLSENSE_ROLLUP_AT"
DEFAULT_ROLLUP_AT = time(0, 15)
WORST_AGENTS = 3  # named in an alert


@dataclass(frozen=True)
class RollupResult:
    day: date
    rows: tuple[RollupRow, ...]
    alerts: tuple[OutboxMessage, ...]
    """The Slack alerts the day's figures call for (also those enqueued by an earlier run)."""
    alerts_enqueued: int
    """How many of them were new in the outbox (0 when the day was rolled up before)."""
    drift: DriftRun | None = None
    """The day's drift indicators and alerts, when the run had a ``DriftJob``."""

    @property
    def any_enqueued(self) -> bool:
        """Whether the run enqueued anything new (the dispatcher is then woken)."""
        return bool(self.alerts_enqueued or (self.drift is not None and self.drift.alerts_enqueued))


def day_window(day: date, zone: tzinfo) -> DayWindow:
    """``day`` from its midnight to the next in ``zone`` (23 or 25 hours on a daylight-saving change)."""
    return DayWindow(
        datetime.combine(day, time.min, zone).astimezone(UTC),
        datetime.combine(day + timedelta(days=1), time.min, zone).astimezone(UTC),
    )


def day_windows(day: date, tenants: TenantsConfig) -> tuple[DayWindow, dict[str, DayWindow]]:
    """``day`` in the default zone, and in each named tenant's zone where that differs."""
    default = day_window(day, tenants.zone(""))
    named = {t: day_window(day, tenants.zone(t)) for t in tenants.tenants}
    return default, {t: w for t, w in named.items() if w != default}


async def run_rollup(
    db: Database, day: date, tenants: TenantsConfig, drift: DriftJob | None = None
) -> RollupResult:
    """Roll up ``day`` in the database ``db``, enqueue its Slack alerts, check its drift (with a
    ``DriftJob``), and record the run."""
    rollups = RollupStore(db.pool)
    default, named = day_windows(day, tenants)
    rows = await rollups.rollup_day(day, default, named)
    alerts = slack_alerts(day, rows, tenants)
    enqueued = await OutboxStore(db.pool).enqueue(alerts)
    drift_run = None if drift is None else await drift.run(db, day, tenants, default, named)
    # Recorded last: a crash before this leaves the day to the scheduler's catch-up.
    await rollups.mark_rollup_ran(day, len(rows))
    log.info("roll-up of %s: %d rows, %d alerts (%d new)", day, len(rows), len(alerts), enqueued)
    return RollupResult(day, tuple(rows), tuple(alerts), enqueued, drift_run)


def slack_dedupe_key(day: date, tenant: str, team: str) -> str:
    # Quoted, so that a ':' in a tenant or team name cannot make two keys collide.
    return f"slack:{day.isoformat()}:{quote(tenant, safe='')}:{quote(team, safe='')}"


def slack_alerts(day: date, rows: Sequence[RollupRow], tenants: TenantsConfig) -> list[OutboxMessage]:
    """One Slack message per team row above its tenant's threshold (see the module docstring)."""
    alerts = []
    for team in rows:
        settings = tenants.for_tenant(team.tenant)
        if team.agent or not settings.slack_webhook_url or team.negative_rate is None:
            continue
        if team.customer_utterances < settings.alert_min_utterances:
            continue
        if team.negative_rate <= settings.negative_rate_alert:
            continue
        agents = [r for r in rows if r.agent and (r.tenant, r.team) == (team.tenant, team.team)]
        text = alert_text(team, settings.negative_rate_alert, agents)
        alerts.append(
            OutboxMessage(
                kind="slack",
                tenant=team.tenant,
                url=settings.slack_webhook_url,
                payload={"text": text},
                dedupe_key=slack_dedupe_key(day, team.tenant, team.team),
            )
        )
    return alerts


def alert_text(team: RollupRow, threshold: float, agents: Sequence[RollupRow]) -> str:
    """The Slack message: which team, which day, how bad, and the agents with the most negative calls."""
    name = _slack_escape(team.team or "(no team)")
    tenant = f" ({_slack_escape(team.tenant)})" if team.tenant else ""
    rate = team.negative_rate or 0.0
    lines = [
        f":warning: Negative customer sentiment on {team.day.isoformat()}: team *{name}*{tenant} had "
        f"{rate:.1%} of customer utterances negative (alert above {threshold:.0%}), "
        f"{_count(team.calls, 'call')}, {_count(team.customer_utterances, 'customer utterance')}."
    ]
    worst = sorted(
        (a for a in agents if a.negative_rate), key=lambda a: (-(a.negative_rate or 0.0), a.agent)
    )[:WORST_AGENTS]
    if worst:
        named = ", ".join(
            f"{_slack_escape(a.agent)} {a.negative_rate or 0.0:.0%} ({_count(a.calls, 'call')})"
            for a in worst
        )
        lines.append(f"Most negative: {named}.")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn gives &, < and > a meaning: escape them as Slack asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- the nightly schedule -----------------------------------------------------------------------------------


def rollup_time_from_env(env: Mapping[str, str]) -> time:
    """``CALLSENSE_ROLLUP_AT`` ("HH:MM" past the day's last midnight), default 00:15."""
    value = env.get(ROLLUP_AT_ENV, "").strip()
    if not value:
        return DEFAULT_ROLLUP_AT
    try:
        at = time.fromisoformat(value)
    except ValueError:
        at = None
    if at is None or at.tzinfo is not None:
        raise ConfigError(f"{ROLLUP_AT_ENV}={value!r}: expected a time of day as HH:MM (no offset)")
    return at


class RollupScheduler(BackgroundLoop):
    """Runs the previous day's roll-up each night, ``at`` past the midnight that ends it in the last of the
    tenants' time zones, in every store; an asyncio task.

    At start-up, and after each wake, it rolls up the last day whose time has come unless a run after that
    time is recorded in the store. A failed run (the database away) is tried again every ``retry_s``.
    """

    task_name = "rollup-scheduler"

    def __init__(
        self,
        stores: Sequence[Database],
        tenants: TenantsConfig,
        *,
        at: time = DEFAULT_ROLLUP_AT,
        on_alerts: Callable[[], None] | None = None,
        retry_s: float = 300.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        drift: DriftJob | None = None,
    ) -> None:
        self._stores = list(stores)
        self._tenants = tenants
        self._drift = drift
        self._at = at
        self._on_alerts = on_alerts
        self._retry_s = retry_s
        self._clock = clock
        self.runs = 0
        """Roll-ups run by this scheduler (one per store and day), for tests and logs."""

    def due_day(self, now: datetime) -> date:
        """The last day whose roll-up time has passed."""
        day = now.astimezone(UTC).date() + timedelta(days=1)  # no zone is more than a day ahead of UTC
        while self.due_at(day) > now:
            day -= timedelta(days=1)
        return day

    def due_at(self, day: date) -> datetime:
        """When ``day``'s roll-up is due: ``at`` past the midnight that ends it in the last zone."""
        after_midnight = timedelta(hours=self._at.hour, minutes=self._at.minute, seconds=self._at.second)
        return max(day_window(day, zone).end for zone in self._tenants.zones()) + after_midnight

    async def run_due(self) -> bool:
        """Roll up the due day in each store that has no run of it since it was due; False on a failure."""
        day = self.due_day(self._clock())
        ok = True
        for store in self._stores:
            try:
                ran_at = await RollupStore(store.pool).rollup_ran_at(day)
                if ran_at is not None and ran_at >= self.due_at(day):
                    continue
                result = await run_rollup(store, day, self._tenants, self._drift)
                self.runs += 1
                if result.any_enqueued and self._on_alerts is not None:
                    self._on_alerts()
            except Exception:
                log.exception("roll-up of %s failed; again in %.0f s", day, self._retry_s)
                ok = False
        return ok

    async def _run(self) -> None:
        while True:
            ok = await self.run_due()
            now = self._clock()
            until_next = (self.due_at(self.due_day(now) + timedelta(days=1)) - now).total_seconds()
            await asyncio.sleep(max(1.0, until_next if ok else min(self._retry_s, until_next)))


# --- `callsense rollup` -------------------------------------------------------------------------------------


async def rollup_command(
    day: date,
    config: Config,
    tenants: TenantsConfig,
    *,
    database_url: str | None = None,
    deliver_timeout_s: float = 10.0,
    drift: DriftJob | None = None,
) -> dict[str, Any]:
    """``callsense rollup``: roll ``day`` up in every database (the default one and each region's), check
    its drift (with a ``DriftJob``), post its Slack alerts for at most ``deliver_timeout_s`` (what is not
    delivered stays in the outbox for the post-call worker's dispatcher), and return the rows and alerts as
    JSON-ready data.

    The database is chosen as the processes choose it: ``database_url``, else ``DATABASE_URL``, else the
    embedded PostgreSQL under ``CALLSENSE_DATA_DIR``.
    """
    async with command_databases(config, database_url) as databases:
        return await _rollup_everywhere(day, databases.stores, tenants, deliver_timeout_s, drift)


async def _rollup_everywhere(
    day: date,
    databases: Sequence[Database],
    tenants: TenantsConfig,
    deliver_timeout_s: float,
    drift: DriftJob | None,
) -> dict[str, Any]:
    results = [await run_rollup(db, day, tenants, drift) for db in databases]
    outboxes = [OutboxStore(db.pool) for db in databases]
    policy = DeliveryPolicy(timeout_s=deliver_timeout_s, lease_s=deliver_timeout_s + 60.0)
    dispatcher = OutboxDispatcher(outboxes, tenants, policy, kinds=["slack"], listen=False)
    try:
        async with asyncio.timeout(deliver_timeout_s):
            await dispatcher.deliver_due()
    except TimeoutError:
        log.warning("Slack alerts not all posted within %.0f s: the worker will retry", deliver_timeout_s)
    finally:
        await dispatcher.stop()
    alerts = []
    for outbox, result in zip(outboxes, results, strict=True):
        day_alerts = [*result.alerts, *(result.drift.alerts if result.drift is not None else ())]
        for alert in day_alerts:
            row = await outbox.outbox_message(alert.dedupe_key)
            delivered = row is not None and row.delivered_at is not None
            alerts.append({"dedupe_key": alert.dedupe_key, "tenant": alert.tenant, "delivered": delivered})
    return {
        "day": day.isoformat(),
        "rows": [
            {**dataclasses.asdict(row), "day": row.day.isoformat()}
            for result in results
            for row in result.rows
        ],
        "alerts": alerts,
        "alerts_enqueued": sum(
            result.alerts_enqueued + (result.drift.alerts_enqueued if result.drift is not None else 0)
            for result in results
        ),
        "drift": [
            {
                "tenant": row.tenant,
                "utterances": row.utterances,
                "drifting": row.drifting,
                "indicators": {name: getattr(row, name) for name in INDICATORS},
                "alert": row.alert_key,
            }
            for result in results
            if result.drift is not None
            for row in result.drift.rows
        ],
    }
