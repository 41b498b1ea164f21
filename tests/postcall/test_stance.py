"""The objection tagger's stance features: the shipped sentiment model's pooled state (postcall/stance.py),
and the pin between the tagger's weights and that model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from callsense.model_files import file_sha256
from postcall.objection_model import MODEL_PATH, ObjectionModel, ObjectionModelError
from postcall.objections import LocalObjectionTagger
from postcall.stance import (
    STANCE_MODEL_PATH,
    StanceEncoder,
    StanceModelMismatchError,
    check_stance_model,
)
from scorer_service.inference import SentimentModel
from tests.support.scored_lines import score_lines

BUDGET_OVER = "Honestly that's well over what we budgeted for this."
BUDGET_FITS = "That's within what we budgeted, so no problem there."


@pytest.fixture(scope="module")
def stance() -> StanceEncoder:
    if not STANCE_MODEL_PATH.is_file():
        pytest.skip(f"SHIPPED MODEL ABSENT: {STANCE_MODEL_PATH}; the stance features read it")
    return StanceEncoder()


def test_one_bounded_row_per_segment_each_independent_of_the_rest_of_the_call(stance: StanceEncoder) -> None:
    call = ["So the annual plan comes to forty thousand.", BUDGET_OVER, "Understood, let me see."]
    rows = stance.encode_call(call)
    assert rows.shape == (3, stance.dimension) and rows.dtype == np.float32
    assert np.abs(rows).max() <= 1.0  # the pooler's tanh
    # One pass per segment: a segment's row depends on it and its predecessor only, never on its batch.
    assert np.array_equal(stance.encode_call(call[:2])[1], rows[1])
    # Only the rows asked for are read (the tagger asks for the customer's); the others stay zeros.
    some = stance.encode_call(call, rows=[1])
    assert np.array_equal(some[1], rows[1]) and not some[[0, 2]].any()


def test_a_segment_the_model_refuses_reads_as_nothing_and_the_rest_are_read(stance: StanceEncoder) -> None:
    rows = stance.encode_call(["   ", "word " * 300, BUDGET_OVER])  # blank; over the model's 128 tokens
    assert not rows[:2].any() and rows[2].any()


def test_a_segment_is_read_after_the_one_before_it(stance: StanceEncoder) -> None:
    assert stance.uses_context  # the shipped model reads pairs; so does the tagger
    after_price = stance.encode_call(["The annual plan comes to forty thousand.", "Five."])[1]
    alone = stance.encode_alone(["Five."])[0]
    assert not np.allclose(after_price, alone, atol=1e-3)


def test_the_stance_tells_a_budget_that_hurts_from_one_that_fits(stance: StanceEncoder) -> None:
    # The reason the features exist: MiniLM puts these two close together; the sentiment model does not.
    from postcall.encoder import shared_encoder

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    minilm = shared_encoder().encode([BUDGET_OVER, BUDGET_FITS])
    by_stance = stance.encode_alone([BUDGET_OVER, BUDGET_FITS])
    assert cosine(*by_stance) < cosine(*minilm) - 0.2, (cosine(*by_stance), cosine(*minilm))


def test_the_shipped_weights_were_fitted_on_the_shipped_sentiment_model() -> None:
    # Shipping a sentiment model moves the pooled space: refit the tagger (callsense objections train).
    model = ObjectionModel.load(MODEL_PATH)
    assert model.stance_model_sha256 == file_sha256(STANCE_MODEL_PATH)
    check_stance_model(model.stance_model_sha256)


def test_weights_fitted_on_another_sentiment_model_refuse_to_start(
    tmp_path: Path, stance: StanceEncoder
) -> None:
    weights = json.loads(MODEL_PATH.read_text())
    weights["stance_model_sha256"] = "0" * 64
    path = tmp_path / "objection_model.json"
    path.write_text(json.dumps(weights))
    with pytest.raises(StanceModelMismatchError, match="callsense objections train"):
        LocalObjectionTagger(model_path=path)
    # A mismatch is a broken weights file to the post-call worker: it exits 2 with the message.
    assert issubclass(StanceModelMismatchError, ObjectionModelError)
    for wrong in ("not a checksum", "A" * 64):
        weights["stance_model_sha256"] = wrong
        path.write_text(json.dumps(weights))
        with pytest.raises(ObjectionModelError, match="stance_model_sha256"):
            ObjectionModel.load(path)
    # An encoder on another model file is checked as the shipped one is: here the shipped graph saved
    # again with another doc string (it loads and runs; its checksum differs).
    import onnx

    other_dir = tmp_path / "model"
    other_dir.mkdir()
    graph = onnx.load(str(STANCE_MODEL_PATH))
    graph.doc_string = "another sentiment model"
    onnx.save(graph, str(other_dir / "model.int8.onnx"))
    for name in ("tokenizer.json", "model_card.json"):
        (other_dir / name).write_bytes((STANCE_MODEL_PATH.parent / name).read_bytes())
    other = StanceEncoder(other_dir / "model.int8.onnx")
    with pytest.raises(StanceModelMismatchError, match="refit the tagger"):
        LocalObjectionTagger(stance_encoder=other)
    with pytest.raises(StanceModelMismatchError, match="missing"):
        check_stance_model("0" * 64, tmp_path / "absent.onnx")


def test_weights_without_stance_serve_without_reading_the_sentiment_model(
    tmp_path: Path, stance: StanceEncoder
) -> None:
    # A weights file from before the stance features (or fitted without them) still serves: the tagger
    # never reads the sentiment model for it. Here: the shipped weights less their stance columns.
    weights = json.loads(MODEL_PATH.read_text())
    width = len(weights["weights"][0]) - stance.dimension
    weights["weights"] = [row[:width] for row in weights["weights"]]
    weights["stance_model_sha256"] = None
    path = tmp_path / "objection_model.json"
    path.write_text(json.dumps(weights))

    class CountingStance(StanceEncoder):
        """The shipped encoder, counting the calls it is asked to read."""

        def __init__(self) -> None:
            super().__init__()
            self.asked = 0

        def encode_call(self, texts: Sequence[str], rows: Sequence[int] | None = None) -> np.ndarray:
            self.asked += 1
            return super().encode_call(texts, rows)

    counting = CountingStance()
    tagger = LocalObjectionTagger(model_path=path, stance_encoder=counting)
    lines = [
        ("agent", 0, "For forty seats the annual plan is thirty-eight thousand."),
        ("customer", 6, BUDGET_OVER),
    ]
    events = score_lines(SentimentModel.load(), lines, call_id="no-stance", utterance_ms=4000)
    # Features of the wrong width would raise here.
    assert all(tag.utterance_id == 1 for tag in tagger.tag(events))
    assert counting.asked == 0
    # The same encoder does read for the shipped weights, which name a stance model.
    LocalObjectionTagger(stance_encoder=counting).tag(events)
    assert counting.asked == 1
