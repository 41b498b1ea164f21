"""Labels from several annotators: how far they agree, and the gold label where they do.

An annotation is one annotator's judgement of one line (``Annotation``: label, objection, why), read from
JSON Lines (``read_annotations``). The arithmetic is the well-kept libraries': Krippendorff's alpha
(nominal, any number of annotators, lines labelled by only some of them) from ``krippendorff``, Cohen's
kappa per pair of annotators from scikit-learn.

- ``agreement``: alpha over everything and per class (that class against the rest), kappa per pair on the
  lines both labelled, the pairwise confusion of labels, and the lines where annotators differ.
- ``adjudicate``: the gold label of each line is the majority of its annotators where there is one; the
  lines without one are returned for a person (or a further annotator) to decide. Every annotator's label
  stays in the data beside the gold one.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import krippendorff
import numpy as np
from sklearn.metrics import cohen_kappa_score

LABELS = ("negative", "neutral", "positive")
OBJECTIONS = ("pricing pushback", "timeline concern", "competitor mention", "authority", "no need")


class LabelError(ValueError):
    """Annotations that cannot be used as they are; the message says which and why."""


@dataclass(frozen=True)
class Annotation:
    line_id: str
    annotator: str
    label: str
    objection: str | None
    why: str


def read_annotations(
    path: Path, annotator: str | None = None, *, default_annotator: str | None = None
) -> list[Annotation]:
    """A JSON Lines file of labels: rows of ``line_id``, ``label``, ``objection`` (null or one of
    OBJECTIONS), ``why`` and ``annotator``. ``annotator`` overrides every row's; ``default_annotator`` names
    the rows that name no one. LabelError names the first bad row."""
    rows = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if raw.strip():
            try:
                rows.append((f"{path}:{number}", json.loads(raw)))
            except json.JSONDecodeError as exc:
                raise LabelError(f"{path}:{number}: not JSON ({exc})") from None
    return annotations_from_rows(rows, annotator, default_annotator=default_annotator)


def annotations_from_rows(
    rows: Iterable[tuple[str, Any]], annotator: str | None = None, *, default_annotator: str | None = None
) -> list[Annotation]:
    """Annotations from ``(where, row)`` pairs (``where`` names the row in errors); all or nothing."""
    out: list[Annotation] = []
    seen: set[tuple[str, str]] = set()
    for where, row in rows:
        try:
            line_id, label = str(row["line_id"]), str(row["label"]).strip().lower()
            objection = row.get("objection") or None
            who = str(annotator or row.get("annotator") or default_annotator or row["annotator"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise LabelError(f"{where}: {exc!r}: each row needs line_id, label and annotator") from None
        if label not in LABELS:
            raise LabelError(f"{where}: label {label!r} is not one of {', '.join(LABELS)}")
        if objection is not None and objection not in OBJECTIONS:
            raise LabelError(f"{where}: objection {objection!r} is not one of {', '.join(OBJECTIONS)}")
        if (who, line_id) in seen:
            raise LabelError(f"{where}: {line_id} is labelled twice by {who}")
        seen.add((who, line_id))
        out.append(Annotation(line_id, who, label, objection, str(row.get("why") or "").strip()))
    return out


@dataclass(frozen=True)
class PairAgreement:
    annotators: tuple[str, str]
    lines: int
    kappa: float
    confusion: Mapping[tuple[str, str], int]
    """(label of the first, label of the second) -> lines."""


@dataclass(frozen=True)
class Agreement:
    annotators: tuple[str, ...]
    lines: int
    """Lines labelled by at least two annotators (the only ones that say anything about agreement)."""
    alpha: float
    alpha_per_class: Mapping[str, float]
    pairs: tuple[PairAgreement, ...]
    disagreements: tuple[str, ...]
    objection_alpha: float | None = None
    label_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "annotators": list(self.annotators),
            "lines": self.lines,
            "alpha": self.alpha,
            "alpha_per_class": dict(self.alpha_per_class),
            "objection_alpha": self.objection_alpha,
            "pairs": [
                {
                    "annotators": list(p.annotators),
                    "lines": p.lines,
                    "kappa": p.kappa,
                    "confusion": {f"{a}/{b}": n for (a, b), n in sorted(p.confusion.items())},
                }
                for p in self.pairs
            ],
            "label_counts": {k: dict(v) for k, v in self.label_counts.items()},
            "disagreements": len(self.disagreements),
        }


def _by_line(annotations: Iterable[Annotation]) -> dict[str, dict[str, Annotation]]:
    lines: dict[str, dict[str, Annotation]] = defaultdict(dict)
    for a in annotations:
        lines[a.line_id][a.annotator] = a
    return lines


def _alpha(matrix: np.ndarray) -> float:
    """Nominal alpha of an annotators x lines matrix of codes (NaN where a line was not labelled)."""
    if np.unique(matrix[~np.isnan(matrix)]).size < 2:
        return 1.0  # one value everywhere: nothing to disagree on
    return float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))


def agreement(annotations: Sequence[Annotation]) -> Agreement:
    """Agreement over the lines that at least two annotators labelled. LabelError with one annotator."""
    annotators = tuple(sorted({a.annotator for a in annotations}))
    if len(annotators) < 2:
        raise LabelError(f"agreement needs two annotators or more; got {len(annotators)}: {annotators}")
    lines = {k: v for k, v in sorted(_by_line(annotations).items()) if len(v) >= 2}
    if not lines:
        raise LabelError("no line was labelled by two annotators")
    ids = list(lines)
    codes = {label: float(i) for i, label in enumerate(LABELS)}
    matrix = np.full((len(annotators), len(ids)), np.nan)
    objections = np.full((len(annotators), len(ids)), np.nan)
    objection_codes = {o: float(i + 1) for i, o in enumerate(OBJECTIONS)}
    for j, line_id in enumerate(ids):
        for i, who in enumerate(annotators):
            if (a := lines[line_id].get(who)) is not None:
                matrix[i, j] = codes[a.label]
                objections[i, j] = objection_codes.get(a.objection or "", 0.0)
    per_class = {
        label: _alpha(np.where(np.isnan(matrix), np.nan, (matrix == codes[label]).astype(float)))
        for label in LABELS
    }
    pairs = []
    for one, other in combinations(annotators, 2):
        shared = [v for v in lines.values() if one in v and other in v]
        if not shared:
            continue
        first, second = [v[one].label for v in shared], [v[other].label for v in shared]
        pairs.append(
            PairAgreement(
                (one, other),
                len(shared),
                float(cohen_kappa_score(first, second, labels=list(LABELS))),
                Counter(zip(first, second, strict=True)),
            )
        )
    disagreements = tuple(k for k, v in lines.items() if len({a.label for a in v.values()}) > 1)
    counts = {who: Counter(a.label for a in annotations if a.annotator == who) for who in annotators}
    return Agreement(
        annotators,
        len(ids),
        _alpha(matrix),
        per_class,
        tuple(pairs),
        disagreements,
        _alpha(objections),
        counts,
    )


@dataclass(frozen=True)
class GoldLine:
    line_id: str
    label: str | None
    """The majority label; None when there is no majority (the line is in ``Adjudication.undecided``)."""
    objection: str | None
    annotations: tuple[Annotation, ...]


@dataclass(frozen=True)
class Adjudication:
    gold: tuple[GoldLine, ...]
    undecided: tuple[str, ...]


def _majority(values: Sequence[str | None]) -> tuple[bool, str | None]:
    (top, n), *rest = Counter(values).most_common()
    return (not rest or rest[0][1] < n) and n * 2 > len(values), top


def adjudicate(annotations: Sequence[Annotation]) -> Adjudication:
    """The gold label of each line: a strict majority of its annotators' labels (and objections, none
    counting as a value); a line without one is left undecided for a person to settle."""
    gold, undecided = [], []
    for line_id, by_annotator in sorted(_by_line(annotations).items()):
        rows = tuple(by_annotator[k] for k in sorted(by_annotator))
        decided, label = _majority([a.label for a in rows])
        objection_decided, objection = _majority([a.objection for a in rows])
        gold.append(
            GoldLine(line_id, label if decided else None, objection if objection_decided else None, rows)
        )
        if not decided:
            undecided.append(line_id)
    return Adjudication(tuple(gold), tuple(undecided))
