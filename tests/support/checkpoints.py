"""Small random BERT classifiers with the real tokenizer: the export and recovery paths without a
training run. Registered once in tests/conftest.py (``pytest_plugins``)."""

from __future__ import annotations

import shutil
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


@pytest.fixture(scope="session")
def trained_like(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with every parameter moved off its initial value: an untrained model's layer norms
    are all ones and zeros, which the exporter merges into one initializer; a trained one's are not."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    path = tmp_path_factory.mktemp("trained_like")
    model.save_pretrained(path)
    shutil.copy(tiny_checkpoint / "tokenizer.json", path / "tokenizer.json")
    return path
