"""The NumPy MiniLM encoder: same vectors as sentence-transformers, sensible similarities, loaded once."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from postcall import encoder as encoder_module
from postcall.encoder import (
    EncoderUnavailableError,
    MiniLMEncoder,
    default_model_dir,
    shared_encoder,
)

SENTENCES = [
    "That's way too expensive for a team our size.",
    "I need to run this by my boss before we sign anything.",
    "We're already using Salesforce and it works fine.",
    "hello",
    "",
    "Ünïcödé, émojis 🙂 and punctuation?!... all at once",
    "Could you send the deck over after the call? Thanks a lot, Dana.",
    # Longer than 128 tokens: both sides must cut it at the same place.
    " ".join(["The quarterly roll-out depends on procurement, legal review and the budget cycle."] * 12),
]


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return shared_encoder()


@pytest.mark.slow  # loads torch and sentence-transformers for the reference
def test_matches_sentence_transformers(encoder: MiniLMEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the reference must never reach for the hub
    sentence_transformers = pytest.importorskip(
        "sentence_transformers", reason="sentence-transformers (and torch) are needed for the reference"
    )
    reference_model = sentence_transformers.SentenceTransformer(str(default_model_dir()), device="cpu")
    reference_model.max_seq_length = encoder_module.MAX_TOKENS
    reference = reference_model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    ours = MiniLMEncoder(default_model_dir(), batch_size=3).encode(SENTENCES)  # several padded batches
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    cosine = (ours * reference).sum(axis=1)
    assert cosine.min() > 0.999, cosine
    assert np.abs(ours - reference).max() < 1e-4


def test_vectors_are_unit_length_and_batching_changes_nothing(encoder: MiniLMEncoder) -> None:
    batched = encoder.encode(SENTENCES)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    one_by_one = np.vstack([encoder.encode([s]) for s in SENTENCES])
    # Padding is masked out: a sentence's vector does not depend on its batch neighbours.
    assert np.allclose(batched, one_by_one, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)


def test_similar_sentences_are_closer_than_unrelated_ones(encoder: MiniLMEncoder) -> None:
    price_a, price_b, boss, weather = encoder.encode(
        [
            "The price is far too high for us.",
            "That's way more than we can afford.",
            "I have to check with my manager first.",
            "It rained all weekend at the lake.",
        ]
    )
    assert price_a @ price_b > price_a @ boss
    assert price_a @ price_b > price_a @ weather + 0.3
    assert price_a @ weather < 0.2


def test_shared_encoder_loads_once_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoder_module, "_shared", None)
    loads: list[MiniLMEncoder] = []
    real_load = MiniLMEncoder.load.__func__  # type: ignore[attr-defined]

    def counting_load(cls: type[MiniLMEncoder], model_dir: Path | None = None) -> MiniLMEncoder:
        loaded = real_load(cls, model_dir)
        loads.append(loaded)
        return loaded

    monkeypatch.setattr(MiniLMEncoder, "load", classmethod(counting_load))
    start = threading.Barrier(6)
    got: list[MiniLMEncoder] = []

    def worker() -> None:
        start.wait()
        got.append(shared_encoder())

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert len(got) == 6 and all(e is loads[0] for e in got)


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderUnavailableError, match="model.safetensors"):
        MiniLMEncoder(tmp_path)
    assert (default_model_dir() / "model.safetensors").is_file()
