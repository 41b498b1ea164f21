"""`callsense models ...`: the sentiment model's versions in the local registry, and which one is served.

    callsense models list [--json]
        every version (the shipped model too), the current one marked, with its macro-F1 per set
    callsense models show VERSION [--json]
        a version's files and their sha256, its metrics, when and from where it was added, its promotions
    callsense models add PATH [--checkpoint DIR]
        copy a model folder (model.int8.onnx, tokenizer.json, model_card.json, + e.g. MODEL_CARD.md) into
        the registry as its card's version, each file checked against the sha256 the card declares;
        prints the version. It is not served until promoted. --checkpoint keeps the Hugging Face
        checkpoint it was exported from (train's best/) as the version's checkpoint/, hashed in its
        manifest: `callsense retrain` fine-tunes it further (given for a registered version without
        one, it is attached)
    callsense models promote VERSION
        serve VERSION: scorers that follow the registry load it, warm it up and switch to it without a
        restart and without failing a request; prints the version now current
    callsense models rollback
        serve again the version current before the last promotion (again: the one before that)

The registry is ``--registry``, else CALLSENSE_MODEL_REGISTRY, else CALLSENSE_DATA_DIR/models (see
callsense/model_registry.py). Exit codes: 0 done, 1 the registry could not be read or written, 2 bad input:
an unknown version, a file whose hash is not its card's, a version already registered with other files,
nothing to roll back to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry (and the tokenizer library it reaches) loads only when the command runs
    from callsense.model_registry import ModelRegistry, ModelVersion, RegistryState

_HEADLINE_METRIC = "macro_f1"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="the sentiment model's versions: list, add, promote, roll back")
    p.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="the registry folder (default: CALLSENSE_MODEL_REGISTRY, else CALLSENSE_DATA_DIR/models)",
    )
    verbs = p.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="the versions, the current one marked")
    listing.add_argument("--json", action="store_true")
    show = verbs.add_parser("show", help="one version: files, hashes, metrics, promotions")
    show.add_argument("version")
    show.add_argument("--json", action="store_true")
    add = verbs.add_parser("add", help="register a model folder (hashes checked against its card)")
    add.add_argument("path", type=Path, help="folder with model.int8.onnx, tokenizer.json, model_card.json")
    add.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="the Hugging Face checkpoint the model was exported from (train's best/), for retrains",
    )
    promote = verbs.add_parser("promote", help="serve a version (scorers switch without a restart)")
    promote.add_argument("version")
    verbs.add_parser("rollback", help="serve again the version current before the last promotion")


def run(args: argparse.Namespace) -> int:
    from callsense.config import ConfigError, load_config
    from callsense.model_registry import ModelRegistry, RegistryError

    try:
        registry = ModelRegistry(args.registry or load_config().model_registry)
        return _VERBS[args.verb](registry, args)
    except (RegistryError, ConfigError) as exc:
        print(f"callsense models {args.verb}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"callsense models {args.verb}: the registry failed: {exc}", file=sys.stderr)
        return 1


def _list(registry: ModelRegistry, args: argparse.Namespace) -> int:
    versions = registry.versions()
    current = registry.current().version if versions else None
    if args.json:
        print(json.dumps([_summary(v, current) for v in versions]))
        return 0
    if not versions:
        print(f"no model versions in {registry.root}, and the package ships none", file=sys.stderr)
        return 0
    for v in versions:
        marker = "*" if v.version == current else " "
        where = "shipped, not yet registered" if v.shipped else f"added {v.added_at}"
        scores = "  ".join(f"{name} {value:.3f}" for name, value in _headline(v).items())
        print(f"{marker} {v.version}  {where}  {scores}".rstrip())
    return 0


def _show(registry: ModelRegistry, args: argparse.Namespace) -> int:
    version = registry.get(args.version)
    current = registry.current().version
    state = registry.state()
    promotions = [
        {"at": h.at, "action": h.action, "version": h.version, "replaced": h.replaced}
        for h in state.history
        if version.version in (h.version, h.replaced)
    ]
    detail = _summary(version, current) | {
        "directory": str(version.directory),
        "source": version.source,
        "files": {f.name: {"bytes": f.bytes, "sha256": f.sha256} for f in version.files},
        "checkpoint": {f.name: {"bytes": f.bytes, "sha256": f.sha256} for f in version.checkpoint},
        "metrics": dict(version.metrics),
        "promotions": promotions,
    }
    if args.json:
        print(json.dumps(detail, indent=1))
        return 0
    print(f"version   {version.version}{'  (current)' if detail['current'] else ''}")
    print(f"folder    {version.directory}")
    print(f"added     {version.added_at or 'not registered: shipped in the package'}")
    if version.source and not version.shipped:
        print(f"from      {version.source}")
    print("files")
    for f in version.files:
        size = f"{f.bytes:,} bytes" if f.bytes >= 0 else "size not declared"
        print(f"  {f.name}  {size}  sha256 {f.sha256}")
    if version.checkpoint:
        print(f"checkpoint  {version.checkpoint_dir} (fine-tuned further by `callsense retrain`)")
        for f in version.checkpoint:
            print(f"  {f.name}  {f.bytes:,} bytes  sha256 {f.sha256}")
    if version.metrics:
        print("metrics")
        for name, values in version.metrics.items():
            if isinstance(values, dict):
                shown = ", ".join(
                    f"{key} {values[key]:.4f}"
                    for key in ("macro_f1", "weighted_f1", "accuracy", "ece")
                    if isinstance(values.get(key), int | float)
                )
                print(f"  {name}: {shown}")
    for p in promotions:
        print(f"{p['at']}  {p['action']} to {p['version']} (was {p['replaced'] or 'the shipped model'})")
    return 0


def _add(registry: ModelRegistry, args: argparse.Namespace) -> int:
    added = registry.add(args.path, checkpoint=args.checkpoint)
    print(added.version.version)
    if added.new:
        print(
            f"added {added.version.version} to {registry.root}; serve it with "
            f"`callsense models promote {added.version.version}`",
            file=sys.stderr,
        )
    else:
        print(f"{added.version.version} is already registered with these files", file=sys.stderr)
    return 0


def _promote(registry: ModelRegistry, args: argparse.Namespace) -> int:
    before = registry.current().version
    state = registry.promote(args.version)
    return _report_change(registry, state, before, "promoted")


def _rollback(registry: ModelRegistry, args: argparse.Namespace) -> int:
    before = registry.current().version
    state = registry.rollback()
    return _report_change(registry, state, before, "rolled back")


def _report_change(registry: ModelRegistry, state: RegistryState, before: str, done: str) -> int:
    now = state.current or before
    print(now)
    if now == before:
        print(f"{now} is already the current version", file=sys.stderr)
    else:
        print(
            f"{done}: {now} is current (was {before}); scorers following {registry.root} switch to it "
            "within a few seconds",
            file=sys.stderr,
        )
    return 0


def _summary(version: ModelVersion, current: str | None) -> dict[str, Any]:
    return {
        "version": version.version,
        "current": version.version == current,
        "shipped": version.shipped,
        "added_at": version.added_at or None,
        _HEADLINE_METRIC: _headline(version),
    }


def _headline(version: ModelVersion) -> dict[str, float]:
    """Macro-F1 per evaluation set, as the card measured it."""
    return {
        name: float(values[_HEADLINE_METRIC])
        for name, values in version.metrics.items()
        if isinstance(values, dict) and isinstance(values.get(_HEADLINE_METRIC), int | float)
    }


_VERBS = {"list": _list, "show": _show, "add": _add, "promote": _promote, "rollback": _rollback}
