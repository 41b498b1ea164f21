"""A tenant's drift thresholds: when a day's language or scores have moved far enough to say so.

The post-call worker computes, per tenant and day, indicators of what the model was asked to score (tokens
per utterance, stop-word ratio, out-of-vocabulary rate against the training text, label mix, mean
confidence; postcall/drift.py) and compares each with the tenant's trailing days and with the training
baseline (postcall/drift_rule.py, which documents the rule). These are its knobs, read from the tenants
file's ``drift`` table (``[default.drift]``, ``[tenants.<id>.drift]``) like ``live``.

It lives in the runtime beside ``BadgeSettings`` because ``TenantSettings`` holds it; only the worker
applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DriftSettings:
    """The drift rule's thresholds for one tenant. The defaults and why:"""

    # A day is compared with the tenant's own last 28 days: four weeks hold every weekday four times, so a
    # quiet Monday is compared with other Mondays' spread, not taken for a change.
    trailing_days: int = 28
    # No verdict before 14 of those days have data: the spread of fewer days is itself too uncertain (with
    # 7 days, one ordinary day in 40 would pass 3 standard deviations by chance on each indicator).
    min_history_days: int = 14
    # A day (and a trailing day) counts only with at least this many utterances: shares of a handful of
    # lines swing by tens of points from one call to the next.
    min_utterances: int = 20
    # The statistical bar: the day lies more than 3 standard deviations (of the trailing days, widened for
    # the uncertainty of their mean) from the trailing mean. One indicator alone must be twice as far: with
    # seven indicators a day, chance puts one beyond 3 about once in a hundred ordinary days.
    sigma: float = 3.0
    # The practical bar: the move is also at least 20 % of the indicator's value on the training text, so
    # a very steady tenant is not told about a change too small to matter to the model.
    baseline_change: float = 0.20
    # False: the indicators are still computed, stored and shown, but no Slack message is posted.
    alert: bool = True

    def __post_init__(self) -> None:
        for name in ("trailing_days", "min_history_days", "min_utterances"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_history_days > self.trailing_days:
            raise ValueError(
                f"min_history_days ({self.min_history_days}) cannot exceed trailing_days "
                f"({self.trailing_days}): the window could never hold that many days"
            )
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {self.sigma}")
        if not (math.isfinite(self.baseline_change) and self.baseline_change >= 0):
            raise ValueError(f"baseline_change must be a finite number >= 0, got {self.baseline_change}")


DEFAULT_DRIFT = DriftSettings()
