"""The local model registry: the sentiment model's versions on disk, which one is served, and its history.

A directory the operator names (``CALLSENSE_MODEL_REGISTRY``, default ``CALLSENSE_DATA_DIR/models``)::

    current.json               {"current": V, "previous": [...], "history": [...]}: the pointer scorers watch
    versions/<V>/              one folder per version: model.int8.onnx, tokenizer.json, model_card.json (+ any
                               other file the model came with, e.g. MODEL_CARD.md, model.fp32.onnx)
    versions/<V>/manifest.json every file's size and sha256, when and from where it was added, its metrics
    versions/<V>/checkpoint/   optional: the Hugging Face checkpoint the model was exported from (``add
                               --checkpoint``), so ``callsense retrain`` can fine-tune it further; hashed in
                               the manifest apart from the model's files (a scorer never reads or verifies it)
    .lock                      taken (flock) by every writer, so two commands never interleave

A version is named by its card's ``version`` and identified by its files' hashes: adding the same version
with other files is refused. ``previous`` is the rollback stack: promoting pushes the version it replaces,
rolling back pops it, so repeated rollbacks walk back through what was served.

Why the writes look the way they do: a scorer may read the pointer at any moment, and a command may die
half-way. So a version is copied (and hashed) into a hidden ``.incoming-*`` folder and renamed into
``versions/`` only once complete, and ``current.json`` is written to a temporary file, fsynced, then
``os.replace``d over the old one: a reader sees the old pointer or the new one, never half of one, and the
pointer never names a folder that is not all there. Leftover temporary files of a writer that crashed are
removed by the next writer (it holds the lock, so no live writer owns them).

An empty or absent registry serves the model shipped in the package (``scorer_service/model``) as the
implicit version named by its card. The first ``add`` or ``promote`` registers that shipped model as a
version too, so a rollback can always return to it, whatever a later package upgrade ships.

What a model folder is (its files, the hashes its card declares) and the writes a crash cannot tear are
callsense/model_files.py. Runtime code: the scorer follows the pointer, the ``callsense models`` command
writes it; neither imports the other. Everything here blocks on the disk: from asyncio code, call it in a
thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from callsense.config import Config
from callsense.model_files import (
    CARD_FILE,
    HASHED_BY_CARD,
    MODEL_FILE,
    REQUIRED_FILES,
    TOKENIZER_FILE,
    VERSION_PATTERN,
    card_metrics,
    card_version,
    check_against_card,
    copy_hashed,
    declared_files,
    file_sha256,
    fsync_dir,
    read_card,
    write_json_atomically,
)
from callsense.model_files import FileEntry as FileEntry
from callsense.model_files import HashMismatch as HashMismatch
from callsense.model_files import InvalidModel as InvalidModel
from callsense.model_files import RegistryError as RegistryError
from callsense.tokenization import SHIPPED_MODEL_DIR

MANIFEST_FILE = "manifest.json"
POINTER_FILE = "current.json"
CHECKPOINT_DIR = "checkpoint"

log = logging.getLogger(__name__)

_INCOMING_PREFIX = ".incoming-"


class UnknownVersion(RegistryError):
    """No such version in the registry (nor shipped in the package)."""


class VersionConflict(RegistryError):
    """The version is already registered with other files: a new model needs a version of its own."""


class NothingToRollBack(RegistryError):
    """The current version was the first served here: there is no earlier one."""


@dataclass(frozen=True)
class ModelVersion:
    """One version's folder, files and what its card says of it."""

    version: str
    directory: Path
    files: tuple[FileEntry, ...]
    metrics: Mapping[str, Any] = field(default_factory=dict)
    """The card's ``metrics``: per evaluation set, macro-F1, ECE, ..."""
    added_at: str = ""
    """ISO 8601, UTC; empty for the shipped model before it is registered."""
    source: str = ""
    """The folder it was added from."""
    shipped: bool = False
    """The package's own model, served from the package because the registry does not hold it yet."""
    checkpoint: tuple[FileEntry, ...] = ()
    """The files of its ``checkpoint/`` folder (a Hugging Face checkpoint to fine-tune), if it has one."""

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_FILE

    @property
    def checkpoint_dir(self) -> Path | None:
        """The version's Hugging Face checkpoint folder; None when it was added without one."""
        return self.directory / CHECKPOINT_DIR if self.checkpoint else None


@dataclass(frozen=True)
class Promotion:
    """One change of the current version."""

    at: str
    action: str
    """"promote" or "rollback"."""
    version: str
    """The version current after it."""
    replaced: str | None
    """The version current before it (None: the shipped model, implicitly)."""


@dataclass(frozen=True)
class RegistryState:
    """What ``current.json`` says; all empty while nothing was ever promoted."""

    current: str | None = None
    previous: tuple[str, ...] = ()
    """The rollback stack: the versions current before, the most recent last."""
    history: tuple[Promotion, ...] = ()


@dataclass(frozen=True)
class Added:
    version: ModelVersion
    new: bool
    """False: the same version with the same files was already there (adding is idempotent)."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _state_from_json(data: Any, path: Path) -> RegistryState:
    try:
        current = data["current"]
        previous = tuple(str(v) for v in data.get("previous", []))
        history = tuple(
            Promotion(str(h["at"]), str(h["action"]), str(h["version"]), h.get("replaced"))
            for h in data.get("history", [])
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise RegistryError(f"{path} is not a registry pointer ({exc!r}): restore it from a backup") from None
    if not isinstance(current, str):
        raise RegistryError(f"{path}: current is not a version name")
    return RegistryState(current, previous, history)


def _state_to_json(state: RegistryState) -> dict[str, Any]:
    return {
        "current": state.current,
        "previous": list(state.previous),
        "history": [
            {"at": h.at, "action": h.action, "version": h.version, "replaced": h.replaced}
            for h in state.history
        ],
    }


def _files_to_json(files: tuple[FileEntry, ...]) -> dict[str, Any]:
    return {f.name: {"bytes": f.bytes, "sha256": f.sha256} for f in files}


def _files_from_json(data: Any) -> tuple[FileEntry, ...]:
    return tuple(FileEntry(name, int(entry["bytes"]), str(entry["sha256"])) for name, entry in data.items())


def _manifest_to_json(version: ModelVersion) -> dict[str, Any]:
    manifest = {
        "version": version.version,
        "added_at": version.added_at,
        "source": version.source,
        "files": _files_to_json(version.files),
        "metrics": dict(version.metrics),
    }
    if version.checkpoint:
        manifest[CHECKPOINT_DIR] = _files_to_json(version.checkpoint)
    return manifest


def _manifest_from_json(data: Any, directory: Path) -> ModelVersion:
    try:
        return ModelVersion(
            version=str(data["version"]),
            directory=directory,
            files=_files_from_json(data["files"]),
            metrics=dict(data.get("metrics") or {}),
            added_at=str(data.get("added_at", "")),
            source=str(data.get("source", "")),
            checkpoint=_files_from_json(data.get(CHECKPOINT_DIR) or {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RegistryError(f"{directory / MANIFEST_FILE} is not a version manifest ({exc!r})") from None


class ModelRegistry:
    """The registry in ``root`` (which need not exist yet: then only the shipped model is known).

    ``shipped_dir`` is the package's model folder; tests point it elsewhere.
    """

    def __init__(self, root: Path, shipped_dir: Path = SHIPPED_MODEL_DIR) -> None:
        self.root = root
        self.shipped_dir = shipped_dir

    @classmethod
    def from_config(cls, config: Config) -> ModelRegistry:
        """The registry ``CALLSENSE_MODEL_REGISTRY`` names, else ``CALLSENSE_DATA_DIR/models``."""
        return cls(config.model_registry)

    @property
    def pointer_path(self) -> Path:
        """``current.json``: what a scorer watches (replaced, never rewritten in place)."""
        return self.root / POINTER_FILE

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    # ------------------------------------------------------------------------------------------ reading

    def pointer_signature(self) -> tuple[int, int, int] | None:
        """Changes whenever the pointer is replaced (inode, mtime, size); None while there is none. A stat,
        cheap enough to poll."""
        try:
            st = self.pointer_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def state(self) -> RegistryState:
        try:
            data = json.loads(self.pointer_path.read_text())
        except FileNotFoundError:
            return RegistryState()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{self.pointer_path} is not valid JSON: {exc}") from None
        return _state_from_json(data, self.pointer_path)

    def shipped(self) -> ModelVersion | None:
        """The package's model as a version (files and hashes as its card declares them); None when the
        package ships none."""
        if not (self.shipped_dir / MODEL_FILE).is_file():
            return None
        card = read_card(self.shipped_dir)
        declared = declared_files(card)
        files = tuple(declared[name] for name in HASHED_BY_CARD if name in declared)
        return ModelVersion(
            version=card_version(card, self.shipped_dir),
            directory=self.shipped_dir,
            files=files,
            metrics=card_metrics(card),
            source=str(self.shipped_dir),
            shipped=True,
        )

    def registered(self) -> list[ModelVersion]:
        """The versions in the registry, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        found = []
        for directory in self.versions_dir.iterdir():
            if directory.name.startswith(".") or not (directory / MANIFEST_FILE).is_file():
                continue  # a copy under way, or the leftovers of one that crashed
            found.append(self._read_manifest(directory))
        return sorted(found, key=lambda v: (v.added_at, v.version))

    def versions(self) -> list[ModelVersion]:
        """Every version known: the shipped one first when the registry does not hold it yet."""
        registered = self.registered()
        shipped = self.shipped()
        if shipped is not None and all(v.version != shipped.version for v in registered):
            return [shipped, *registered]
        return registered

    def get(self, version: str) -> ModelVersion:
        """The version named ``version``; UnknownVersion (naming the known ones) otherwise."""
        if VERSION_PATTERN.fullmatch(version):
            directory = self.versions_dir / version
            if (directory / MANIFEST_FILE).is_file():
                return self._read_manifest(directory)
            shipped = self.shipped()
            if shipped is not None and shipped.version == version:
                return shipped
        known = ", ".join(v.version for v in self.versions()) or "none"
        raise UnknownVersion(f"no model version {version!r} in {self.root} (known: {known})")

    def current(self) -> ModelVersion:
        """The version to serve: the pointer's, else the shipped model."""
        state = self.state()
        if state.current is not None:
            return self.get(state.current)
        shipped = self.shipped()
        if shipped is None:
            raise UnknownVersion(
                f"nothing to serve: {self.root} has no current version and the package ships no model "
                f"({self.shipped_dir / MODEL_FILE}); add and promote one"
            )
        return shipped

    def verify(self, version: ModelVersion) -> None:
        """Hash every file of ``version`` again; HashMismatch (or InvalidModel for a missing file) when one
        is not what it was added as."""
        for name in REQUIRED_FILES:
            if not (version.directory / name).is_file():
                raise InvalidModel(f"version {version.version}: {version.directory / name} is missing")
        _check_hashes(
            version,
            version.directory,
            version.files,
            ": the file was altered or corrupted; remove the version's folder and add the model again",
        )

    def verify_checkpoint(self, version: ModelVersion) -> Path:
        """Hash the files of ``version``'s checkpoint again and return its folder; InvalidModel when the
        version has none, HashMismatch when a file is not what was added."""
        folder = version.checkpoint_dir
        if folder is None:
            raise InvalidModel(f"version {version.version} has no checkpoint (add it with --checkpoint DIR)")
        _check_hashes(version, folder, version.checkpoint)
        return folder

    def _read_manifest(self, directory: Path) -> ModelVersion:
        try:
            data = json.loads((directory / MANIFEST_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{directory / MANIFEST_FILE} is not valid JSON: {exc}") from None
        return _manifest_from_json(data, directory)

    # ------------------------------------------------------------------------------------------ writing

    def add(self, source: Path, checkpoint: Path | None = None) -> Added:
        """Copy the model folder ``source`` into the registry as the version its card names, checking each
        file against the sha256 its card declares. Does not serve it: ``promote`` does.

        ``checkpoint``: the Hugging Face checkpoint the model was exported from (``callsense train``'s
        ``best/``), kept as the version's ``checkpoint/`` for a later retrain to continue from; attached to
        an already registered version that has none yet."""
        if checkpoint is not None:
            _check_checkpoint(checkpoint)
        with self._locked():
            self._adopt_shipped()
            added = self._add(source, checkpoint)
            if checkpoint is None:
                return added
            if not added.version.checkpoint:
                return Added(self._attach_checkpoint(added.version, checkpoint), added.new)
            theirs = {name: file_sha256(path) for name, path in _checkpoint_files(checkpoint)}
            if theirs != {e.name: e.sha256 for e in added.version.checkpoint}:
                raise VersionConflict(
                    f"version {added.version.version} is already registered with another checkpoint"
                )
            return added

    def promote(self, version: str) -> RegistryState:
        """Make ``version`` the one served (scorers that watch the registry switch to it); its files are
        hashed again first. Promoting the current version changes nothing."""
        with self._locked():
            self._adopt_shipped()
            target = self.get(version)
            state = self.state()
            current = state.current or self._shipped_version()
            if version == current:
                return state
            self.verify(target)
            previous = (*state.previous, current) if current is not None else state.previous
            promotion = Promotion(_now(), "promote", version, current)
            new_state = RegistryState(version, previous, (*state.history, promotion))
            self._write_state(new_state)
            return new_state

    def rollback(self) -> RegistryState:
        """Serve again the version that was current before the current one was promoted."""
        with self._locked():
            state = self.state()
            if state.current is None or not state.previous:
                served = state.current or self._shipped_version() or "none"
                raise NothingToRollBack(
                    f"nothing to roll back to: {served} is the first version served from {self.root}"
                )
            target = self.get(state.previous[-1])
            self.verify(target)
            promotion = Promotion(_now(), "rollback", target.version, state.current)
            new_state = RegistryState(target.version, state.previous[:-1], (*state.history, promotion))
            self._write_state(new_state)
            return new_state

    def _shipped_version(self) -> str | None:
        shipped = self.shipped()
        return shipped.version if shipped is not None else None

    def _write_state(self, state: RegistryState) -> None:
        write_json_atomically(self.pointer_path, _state_to_json(state))

    def _adopt_shipped(self) -> None:
        """Register the package's model the first time the registry is written (see the module doc)."""
        if self.pointer_path.exists():
            return
        try:
            shipped = self.shipped()
            if shipped is not None and not (self.versions_dir / shipped.version / MANIFEST_FILE).is_file():
                self._add(self.shipped_dir)
        except RegistryError as exc:
            # Only a convenience (the package's files serve a rollback to it as well): never let it block
            # the operator's own model.
            log.warning("the shipped model was not registered: %s", exc)

    def _add(self, source: Path, checkpoint: Path | None = None) -> Added:
        if not source.is_dir():
            raise InvalidModel(
                f"{source} is not a folder: add takes a model folder ({', '.join(REQUIRED_FILES)})"
            )
        missing = [name for name in REQUIRED_FILES if not (source / name).is_file()]
        if missing:
            raise InvalidModel(
                f"{source} lacks {', '.join(missing)}: a model folder holds {', '.join(REQUIRED_FILES)}"
            )
        card = read_card(source)
        version = card_version(card, source)
        declared = declared_files(card)
        undeclared = [name for name in HASHED_BY_CARD if name not in declared]
        if undeclared:
            raise InvalidModel(
                f"{source / CARD_FILE} declares no sha256 for {', '.join(undeclared)} (files.<name>.sha256): "
                "export the model with `callsense export`, which writes them, or add them to the card"
            )
        absent = sorted(name for name in declared if not (source / name).is_file())
        if absent:
            raise InvalidModel(f"{source / CARD_FILE} lists {', '.join(absent)}, which {source} lacks")
        final = self.versions_dir / version
        if (final / MANIFEST_FILE).is_file():
            return self._already_there(source, final, version)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        incoming = self.versions_dir / f"{_INCOMING_PREFIX}{version}-{secrets.token_hex(6)}"
        incoming.mkdir()
        try:
            entries = [
                copy_hashed(path, incoming / path.name)
                for path in sorted(source.iterdir())
                if path.is_file() and not path.name.startswith(".") and path.name != MANIFEST_FILE
            ]
            check_against_card(entries, declared, source)
            kept: tuple[FileEntry, ...] = ()
            if checkpoint is not None:
                (incoming / CHECKPOINT_DIR).mkdir()
                kept = _copy_checkpoint(checkpoint, incoming / CHECKPOINT_DIR)
            added = ModelVersion(
                version=version,
                directory=final,
                files=tuple(entries),
                metrics=card_metrics(card),
                added_at=_now(),
                source=str(source.resolve()),
                checkpoint=kept,
            )
            write_json_atomically(incoming / MANIFEST_FILE, _manifest_to_json(added))
            fsync_dir(incoming)
            os.rename(incoming, final)  # complete, or not there at all
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        fsync_dir(self.versions_dir)
        return Added(added, new=True)

    def _attach_checkpoint(self, version: ModelVersion, checkpoint: Path) -> ModelVersion:
        """Copy ``checkpoint`` into a registered version that has none: into a hidden folder first, renamed
        into place complete, then the manifest replaced; a crash in between leaves the version as it was (a
        folder the manifest does not list is removed here before the next try)."""
        target = version.directory / CHECKPOINT_DIR
        if target.exists():
            shutil.rmtree(target)  # left by an attach that died before its manifest was written
        staging = version.directory / f"{_INCOMING_PREFIX}{CHECKPOINT_DIR}-{secrets.token_hex(6)}"
        staging.mkdir()
        try:
            kept = _copy_checkpoint(checkpoint, staging)
            fsync_dir(staging)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        updated = dataclasses.replace(version, checkpoint=kept)
        write_json_atomically(version.directory / MANIFEST_FILE, _manifest_to_json(updated))
        return updated

    def _already_there(self, source: Path, final: Path, version: str) -> Added:
        existing = self._read_manifest(final)
        ours = {f.name: f.sha256 for f in existing.files}
        for name in (MODEL_FILE, TOKENIZER_FILE):
            if ours.get(name) != file_sha256(source / name):
                raise VersionConflict(
                    f"version {version} is already registered with a different {name}: give the new model "
                    f"a version of its own (its card's version) and add it again"
                )
        return Added(existing, new=False)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time, across processes; cleans what a crashed writer left."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                self._remove_leftovers()
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _remove_leftovers(self) -> None:
        for leftover in self.root.glob(f".{POINTER_FILE}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        if self.versions_dir.is_dir():
            for leftover in self.versions_dir.glob(f"{_INCOMING_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
            for leftover in self.versions_dir.glob(f"*/{_INCOMING_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)


def _check_hashes(
    version: ModelVersion, folder: Path, entries: tuple[FileEntry, ...], advice: str = ""
) -> None:
    """Hash each of ``entries`` in ``folder`` again: InvalidModel for a missing file, HashMismatch (its
    message ending with ``advice``) for one that is not what was registered."""
    for entry in entries:
        path = folder / entry.name
        try:
            actual = file_sha256(path)
        except FileNotFoundError:
            raise InvalidModel(f"version {version.version}: {path} is missing") from None
        if actual != entry.sha256:
            raise HashMismatch(
                f"version {version.version}: {path} has sha256 {actual}, not {entry.sha256} as registered"
                + advice
            )


def _checkpoint_files(checkpoint: Path) -> list[tuple[str, Path]]:
    """The files of a checkpoint folder that make the checkpoint: its top level only (config, weights,
    tokenizer, training.json); sub-folders such as ``callsense export``'s ``onnx/`` work files stay out."""
    return [
        (path.name, path)
        for path in sorted(checkpoint.iterdir())
        if path.is_file() and not path.name.startswith(".")
    ]


def _check_checkpoint(checkpoint: Path) -> None:
    if not (checkpoint / "config.json").is_file():
        raise InvalidModel(
            f"{checkpoint} is not a Hugging Face checkpoint (no config.json): give the folder "
            "`callsense train` saved (its best/), not the exported model"
        )
    names = {name for name, _ in _checkpoint_files(checkpoint)}
    if not names & {"model.safetensors", "pytorch_model.bin"}:
        raise InvalidModel(f"{checkpoint} has no weights (model.safetensors or pytorch_model.bin)")


def _copy_checkpoint(checkpoint: Path, destination: Path) -> tuple[FileEntry, ...]:
    return tuple(copy_hashed(path, destination / name) for name, path in _checkpoint_files(checkpoint))
