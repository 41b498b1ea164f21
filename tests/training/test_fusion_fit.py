"""Fitting the tone fusion head: exact gradients, a rule the data holds is learnt, the head it writes
serves the same probabilities as the fitter predicts, and the card section says what it was made of."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scorer_service.fusion.features import FEATURE_NAMES, BaselinePrior
from scorer_service.fusion.head import FusionHead
from training.fusion_calls import TrainingRows
from training.fusion_card import BEGIN, END, write_cards
from training.fusion_fit import Anchors, FitConfig, actor_folds, cross_validate, fit, macro_f1, predict

LEVEL = FEATURE_NAMES.index("energy_db")
PITCH = FEATURE_NAMES.index("log_pitch")


def synthetic_rows(n: int = 600, seed: int = 0) -> TrainingRows:
    """Loud voices are negative, quiet ones neutral, high-pitched ones positive; the text says neutral."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 0.3, size=(n, len(FEATURE_NAMES)))
    y = rng.integers(0, 3, size=n)
    z[y == 0, LEVEL] += 1.5
    z[y == 1, LEVEL] -= 0.5
    z[y == 2, PITCH] += 1.5
    log_text = np.log(np.tile([0.2, 0.6, 0.2], (n, 1)))
    return TrainingRows(z, log_text, y, rng.integers(1, 13, size=n))


@pytest.mark.parametrize(
    "config", [FitConfig("core", "linear", 0, 0.01), FitConfig("core", "quadratic", 4, 0.01)]
)
def test_a_rule_in_the_data_is_learnt_with_and_without_text(config: FitConfig) -> None:
    rows = synthetic_rows()
    for with_text in (True, False):
        fitted = fit(rows, config, with_text=with_text)
        assert macro_f1(rows.y, predict(fitted, rows.z, rows.log_text)) > 0.85
    assert cross_validate(rows, config) > 0.8


def test_the_fitted_head_serves_what_the_fitter_predicts(tmp_path: Path) -> None:
    rows = synthetic_rows()
    fitted = fit(rows, FitConfig("core", "quadratic", 4, 0.01))
    head = FusionHead(
        "tone-test-fit",
        fitted.config.names,
        fitted.config.expansion,
        fitted.layers,
        BaselinePrior(tuple([1.0] * len(FEATURE_NAMES))),
        {
            "training": {
                "choose_actors": [1, 12],
                "report_actors": [13, 18],
                "chosen": {"hidden": 4, "l2": 0.01},
            }
        },
    )
    head.save(tmp_path / "fusion.json")
    served = FusionHead.load(tmp_path / "fusion.json")
    text = np.exp(rows.log_text)
    assert np.allclose(served.fuse(text, served.select(rows.z)), predict(fitted, rows.z, rows.log_text))
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# model\n\nstuff\n")
    write_cards(served, tmp_path / "FUSION_CARD.md", card)
    write_cards(served, tmp_path / "FUSION_CARD.md", card)  # replaced, not appended twice
    text_card = card.read_text()
    assert (
        text_card.startswith("# model\n\nstuff\n")
        and text_card.count(BEGIN) == 1
        and text_card.count(END) == 1
    )
    assert "Tone fusion tone-test-fit" in (tmp_path / "FUSION_CARD.md").read_text()


def test_gradients_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss's gradient against finite differences, at a point near where the fit starts (a wrong
    gradient would only show as a poorer fit otherwise)."""
    from scipy.optimize import check_grad, minimize

    import training.fusion_fit as fusion_fit

    captured: dict[str, Any] = {}
    real_minimize = minimize

    def capture(fun: Any, x0: Any, **kwargs: Any) -> Any:
        captured["fun"], captured["x0"] = fun, x0
        return real_minimize(fun, x0, **kwargs)

    monkeypatch.setattr(fusion_fit, "minimize", capture)
    rows = synthetic_rows(120)
    anchors = Anchors(rows.z[:40] * 0.5, np.log(np.random.default_rng(1).dirichlet([2, 5, 2], 40)))
    for config, with_text in (
        (FitConfig("core", "quadratic", 3, 0.1), True),
        (FitConfig("core", "linear", 0, 0.01, anchor_weight=2.0), True),
        (FitConfig("core", "linear", 3, 0.01, gate=0.2), True),
        (FitConfig(), False),
    ):
        fit(rows, config, with_text=with_text, anchors=anchors)
        fun, x0 = captured["fun"], captured["x0"] + 0.05
        error = check_grad(lambda t, f=fun: f(t)[0], lambda t, f=fun: f(t)[1], x0)
        assert error < 1e-5 * max(1.0, float(np.linalg.norm(fun(x0)[1])))


def test_averaged_members_are_one_wider_mlp() -> None:
    rows = synthetic_rows(300)
    config = FitConfig("core", "linear", 4, 0.01, members=3)
    averaged = fit(rows, config)
    assert averaged.layers[0].weights.shape == (5, 12) and averaged.layers[1].weights.shape == (12, 3)
    members = [fit(rows, FitConfig("core", "linear", 4, 0.01, seed=i)) for i in range(3)]
    logits = np.mean([np.log(predict(m, rows.z, rows.log_text)) for m in members], axis=0)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.allclose(predict(averaged, rows.z, rows.log_text), expected)


def test_flat_voice_anchors_keep_their_text_probabilities() -> None:
    """Words that move a feature without any feeling (anchors) teach the head to leave it alone."""
    rows = synthetic_rows()
    words = FEATURE_NAMES.index("mfcc_mean_1")
    rows.z[rows.y == 0, words] += 1.0  # in the labelled rows, this feature goes with negative too
    rng = np.random.default_rng(5)
    z = np.zeros((400, len(FEATURE_NAMES)))
    z[:, words] = rng.normal(0, 1.5, 400)  # in flat voices it moves with the words alone
    text = rng.dirichlet([2, 5, 2], 400)
    anchors = Anchors(z, np.log(text))
    config = FitConfig("core+mfcc", "linear", 0, 0.001)
    loose = predict(fit(rows, config), z, np.log(text))
    held = predict(
        fit(rows, dataclasses.replace(config, anchor_weight=3.0), anchors=anchors), z, np.log(text)
    )
    assert np.abs(held - text).mean() < 0.5 * np.abs(loose - text).mean()
    assert macro_f1(rows.y, predict(fit(rows, config, anchors=anchors), rows.z, rows.log_text)) > 0.85


def test_folds_split_by_actor() -> None:
    folds = actor_folds(list(range(1, 13)) * 3)
    assert sorted(a for f in folds for a in f) == list(range(1, 13)) and len(folds) == 4
