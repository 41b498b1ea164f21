"""A small random BERT classifier with the real tokenizer: the export and recovery paths without a
training run. Registered once in tests/conftest.py (``pytest_plugins``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from callsense.tokenization import SHIPPED_MODEL_DIR


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config)
    path = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(path)
    (path / "tokenizer.json").write_bytes((SHIPPED_MODEL_DIR / "tokenizer.json").read_bytes())
    return path
