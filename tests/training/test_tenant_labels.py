"""A tenant's labels for a retrain (training/tenant_labels.py): each shape the labelling workflow writes,
joined with the exported lines, and the split by call that holds a call out in every retrain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.data import LABELS, LabelledUtterance, load_jsonl
from training.labels import LabelError
from training.tenant_labels import (
    call_position,
    label_file_kind,
    load_tenant_labels,
    split_by_call,
    write_label_file,
)

# Two calls as `callsense labels export` writes them (lines.jsonl: call order, no labels).
LINES = [
    ("acme-1", 0, "agent", "Thanks for taking the time today, Priya."),
    ("acme-1", 1, "customer", "Happy to. We've been looking forward to this."),
    ("acme-1", 2, "agent", "The annual plan comes to forty-two thousand."),
    ("acme-1", 3, "customer", "Hm. That's quite a bit more than we'd pencilled in."),
    ("acme-2", 0, "agent", "Did the trial cover what your team needed?"),
    ("acme-2", 1, "customer", "It did, the reporting alone saved us hours."),
]
TRUTH = ["neutral", "positive", "neutral", "negative", "neutral", "positive"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    rows = [
        {
            "line_id": f"{c}:{u}",
            "call_id": c,
            "speaker": s,
            "start_ms": u * 3000,
            "end_ms": u * 3000 + 2500,
            "text": t,
        }
        for c, u, s, t in LINES
    ]
    return write_jsonl(tmp_path / "lines.jsonl", rows)


def annotated(annotator: str, labels: list[str]) -> list[dict[str, Any]]:
    return [
        {"line_id": f"{c}:{u}", "annotator": annotator, "label": label, "objection": None, "why": "stance"}
        for (c, u, _, _), label in zip(LINES, labels, strict=True)
    ]


def test_adjudicated_labels_are_joined_with_the_exported_lines_undecided_ones_left_out(
    exported: Path, tmp_path: Path
) -> None:
    gold: list[dict[str, Any]] = [
        {"line_id": f"{c}:{u}", "label": label, "objection": None, "annotations": []}
        for (c, u, _, _), label in zip(LINES, TRUTH, strict=True)
    ]
    gold[1]["label"] = None  # the annotators had no majority
    gold.append({"line_id": "acme-9:0", "label": "positive", "objection": None, "annotations": []})
    path = write_jsonl(tmp_path / "gold.jsonl", gold)
    assert label_file_kind(path) == "adjudicated"
    labels = load_tenant_labels(path)  # lines.jsonl beside it
    assert (labels.kind, labels.undecided, labels.unmatched, labels.calls) == ("adjudicated", 1, 1, 2)
    assert [(e.text, LABELS[e.label]) for e in labels.lines] == [
        (LINES[i][3], TRUTH[i]) for i in (0, 2, 3, 4, 5)
    ]
    negative = labels.lines[2]
    # The line before in its call, labelled or not, is its context.
    assert negative.call_id == "acme-1" and negative.previous_text == LINES[2][3]
    assert labels.lines[3].previous_text == ""  # the first line of acme-2


def test_two_annotators_files_are_adjudicated_by_majority(exported: Path, tmp_path: Path) -> None:
    other = list(TRUTH)
    other[3] = "neutral"  # ben hears the polite price objection as neutral: no majority on that line
    imported = write_jsonl(tmp_path / "labels.jsonl", annotated("ana", TRUTH) + annotated("ben", other))
    assert label_file_kind(imported) == "annotations"
    labels = load_tenant_labels(imported, exported)
    assert (labels.kind, labels.undecided, len(labels.lines)) == ("annotations", 1, 5)
    assert "Hm. That's quite a bit more than we'd pencilled in." not in [e.text for e in labels.lines]


def test_the_label_format_needs_no_lines_and_a_row_without_a_call_is_a_call_of_its_own(
    tmp_path: Path,
) -> None:
    path = write_jsonl(
        tmp_path / "own.jsonl",
        [
            {"text": "That works for us.", "label": "positive", "call_id": "c1"},
            {"text": "We'll have to pass this quarter.", "label": "negative"},
        ],
    )
    labels = load_tenant_labels(path)
    assert labels.kind == "label-format" and labels.calls == 2
    assert labels.lines[0].call_id == "c1" and labels.lines[1].call_id.startswith("text-")
    assert load_tenant_labels(path).lines[1].call_id == labels.lines[1].call_id  # by its text: stable


def test_labels_without_their_lines_or_in_no_known_shape_are_refused(tmp_path: Path) -> None:
    imported = write_jsonl(tmp_path / "labels.jsonl", annotated("ana", TRUTH))
    with pytest.raises(LabelError, match="give the lines.jsonl"):
        load_tenant_labels(imported)
    with pytest.raises(LabelError, match="rows need line_id"):
        load_tenant_labels(write_jsonl(tmp_path / "odd.jsonl", [{"label": "positive"}]))
    with pytest.raises(LabelError, match="no such labels file"):
        load_tenant_labels(tmp_path / "absent.jsonl")
    (tmp_path / "labels.txt").write_text("positive\n")
    with pytest.raises(LabelError, match="expected .jsonl"):
        load_tenant_labels(tmp_path / "labels.txt")


def line(call: str, n: int = 0) -> LabelledUtterance:
    return LabelledUtterance(f"{call} line {n}", n % 3, "t", call_id=call)


def test_the_split_is_by_call_and_a_call_stays_on_its_side_whatever_other_calls_come() -> None:
    calls = [f"acme-{i:03d}" for i in range(200)]
    lines = [line(c, n) for c in calls for n in range(4)]
    split = split_by_call(lines, 0.2)
    held = set(split.held_out_calls)
    assert 25 <= len(held) <= 55  # about a fifth
    assert {e.call_id for e in split.held_out} == held and not held & {e.call_id for e in split.train}
    assert len(split.train) + len(split.held_out) == len(lines)
    # Next month: more calls, some gone. Every call seen before keeps its side.
    later = split_by_call(
        [line(c) for c in calls[50:]] + [line(f"acme-{i:03d}") for i in range(200, 400)], 0.2
    )
    assert set(later.held_out_calls) & set(calls) == held - set(calls[:50])
    assert split_by_call(lines, 0.2) == split  # the same input, the same split


def test_a_handful_of_calls_still_gets_one_held_out_and_one_trained_on() -> None:
    two = ["a", "b"]
    split = split_by_call([line(c) for c in two], 0.2)
    assert len(split.held_out_calls) == 1 and len(split.train) == 1
    assert split.held_out_calls == (min(two, key=call_position),)
    with pytest.raises(ValueError, match="two at least"):
        split_by_call([line("a", 0), line("a", 1)], 0.2)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split_by_call([line(c) for c in two], 1.0)


def test_written_lines_read_back_as_the_label_format(tmp_path: Path) -> None:
    lines = [LabelledUtterance("Sounds fair.", 2, "t", call_id="c1", previous_text="Net sixty days?")]
    loaded = load_jsonl(write_label_file(tmp_path / "train.jsonl", lines))
    assert loaded.errors == []
    assert loaded.examples[0].text == "Sounds fair." and loaded.examples[0].label == 2
    assert (loaded.examples[0].call_id, loaded.examples[0].previous_text) == ("c1", "Net sixty days?")
