"""The shipped model on the shared dev sets and the sales test split: its card tells the truth, and
quality does not regress.

Reads ../shared/data; skipped loudly where it is absent. The model of 2026-12-05 06:37 reads the previous
utterance: the weight average of two context runs fine-tuned from the MELD-only model of 2026-11-26 onto the
sales corpus (README, The model). As served (one forward pass per utterance) it measures MELD dev 0.6558
(2026-11-26: 0.6677; issue 12's goal 0.69 is not met), DailyDialog valid 0.6721 (0.6525), TweetEval
validation 0.5870 (0.5855) and the sales test split of the corpus's three batches 0.6186 (the model it
replaced, of 03:17: 0.6074; the goal is 0.85), served with plain layer norms (the card's Serving section:
with the file's fused ones DailyDialog valid read 0.6763, 2 of its 475 predictions apart, and TweetEval
0.5882). Since 2026-12-06 its card carries role priors (fitted on the sales dev split; training/
role_priors.py): the sales test split reads 0.6747 with them (as the ASR writes it 0.6515), the general sets,
whose lines say no speaker, exactly as before. The floors sit a hair under what the shipped model measures
(a single flipped prediction moves macro-F1 by about 0.001, and thread counts can flip one), so a retrain
that does worse fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scorer_service.inference import DEFAULT_MODEL, read_model_info
from training.data import load_source
from training.evaluate import evaluate_examples, onnx_model

pytestmark = [pytest.mark.evaluation, pytest.mark.slow]  # reads the corpora: minutes, not seconds

FLOORS = {
    "meld:dev": {"macro_f1": 0.653, "weighted_f1": 0.673},
    "dailydialog:valid": {"macro_f1": 0.669},
    "tweeteval:val": {"macro_f1": 0.585},
    # with the role priors of 2026-12-06 (0.6186 and 48.1 % without): 53.8 % of negatives under the red line
    "sales:test": {"macro_f1": 0.672, "negative_below_red": 0.53},
    "sales-asr:test": {"macro_f1": 0.648},  # 0.6144 without the role priors
}


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((DEFAULT_MODEL.parent / "model_card.json").read_text())


@pytest.mark.parametrize("spec", sorted(FLOORS))
def test_shipped_model_matches_its_card_and_floors(shared_data: Path, card: dict, spec: str) -> None:
    model_dir = DEFAULT_MODEL.parent
    info = read_model_info(model_dir)  # as served: the card's role priors where a set says who speaks
    model = onnx_model(
        DEFAULT_MODEL,
        model_dir / "tokenizer.json",
        info.uses_context,
        role_priors=info.role_priors,
        uses_roles=info.uses_roles,
    )
    report = evaluate_examples(model, load_source(spec, shared_data).examples)
    recorded = card["metrics"][spec]
    # Same model, same data, one pass per utterance: the card's figures must be reproducible (thread
    # counts may flip a prediction, so allow a sliver).
    assert report["macro_f1"] == pytest.approx(recorded["macro_f1"], abs=0.003)
    assert report["weighted_f1"] == pytest.approx(recorded["weighted_f1"], abs=0.003)
    for metric, floor in FLOORS[spec].items():
        assert report[metric] >= floor, f"{spec} {metric} {report[metric]:.4f} is below the floor {floor}"


def test_card_records_the_quantisation_gate_and_file_hashes(card: dict) -> None:
    from training.evaluate import sha256

    gate = card["quantisation"]
    assert gate["macro_f1_drop_points"] <= gate["max_allowed_drop_points"] == 0.5
    for name, entry in card["files"].items():
        assert sha256(DEFAULT_MODEL.parent / name) == entry["sha256"], f"{name} differs from its card"
    assert DEFAULT_MODEL.stat().st_size < 30_000_000
