"""The code stays ruff-clean, ruff-formatted, mypy-strict-clean (generated stubs excepted) and layered."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "callsense",
    "asr_service",
    "chopper_service",
    "scorer_service",
    "gateway",
    "postcall",
    "tools",
    "training",
    "bench",
]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_format() -> None:
    result = _run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.slow
def test_mypy(tmp_path: Path) -> None:
    result = _run(sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), *PACKAGES)
    assert result.returncode == 0, result.stdout[-4000:]


def test_import_layers() -> None:
    """tools > training > services (independent of each other) > the runtime: `lint-imports` holds."""
    result = _run(str(Path(sys.executable).with_name("lint-imports")))
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout, result.stdout[-4000:]


def test_every_package_is_in_a_layer() -> None:
    """A new top-level package cannot slip past the contract: each one is a root package in a layer."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(config["root_packages"])
    layered = {
        name
        for contract in config["contracts"]
        if contract["type"] == "layers"
        for layer in contract["layers"]
        for name in re.split(r"[|:]", layer)
    }
    assert packages <= {name.strip() for name in layered}
