"""The drift rule: when one tenant's day has moved far enough from its usual, and from training, to say so.

Each indicator (postcall/drift.py) of the day is compared with the tenant's trailing days and with the
training text. With ``x`` its value, ``m`` and ``s`` the mean and sample standard deviation of the same
indicator over the tenant's trailing days (the ``trailing_days`` before it, 28 by default, counting only
days with at least ``min_utterances`` utterances), ``n`` how many of those there are, and ``b`` its value on
the training text (the baseline), an indicator is **beyond** when:

1. the day has at least ``min_utterances`` utterances for it (text utterances for the words' indicators)
   and at least ``min_history_days`` (14) trailing days do: before that the tenant's usual is unknown and
   nothing is said (status ``learning``; ``little_data`` for a day with too few utterances);
2. statistically, ``|z| > sigma`` (3) with ``z = (x - m) / (max(s, floor) * sqrt(1 + 1/n))``: more than 3
   standard deviations of the trailing days from their mean. ``sqrt(1 + 1/n)`` widens the spread by the
   uncertainty of ``m`` itself (a prediction interval); the ``floor`` (a quarter of a token for
   ``token_length``, one point for a share or rate) keeps a tenant whose days were all alike from
   alerting on a hair's difference;
3. practically, ``|x - m| / b > baseline_change`` (20 %): the move, measured against what the model saw in
   training, is at least a fifth of it. Equivalently: the day's relative change against the training
   baseline, ``(x - b) / b``, differs from the trailing days' own, ``(m - b) / b``, by more than 20 points.
   Skipped for an indicator without a baseline value.

The day **drifts** when the indicators beyond come from at least two of the three families (the words:
token_length, stop_word_ratio, oov_rate; the label mix: the three shares; the confidence), or when one
indicator is beyond twice the statistical bar (``|z| > 2 * sigma``, 6: a change no ordinary day makes).
Its beyond indicators are then ``drift``; on a day that does not drift they are ``unusual`` (shown, not
posted). A drifting day is posted to Slack once per tenant and day (postcall/drift_job.py).

Why corroboration: with seven indicators checked every day, chance alone puts one of them beyond 3 spreads
(and the practical bar) on about one ordinary day in a hundred, a false alarm every three or four months
per tenant. Simulated with tests/support/sales_days.py (25 tenants, 45 checked ordinary days each, at 3, 6
and 12 calls a day: 3,375 tenant-days), a single indicator was beyond on 29 ordinary days (0.9 %); the rule
as written fired on none of them (the largest ordinary |z| was 4.75) and on each of the 75 days of new
jargon (out-of-vocabulary rate at least 6.8 spreads away; tokens per utterance moves with it). The three
shares of the label mix sum to one, so two of them always move together: they count as one family.
tests/postcall/test_drift_rule.py keeps a smaller version of that simulation.

Why not "3 standard deviations OR 20 % against the baseline": a sales tenant's ordinary day is nothing like
the TV dialogue the shipped model was trained on (MELD): 17 % of the words of the sales corpus
(data/sales, train split) are not in MELD's vocabulary against 3.4 % of MELD's own, so a plain relative
change against the training baseline is far above 20 % on every ordinary day and would alert daily. The
training text sets the scale of what matters (3.), the tenant's own days say what is usual for it (2.).

Both directions count: a sudden drop in out-of-vocabulary words (a day of nothing but voicemail greetings)
is as much a change in what the model scores as a jump.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from callsense.drift_settings import DriftSettings
from postcall.drift import INDICATORS, DriftBaseline, DriftIndicators

Status = Literal["drift", "unusual", "usual", "learning", "little_data"]

FAMILIES: Mapping[str, str] = {
    "token_length": "words",
    "stop_word_ratio": "words",
    "oov_rate": "words",
    "negative_share": "labels",
    "neutral_share": "labels",
    "positive_share": "labels",
    "mean_confidence": "confidence",
}
"""Indicators that move together for one reason: corroboration must come from another family."""
CORROBORATING_FAMILIES = 2
SINGLE_INDICATOR_FACTOR = 2.0
"""One indicator alone drifts the day beyond this many times ``sigma``."""

SPREAD_FLOOR: Mapping[str, float] = {
    # Utterances run 10-20 tokens on average: a quarter of a token is below anything the model would feel.
    "token_length": 0.25,
    # Shares and rates: one percentage point.
    "stop_word_ratio": 0.01,
    "oov_rate": 0.01,
    "negative_share": 0.01,
    "neutral_share": 0.01,
    "positive_share": 0.01,
    "mean_confidence": 0.01,
}
_NO_BASELINE = 1e-9  # a baseline value this close to 0 gives no scale: the practical bar is skipped


@dataclass(frozen=True)
class IndicatorCheck:
    """One indicator of one day against the tenant's trailing days and the training baseline."""

    name: str
    value: float | None
    baseline: float | None
    trailing_mean: float | None
    trailing_sd: float | None
    trailing_days: int
    """Trailing days with enough utterances for this indicator (those m and s are over)."""
    z: float | None
    """(value - trailing mean) / (max(sd, floor) * sqrt(1 + 1/n)); None while learning."""
    baseline_change: float | None
    """(value - trailing mean) / baseline: the move in units of the training value; None without one."""
    status: Status
    """drift: beyond both bars on a drifting day; unusual: beyond both bars, uncorroborated; usual;
    learning: too few trailing days; little_data: too few utterances that day."""

    @property
    def drifting(self) -> bool:
        return self.status == "drift"

    @property
    def beyond(self) -> bool:
        return self.status in ("drift", "unusual")


@dataclass(frozen=True)
class DriftAssessment:
    """A day's checks, one per indicator, in the order of ``INDICATORS``."""

    checks: tuple[IndicatorCheck, ...]

    @property
    def drifting(self) -> bool:
        return any(check.drifting for check in self.checks)

    def drifting_checks(self) -> list[IndicatorCheck]:
        return [check for check in self.checks if check.drifting]

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(check) for check in self.checks]

    @classmethod
    def from_json(cls, data: Sequence[Mapping[str, Any]]) -> DriftAssessment:
        return cls(tuple(IndicatorCheck(**dict(item)) for item in data))


def assess(
    day: DriftIndicators,
    trailing: Sequence[DriftIndicators],
    baseline: DriftBaseline | None,
    settings: DriftSettings,
) -> DriftAssessment:
    """The day's checks against ``trailing`` (the tenant's stored days within ``settings.trailing_days``
    before it; the caller picks them) and ``baseline``, by the rule of the module docstring."""
    checks = [_check(name, day, trailing, baseline, settings) for name in INDICATORS]
    beyond = [c for c in checks if c.beyond]
    families = {FAMILIES[c.name] for c in beyond}
    alone = SINGLE_INDICATOR_FACTOR * settings.sigma
    if len(families) >= CORROBORATING_FAMILIES or any(abs(c.z or 0.0) > alone for c in beyond):
        checks = [replace(c, status="drift") if c.beyond else c for c in checks]
    return DriftAssessment(tuple(checks))


def _check(
    name: str,
    day: DriftIndicators,
    trailing: Sequence[DriftIndicators],
    baseline: DriftBaseline | None,
    settings: DriftSettings,
) -> IndicatorCheck:
    value = day.value(name)
    base = None if baseline is None else baseline.value(name)
    history = [
        v for d in trailing if d.support(name) >= settings.min_utterances and (v := d.value(name)) is not None
    ]
    n = len(history)
    mean = statistics.fmean(history) if history else None
    sd = statistics.stdev(history) if n >= 2 else (0.0 if n == 1 else None)
    enough_today = value is not None and day.support(name) >= settings.min_utterances
    if not enough_today or mean is None or sd is None or n < settings.min_history_days:
        status: Status = "little_data" if not enough_today else "learning"
        return IndicatorCheck(name, value, base, mean, sd, n, None, None, status)
    assert value is not None  # enough_today says so; mypy cannot follow it
    move = value - mean
    z = move / (max(sd, SPREAD_FLOOR[name]) * math.sqrt(1.0 + 1.0 / n))
    change = move / base if base is not None and abs(base) > _NO_BASELINE else None
    statistical = abs(z) > settings.sigma
    practical = change is None or abs(change) > settings.baseline_change
    status = "unusual" if statistical and practical else "usual"
    return IndicatorCheck(name, value, base, mean, sd, n, z, change, status)
