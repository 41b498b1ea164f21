"""Model versions for the registry's tests: the shipped model, and "another version" of it (its folder copied
with another version in its card). The registry names a model by its card's version and checks its files
against the card's hashes, so the copy is a version of its own that scores exactly as the shipped one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from callsense.tokenization import SHIPPED_MODEL_DIR


def shipped_version() -> str:
    """The shipped model's version; skips the test, saying so, where the package ships no model."""
    if not (SHIPPED_MODEL_DIR / "model.int8.onnx").is_file():
        pytest.skip(f"SHIPPED MODEL ABSENT: {SHIPPED_MODEL_DIR} has no model.int8.onnx")
    version: str = json.loads((SHIPPED_MODEL_DIR / "model_card.json").read_text())["version"]
    return version


def copy_as_version(destination: Path, version: str) -> Path:
    """The shipped model's folder copied to ``destination``, its card saying ``version``."""
    shipped_version()
    shutil.copytree(SHIPPED_MODEL_DIR, destination)
    card_path = destination / "model_card.json"
    card = json.loads(card_path.read_text())
    card["version"] = version
    card_path.write_text(json.dumps(card, indent=1))
    return destination
