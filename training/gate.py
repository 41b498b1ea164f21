"""The promotion gate of `callsense retrain`: is a retrained candidate at least as good as the model served?

Two checks per held-out set, both in macro-F1 points (0.01 of macro-F1):

- against the current model: the candidate (INT8, as it would be served) may not score more than
  ``max_drop_points`` below the current model (its INT8, as served) on any set. A gain on one set never
  buys a loss on another: a tenant's own held-out calls cannot pay for forgetting MELD, nor the reverse.
- against itself: its INT8 model may not lose more than ``max_int8_loss_points`` against its own fp32 export
  on any set (what ``callsense export`` checks on dev, ``training.export.macro_f1_drop_points``, here on
  every gate set): a candidate whose quantisation hurts it ships a worse model than it was trained to be.

Pure arithmetic over the figures ``training/retrain.py`` measures; the verdict says in words what failed,
so the report can say why a candidate was refused. A gate with no set to judge refuses: nothing was shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

_TOLERANCE = 1e-9
"""Points are differences of floats: 0.5 exactly is within a 0.5 limit, not over it by rounding."""


@dataclass(frozen=True)
class GateRule:
    max_drop_points: float = 0.5
    """Macro-F1 points the candidate may lose against the current model, on each set."""
    max_int8_loss_points: float = 0.5
    """Macro-F1 points the candidate's INT8 model may lose against its own fp32 export, on each set."""

    def __post_init__(self) -> None:
        if self.max_drop_points < 0 or self.max_int8_loss_points < 0:
            raise ValueError("the gate's limits are points a model may lose: 0 or more")


@dataclass(frozen=True)
class SetScores:
    """Macro-F1 of the three models on one held-out set."""

    name: str
    n: int
    current: float
    """The current model's INT8, as served."""
    candidate: float
    """The candidate's INT8, as it would be served."""
    candidate_fp32: float
    """The candidate's fp32 export (same calibration), the reference of its INT8 loss."""


@dataclass(frozen=True)
class SetVerdict:
    name: str
    n: int
    current: float
    candidate: float
    candidate_fp32: float
    delta_points: float
    """Candidate minus current, in points (negative: the candidate is worse)."""
    int8_loss_points: float
    """Candidate fp32 minus candidate INT8, in points (positive: quantisation costs that much)."""
    passed: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    rule: GateRule
    sets: tuple[SetVerdict, ...]
    reasons: tuple[str, ...] = field(default_factory=tuple)
    """Every failed check in words; empty when the candidate passed."""

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "rule": asdict(self.rule),
            "reasons": list(self.reasons),
            "sets": [asdict(s) | {"reasons": list(s.reasons)} for s in self.sets],
        }


def judge_set(scores: SetScores, rule: GateRule) -> SetVerdict:
    """Both checks on one set."""
    delta = (scores.candidate - scores.current) * 100
    int8_loss = (scores.candidate_fp32 - scores.candidate) * 100
    reasons = []
    if -delta > rule.max_drop_points + _TOLERANCE:
        reasons.append(
            f"{scores.name}: macro-F1 drops {-delta:.2f} points against the current model "
            f"({scores.current:.4f} -> {scores.candidate:.4f}, n={scores.n}); the limit is "
            f"{rule.max_drop_points}"
        )
    if int8_loss > rule.max_int8_loss_points + _TOLERANCE:
        reasons.append(
            f"{scores.name}: the candidate's INT8 model loses {int8_loss:.2f} macro-F1 points against its "
            f"fp32 export ({scores.candidate_fp32:.4f} -> {scores.candidate:.4f}, n={scores.n}); the limit "
            f"is {rule.max_int8_loss_points}"
        )
    return SetVerdict(
        name=scores.name,
        n=scores.n,
        current=scores.current,
        candidate=scores.candidate,
        candidate_fp32=scores.candidate_fp32,
        delta_points=delta,
        int8_loss_points=int8_loss,
        passed=not reasons,
        reasons=tuple(reasons),
    )


def judge(scores: Sequence[SetScores], rule: GateRule = GateRule()) -> GateVerdict:
    """The candidate passes when every set passes both checks; with no set, it does not."""
    verdicts = tuple(judge_set(s, rule) for s in scores)
    reasons = [reason for v in verdicts for reason in v.reasons]
    if not verdicts:
        reasons.append("no held-out set was evaluated: nothing shows the candidate is as good")
    empty = [v.name for v in verdicts if v.n == 0]
    if empty:
        reasons.append(f"held-out sets without a line: {', '.join(empty)}")
    return GateVerdict(passed=not reasons, rule=rule, sets=verdicts, reasons=tuple(reasons))


def markdown_table(verdict: GateVerdict) -> list[str]:
    """The verdict per set as Markdown table rows (with a header)."""
    rows = [
        "| set | lines | current | candidate (INT8) | delta (points) | candidate fp32 | INT8 loss (points) "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in verdict.sets:
        rows.append(
            f"| {s.name} | {s.n} | {s.current:.4f} | {s.candidate:.4f} | {s.delta_points:+.2f} "
            f"| {s.candidate_fp32:.4f} | {s.int8_loss_points:+.2f} | {'pass' if s.passed else 'FAIL'} |"
        )
    return rows
