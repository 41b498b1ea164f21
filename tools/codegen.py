"""Generate the Python gRPC stubs in ``callsense/v1/`` from ``protos/callsense/v1/*.proto``.

    python -m tools.codegen          regenerate callsense/v1/ in place
    python -m tools.codegen --check  exit 1, listing the stale files, when callsense/v1/ is out of date

The generated modules are committed so that installing callsense never needs protoc; ``--check`` (run by
the test suite) catches a proto edited without regenerating. The output depends on the grpcio-tools
version, which is why ``dev`` pins it in pyproject.toml.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_PACKAGE = Path("callsense") / "v1"
OUT_PACKAGE = ROOT / PROTO_PACKAGE

INIT_TEXT = (
    '"""Generated stubs of the callsense.v1 contracts. Do not edit: run `python -m tools.codegen`."""\n'
)


def proto_files() -> list[Path]:
    """The .proto files, relative to ``protos/`` (the import root), in a stable order."""
    return sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))


def generate(out_root: Path) -> None:
    """Run protoc so that the stubs land in ``out_root/callsense/v1/``; raise on any protoc error."""
    from grpc_tools import protoc  # dev dependency: imported here so the runtime never needs it

    well_known = Path(str(resources.files("grpc_tools") / "_proto"))  # google/protobuf/*.proto live here
    package_dir = out_root / PROTO_PACKAGE
    package_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--pyi_out={out_root}",
        *(str(PROTO_ROOT / p) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    (package_dir / "__init__.py").write_text(INIT_TEXT)


def generated_names(directory: Path) -> set[str]:
    """Names of the files codegen owns in a package directory (ignores caches and stray files)."""
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if p.is_file() and p.suffix in {".py", ".pyi"}}


def stale_files(fresh_dir: Path, committed_dir: Path) -> list[str]:
    """Files that differ between a fresh generation and the committed one, missing, or left over."""
    fresh, committed = generated_names(fresh_dir), generated_names(committed_dir)
    stale = [f"missing: {name}" for name in sorted(fresh - committed)]
    stale += [f"left over: {name}" for name in sorted(committed - fresh)]
    stale += [
        f"differs: {name}"
        for name in sorted(fresh & committed)
        if not filecmp.cmp(fresh_dir / name, committed_dir / name, shallow=False)
    ]
    return stale


def check() -> int:
    """Generate into a temporary tree and compare; 0 when the committed stubs are current."""
    with tempfile.TemporaryDirectory(prefix="callsense-codegen-") as tmp:
        generate(Path(tmp))
        stale = stale_files(Path(tmp) / PROTO_PACKAGE, OUT_PACKAGE)
    if stale:
        print("callsense/v1 is stale; run `python -m tools.codegen`:", file=sys.stderr)
        for line in stale:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("callsense/v1 is up to date")
    return 0


def regenerate() -> int:
    """Replace ``callsense/v1/`` with a fresh generation (removes stubs of deleted protos too)."""
    with tempfile.TemporaryDirectory(prefix="callsense-codegen-") as tmp:
        generate(Path(tmp))
        fresh_dir = Path(tmp) / PROTO_PACKAGE
        for name in generated_names(OUT_PACKAGE) - generated_names(fresh_dir):
            (OUT_PACKAGE / name).unlink()
        OUT_PACKAGE.mkdir(parents=True, exist_ok=True)
        for name in sorted(generated_names(fresh_dir)):
            shutil.copyfile(fresh_dir / name, OUT_PACKAGE / name)
    print(f"generated {len(generated_names(OUT_PACKAGE))} files in {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.codegen", description="Generate callsense/v1/ from protos/."
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 listing stale files instead of writing anything"
    )
    args = parser.parse_args(argv)
    return check() if args.check else regenerate()


if __name__ == "__main__":
    sys.exit(main())
