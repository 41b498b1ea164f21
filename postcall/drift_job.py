"""The nightly drift job: each tenant's day of scored utterances as drift indicators, checked against its
trailing days and the training baseline, stored, posted to Slack when it drifts, and exported as metrics.

Run by the roll-up (postcall/rollup.py ``run_rollup(..., drift=job)``) for the same day and in the same
database, so it is scheduled, caught up and re-run exactly as the roll-ups are (the nightly
``RollupScheduler`` of the post-call worker, and ``callsense rollup --date``). A tenant's day is its own
(midnight to midnight in its ``timezone``), as in the roll-ups.

Per tenant and day:
1. the label mix, the mean confidence and the counts come from one SQL aggregate over the day's scored
   utterances (every tenant at once);
2. the words' indicators come from the day's texts, at most ``max_texts`` of them (a deterministic sample
   beyond that), tokenised in a worker thread: the work per day is linear in its utterances and bounded;
3. the checks against the trailing days stored in ``drift_daily`` and the baseline follow
   postcall/drift_rule.py, with the tenant's ``drift`` settings (callsense/drift_settings.py);
4. the day's rows are replaced and, for a drifting day of a tenant with a ``slack_webhook_url`` (and
   ``drift.alert`` on), one Slack message is enqueued under ``slack-drift:<day>:<tenant>``, in one
   transaction: however many times the day is computed, by however many workers, the tenant gets one post
   for that day (per database: a tenant whose calls live in two regions' databases is checked in each).

Metrics (OpenTelemetry, exported with the worker's other metrics; Prometheus names in brackets):
``callsense.drift.indicator`` (callsense_drift_indicator), a gauge of each indicator's value per tenant and
indicator on the day last computed; ``callsense.drift.z`` (callsense_drift_z), its distance from the
trailing days in spreads (absent while learning); ``callsense.drift.drifting`` (callsense_drift_drifting),
1 for a tenant whose last day drifted, else 0; ``callsense.drift.alerts`` (callsense_drift_alerts_total),
the Slack alerts enqueued.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import quote

from callsense import telemetry
from callsense.domain import DriftRow
from callsense.outbox import OutboxMessage
from callsense.storage import Database
from callsense.tenants import TenantsConfig
from callsense.tokenization import SHIPPED_MODEL_DIR, SentimentTokenizer
from postcall.drift import (
    DEFAULT_BASELINE_PATH,
    INDICATORS,
    DriftBaseline,
    DriftIndicators,
    combine,
    load_baseline,
    text_indicators,
)
from postcall.drift_rule import DriftAssessment, IndicatorCheck, assess
from postcall.drift_store import DriftStore, TenantDayScores
from postcall.rollup_store import DayWindow

log = logging.getLogger(__name__)

DEFAULT_MAX_TEXTS = 20_000
"""Texts read per tenant and day: enough for shares to a tenth of a point, about a second of tokenising."""


@dataclass(frozen=True)
class DriftRun:
    day: date
    rows: tuple[DriftRow, ...]
    alerts: tuple[OutboxMessage, ...]
    """The Slack alerts the day calls for (also those enqueued by an earlier run)."""
    alerts_enqueued: int
    """How many of them were new in the outbox (0 when the day was computed before)."""


def special_tokens_free(tokenizer: SentimentTokenizer) -> Callable[[str], int]:
    """Tokens of a text as the model reads it, without its [CLS] and [SEP]."""
    return lambda text: max(0, tokenizer.count(text) - 2)


@dataclass(frozen=True)
class DriftJob:
    """What the drift check needs besides the database: the baseline and the served model's tokenizer."""

    baseline: DriftBaseline
    count_tokens: Callable[[str], int]
    max_texts: int = DEFAULT_MAX_TEXTS

    @classmethod
    def load(
        cls, baseline_path: Path = DEFAULT_BASELINE_PATH, tokenizer_path: Path | None = None
    ) -> DriftJob:
        """The shipped baseline and the served tokenizer (blocking: at start-up). ValueError when the
        baseline is unusable; a baseline made for another model than the served one is used, with a
        warning (its vocabulary is still the training text's, but the label mix and confidence are not)."""
        baseline = load_baseline(baseline_path)
        served = _served_model_version()
        if served is not None and served != baseline.model_version:
            log.warning(
                "drift baseline %s was made for model %s, the served model is %s: run "
                "`callsense drift baseline` for it",
                baseline_path,
                baseline.model_version,
                served,
            )
        return cls(baseline, special_tokens_free(SentimentTokenizer(tokenizer_path)))

    async def run(
        self,
        db: Database,
        day: date,
        tenants: TenantsConfig,
        window: DayWindow,
        named: Mapping[str, DayWindow],
    ) -> DriftRun:
        """Compute, check, store and alert ``day`` in ``db`` (``window``: the day in the default zone,
        ``named``: in each tenant's own zone where it differs; see postcall/rollup.py ``day_windows``)."""
        store = DriftStore(db.pool)
        rows = []
        for scores in await store.day_scores(window, named):
            rows.append(await self._tenant_day(store, day, scores, named.get(scores.tenant, window), tenants))
        alerts = [a for row in rows if (a := drift_alert(row, tenants)) is not None]
        keys = {a.tenant: a.dedupe_key for a in alerts}
        rows = [replace(row, alert_key=keys.get(row.tenant)) for row in rows]
        new = await store.write_day(day, rows, alerts)
        _export_metrics(rows, new)
        drifting = [row.tenant for row in rows if row.drifting]
        log.info("drift of %s: %d tenants, drifting: %s; %d alerts new", day, len(rows), drifting, len(new))
        return DriftRun(day, tuple(rows), tuple(alerts), len(new))

    async def _tenant_day(
        self, store: DriftStore, day: date, scores: TenantDayScores, window: DayWindow, tenants: TenantsConfig
    ) -> DriftRow:
        settings = tenants.for_tenant(scores.tenant).drift
        texts = (
            await store.day_texts(scores.tenant, window, scores.text_utterances, self.max_texts)
            if scores.text_utterances
            else []
        )
        # Tokenising thousands of texts takes a second: off the event loop, which serves reports meanwhile.
        tally = await asyncio.to_thread(text_indicators, texts, self.count_tokens, self.baseline.vocabulary)
        indicators = combine(scores.utterances, tally, scores.scores())
        stored = await store.trailing(scores.tenant, day, settings.trailing_days)
        trailing = [indicators_of(row) for row in stored]
        assessment = assess(indicators, trailing, self.baseline, settings)
        return DriftRow(
            tenant=scores.tenant,
            day=day,
            utterances=indicators.utterances,
            text_utterances=indicators.text_utterances,
            **indicators.as_dict(),
            checks=assessment.to_json(),
            drifting=assessment.drifting,
            alert_key=None,
            baseline_model=self.baseline.model_version,
            computed_at=datetime.now(UTC),
        )


def indicators_of(row: DriftRow) -> DriftIndicators:
    """A stored day's indicators (to check a later day against)."""
    return DriftIndicators(
        utterances=row.utterances,
        text_utterances=row.text_utterances,
        **{name: getattr(row, name) for name in INDICATORS},
    )


# --- the Slack message --------------------------------------------------------------------------------------


def drift_dedupe_key(day: date, tenant: str) -> str:
    # Quoted, so that a ':' in a tenant's name cannot make two keys collide.
    return f"slack-drift:{day.isoformat()}:{quote(tenant, safe='')}"


def drift_alert(row: DriftRow, tenants: TenantsConfig) -> OutboxMessage | None:
    """The Slack message of a drifting day, or None (not drifting, alerts off, or no webhook)."""
    settings = tenants.for_tenant(row.tenant)
    if not row.drifting or not settings.drift.alert or not settings.slack_webhook_url:
        return None
    checks = DriftAssessment.from_json(row.checks).drifting_checks()
    return OutboxMessage(
        kind="slack",
        tenant=row.tenant,
        url=settings.slack_webhook_url,
        payload={"text": drift_text(row.day, row.tenant, checks, row.utterances)},
        dedupe_key=drift_dedupe_key(row.day, row.tenant),
    )


_NAMES = {
    "token_length": "tokens per utterance",
    "stop_word_ratio": "stop-word ratio",
    "oov_rate": "words outside the training vocabulary",
    "negative_share": "negative share",
    "neutral_share": "neutral share",
    "positive_share": "positive share",
    "mean_confidence": "mean confidence",
}


def drift_text(day: date, tenant: str, checks: Sequence[IndicatorCheck], utterances: int) -> str:
    """What the message says: the tenant, the day, each drifting indicator against its usual and training."""
    name = _slack_escape(tenant) if tenant else "(no tenant)"
    lines = [
        f":mag: Drift in what the sentiment model scored on {day.isoformat()} for *{name}* "
        f"({utterances} utterances): the day is unlike the last {max(c.trailing_days for c in checks)} days."
    ]
    for check in checks:
        lines.append(
            f"- {_NAMES[check.name]}: {_fmt(check.name, check.value)} "
            f"(usual {_fmt(check.name, check.trailing_mean)} ± {_fmt(check.name, check.trailing_sd)}, "
            f"training text {_fmt(check.name, check.baseline)})"
        )
    lines.append(
        "New products, scripts or competitors may be using words the model was not trained on: look at "
        "the day's calls (/reports) before trusting its scores, and label some for the next training."
    )
    return "\n".join(lines)


def _fmt(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" if name == "token_length" else f"{value:.1%}"


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn gives &, < and > a meaning: escape them as Slack asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- metrics ------------------------------------------------------------------------------------------------


def _export_metrics(rows: Sequence[DriftRow], new_alerts: Sequence[OutboxMessage]) -> None:
    value = telemetry.gauge(
        "callsense.drift.indicator", description="a drift indicator of a tenant's last computed day"
    )
    z = telemetry.gauge(
        "callsense.drift.z", description="a drift indicator's distance from the trailing days, in spreads"
    )
    drifting = telemetry.gauge("callsense.drift.drifting", description="1 when a tenant's last day drifted")
    for row in rows:
        drifting.set(1 if row.drifting else 0, {"tenant": row.tenant})
        for check in DriftAssessment.from_json(row.checks).checks:
            if check.value is not None:
                value.set(check.value, {"tenant": row.tenant, "indicator": check.name})
            if check.z is not None:
                z.set(check.z, {"tenant": row.tenant, "indicator": check.name})
    alerts = telemetry.counter("callsense.drift.alerts", description="drift alerts enqueued for Slack")
    for alert in new_alerts:
        alerts.add(1, {"tenant": alert.tenant})


def _served_model_version() -> str | None:
    card = SHIPPED_MODEL_DIR / "model_card.json"
    try:
        return str(json.loads(card.read_text(encoding="utf-8")).get("version"))
    except (OSError, ValueError):
        return None
