"""The objection tagger's measurement (training/objection_eval.py, `callsense objections evaluate`) and its
training (training/objection_finetune.py): the arithmetic on made-up lines, the mention filter, the shipped
adapters' provenance, deterministic training that never reads the test split, and the shipped tagger's
figures on the sales test split against the goals of issue 12."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from postcall.objection_encoder import ADAPTER_PATH, AdapterFile, adapter_files
from postcall.objections import LocalObjectionTagger
from scorer_service.inference import DEFAULT_MODEL, SentimentModel
from tools.cli import build_parser
from training.objection_eval import (
    GOAL_FALSE_TAG_RATE,
    GOAL_MICRO_F1,
    SALES_DIR,
    GoldLine,
    ObjectionEvaluation,
    evaluate_tagger,
    load_gold_lines,
    mentions,
    render_text,
    score_predictions,
)

# The shipped tagger (its classifier fine-tuned end to end on the three batches' train + dev, 2026-12-06) on
# the sales test split of the four batches (docs/objections.md, 2026-12-07, with the sentiment model of that
# day reading the phrase rules' veto): micro-F1 0.642, false-tag rate 0.036 (23 of 639), on mentions 0.061
# (on the three batches' test split: 0.664, 0.032, 0.056); on the five batches' test split (975 customer
# lines, 2026-12-07): 0.645, 0.037 (28 of 762), 0.067. A tagger that does worse than the shipped one,
# less a few lines of slack, does not ship; one that meets the goals turns the xfail below into a failure
# to remove.
FLOOR_MICRO_F1 = 0.635
CEILING_FALSE_TAG_RATE = 0.05
CEILING_MENTION_FALSE_TAG_RATE = 0.08


def line(line_id: str, objection: str | None, text: str = "ok", label: str = "neutral") -> GoldLine:
    return GoldLine(line_id, "c1", "customer", text, text.lower(), "dev", label, objection)


def test_figures_of_predictions() -> None:
    lines = [
        line("c1:00", "pricing pushback"),  # found
        line("c1:01", "pricing pushback"),  # missed
        line("c1:02", "authority"),  # given the wrong tag
        line("c1:03", None, "What would it cost for forty seats?", "positive"),  # a mention, tagged
        line("c1:04", None, "Sounds good.", "positive"),  # no mention, untagged
        line("c1:05", None, "We're a team of forty.", "negative"),  # negative: not in the mention share
        GoldLine("c1:06", "c1", "agent", "Our price is 40k.", "our price is 40k", "dev", "neutral", None),
    ]
    predicted = {
        "c1:00": {"pricing pushback"},
        "c1:02": {"no need"},
        "c1:03": {"pricing pushback"},
        "c1:05": {"timeline concern"},
        "c1:06": {"pricing pushback"},  # the rep's lines are not scored
    }
    result = score_predictions(lines, predicted, "dev")
    assert result.lines == 6 and result.untagged_lines == 3
    pricing = result.per_tag["pricing pushback"]
    assert (pricing.precision, pricing.recall, pricing.support, pricing.predicted) == (0.5, 0.5, 2, 2)
    assert result.per_tag["authority"].recall == 0.0 and result.per_tag["no need"].precision == 0.0
    # micro: tp 1, fp 3 (c1:02 no need, c1:03, c1:05), fn 2 (c1:01, c1:02)
    assert (result.micro.precision, result.micro.recall, result.micro.f1) == (0.25, 0.3333, round(2 / 7, 4))
    assert result.false_tag_rate == round(2 / 3, 4)
    assert result.mention_lines == 1 and result.mention_false_tag_rate == 1.0
    assert result.mention_false_tags["money"] == (1, 1) and result.mention_false_tags["vendor"] == (0, 0)
    assert [m["line_id"] for m in result.missed] == ["c1:01", "c1:02"]
    assert not result.meets_goals()
    text = render_text(result)
    assert "micro" in text and "false-tag rate: 0.667 (2 of 3" in text and "misses them" in text
    assert json.loads(json.dumps(result.to_json()))["micro"]["f1"] == round(2 / 7, 4)


def test_mentions() -> None:
    assert mentions("That's well over what we budgeted.") == ["money"]
    assert mentions("Could we start in March? My VP would love that.") == ["time", "approver"]
    assert mentions("We're already using HubSpot for that.") == ["vendor"]
    assert mentions("Sounds great, thanks.") == []
    assert mentions("May I ask something?") == []  # the month only when it is a month ("may" is not)


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(["objections", "evaluate", "--split", "test", "--asr", "--json"])
    assert (args.command, args.verb, args.split, args.asr, args.json) == (
        "objections",
        "evaluate",
        "test",
        True,
        True,
    )
    argv = ["objections", "train", "--splits", "train", "--choose-on", "dev", "--out", "/tmp/m.safetensors"]
    args = build_parser().parse_args(argv)
    assert (args.verb, args.splits, args.choose_on, args.threshold, args.out, args.epochs) == (
        "train",
        ["train"],
        "dev",
        None,
        "/tmp/m.safetensors",
        3,
    )
    args = build_parser().parse_args(["objections", "train", "--threshold", "0.6"])
    assert (args.splits, args.choose_on, args.threshold) == (["train", "dev"], None, 0.6)
    for bad in (["objections", "train"], ["objections", "train", "--choose-on", "test"]):
        with pytest.raises(SystemExit):  # the threshold must be chosen (not on test) or given
            build_parser().parse_args(bad)


def test_the_shipped_adapters_never_saw_the_test_split() -> None:
    for path in adapter_files():
        adapter = AdapterFile.read(path)
        fitted = adapter.card["fitted_on"]
        assert fitted["splits"] == ["train", "dev"] and fitted["asr_copies"], path
        assert adapter.card["command"].startswith(
            "callsense objections train --splits train dev --threshold "
        )
        assert float(adapter.card["command"].split("--threshold ")[1].split()[0]) == adapter.threshold
    customer = [g for g in load_gold_lines(split="test") if g.speaker == "customer"]
    # The test split of the corpus's five batches (829 and 190 on batches 1-4, 739 and 169 on batches 1-3).
    assert len(customer) == 975 and sum(g.objection is not None for g in customer) == 213


@pytest.fixture(scope="module")
def test_split() -> ObjectionEvaluation:
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"SHIPPED MODEL ABSENT: {DEFAULT_MODEL} not found; the tagger's input is scored with it")
    return evaluate_tagger(LocalObjectionTagger(), "test", SentimentModel.load())


@pytest.mark.slow
def test_the_shipped_tagger_is_no_worse_than_when_it_shipped(test_split: ObjectionEvaluation) -> None:
    report = render_text(test_split)
    assert test_split.lines == 975, report
    assert test_split.micro.f1 >= FLOOR_MICRO_F1, report
    assert test_split.false_tag_rate <= CEILING_FALSE_TAG_RATE, report
    assert test_split.mention_false_tag_rate <= CEILING_MENTION_FALSE_TAG_RATE, report


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 12's goals are not met: the shipped tagger measured micro-F1 0.645 and a false-tag rate "
    "of 0.037 on the test split of the corpus's five batches (docs/objections.md)",
)
def test_the_shipped_tagger_meets_the_goals(test_split: ObjectionEvaluation) -> None:
    report = render_text(test_split)
    assert test_split.micro.f1 >= GOAL_MICRO_F1, report
    assert test_split.false_tag_rate <= GOAL_FALSE_TAG_RATE, report


def _small_corpus(directory: Path) -> None:
    """Eight calls of the sales corpus's train split and two of dev, with their gold labels."""
    lines = [json.loads(raw) for raw in (SALES_DIR / "lines.jsonl").read_text(encoding="utf-8").splitlines()]
    calls = sorted({r["call_id"] for r in lines if r["split"] == "train"})[:8]
    calls += sorted({r["call_id"] for r in lines if r["split"] == "dev"})[:2]
    kept = [r for r in lines if r["call_id"] in calls]
    ids = {r["line_id"] for r in kept}
    gold = [raw for raw in (SALES_DIR / "gold.jsonl").read_text(encoding="utf-8").splitlines()]
    directory.mkdir()
    (directory / "lines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    (directory / "gold.jsonl").write_text(
        "".join(raw + "\n" for raw in gold if json.loads(raw)["line_id"] in ids), encoding="utf-8"
    )


@pytest.mark.slow
def test_training_is_deterministic_and_never_fits_on_test(tmp_path: Path) -> None:
    from training.objection_finetune import THRESHOLDS, default_out, train_and_write

    # A run's default file, named for its seed, is never in the folder the tagger averages whole.
    assert default_out(14).name == "seed14.safetensors"
    assert not default_out(14).resolve().is_relative_to(ADAPTER_PATH.resolve())
    corpus = tmp_path / "sales"
    _small_corpus(corpus)
    first, second = tmp_path / "fits" / "first.safetensors", tmp_path / "second.safetensors"  # fits/ made
    summary = train_and_write(first, corpus, ["train"], choose_on="dev", epochs=1)
    assert summary["fitted_on"]["splits"] == ["train"] and summary["fitted_on"]["hand_written"] > 200
    assert (
        summary["threshold"] in THRESHOLDS
        and summary["chosen"]["written"]["threshold"] == summary["threshold"]
    )
    train_and_write(second, corpus, ["train"], choose_on="dev", epochs=1)
    assert AdapterFile.read(first).tensors.keys() == AdapterFile.read(second).tensors.keys()
    assert all(
        (AdapterFile.read(first).tensors[name] == AdapterFile.read(second).tensors[name]).all()
        for name in AdapterFile.read(first).tensors
    )
    for splits, choose_on, threshold, message in [
        (["train", "test"], None, 0.6, "test split"),
        (["train"], "test", None, "test split"),
        (["train"], "train", None, "not fitted on"),
        (["train"], None, None, "either"),
        (["train"], None, 1.5, "threshold"),
    ]:
        with pytest.raises(ValueError, match=message):
            train_and_write(tmp_path / "never.safetensors", corpus, splits, choose_on, threshold, epochs=1)
    assert not (tmp_path / "never.safetensors").exists()
    with pytest.raises(ValueError, match="is a folder"):  # before the fit, not after its minutes
        train_and_write(tmp_path, corpus, ["train"], threshold=0.6, epochs=1)
