"""The model registry (callsense/model_registry.py) on small stand-in model folders: the registry hashes and
copies files, it never loads them, so a few bytes stand for the ONNX file here (the scorer's tests serve
real versions)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from callsense import model_files, model_registry
from callsense.config import Config, load_config
from callsense.model_registry import (
    HashMismatch,
    InvalidModel,
    ModelRegistry,
    NothingToRollBack,
    RegistryState,
    UnknownVersion,
    VersionConflict,
)

SHIPPED = "2026.01.01-shipped"


def make_model(folder: Path, version: str, weights: bytes = b"weights", **card: object) -> Path:
    """A model folder as `callsense export` writes one: the files, and a card declaring their hashes."""
    folder.mkdir(parents=True)
    (folder / "model.int8.onnx").write_bytes(weights)
    (folder / "tokenizer.json").write_text('{"vocab": {}}')
    (folder / "MODEL_CARD.md").write_text(f"# {version}\n")
    files = {
        name: {"bytes": (folder / name).stat().st_size, "sha256": sha256(folder / name)}
        for name in ("model.int8.onnx", "tokenizer.json")
    }
    metrics = {"meld:dev": {"macro_f1": 0.66, "ece": 0.03}}
    (folder / "model_card.json").write_text(
        json.dumps({"version": version, "files": files, "metrics": metrics} | card)
    )
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry", shipped_dir=make_model(tmp_path / "shipped", SHIPPED))


def leftovers(registry: ModelRegistry) -> list[str]:
    """Temporary files and folders of writers: there must be none once a write returned or failed."""
    found = [p.name for p in registry.root.glob(".*.tmp")]
    if registry.versions_dir.is_dir():
        found += [p.name for p in registry.versions_dir.iterdir() if p.name.startswith(".")]
    return found


# --------------------------------------------------------------------------------------------- reading


def test_an_absent_registry_serves_the_shipped_model_and_reading_creates_nothing(
    registry: ModelRegistry,
) -> None:
    current = registry.current()
    assert (current.version, current.shipped, current.directory) == (SHIPPED, True, registry.shipped_dir)
    assert [v.version for v in registry.versions()] == [SHIPPED]
    assert registry.state() == RegistryState()
    assert registry.pointer_signature() is None
    assert current.metrics["meld:dev"]["macro_f1"] == 0.66
    registry.verify(current)  # the card's hashes hold
    assert not registry.root.exists()


def test_the_registry_folder_comes_from_the_environment_else_the_data_dir() -> None:
    assert load_config({}).model_registry == Config().model_registry == Path("var/models")
    assert load_config({"CALLSENSE_DATA_DIR": "/srv/cs"}).model_registry == Path("/srv/cs/models")
    named = load_config({"CALLSENSE_DATA_DIR": "/srv/cs", "CALLSENSE_MODEL_REGISTRY": "/models"})
    assert ModelRegistry.from_config(named).root == Path("/models")


# ----------------------------------------------------------------------------------------------- adding


def test_add_copies_the_files_with_their_hashes_and_registers_the_shipped_model_too(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    source = make_model(tmp_path / "v2", "v2", b"other weights")
    added = registry.add(source)
    assert added.new and added.version.version == "v2"
    folder = registry.versions_dir / "v2"
    assert added.version.directory == folder
    assert sorted(f.name for f in added.version.files) == [
        "MODEL_CARD.md",
        "model.int8.onnx",
        "model_card.json",
        "tokenizer.json",
    ]
    for entry in added.version.files:
        assert entry.sha256 == sha256(folder / entry.name) == sha256(source / entry.name)
        assert entry.bytes == (folder / entry.name).stat().st_size
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == "v2" and manifest["metrics"] == {
        "meld:dev": {"macro_f1": 0.66, "ece": 0.03}
    }
    assert manifest["source"] == str(source.resolve()) and manifest["added_at"]
    # The shipped model became a version of its own (a rollback can always return to it); nothing is served
    # differently until a promotion.
    assert [(v.version, v.shipped) for v in registry.versions()] == [(SHIPPED, False), ("v2", False)]
    assert registry.current().version == SHIPPED and registry.state().current is None
    assert registry.get("v2") == added.version and leftovers(registry) == []


def test_adding_the_same_version_again_is_idempotent_but_other_files_under_its_name_are_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    registry.add(make_model(tmp_path / "a", "v2", b"weights A"))
    again = registry.add(make_model(tmp_path / "a-again", "v2", b"weights A"))
    assert not again.new
    with pytest.raises(VersionConflict, match="already registered with a different model.int8.onnx"):
        registry.add(make_model(tmp_path / "b", "v2", b"weights B"))
    assert sha256(registry.versions_dir / "v2" / "model.int8.onnx") == sha256(
        tmp_path / "a" / "model.int8.onnx"
    )


def test_a_file_that_is_not_the_one_its_card_describes_is_refused_and_nothing_is_left(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    source = make_model(tmp_path / "v2", "v2")
    (source / "model.int8.onnx").write_bytes(b"weights, truncated or from another export")
    with pytest.raises(HashMismatch, match=r"model\.int8\.onnx has sha256 .* but model_card.json says"):
        registry.add(source)
    assert not (registry.versions_dir / "v2").exists() and leftovers(registry) == []
    with pytest.raises(UnknownVersion, match="no model version 'v2'"):
        registry.get("v2")


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda d: (d / "tokenizer.json").unlink(), "lacks tokenizer.json"),
        (lambda d: (d / "model_card.json").write_text("{not json"), "is not valid JSON"),
        (lambda d: _edit_card(d, version=None), "has no version"),
        (lambda d: _edit_card(d, version="../../etc"), "cannot name a registry folder"),
        (lambda d: _edit_card(d, files={}), "declares no sha256 for model.int8.onnx, tokenizer.json"),
    ],
    ids=["missing-file", "bad-card", "no-version", "bad-version", "no-hashes"],
)
def test_a_folder_that_is_not_a_model_is_refused_saying_why(
    registry: ModelRegistry, tmp_path: Path, spoil: Callable[[Path], object], message: str
) -> None:
    source = make_model(tmp_path / "v2", "v2")
    spoil(source)
    with pytest.raises(InvalidModel, match=message):
        registry.add(source)
    assert not (registry.versions_dir / "v2").exists()


def _edit_card(folder: Path, **fields: object) -> None:
    card = json.loads((folder / "model_card.json").read_text())
    (folder / "model_card.json").write_text(json.dumps(card | fields))


# ------------------------------------------------------------------------------- promoting, rolling back


def test_promote_and_rollback_walk_back_through_what_was_served(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    registry.add(make_model(tmp_path / "a", "v2", b"A"))
    registry.add(make_model(tmp_path / "b", "v3", b"B"))
    signatures = [registry.pointer_signature()]

    assert registry.promote("v2").current == "v2"
    signatures.append(registry.pointer_signature())
    state = registry.promote("v3")
    signatures.append(registry.pointer_signature())
    assert (state.current, state.previous) == ("v3", (SHIPPED, "v2"))
    assert registry.current().version == "v3" and registry.current().directory == registry.versions_dir / "v3"

    assert registry.rollback().current == "v2"
    signatures.append(registry.pointer_signature())
    assert registry.rollback().current == SHIPPED
    signatures.append(registry.pointer_signature())
    assert registry.current().version == SHIPPED and not registry.current().shipped  # the registered copy
    with pytest.raises(NothingToRollBack, match=f"{SHIPPED} is the first version served"):
        registry.rollback()

    history = registry.state().history
    assert [(h.action, h.version, h.replaced) for h in history] == [
        ("promote", "v2", SHIPPED),
        ("promote", "v3", "v2"),
        ("rollback", "v2", "v3"),
        ("rollback", SHIPPED, "v2"),
    ]
    assert all(h.at for h in history)
    assert len(set(signatures)) == len(signatures)  # every pointer change is visible to a poller
    assert leftovers(registry) == []


def test_nothing_to_roll_back_to_on_a_fresh_registry(registry: ModelRegistry) -> None:
    with pytest.raises(NothingToRollBack, match="nothing to roll back to"):
        registry.rollback()


def test_promoting_an_unknown_or_the_current_version(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(UnknownVersion, match=rf"no model version 'v9' .*\(known: {SHIPPED}\)"):
        registry.promote("v9")
    assert registry.promote(SHIPPED) == RegistryState()  # already served: nothing written
    registry.add(make_model(tmp_path / "a", "v2", b"A"))
    before = registry.promote("v2")
    assert registry.promote("v2") == before


def test_a_version_altered_after_it_was_added_is_not_promoted(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    registry.add(make_model(tmp_path / "a", "v2", b"A"))
    (registry.versions_dir / "v2" / "tokenizer.json").write_text('{"vocab": {"tampered": 1}}')
    with pytest.raises(HashMismatch, match="tokenizer.json has sha256 .* as registered"):
        registry.promote("v2")
    assert registry.state().current is None and registry.current().version == SHIPPED


# ------------------------------------------------------------------------------------------- atomicity


def test_a_promote_that_dies_before_its_replace_leaves_the_old_pointer_whole(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.add(make_model(tmp_path / "a", "v2", b"A"))
    registry.add(make_model(tmp_path / "b", "v3", b"B"))
    registry.promote("v2")
    before = registry.pointer_path.read_bytes()

    def crash(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)  # the pointer's one rename
    with pytest.raises(OSError, match="No space left"):
        registry.promote("v3")
    monkeypatch.undo()
    assert registry.pointer_path.read_bytes() == before and registry.current().version == "v2"
    assert leftovers(registry) == []


def test_an_add_that_dies_part_way_leaves_no_version(
    registry: ModelRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.add(make_model(tmp_path / "a", "v2", b"A"))  # the shipped model is registered by now
    real_copy = model_files.copy_hashed
    copied: list[str] = []

    def copy_then_die(source: Path, destination: Path) -> model_registry.FileEntry:
        if copied:
            raise OSError(5, "Input/output error")
        copied.append(source.name)
        return real_copy(source, destination)

    monkeypatch.setattr(model_registry, "copy_hashed", copy_then_die)
    with pytest.raises(OSError, match="Input/output"):
        registry.add(make_model(tmp_path / "b", "v3", b"B"))
    assert copied and not (registry.versions_dir / "v3").exists() and leftovers(registry) == []
    assert [v.version for v in registry.versions()] == [SHIPPED, "v2"]


def test_what_a_killed_writer_left_is_invisible_to_readers_and_removed_by_the_next_writer(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    registry.add(make_model(tmp_path / "a", "v2", b"A"))
    registry.promote("v2")
    # A process killed mid-add and one killed mid-promote (before their rename and replace).
    half = registry.versions_dir / ".incoming-v3-0123456789ab"
    half.mkdir()
    (half / "model.int8.onnx").write_bytes(b"half a model")
    (registry.root / ".current.json.0123456789ab.tmp").write_text('{"current": "v3"')
    assert [v.version for v in registry.versions()] == [SHIPPED, "v2"]
    assert registry.current().version == "v2"

    registry.add(make_model(tmp_path / "b", "v3", b"B"))
    assert leftovers(registry) == [] and registry.get("v3").version == "v3"


def test_readers_never_see_half_a_pointer_while_versions_are_promoted(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    registry.add(make_model(tmp_path / "a", "v2", b"A"))
    registry.promote("v2")
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[BaseException] = []

    def read() -> None:
        reader = ModelRegistry(registry.root, shipped_dir=registry.shipped_dir)
        while not stop.is_set():
            try:
                seen.add(reader.current().version)
            except BaseException as exc:  # a torn read would raise here
                errors.append(exc)
                return

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for _ in range(40):
            registry.rollback()
            registry.promote("v2")
    finally:
        stop.set()
        thread.join(10)
    assert errors == [] and seen <= {SHIPPED, "v2"}
    assert leftovers(registry) == []


# ------------------------------------------------------------------------------------------- checkpoints


def make_checkpoint(folder: Path, weights: bytes = b"fp32 weights") -> Path:
    """A Hugging Face checkpoint as `callsense train` saves one (its best/), with export's work folder."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"num_labels": 3}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "training.json").write_text('{"config": {"train": ["meld:train"]}}')
    (folder / "onnx").mkdir()  # `callsense export`'s default work folder: not part of the checkpoint
    (folder / "onnx" / "model.fp32.onnx").write_bytes(b"big")
    return folder


def test_a_checkpoint_is_kept_with_its_version_hashed_apart_from_the_served_files(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    checkpoint = make_checkpoint(tmp_path / "best")
    added = registry.add(make_model(tmp_path / "v2", "v2", b"B"), checkpoint=checkpoint)
    version = added.version
    assert version.checkpoint_dir == registry.versions_dir / "v2" / "checkpoint"
    assert sorted(f.name for f in version.checkpoint) == ["config.json", "model.safetensors", "training.json"]
    assert not (registry.versions_dir / "v2" / "checkpoint" / "onnx").exists()
    assert registry.get("v2") == version  # the manifest keeps it
    assert registry.verify_checkpoint(version) == version.checkpoint_dir
    assert "checkpoint" not in {f.name for f in version.files}
    registry.verify(version)  # what a scorer checks is the model's files alone
    # Altered after it was added: a retrain refuses to start from it.
    (version.checkpoint_dir / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(HashMismatch, match="model.safetensors has sha256"):
        registry.verify_checkpoint(version)
    registry.verify(version)  # serving is not concerned
    assert leftovers(registry) == []


def test_a_checkpoint_is_attached_to_a_version_registered_without_one_once(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    source = make_model(tmp_path / "v2", "v2", b"B")
    plain = registry.add(source).version
    assert plain.checkpoint == () and plain.checkpoint_dir is None
    with pytest.raises(InvalidModel, match="has no checkpoint"):
        registry.verify_checkpoint(plain)
    attached = registry.add(source, checkpoint=make_checkpoint(tmp_path / "best")).version
    assert registry.get("v2").checkpoint == attached.checkpoint != ()
    assert registry.add(source, checkpoint=tmp_path / "best").version == attached  # the same: idempotent
    with pytest.raises(VersionConflict, match="another checkpoint"):
        registry.add(source, checkpoint=make_checkpoint(tmp_path / "other", b"other weights"))
    assert [p.name for p in (registry.versions_dir / "v2").iterdir() if p.name.startswith(".")] == []


def test_a_folder_that_is_no_checkpoint_is_refused_before_anything_is_copied(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    exported = make_model(tmp_path / "v2", "v2", b"B")
    with pytest.raises(InvalidModel, match="no config.json"):
        registry.add(exported, checkpoint=exported)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text("{}")
    with pytest.raises(InvalidModel, match="has no weights"):
        registry.add(exported, checkpoint=bare)
    assert not registry.root.exists()
