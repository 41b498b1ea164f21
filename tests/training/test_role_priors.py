"""Role priors: per speaker role, a shift of the text model's log-probabilities fitted on the sales dev
split, served by the channel (training/role_priors.py, scorer_service/inference.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from scorer_service.inference import DEFAULT_MODEL, SentimentInput, SentimentModel, read_model_info
from training.data import LabelledUtterance, load_sales
from training.evaluate import onnx_model
from training.role_priors import fit_role_priors, fit_shift, refit_card


def test_the_fit_finds_a_known_prior_shift_back() -> None:
    """Labels drawn from softmax(log p + b) for a known b: the fit recovers b (neutral held at 0)."""
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([2.0, 2.0, 2.0], size=6000)
    truth_shift = np.array([-1.5, 0.0, 0.7])
    shifted = np.log(probs) + truth_shift
    shifted = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    labels = [int(rng.choice(3, p=row)) for row in shifted]
    fitted = fit_shift(probs, labels)
    assert fitted[1] == 0.0
    np.testing.assert_allclose(fitted, truth_shift, atol=0.15)
    # labels drawn from the probabilities themselves: nothing to shift
    plain = [int(rng.choice(3, p=row)) for row in probs]
    np.testing.assert_allclose(fit_shift(probs, plain), [0.0, 0.0, 0.0], atol=0.15)


@pytest.fixture(scope="module")
def words_only() -> SentimentModel:
    if not DEFAULT_MODEL.is_file():
        pytest.skip(f"SHIPPED MODEL ABSENT: {DEFAULT_MODEL}")
    info = read_model_info(DEFAULT_MODEL.parent)
    return onnx_model(DEFAULT_MODEL, DEFAULT_MODEL.parent / "tokenizer.json", info.uses_context)


def test_on_the_sales_dev_split_a_rep_is_rarely_negative_and_a_buyer_more_often(
    words_only: SentimentModel,
) -> None:
    section = fit_role_priors(words_only, load_sales("dev").examples, "sales:dev")
    agent, customer = section["shift"]["agent"], section["shift"]["customer"]
    assert section["lines"]["agent"] >= 100 and section["lines"]["customer"] >= 100
    # the rubric: a rep doing the job is neutral, so both moods shrink for agents
    assert agent[0] < -1.0 and agent[2] < -1.0
    # buyers object and warm up more often than the general corpora's speakers: not shrunk toward neutral
    assert customer[0] > agent[0] + 1.0 and customer[2] > agent[2] + 1.0


def test_a_set_that_does_not_say_who_speaks_gets_no_priors(words_only: SentimentModel) -> None:
    lines = [LabelledUtterance(text=f"line {i}", label=i % 3, source="x") for i in range(150)]
    with pytest.raises(ValueError, match="who speaks"):
        fit_role_priors(words_only, lines, "x")


def test_priors_are_fitted_on_the_words_own_scores(words_only: SentimentModel) -> None:
    served = SentimentModel.load()
    if not served.info.role_priors:
        pytest.skip("the shipped model has no role priors")
    with pytest.raises(ValueError, match="without its role priors"):
        fit_role_priors(served, load_sales("dev").examples[:200], "sales:dev")


def test_refitting_a_card_rewrites_its_priors_and_metrics_and_keeps_the_tone_section(tmp_path: Path) -> None:
    if not DEFAULT_MODEL.is_file():
        pytest.skip(f"SHIPPED MODEL ABSENT: {DEFAULT_MODEL}")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("model.int8.onnx", "tokenizer.json", "MODEL_CARD.md"):
        shutil.copy2(DEFAULT_MODEL.parent / name, model_dir / name)
    card = json.loads((DEFAULT_MODEL.parent / "model_card.json").read_text())
    card.pop("role_priors", None)
    card["metrics"] = {"sales:dev": {}}  # re-measured by the refit
    (model_dir / "model_card.json").write_text(json.dumps(card))

    refit = refit_card(model_dir, "sales:dev")

    priors = read_model_info(model_dir).role_priors
    assert set(priors) == {"agent", "customer"}
    assert refit["metrics"]["sales:dev"]["n"] == len(load_sales("dev").examples)
    markdown = (model_dir / "MODEL_CARD.md").read_text()
    assert "## Role priors" in markdown
    assert markdown.count("tone-fusion:begin") == (DEFAULT_MODEL.parent / "MODEL_CARD.md").read_text().count(
        "tone-fusion:begin"
    )
    # what the card now says is what the served model scores: the same text, by role
    served = SentimentModel.load(model_dir / "model.int8.onnx")
    line = "Honestly that's a bit more than we had in mind for this year."
    by_role = {
        role: served.predict([SentimentInput(line, role=role)])[0] for role in ("", "agent", "customer")
    }
    assert by_role["agent"].p_neutral > by_role[""].p_neutral
    assert by_role["agent"] != by_role["customer"]


def test_the_command_says_when_a_set_cannot_give_priors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`callsense fit-role-priors --on FILE` whose lines say no speaker: exit 2 and why, card untouched."""
    from tools.cli import main as cli_main

    if not DEFAULT_MODEL.is_file():
        pytest.skip(f"SHIPPED MODEL ABSENT: {DEFAULT_MODEL}")
    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL.parent, model_dir)
    before = (model_dir / "model_card.json").read_text()
    lines = Path(__file__).parents[1] / "data" / "sales_sentiment.jsonl"
    assert cli_main(["fit-role-priors", str(model_dir), "--on", str(lines)]) == 2
    assert "who speaks" in capsys.readouterr().err
    assert (model_dir / "model_card.json").read_text() == before
