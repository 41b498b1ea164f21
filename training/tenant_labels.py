"""A tenant's own labelled calls for a retrain: read in any of the labelling workflow's shapes, and split by
call into lines to train on and lines held out for the promotion gate.

What `callsense labels ...` writes names each line by ``line_id`` and carries no text, so those shapes are
read together with the ``lines.jsonl`` that ``callsense labels export`` wrote beside the tasks (text, call,
speaker, in call order):

- ``adjudicated``: ``callsense labels adjudicate``'s output (rows with ``annotations``; the majority
  ``label``, null where the annotators had none: those lines are left out, a person has not settled them);
- ``annotations``: ``callsense labels import``'s output or any annotators' files it reads (JSON Lines of
  ``line_id``/``annotator``/``label``, a Label Studio JSON export, CSV): adjudicated here by majority, as
  ``callsense labels adjudicate`` would, the undecided lines left out;
- ``label-format``: the project's own label format (``text``, ``label``, optionally ``call_id``), which
  needs no lines file.

The split is by call (a call's lines are alike: lines of one call on both sides would flatter the
candidate) and by a hash of the call id, so a call is held out in every retrain, whatever calls come or
go: a line the gate holds out was never trained on by this candidate nor by any model retrained before it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.data import LABEL_IDS, LABELS, LabelledUtterance, load_labelled_file
from training.labelling import read_label_file
from training.labels import LabelError, adjudicate

HOLD_OUT_SALT = "callsense-retrain-held-out"
"""Part of the hash that places a call: changing it would move calls between the two sides."""


@dataclass(frozen=True)
class TenantLabels:
    lines: tuple[LabelledUtterance, ...]
    """The labelled lines, in call order, each with its call and the line before it in the call."""
    kind: str
    """"adjudicated", "annotations" or "label-format"."""
    undecided: int = 0
    """Lines without a majority label, left out."""
    unmatched: int = 0
    """Labels whose line_id the lines file does not have, left out."""

    @property
    def calls(self) -> int:
        return len({line.call_id for line in self.lines})


@dataclass(frozen=True)
class HeldOutSplit:
    train: tuple[LabelledUtterance, ...]
    held_out: tuple[LabelledUtterance, ...]
    held_out_calls: tuple[str, ...]


def _first_row(path: Path) -> dict[str, Any] | None:
    with path.open(encoding="utf-8") as f:
        for raw in f:
            if raw.strip():
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise LabelError(f"{path}: not JSON Lines ({exc})") from None
                return row if isinstance(row, dict) else None
    return None


def label_file_kind(path: Path) -> str:
    """Which of the shapes above ``path`` is, from its suffix and its first row."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "annotations"  # a Label Studio export
    if suffix == ".csv":
        with path.open(encoding="utf-8") as f:
            header = f.readline()
        return "label-format" if "text" in header.strip().split(",") else "annotations"
    if suffix not in (".jsonl", ".ndjson"):
        raise LabelError(f"{path}: expected .jsonl, .json (Label Studio export) or .csv labels")
    row = _first_row(path)
    if row is None:
        raise LabelError(f"{path}: no labels in the file")
    if "annotations" in row:
        return "adjudicated"
    if "text" in row:
        return "label-format"
    if "line_id" in row:
        return "annotations"
    raise LabelError(f"{path}: rows need line_id (labels of exported calls) or text (the label format)")


def _read_lines(path: Path) -> list[dict[str, str]]:
    rows = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if raw.strip():
            try:
                row = json.loads(raw)
                rows.append(
                    {"line_id": str(row["line_id"]), "call_id": str(row["call_id"]), "text": row["text"]}
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise LabelError(
                    f"{path}:{number}: not a line of `callsense labels export` ({exc!r}): lines.jsonl rows "
                    "have line_id, call_id and text"
                ) from None
    return rows


def _gold_labels(path: Path, kind: str) -> tuple[dict[str, str], int]:
    """line_id -> the decided label, and how many lines were left undecided."""
    if kind == "adjudicated":
        gold, undecided = {}, 0
        for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            row = json.loads(raw)
            label = row.get("label")
            if label is None:
                undecided += 1
            elif label in LABEL_IDS:
                gold[str(row["line_id"])] = label
            else:
                raise LabelError(f"{path}:{number}: label {label!r} is not one of {', '.join(LABEL_IDS)}")
        return gold, undecided
    result = adjudicate(read_label_file(path))
    return {g.line_id: g.label for g in result.gold if g.label is not None}, len(result.undecided)


def load_tenant_labels(labels: Path, lines: Path | None = None) -> TenantLabels:
    """The labelled lines of ``labels`` (see the module doc for the shapes), joined with ``lines`` (default:
    ``lines.jsonl`` beside ``labels``) where the labels carry no text. LabelError says what is wrong."""
    if not labels.is_file():
        raise LabelError(f"{labels}: no such labels file")
    kind = label_file_kind(labels)
    if kind == "label-format":
        loaded = load_labelled_file(labels)
        if loaded.errors:
            raise LabelError(f"{len(loaded.errors)} bad rows, the first: {loaded.errors[0]}")
        # A row without a call is a call of its own (named by its text, so it always lands on one side).
        rows = [
            e if e.call_id else replace(e, call_id="text-" + hashlib.sha256(e.text.encode()).hexdigest()[:12])
            for e in loaded.examples
        ]
        return TenantLabels(tuple(rows), kind)
    lines = lines or labels.parent / "lines.jsonl"
    if not lines.is_file():
        raise LabelError(
            f"{labels} names lines by line_id and has no text: give the lines.jsonl that `callsense labels "
            f"export` wrote with the tasks (--lines; {lines} does not exist)"
        )
    gold, undecided = _gold_labels(labels, kind)
    said = _read_lines(lines)
    known = {row["line_id"] for row in said}
    examples: list[LabelledUtterance] = []
    previous: dict[str, str] = {}
    for row in said:
        before = previous.get(row["call_id"], "")
        previous[row["call_id"]] = row["text"]
        label = gold.get(row["line_id"])
        if label is not None:
            examples.append(
                LabelledUtterance(
                    text=row["text"],
                    label=LABEL_IDS[label],
                    source=labels.name,
                    call_id=row["call_id"],
                    previous_text=before,
                )
            )
    return TenantLabels(tuple(examples), kind, undecided, len(set(gold) - known))


def call_position(call_id: str) -> float:
    """Where a call falls in [0, 1): fixed by its id alone."""
    digest = hashlib.sha256(f"{HOLD_OUT_SALT}:{call_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_call(lines: Sequence[LabelledUtterance], held_out_share: float = 0.2) -> HeldOutSplit:
    """Hold out the calls whose position is under ``held_out_share``. Where that leaves one side without a
    call (a handful of calls), the call placed lowest is held out, or the highest trained on, so both sides
    have one; ValueError with fewer than two calls."""
    if not 0 < held_out_share < 1:
        raise ValueError(f"the held-out share must be between 0 and 1, got {held_out_share}")
    calls = sorted({line.call_id for line in lines}, key=call_position)
    if len(calls) < 2:
        raise ValueError(
            f"the labels cover {len(calls)} call(s): a retrain needs two at least, one to train on and one "
            "held out for the gate"
        )
    held = {c for c in calls if call_position(c) < held_out_share}
    if not held:
        held = {calls[0]}
    if len(held) == len(calls):
        held.discard(calls[-1])
    return HeldOutSplit(
        train=tuple(line for line in lines if line.call_id not in held),
        held_out=tuple(line for line in lines if line.call_id in held),
        held_out_calls=tuple(sorted(held)),
    )


def write_label_file(path: Path, lines: Sequence[LabelledUtterance]) -> Path:
    """``lines`` in the project's label format (JSON Lines), as `callsense train` reads it."""
    with path.open("w", encoding="utf-8") as out:
        for line in lines:
            row: dict[str, object] = {
                "text": line.text,
                "label": LABELS[line.label],
                "call_id": line.call_id,
                "previous_text": line.previous_text,
            }
            if line.call_duration_s is not None:
                row["call_duration_s"] = line.call_duration_s
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
