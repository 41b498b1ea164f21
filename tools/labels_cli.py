"""`callsense labels ...`: the labelling workflow's commands (the arithmetic is in training/labels.py).

    callsense labels build [--data data/sales] [--packets N]
        lines.jsonl from the written calls (ASR shape, split by call) and N annotation packets of the calls
        that have neither a gold label nor a packet yet, numbered after the packets already there
    callsense labels agreement LABELS.jsonl... [--min-alpha 0.8] [--json]
        Krippendorff's alpha overall and per class, Cohen's kappa per pair; exits 1 below --min-alpha
    callsense labels adjudicate LABELS.jsonl... --out gold.jsonl
        the majority label per line, every annotator's label kept; lists the lines left for a person
    callsense labels export --since DAY --until DAY [--tenant T] [--team T] [--share 0.07] --out DIR
        a random share of the period's ended calls (PII already masked) as a Label Studio project
        (DIR/tasks.json, DIR/label_config.xml) and as DIR/lines.jsonl
    callsense labels import FILE... --out labels.jsonl
        labels from Label Studio's JSON export, JSON Lines or CSV, any number of annotators, into the
        project's label format (all or nothing: a bad row writes nothing)

An annotator is named by the file's ``annotator`` field, else by the file's name (``labels/ann-1.jsonl``
is ``ann-1``). Exit codes: 0 done, 1 agreement below the threshold or lines left undecided, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.labelling import SampledLine
    from training.labels import Annotation
    from training.sales_corpus import CorpusLine

DEFAULT_DATA = Path("data/sales")
SHOWN_DISAGREEMENTS = 100


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("labels", help="the labelling workflow: build the corpus, agreement, adjudication")
    verbs = p.add_subparsers(dest="verb", required=True)
    build = verbs.add_parser("build", help="lines.jsonl and annotation packets from the written calls")
    build.add_argument("--data", default=str(DEFAULT_DATA), help="the corpus folder (default data/sales)")
    build.add_argument(
        "--packets",
        type=int,
        default=0,
        help="annotation packets to write of the calls without gold labels or a packet, numbered after those "
        "there "
        "(default none)",
    )
    agree = verbs.add_parser("agreement", help="how far the annotators agree")
    agree.add_argument("files", nargs="+", help="one JSON Lines file of labels per annotator")
    agree.add_argument("--min-alpha", type=float, default=0.8, help="exit 1 below this alpha (default 0.8)")
    agree.add_argument("--json", action="store_true", help="print the figures as JSON")
    adjudicate = verbs.add_parser("adjudicate", help="gold labels by majority; the rest listed")
    adjudicate.add_argument("files", nargs="+", help="one JSON Lines file of labels per annotator")
    adjudicate.add_argument("--out", required=True, help="where the gold labels go (JSON Lines)")
    export = verbs.add_parser("export", help="a sample of stored calls for annotators (Label Studio, JSONL)")
    export.add_argument("--since", required=True, help="first day, YYYY-MM-DD (UTC)")
    export.add_argument("--until", required=True, help="the day after the last, YYYY-MM-DD (UTC)")
    export.add_argument("--tenant", default=None)
    export.add_argument("--team", default=None)
    export.add_argument("--share", type=float, default=0.07, help="share of the calls (default 0.07)")
    export.add_argument("--seed", type=int, default=None, help="for a repeatable sample")
    export.add_argument("--database-url", default="", help="default: DATABASE_URL, else the embedded one")
    export.add_argument("--out", required=True, help="a folder for tasks.json, label_config.xml, lines.jsonl")
    imported = verbs.add_parser("import", help="annotators' labels into the project's label format")
    imported.add_argument("files", nargs="+", help="Label Studio JSON exports, JSON Lines or CSV files")
    imported.add_argument("--out", required=True, help="the labels, JSON Lines")


def run(args: argparse.Namespace) -> int:
    from training.labels import LabelError
    from training.sales_corpus import CorpusError

    try:
        if args.verb == "build":
            return _build(Path(args.data), args.packets)
        if args.verb == "agreement":
            return _agreement(args.files, args.min_alpha, args.json)
        if args.verb == "export":
            return _export(args)
        if args.verb == "import":
            return _import(args.files, Path(args.out))
        return _adjudicate(args.files, Path(args.out))
    except (LabelError, CorpusError, OSError, ValueError) as exc:
        print(f"callsense labels {args.verb}: {exc}", file=sys.stderr)
        return 2


def _build(data: Path, packets: int) -> int:
    from training.sales_corpus import build_corpus

    rows = build_corpus(data / "written", data / "lines.jsonl")
    calls = len({r.call_id for r in rows})
    print(f"{data / 'lines.jsonl'}: {len(rows)} lines of {calls} calls")
    if packets:
        _pack_new_calls(rows, data, packets)
    return 0


def _pack_new_calls(rows: Sequence[CorpusLine], data: Path, packets: int) -> None:
    """Packets of the calls that have neither gold labels nor a packet yet (never rewriting one out with
    annotators), numbered after the highest packet there; no empty packets."""
    from training.sales_corpus import annotation_packets

    annotation = data / "annotation"
    existing = sorted(annotation.glob("packet-*.jsonl"))
    taken = {
        json.loads(line)["call_id"]
        for path in existing
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    }
    gold_path = data / "gold.jsonl"
    if gold_path.exists():
        lines = gold_path.read_text(encoding="utf-8").splitlines()
        taken |= {json.loads(line)["line_id"].rsplit(":", 1)[0] for line in lines if line.strip()}
    new = [r for r in rows if r.call_id not in taken]
    calls = len({r.call_id for r in new})
    if not calls:
        print("no calls without gold labels or a packet: no packets written")
        return
    numbers = [path.stem.removeprefix("packet-") for path in existing]
    first = max((int(n) for n in numbers if n.isdigit()), default=0) + 1
    for path in annotation_packets(new, annotation, min(packets, calls), first=first):
        print(f"packet: {path}")


def _read_all(files: list[str]) -> list[Annotation]:
    from training.labelling import read_label_file

    return [row for name in files for row in read_label_file(Path(name))]


def _export(args: argparse.Namespace) -> int:
    import asyncio
    from datetime import UTC, datetime

    from callsense.config import load_config
    from callsense.storage import command_databases
    from training.labelling import LABEL_STUDIO_CONFIG, label_studio_tasks, lines_jsonl, sample_calls

    since = datetime.fromisoformat(args.since).replace(tzinfo=UTC)
    until = datetime.fromisoformat(args.until).replace(tzinfo=UTC)

    async def sample() -> list[SampledLine]:
        async with command_databases(load_config(), args.database_url or None) as databases:
            lines: list[SampledLine] = []
            for database in databases.stores:
                async with database.pool.connection() as conn:
                    lines += await sample_calls(
                        conn,
                        since,
                        until,
                        share=args.share,
                        tenant=args.tenant,
                        team=args.team,
                        seed=args.seed,
                    )
            return lines

    lines = asyncio.run(sample())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tasks.json").write_text(json.dumps(label_studio_tasks(lines), indent=1, ensure_ascii=False))
    (out / "label_config.xml").write_text(LABEL_STUDIO_CONFIG)
    (out / "lines.jsonl").write_text(lines_jsonl(lines), encoding="utf-8")
    calls = len({x.call_id for x in lines})
    print(f"{out}: {len(lines)} lines of {calls} calls (tasks.json + label_config.xml for Label Studio)")
    return 0


def _import(files: list[str], out: Path) -> int:
    rows = _read_all(files)  # every file read and checked before anything is written
    if not rows:
        raise ValueError("no label in the files (a Label Studio export without completed annotations?)")
    out.write_text("".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    who = sorted({r.annotator for r in rows})
    print(f"{out}: {len(rows)} labels from {len(who)} annotators ({', '.join(who)})")
    return 0


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
            one, other = pair.annotators
            print(f"Cohen's kappa {one} / {other}: {pair.kappa:.3f} on {pair.lines} lines")
            for (mine, theirs), count in sorted(pair.confusion.items()):
                if mine != theirs:
                    print(f"    {one} {mine} / {other} {theirs}: {count}")
        print(f"lines they differ on: {len(result.disagreements)}")
        for line_id in result.disagreements[:SHOWN_DISAGREEMENTS]:
            print(f"  {line_id}")
        if len(result.disagreements) > SHOWN_DISAGREEMENTS:
            print(f"  ... and {len(result.disagreements) - SHOWN_DISAGREEMENTS} more")
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
