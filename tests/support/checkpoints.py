"""Small random BERT classifiers with the real tokenizer: the export and recovery paths without a
training run. Registered once in tests/conftest.py (``pytest_plugins``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from callsense.tokenization import SHIPPED_MODEL_DIR


def save_tiny_bert(path: Path, hidden_size: int = 64, layers: int = 2) -> Path:
    """A random BERT classifier (3 labels, the real vocabulary and tokenizer) of the given shape, saved."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=3,
    )
    transformers.BertForSequenceClassification(config).save_pretrained(path)
    (path / "tokenizer.json").write_bytes((SHIPPED_MODEL_DIR / "tokenizer.json").read_bytes())
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return save_tiny_bert(tmp_path_factory.mktemp("tiny"))


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
