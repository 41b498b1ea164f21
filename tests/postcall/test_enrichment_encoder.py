"""The NumPy MiniLM encoder: same vectors as sentence-transformers, the same pooled pairs as transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from postcall import encoder as encoder_module
from postcall.encoder import (
    EncoderUnavailableError,
    MiniLMEncoder,
    default_model_dir,
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
    return MiniLMEncoder.load()


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


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EncoderUnavailableError, match="model.safetensors"):
        MiniLMEncoder(tmp_path)
    assert (default_model_dir() / "model.safetensors").is_file()


PAIRS = [
    (
        "For forty seats that comes to about thirty-eight thousand a year.",
        "Hm. That's well over what we budgeted.",
    ),
    ("", "We're already using HubSpot for that, to be honest."),  # a call's first segment: no context
    ("Could we get the pilot going in March?", "march is tough we're in the middle of our audit"),
    # Longer than 128 tokens: both sides cut the longer half first, from its end (a long context, then a
    # segment that alone is longer than the limit).
    (SENTENCES[-1], "Realistically not before summer."),
    ("Could we get the pilot going in March?", SENTENCES[-1]),
]


@pytest.mark.slow  # loads torch and transformers for the reference
def test_pairs_match_transformers(encoder: MiniLMEncoder) -> None:
    torch = pytest.importorskip("torch", reason="torch and transformers are needed for the reference")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(default_model_dir()))
    model = transformers.BertModel.from_pretrained(str(default_model_dir()), add_pooling_layer=False).eval()
    batch = tokenizer(
        [c for c, _ in PAIRS],
        [t for _, t in PAIRS],
        truncation=True,  # longest first, as training/objection_finetune.py
        max_length=encoder_module.MAX_TOKENS,
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = ((states * mask).sum(1) / mask.sum(1)).numpy()
    ours = MiniLMEncoder(default_model_dir(), batch_size=3).pool_pairs(PAIRS)
    assert ours.shape == (len(PAIRS), 384) and ours.dtype == np.float32
    assert np.abs(ours - reference).max() < 1e-4
    # Pooled states, not unit vectors; and the context changes how the same line reads.
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-2)
    alone = encoder.pool_pairs([("", PAIRS[0][1])])
    assert np.abs(alone[0] - ours[0]).max() > 1e-2
    assert encoder.pool_pairs([]).shape == (0, 384)
