"""The objection tagger's fine-tuned classifier: the shipped adapters read in NumPy give the probabilities
the training code's torch model gives, and a broken or mismatched adapter file fails at start-up."""

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
    net = finetune.TaggerNet(default_model_dir())
    finetune.load_adapter_tensors(net, AdapterFile.read().tensors)
    net.eval()
    examples = [finetune.Example(context, text, 0) for context, text in PAIRS]
    reference = finetune.probabilities(net, examples, default_model_dir())
    ours = classifier.probabilities(PAIRS)
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


def _rewrite(tmp_path: Path, metadata: dict[str, str] | None = None, drop: str = "") -> Path:
    adapter = AdapterFile.read()
    tensors = {name: value for name, value in load_file(str(ADAPTER_PATH)).items() if name != drop}
    base = {
        "format": "callsense-objection-adapter/1",
        "classes": json.dumps(list(CLASSES)),
        "threshold": str(adapter.threshold),
        "lora_scale": str(adapter.lora_scale),
        "base_sha256": adapter.base_sha256,
        "card": json.dumps(adapter.card),
    }
    path = tmp_path / "adapter.safetensors"
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


def test_the_shipped_file_is_small_and_says_what_it_is() -> None:
    assert ADAPTER_PATH.stat().st_size < 2_000_000  # adapters, not a copy of the encoder
    adapter = AdapterFile.read()
    assert adapter.card["fitted_on"]["splits"] == ["train", "dev"]
    assert "test" not in adapter.card["command"]


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
