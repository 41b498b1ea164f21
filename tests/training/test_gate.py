"""The retrain's promotion gate (training/gate.py): per set, no drop past 0.5 macro-F1 points against the
current model and no INT8 loss past 0.5 points against the candidate's own fp32; every failure in words."""

from __future__ import annotations

import pytest

from training.gate import GateRule, SetScores, judge, markdown_table


def scores(name: str, current: float, candidate: float, fp32: float | None = None, n: int = 500) -> SetScores:
    return SetScores(name, n, current, candidate, candidate if fp32 is None else fp32)


def test_a_candidate_as_good_or_better_everywhere_passes() -> None:
    verdict = judge([scores("sales:test", 0.42, 0.61), scores("meld:dev", 0.668, 0.668, 0.670)])
    assert verdict.passed and verdict.reasons == ()
    (sales, meld) = verdict.sets
    assert sales.delta_points == pytest.approx(19.0) and sales.passed
    assert meld.delta_points == pytest.approx(0.0) and meld.int8_loss_points == pytest.approx(0.2)


def test_exactly_the_limit_passes_and_a_hair_more_does_not() -> None:
    rule = GateRule()
    assert judge([scores("meld:dev", 0.6700, 0.6650)], rule).passed  # -0.50 points
    assert judge([scores("meld:dev", 0.6700, 0.6700, 0.6750)], rule).passed  # INT8 loses 0.50
    refused = judge([scores("meld:dev", 0.6700, 0.6649)], rule)
    assert not refused.passed
    assert refused.reasons == (
        "meld:dev: macro-F1 drops 0.51 points against the current model (0.6700 -> 0.6649, n=500); "
        "the limit is 0.5",
    )


def test_a_gain_on_one_set_never_pays_for_a_loss_on_another() -> None:
    verdict = judge(
        [
            scores("held-out labels", 0.40, 0.80, n=60),
            scores("sales:test", 0.42, 0.60),
            scores("meld:dev", 0.67, 0.64),
        ]
    )
    assert not verdict.passed
    assert [s.passed for s in verdict.sets] == [True, True, False]
    (reason,) = verdict.reasons
    assert reason.startswith("meld:dev: macro-F1 drops 3.00 points")


def test_the_int8_loss_is_judged_on_every_set_even_where_the_candidate_beats_the_current_model() -> None:
    verdict = judge([scores("sales:test", 0.40, 0.60, fp32=0.62), scores("meld:dev", 0.60, 0.61, fp32=0.61)])
    assert not verdict.passed
    assert verdict.sets[0].int8_loss_points == pytest.approx(2.0)
    (reason,) = verdict.reasons
    assert "sales:test: the candidate's INT8 model loses 2.00 macro-F1 points against its fp32" in reason


def test_both_checks_failing_on_one_set_are_both_said() -> None:
    verdict = judge([scores("held-out labels", 0.70, 0.50, fp32=0.60, n=40)])
    assert len(verdict.sets[0].reasons) == 2 and len(verdict.reasons) == 2


def test_nothing_to_judge_or_an_empty_set_refuses() -> None:
    assert judge([]).reasons == ("no held-out set was evaluated: nothing shows the candidate is as good",)
    empty = judge([scores("held-out labels", 0.0, 0.0, n=0), scores("meld:dev", 0.6, 0.6)])
    assert not empty.passed and empty.reasons == ("held-out sets without a line: held-out labels",)


def test_other_limits_and_no_negative_ones() -> None:
    lenient = GateRule(max_drop_points=2.0, max_int8_loss_points=1.0)
    assert judge([scores("meld:dev", 0.67, 0.655, fp32=0.664)], lenient).passed
    strict = GateRule(max_drop_points=0.0, max_int8_loss_points=0.0)
    assert not judge([scores("meld:dev", 0.67, 0.6699)], strict).passed
    with pytest.raises(ValueError, match="0 or more"):
        GateRule(max_drop_points=-1)


def test_the_verdict_as_json_and_markdown() -> None:
    verdict = judge([scores("sales:test", 0.42, 0.61), scores("meld:dev", 0.67, 0.64)])
    data = verdict.to_json()
    assert data["passed"] is False and data["rule"] == {"max_drop_points": 0.5, "max_int8_loss_points": 0.5}
    assert [(s["name"], s["passed"]) for s in data["sets"]] == [("sales:test", True), ("meld:dev", False)]
    assert data["sets"][1]["reasons"] == list(verdict.reasons)
    table = markdown_table(verdict)
    assert table[2] == "| sales:test | 500 | 0.4200 | 0.6100 | +19.00 | 0.6100 | +0.00 | pass |"
    assert table[3].endswith("| -3.00 | 0.6400 | +0.00 | FAIL |")
