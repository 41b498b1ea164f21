"""The committed sales corpus holds together: its lines are what the written calls build, every line has
two independent labels and a gold one, splits never share a call, and the annotators agree (alpha >= 0.8)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from training.data import load_source
from training.labels import adjudicate, agreement, read_annotations
from training.sales_corpus import corpus_lines, read_written

SALES = Path(__file__).resolve().parents[2] / "data" / "sales"


def _jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_lines_are_what_the_written_calls_build() -> None:
    built = [asdict(r) for r in corpus_lines(read_written(sorted((SALES / "written").glob("*.jsonl"))))]
    assert built == _jsonl(SALES / "lines.jsonl"), "data/sales/lines.jsonl is stale: callsense labels build"
    assert len({r["call_id"] for r in built}) >= 150 and len(built) >= 3000


def test_every_line_has_two_labels_a_gold_one_and_splits_share_no_call() -> None:
    lines = _jsonl(SALES / "lines.jsonl")
    annotations = [a for p in sorted((SALES / "labels").glob("ann-*.jsonl")) for a in read_annotations(p)]
    per_line = Counter(a.line_id for a in annotations)
    assert {str(r["line_id"]) for r in lines} == set(per_line) and min(per_line.values()) >= 2
    result = agreement(annotations)
    assert result.alpha >= 0.80, result.alpha
    gold = {str(r["line_id"]): r for r in _jsonl(SALES / "gold.jsonl")}
    fresh = adjudicate(annotations)
    assert {g.line_id: g.label for g in fresh.gold} == {k: v["label"] for k, v in gold.items()}
    splits: dict[str, set[object]] = {}
    for r in lines:
        splits.setdefault(str(r["call_id"]), set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())


def test_named_sales_sets_load_gold_labels_with_context() -> None:
    dev = load_source("sales:dev").examples
    asr = load_source("sales-asr:dev").examples
    assert len(dev) == len(asr) > 400 and {e.source for e in asr} == {"sales-asr:dev"}
    assert [e.label for e in dev] == [e.label for e in asr]
    assert all(e.text == e.text.lower() for e in asr) and sum(bool(e.previous_text) for e in dev) > 300
