"""The shipped model on the shared dev sets and the sales test split: its card tells the truth, and
quality does not regress.

Reads ../shared/data; skipped loudly where it is absent. The model of 2026-12-07 08:07 reads the previous
utterance and, where the speaker is known, a role marker ("customer: ..."): 0.7 of a speaker-aware run on
the corpus's four batches that also learnt half of TweetEval validation (J5) and 0.3 of the model of
2026-12-05 06:37 (README, The model), exported with every block INT8 after SmoothQuant (the same weights as
04:55, which kept three feed-forward projections in fp32). As served (one forward pass per utterance, role
priors by speaker) it measures the sales test split 0.7339 (04:55: 0.7367; 01:30: 0.6935; the goal is 0.85),
as the ASR writes it 0.7275 (0.7289), 65.8 % of the negative lines under the red line (66.2 %); MELD dev
0.6507 (0.6512; issue 12's goal 0.69 is not met), DailyDialog valid 0.6561 (0.6581; the issue's line
0.6525), and TweetEval validation's held half, which its last run never read, 0.6146 (0.6178; the line
0.5855). The whole TweetEval validation split is no longer a floor: half of it is training data now. The
sales figures above are on the four batches' splits; since the corpus's fifth batch (2026-12-07, written for
the shapes this model misread on dev) the splits are larger and harder: sales test 0.7139, as the ASR writes
it 0.7092, 62.0 % of the negatives under the red line (171 of 276). The floors sit a hair under what the
shipped model measures (a single flipped prediction moves macro-F1 by about 0.001, and thread counts can
flip one), or at the issue's line, so a retrain that does worse fails here.
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
    "meld:dev": {"macro_f1": 0.649, "weighted_f1": 0.670},
    "dailydialog:valid": {"macro_f1": 0.6555},
    # a hair under 0.6146, on the half J5 never read (issue 12's line, 0.5855, is the whole split's; the
    # model of 01:30 read 0.5913 on this half)
    "tweeteval:val-held": {"macro_f1": 0.614},
    # with the role priors, on the five batches' test split (1,911 lines; on the four batches' 1,624: 0.7339,
    # 65.8 %, 156 of 237)
    "sales:test": {"macro_f1": 0.713, "negative_below_red": 0.619},  # 171 of 276
    "sales-asr:test": {"macro_f1": 0.708},
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
