"""The objection tagger's fine-tuned classifier: the shipped fits read in NumPy give, averaged, the
probabilities the training code's torch models give; a folder of fits averages them under one threshold;
a broken or mismatched adapter file fails at start-up."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from safetensors.numpy import load_file, save_file

from postcall import objection_encoder
from postcall.encoder import default_model_dir
from postcall.objection_encoder import (
    ADAPTER_PATH,
    CLASSES,
    HEAD_WEIGHT,
    AdapterFile,
    ObjectionClassifier,
    ObjectionModelError,
    adapter_files,
    merge_adapters,
    segment_contexts,
    shared_classifier,
    tagger_context,
)

PAIRS = [
    (
        tagger_context("For forty seats that comes to about thirty-eight thousand a year.", "I hear you."),
        "Hm. That's well over what we budgeted.",
    ),
    (
        tagger_context(
            "Would you be the one signing the order form?", "Understood, happy to join that call."
        ),
        "We'd need sign-off from our VP first.",
    ),
    (tagger_context("", ""), "Thanks, it was nice talking to you."),
    (
        tagger_context("the annual plan is twenty two thousand", "great so shall we start"),
        "thats within what we budgeted so no problem there",
    ),
]


@pytest.fixture(scope="module")
def classifier() -> ObjectionClassifier:
    return shared_classifier()


@pytest.mark.slow  # loads torch and transformers for the reference
def test_probabilities_are_the_training_models(classifier: ObjectionClassifier) -> None:
    pytest.importorskip("torch", reason="the training side (torch) is the reference")
    finetune = pytest.importorskip("training.objection_finetune")
    examples = [finetune.Example(context, text, 0) for context, text in PAIRS]
    each = []
    for path in adapter_files():
        net = finetune.TaggerNet(default_model_dir())
        finetune.load_adapter_tensors(net, AdapterFile.read(path).tensors)
        net.eval()
        each.append(finetune.probabilities(net, examples, default_model_dir()))
    reference = np.mean(each, axis=0)
    ours = classifier.probabilities(PAIRS)
    assert classifier.fits == len(each)
    assert ours.shape == (len(PAIRS), len(CLASSES))
    assert np.allclose(ours.sum(axis=1), 1.0)
    assert np.abs(ours - reference).max() < 1e-4


def test_the_tags_are_the_likely_classes_at_the_threshold(classifier: ObjectionClassifier) -> None:
    probabilities = classifier.probabilities(PAIRS)
    tags = classifier.tags(probabilities)
    assert tags[0] == [("pricing pushback", float(probabilities[0][1]))]  # over the budget, after the price
    assert tags[2] == []  # a goodbye
    assert all(len(row) <= 1 and all(p >= classifier.threshold for _, p in row) for row in tags)
    # The likeliest tag only, and only at the threshold.
    at, under = classifier.threshold, classifier.threshold - 0.05
    assert classifier.tags(np.array([[1 - at - 0.01, 0.01, 0, 0, 0, at]])) == [[("no need", at)]]
    assert classifier.tags(np.array([[1 - under - 0.01, 0.01, 0, 0, 0, under]])) == [[]]
    assert classifier.tags(np.array([[1.0, 0, 0, 0, 0, 0]])) == [[]]
    assert classifier.probabilities([]).shape == (0, len(CLASSES))


def test_merge_folds_each_adapter_into_its_projection() -> None:
    base = {"layer.query.weight": np.eye(2, dtype=np.float32), "layer.norm.weight": np.ones(2, np.float32)}
    adapter: dict[str, NDArray[np.generic]] = {
        "layer.query.lora_a": np.array([[1.0, 2.0]], dtype=np.float16),  # rank 1
        "layer.query.lora_b": np.array([[1.0], [0.0]], dtype=np.float16),
        "layer.norm.weight": np.array([2.0, 3.0], dtype=np.float32),
        HEAD_WEIGHT: np.zeros((6, 2), np.float32),
    }
    merged = merge_adapters(base, adapter, scale=0.5)
    assert np.array_equal(merged["layer.query.weight"], [[1.5, 1.0], [0.0, 1.0]])
    assert np.array_equal(merged["layer.norm.weight"], [2.0, 3.0])
    assert HEAD_WEIGHT not in merged and np.array_equal(base["layer.query.weight"], np.eye(2))
    with pytest.raises(ObjectionModelError, match="names no base weight"):
        merge_adapters(base, {"layer.other.bias": np.ones(2, np.float32)}, 1.0)
    with pytest.raises(ObjectionModelError, match="no base weight"):
        merge_adapters(base, {"layer.key.lora_a": np.ones((1, 2), np.float32)}, 1.0)
    with pytest.raises(ObjectionModelError, match="against"):
        merge_adapters(base, {"layer.norm.weight": np.ones(3, np.float32)}, 1.0)


def _rewrite(
    tmp_path: Path,
    metadata: dict[str, str] | None = None,
    drop: str = "",
    name: str = "adapter.safetensors",
    head_bias_shift: float = 0.0,
) -> Path:
    """A copy of the first shipped fit with its metadata changed, a tensor dropped, or its head's bias for
    "none" moved (another fit, as far as the average can tell)."""
    shipped = adapter_files()[0]
    adapter = AdapterFile.read(shipped)
    tensors = {key: value for key, value in load_file(str(shipped)).items() if key != drop}
    if "head.bias" in tensors:
        tensors["head.bias"] = tensors["head.bias"] + np.array([head_bias_shift, 0, 0, 0, 0, 0], np.float32)
    base = {
        "format": "callsense-objection-adapter/1",
        "classes": json.dumps(list(CLASSES)),
        "threshold": str(adapter.threshold),
        "lora_scale": str(adapter.lora_scale),
        "base_sha256": adapter.base_sha256,
        "card": json.dumps(adapter.card),
    }
    path = tmp_path / name
    save_file(tensors, str(path), metadata={**base, **(metadata or {})})
    return path


@pytest.mark.parametrize(
    ("change", "drop", "message"),
    [
        ({"format": "something-else/1"}, "", "not a callsense-objection-adapter/1 file"),
        ({"classes": json.dumps(["none", "pricing pushback"])}, "", "classes must be"),
        ({"threshold": "1.5"}, "", r"threshold must be in \(0, 1\]"),
        ({"threshold": "high"}, "", "bad metadata"),
        ({}, "head.bias", "needs a head.weight"),
        ({"base_sha256": "0" * 64}, "", "was trained on base weights 000000000000"),
    ],
)
def test_a_broken_or_mismatched_file_fails_at_start_up(
    tmp_path: Path, change: dict[str, str], drop: str, message: str
) -> None:
    with pytest.raises(ObjectionModelError, match=message):
        ObjectionClassifier(_rewrite(tmp_path, change, drop))


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ObjectionModelError, match="absent.safetensors: cannot read"):
        ObjectionClassifier(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ObjectionModelError, match="cannot read"):
        ObjectionClassifier(tmp_path / "junk.safetensors")


def test_the_shipped_files_are_small_and_say_what_they_are() -> None:
    files = adapter_files()
    seeds = set()
    for path in files:
        assert path.stat().st_size < 2_000_000  # adapters, not a copy of the encoder
        adapter = AdapterFile.read(path)
        assert adapter.card["fitted_on"]["splits"] == ["train", "dev"]
        assert "test" not in adapter.card["command"]
        seeds.add(adapter.card["training"]["seed"])
    assert len(seeds) == len(files)  # each fit its own seed: the same one twice would average nothing


def test_a_folder_of_fits_averages_their_probabilities(tmp_path: Path) -> None:
    folder = tmp_path / "fits"
    folder.mkdir()
    first = _rewrite(folder, name="a.safetensors")
    second = _rewrite(folder, name="b.safetensors", head_bias_shift=2.0)  # "none" likelier: fewer tags
    both = ObjectionClassifier(folder)
    alone = [
        ObjectionClassifier(first).probabilities(PAIRS),
        ObjectionClassifier(second).probabilities(PAIRS),
    ]
    assert both.fits == 2 and not np.allclose(alone[0], alone[1])
    assert np.allclose(both.probabilities(PAIRS), (alone[0] + alone[1]) / 2, atol=1e-6)


def test_fits_with_different_thresholds_or_an_empty_folder_fail_at_start_up(tmp_path: Path) -> None:
    _rewrite(tmp_path, {"threshold": "0.6"}, name="a.safetensors")
    _rewrite(tmp_path, {"threshold": "0.75"}, name="b.safetensors")
    with pytest.raises(ObjectionModelError, match=r"different thresholds \[0.6, 0.75\]"):
        ObjectionClassifier(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ObjectionModelError, match="empty: no adapter files"):
        ObjectionClassifier(tmp_path / "empty")


def test_the_shared_classifier_loads_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objection_encoder, "_shared", {})
    loads: list[ObjectionClassifier] = []
    real_init = ObjectionClassifier.__init__

    def counting_init(
        self: ObjectionClassifier, path: Path = ADAPTER_PATH, base_dir: Path | None = None
    ) -> None:
        real_init(self, path, base_dir)
        loads.append(self)

    monkeypatch.setattr(ObjectionClassifier, "__init__", counting_init)
    start = threading.Barrier(6)
    got: list[ObjectionClassifier] = []

    def worker() -> None:
        start.wait()
        got.append(shared_classifier())

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert len(got) == 6 and all(c is loads[0] for c in got)


def test_the_context_is_the_other_sides_lines_around_the_segment() -> None:
    assert tagger_context("That's forty thousand a year.", "What if we phased it?") == (
        "That's forty thousand a year. || What if we phased it?"
    )
    texts = ["Forty thousand a year.", "Hm.", "That's a lot.", "What if we phased it?", "Maybe.", "Bye."]
    speakers = ["agent", "customer", "customer", "agent", "customer", "customer"]
    contexts = segment_contexts(texts, speakers)
    # A turn cut in two reads the rep's lines on both sides, not its own other half.
    assert contexts[1] == contexts[2] == "Forty thousand a year. || What if we phased it?"
    assert contexts[4] == contexts[5] == "What if we phased it? || "  # nothing after: empty
    assert contexts[0] == " || Hm." and contexts[3] == "That's a lot. || Maybe."  # the rep's lines too
    # A mono line has no other side to find: the adjacent segments.
    mono = segment_contexts(texts, ["mixed"] * len(texts))
    assert mono[2] == "Hm. || What if we phased it?" and mono[0] == " || Hm." and mono[5] == "Maybe. || "
    assert segment_contexts([], []) == []
    with pytest.raises(ValueError, match="2 texts for 1 speakers"):
        segment_contexts(["a", "b"], ["agent"])
