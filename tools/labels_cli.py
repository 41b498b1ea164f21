"""`callsense labels ...`: the labelling workflow's commands (the arithmetic is in training/labels.py).

    callsense labels build [--data data/sales] [--packets N]
        lines.jsonl from the written calls (ASR shape, split by call) and N annotation packets
    callsense labels agreement LABELS.jsonl... [--min-alpha 0.8] [--json]
        Krippendorff's alpha overall and per class, Cohen's kappa per pair; exits 1 below --min-alpha
    callsense labels adjudicate LABELS.jsonl... --out gold.jsonl
        the majority label per line, every annotator's label kept; lists the lines left for a person

An annotator is named by the file's ``annotator`` field, else by the file's name (``labels/ann-1.jsonl``
is ``ann-1``). Exit codes: 0 done, 1 agreement below the threshold or lines left undecided, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.labels import Annotation

DEFAULT_DATA = Path("data/sales")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("labels", help="the labelling workflow: build the corpus, agreement, adjudication")
    verbs = p.add_subparsers(dest="verb", required=True)
    build = verbs.add_parser("build", help="lines.jsonl and annotation packets from the written calls")
    build.add_argument("--data", default=str(DEFAULT_DATA), help="the corpus folder (default data/sales)")
    build.add_argument("--packets", type=int, default=0, help="annotation packets to write (default none)")
    agree = verbs.add_parser("agreement", help="how far the annotators agree")
    agree.add_argument("files", nargs="+", help="one JSON Lines file of labels per annotator")
    agree.add_argument("--min-alpha", type=float, default=0.8, help="exit 1 below this alpha (default 0.8)")
    agree.add_argument("--json", action="store_true", help="print the figures as JSON")
    adjudicate = verbs.add_parser("adjudicate", help="gold labels by majority; the rest listed")
    adjudicate.add_argument("files", nargs="+", help="one JSON Lines file of labels per annotator")
    adjudicate.add_argument("--out", required=True, help="where the gold labels go (JSON Lines)")


def run(args: argparse.Namespace) -> int:
    from training.labels import LabelError
    from training.sales_corpus import CorpusError

    try:
        if args.verb == "build":
            return _build(Path(args.data), args.packets)
        if args.verb == "agreement":
            return _agreement(args.files, args.min_alpha, args.json)
        return _adjudicate(args.files, Path(args.out))
    except (LabelError, CorpusError, OSError) as exc:
        print(f"callsense labels {args.verb}: {exc}", file=sys.stderr)
        return 2


def _build(data: Path, packets: int) -> int:
    from training.sales_corpus import annotation_packets, build_corpus

    rows = build_corpus(data / "written", data / "lines.jsonl")
    calls = len({r.call_id for r in rows})
    print(f"{data / 'lines.jsonl'}: {len(rows)} lines of {calls} calls")
    if packets:
        for path in annotation_packets(rows, data / "annotation", packets):
            print(f"packet: {path}")
    return 0


def _read_all(files: list[str]) -> list[Annotation]:
    from training.labels import read_annotations

    rows: list[Annotation] = []
    for name in files:
        path = Path(name)
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
        named = first.strip() and "annotator" in json.loads(first)
        rows += read_annotations(path, annotator=None if named else path.stem)
    return rows


def _agreement(files: list[str], min_alpha: float, as_json: bool) -> int:
    from training.labels import agreement

    result = agreement(_read_all(files))
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(f"annotators: {', '.join(result.annotators)}; lines labelled by two or more: {result.lines}")
        print(f"Krippendorff's alpha (nominal): {result.alpha:.3f}")
        for label, alpha in result.alpha_per_class.items():
            print(f"  {label:<9} vs the rest: {alpha:.3f}")
        if result.objection_alpha is not None:
            print(f"objection tags (none counts as a value): alpha {result.objection_alpha:.3f}")
        for pair in result.pairs:
            print(
                f"Cohen's kappa {pair.annotators[0]} / {pair.annotators[1]}: {pair.kappa:.3f} on {pair.lines}"
            )
        print(f"lines they differ on: {len(result.disagreements)}")
    if result.alpha < min_alpha:
        print(f"alpha {result.alpha:.3f} is below {min_alpha}", file=sys.stderr)
        return 1
    return 0


def _adjudicate(files: list[str], out: Path) -> int:
    from training.labels import adjudicate

    result = adjudicate(_read_all(files))
    with out.open("w", encoding="utf-8") as f:
        for line in result.gold:
            row = {
                "line_id": line.line_id,
                "label": line.label,
                "objection": line.objection,
                "annotations": [asdict(a) for a in line.annotations],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{out}: {len(result.gold)} lines, {len(result.undecided)} left for a person")
    for line_id in result.undecided:
        print(f"  undecided: {line_id}")
    return 1 if result.undecided else 0
