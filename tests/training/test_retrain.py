"""The parts of `callsense retrain` that need no training (training/retrain.py): the recipe read from a model
card, where training starts, and the report written either way (the end-to-end run is
tests/tools/test_retrain_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from callsense.tokenization import SHIPPED_MODEL_DIR
from training.gate import SetScores, judge
from training.retrain import (
    RetrainConfig,
    _initial_checkpoint,
    fp32_blocks_of,
    recipe_of,
    render_report,
    write_report,
)


def test_the_recipe_is_the_shipped_cards_own() -> None:
    card = json.loads((SHIPPED_MODEL_DIR / "model_card.json").read_text())
    recipe = recipe_of(card)
    # The named sets only: the run's local files (its replayed lines) are in training.config.as_run.
    named = ["meld:train", "dailydialog:train", "sales:train", "sales:train", "sales-asr:train"]
    named += ["tweeteval-emotion:train", "tweeteval:val-fit", "tweeteval:val-fit"]  # TweetEval's fit half
    assert recipe.train == named
    assert recipe.dev == ["sales:dev", "meld:dev"]
    assert (recipe.learning_rate, recipe.batch_size, recipe.seed, recipe.context) == (3e-05, 32, 29, True)
    assert recipe.context_swap == 0.3 and recipe.roles  # a speaker-aware model retrains speaker-aware
    assert recipe.base_model == "" and recipe.layers == 0  # the default base model, every layer
    assert (recipe.calibrate_on, recipe.class_bias) == ("sales:dev", False)
    assert (recipe.keep_fp32_blocks, recipe.int8_weights) == (0, "u8")
    # every block INT8, the feed-forward output projections smoothed (2026.12.07-0807): a retrain alike
    assert recipe.fp32_blocks == [] and recipe.smooth_ffn_out == 0.95
    assert recipe.quantisation_dev == "meld:dev"  # its export's INT8 check; the gate measures every set
    assert set(recipe.report_sets) == {
        "meld:dev",
        "dailydialog:valid",
        "tweeteval:val",
        "tweeteval:val-held",
        "sales:dev",
        "sales:test",
        "sales-asr:test",
    }


def test_a_card_without_a_recipe_gets_train_pys_defaults() -> None:
    recipe = recipe_of({"version": "x", "calibration": {"temperature": 1.0}})
    assert recipe.train == ["meld:train", "dailydialog:train", "tweeteval:val"] and recipe.dev == ["meld:dev"]
    assert recipe.learning_rate == 0.0  # the range test chooses, as `callsense train` does
    assert recipe.calibrate_on is None and recipe.keep_fp32_blocks == 0 and recipe.report_sets == []
    assert recipe.int8_weights == "s8-reduced"  # a card from before the choice existed
    assert recipe.smooth_ffn_out == 0.0  # nor smoothed
    assert recipe.context_swap == 0.0 and recipe.fp32_blocks == []
    named = recipe_of({"quantisation": {"fp32_blocks": ["layer0.ffn_out"]}})  # a retrain keeps the same
    assert (named.fp32_blocks, named.keep_fp32_blocks) == (["layer0.ffn_out"], 0)
    swept = recipe_of(
        {"quantisation": {"fp32_blocks": ["layer0.ffn"], "dev_macro_f1_with_block_kept_fp32": {}}}
    )
    assert (swept.fp32_blocks, swept.keep_fp32_blocks) == ([], 1)  # a retrain sweeps again
    assert recipe_of({"training": {"config": {"context": True, "context_swap": 0.3}}}).context_swap == 0.3
    assert recipe_of({"quantisation": {"weights": "u8"}}).int8_weights == "u8"  # a retrain stores as served
    smoothed = recipe_of({"quantisation": {"smooth_quant": {"alpha": 0.5, "calibrated_on": "sales:dev"}}})
    assert smoothed.smooth_ffn_out == 0.5  # and smooths as served
    # a model with role priors: its retrain fits them again on the same set; one without gets none
    assert recipe_of({"role_priors": {"fitted_on": "sales:dev", "shift": {}}}).role_priors_on == "sales:dev"
    assert recipe_of({}).role_priors_on == ""


def test_a_candidates_fp32_blocks_follow_the_current_model_unless_a_sweep_is_asked_for() -> None:
    named = recipe_of({"quantisation": {"fp32_blocks": ["layer0.ffn_out", "layer2.ffn_out"]}})
    swept = recipe_of(
        {"quantisation": {"fp32_blocks": ["layer3.ffn_in"], "dev_macro_f1_with_block_kept_fp32": {}}}
    )
    neither = recipe_of({})
    # -1 (the default): the same named blocks, or a sweep for as many as the current model's sweep kept
    assert fp32_blocks_of(named, -1) == (0, ["layer0.ffn_out", "layer2.ffn_out"])
    assert fp32_blocks_of(swept, -1) == (1, [])
    assert fp32_blocks_of(neither, -1) == (0, [])
    # --keep-fp32-blocks N: a sweep for N, whatever the current model named (never both: ship() refuses)
    assert fp32_blocks_of(named, 2) == (2, [])
    assert fp32_blocks_of(named, 0) == (0, [])
    assert fp32_blocks_of(swept, 3) == (3, [])
    assert RetrainConfig.__dataclass_fields__["keep_fp32_blocks"].default == -1


def test_a_retrained_cards_recipe_keeps_its_base_sets_not_the_tenant_files_of_its_run() -> None:
    card = {
        "training": {"config": {"train": ["meld:train", "/runs/r1/labels.train.jsonl"], "seed": 21}},
        "retrain": {"base_sets": ["meld:train"], "from_version": "2026.11.26-1209"},
    }
    assert recipe_of(card).train == ["meld:train"] and recipe_of(card).seed == 21


def report(outcome: str, scores: list[SetScores]) -> dict[str, Any]:
    return {
        "outcome": outcome,
        "at": "2026-12-03T21:00:00Z",
        "current": {"version": "v1", "directory": "/r/versions/v1"},
        "candidate": {"version": "v2", "directory": "/w/candidate"},
        "gate": judge(scores).to_json(),
        "labels": {
            "file": "gold.jsonl",
            "kind": "adjudicated",
            "lines": 400,
            "calls": 20,
            "undecided_left_out": 3,
            "unmatched_left_out": 0,
            "train_lines": 320,
            "held_out_lines": 80,
            "held_out_calls": ["acme-1", "acme-7", "acme-9", "acme-12"],
            "held_out_share": 0.2,
        },
        "training": {
            "base_sets": ["meld:train"],
            "labels_repeat": 3,
            "init": "/r/versions/v1/checkpoint",
            "init_kind": "registry checkpoint",
            "steps": 312,
            "learning_rate": 4.7e-5,
        },
        "notes": [],
        "metric": {"name": "callsense.retrain.outcomes", "attributes": {"outcome": outcome}},
    }


def test_a_refusal_report_says_which_set_and_check_failed(tmp_path: Path) -> None:
    refused = report(
        "refused",
        [
            SetScores("held-out labels", 80, 0.55, 0.71, 0.71),
            SetScores("meld:dev", 1109, 0.668, 0.641, 0.642),
        ],
    )
    (tmp_path / "reports").mkdir()
    path = write_report(tmp_path / "reports" / "retrain-2026.12", refused)
    assert path.name == "retrain-2026.12.json" and json.loads(path.read_text()) == refused
    markdown = (tmp_path / "reports" / "retrain-2026.12.md").read_text()
    assert markdown == render_report(refused)
    assert "**Refused**: v1 stays served." in markdown
    assert "| meld:dev | 1109 | 0.6680 | 0.6410 | -2.70 | 0.6420 | +0.10 | FAIL |" in markdown
    assert "| held-out labels | 80 | 0.5500 | 0.7100 | +16.00 |" in markdown
    assert "- meld:dev: macro-F1 drops 2.70 points against the current model" in markdown
    assert '`callsense.retrain.outcomes{outcome="refused"}`' in markdown


def test_a_promotion_report(tmp_path: Path) -> None:
    promoted = report("promoted", [SetScores("sales:test", 741, 0.42, 0.60, 0.601)])
    path = write_report(tmp_path / "good.json", promoted)
    markdown = path.with_suffix(".md").read_text()
    assert "**Promoted**: v2 is now served (was v1)." in markdown and "Why it was refused" not in markdown
    assert "320 tenant lines x3" in markdown and "80 lines of 4 calls (20% of the calls" in markdown


def test_a_version_without_a_checkpoint_is_refreshed_from_its_own_recovered_weights(
    trained_like: Path, tmp_path: Path
) -> None:
    """The shipped model has no checkpoint/: a retrain starts from its weights read back from its INT8
    file (training/recover.py), not from the base encoder, which would lose what the served model learnt."""
    from callsense.model_registry import ModelVersion
    from training.export import export_all

    files, _ = export_all(trained_like, tmp_path / "onnx", temperature=0.8)
    served = tmp_path / "served"
    served.mkdir()
    (served / "model.int8.onnx").write_bytes(files.int8.read_bytes())
    (served / "model_card.json").write_text(
        json.dumps({"version": "v1", "calibration": {"temperature": 0.8}})
    )
    current = ModelVersion(version="v1", directory=served, files=())
    config = RetrainConfig(
        labels=tmp_path / "labels.jsonl", registry=tmp_path / "registry", work=tmp_path / "work"
    )
    recipe = recipe_of({"training": {"config": {"base_model": str(trained_like)}}})
    init, kind = _initial_checkpoint(None, current, config, recipe)  # type: ignore[arg-type]  # no registry read
    assert kind == "recovered from the served model" and Path(init) == tmp_path / "work" / "recovered"
    assert json.loads((Path(init) / "training.json").read_text())["recovered_from"]["version"] == "v1"

    (served / "model.int8.onnx").write_bytes(b"not an onnx graph")  # unreadable: the base model, as before
    assert _initial_checkpoint(None, current, config, recipe) == (str(trained_like), "base model")  # type: ignore[arg-type]
