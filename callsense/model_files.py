"""A model folder on disk, as the model registry handles it: the files a model needs, their sha256, what its
card declares, and writes that a crash cannot leave half-done.

A model folder is what ``callsense export`` writes and ``scorer_service/model`` ships: ``model.int8.onnx``,
``tokenizer.json`` and ``model_card.json``, whose ``version`` names the model and whose ``files`` declare the
sha256 (and size) of the ONNX file and the tokenizer. Plain functions over paths; everything blocks on the
disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_FILE = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
CARD_FILE = "model_card.json"
REQUIRED_FILES = (MODEL_FILE, TOKENIZER_FILE, CARD_FILE)
HASHED_BY_CARD = (MODEL_FILE, TOKENIZER_FILE)
"""Files whose sha256 the card must declare (``callsense export`` writes them): the registry checks them."""

VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
"""A version names a folder: nothing that could climb out of it or trouble a filesystem."""
_CHUNK = 1 << 20


class RegistryError(Exception):
    """A model or registry operation that cannot be done; the message says why and what to do."""


class HashMismatch(RegistryError):
    """A file's sha256 is not the one its card or manifest declares: a corrupt or altered model."""


class InvalidModel(RegistryError):
    """A folder that is not a model the registry can take (a file or the card's version missing, ...)."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    bytes: int
    """-1 where a card declares no size."""
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_version_name(version: str) -> str:
    """``version`` when it can name a folder on any filesystem; InvalidModel otherwise."""
    if not VERSION_PATTERN.fullmatch(version):
        raise InvalidModel(
            f"version {version!r} cannot name a registry folder: use letters, digits and . _ + - "
            "(at most 128, starting with a letter or digit), e.g. 2026.11.26-1209"
        )
    return version


def read_card(directory: Path) -> dict[str, Any]:
    """The model card of a model folder; InvalidModel when it is missing or not a JSON object."""
    path = directory / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidModel(f"{directory} has no {CARD_FILE}: a model folder needs its card") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidModel(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(card, dict):
        raise InvalidModel(f"{path} is not a JSON object")
    return card


def card_version(card: Mapping[str, Any], directory: Path) -> str:
    """The version the card names (checked to be a folder name)."""
    version = card.get("version")
    if not isinstance(version, str) or not version:
        raise InvalidModel(f"{directory / CARD_FILE} has no version: the registry names a model by it")
    return check_version_name(version)


def declared_files(card: Mapping[str, Any]) -> dict[str, FileEntry]:
    """The files whose sha256 the card declares (``files.<name>.sha256``, and ``bytes`` where given)."""
    declared: dict[str, FileEntry] = {}
    files = card.get("files")
    if isinstance(files, dict):
        for name, entry in files.items():
            if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
                size = entry.get("bytes")
                declared[name] = FileEntry(name, size if isinstance(size, int) else -1, entry["sha256"])
    return declared


def card_metrics(card: Mapping[str, Any]) -> dict[str, Any]:
    """The card's ``metrics``: per evaluation set, macro-F1, ECE, ..."""
    metrics = card.get("metrics")
    return dict(metrics) if isinstance(metrics, dict) else {}


def check_against_card(copied: Sequence[FileEntry], declared: Mapping[str, FileEntry], source: Path) -> None:
    """HashMismatch unless every file the card declares was copied with the declared sha256 and size."""
    by_name = {e.name: e for e in copied}
    for name, expected in declared.items():
        actual = by_name[name]
        if actual.sha256 != expected.sha256:
            raise HashMismatch(
                f"{source / name} has sha256 {actual.sha256}, but {CARD_FILE} says {expected.sha256}: the "
                "file is not the one the card describes (a partial copy, or the card of another export)"
            )
        if expected.bytes >= 0 and actual.bytes != expected.bytes:
            raise HashMismatch(
                f"{source / name} is {actual.bytes} bytes, but {CARD_FILE} says {expected.bytes}"
            )


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (the entry itself, not only the data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomically(path: Path, data: object) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never a partial one,
    also when this process dies part-way (temporary file, fsync, ``os.replace``, fsync of the folder). A
    temporary file left by a killed writer is named ``.<name>.<hex>.tmp``."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with temporary.open("w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    fsync_dir(path.parent)


def copy_hashed(source: Path, destination: Path) -> FileEntry:
    """Copy a file, hashing what was read (one pass over a large model), and fsync the copy."""
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as reader, destination.open("wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
            size += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return FileEntry(destination.name, size, digest.hexdigest())
