"""A user's own calls out to annotators, and their labels back: Label Studio and plain files.

- ``sample_calls``: a random share (5-10 % by default) of a period's ended calls from PostgreSQL, by tenant
  and team, with their stored (already PII-masked) utterances.
- ``label_studio_tasks`` and ``LABEL_STUDIO_CONFIG``: the sample as a Label Studio project: one task per
  utterance (its text, its speaker, the lines before it in its call as context) and a labelling config with
  the rubric's three choices (docs/labelling.md), a why box and the objection choices.
- ``lines_jsonl``: the same utterances as JSON Lines, for any other tool.
- ``read_label_studio_export`` / ``read_label_file``: labels back, from Label Studio's JSON export (every
  annotator who completed a task) or from JSON Lines / CSV, as ``training.labels.Annotation`` rows.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from training.labels import (
    LABELS,
    OBJECTIONS,
    Annotation,
    LabelError,
    annotations_from_rows,
    read_annotations,
)

CONTEXT_LINES = 4
"""Lines of the call shown before the one to label: the rubric judges a line in its place."""

LABEL_STUDIO_CONFIG = f"""<View>
  <Header value="Label the last line by the speaker's stance towards the deal (docs/labelling.md)"/>
  <Text name="context" value="$context" granularity="word"/>
  <Header value="$speaker:"/>
  <Text name="text" value="$text"/>
  <Choices name="label" toName="text" choice="single" required="true" showInline="true">
{chr(10).join(f'    <Choice value="{label}"/>' for label in LABELS)}
  </Choices>
  <TextArea name="why" toName="text" placeholder="why, in a few words" maxSubmissions="1" required="true"/>
  <Choices name="objection" toName="text" choice="single" showInline="true">
{chr(10).join(f'    <Choice value="{objection}"/>' for objection in OBJECTIONS)}
  </Choices>
</View>
"""


@dataclass(frozen=True)
class SampledLine:
    line_id: str  # "<call_id>:<utterance_id>"
    call_id: str
    tenant: str
    team: str
    speaker: str
    start_ms: int
    end_ms: int
    text: str  # as stored: PII masked


_SAMPLE_CALLS = """
    SELECT call_id, tenant, team FROM calls
    WHERE status = 'ended' AND started_at >= %(since)s AND started_at < %(until)s
      AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
      AND (%(team)s::text IS NULL OR team = %(team)s)
    ORDER BY call_id
"""
_CALL_LINES = """
    SELECT call_id, utterance_id, channel, start_ms, end_ms, text FROM nlp_events
    WHERE call_id = ANY(%(calls)s) ORDER BY call_id, utterance_id
"""


async def sample_calls(
    conn: AsyncConnection[Any],
    since: datetime,
    until: datetime,
    *,
    share: float = 0.07,
    tenant: str | None = None,
    team: str | None = None,
    seed: int | None = None,
) -> list[SampledLine]:
    """The utterances of a random ``share`` of the calls that started in [since, until) and ended (at
    least one call when there are any). ValueError for a share outside (0, 1]."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    cur = await conn.cursor(row_factory=dict_row).execute(
        _SAMPLE_CALLS, {"since": since, "until": until, "tenant": tenant, "team": team}
    )
    calls = await cur.fetchall()
    if not calls:
        return []
    chosen = random.Random(seed).sample(calls, max(1, round(len(calls) * share)))
    who = {c["call_id"]: c for c in chosen}
    cur = await conn.cursor(row_factory=dict_row).execute(_CALL_LINES, {"calls": sorted(who)})
    return [
        SampledLine(
            f"{r['call_id']}:{r['utterance_id']}",
            r["call_id"],
            who[r["call_id"]]["tenant"],
            who[r["call_id"]]["team"],
            r["channel"],
            r["start_ms"],
            r["end_ms"],
            r["text"],
        )
        for r in await cur.fetchall()
    ]


def label_studio_tasks(lines: Sequence[SampledLine]) -> list[dict[str, Any]]:
    """Label Studio's JSON import format: a list of tasks, each with its ``data``."""
    tasks = []
    before: dict[str, list[str]] = {}
    for line in lines:
        said = before.setdefault(line.call_id, [])
        tasks.append(
            {
                "data": {
                    "line_id": line.line_id,
                    "call_id": line.call_id,
                    "speaker": line.speaker,
                    "text": line.text,
                    "context": "\n".join(said[-CONTEXT_LINES:]) or "(start of the call)",
                    "start_ms": line.start_ms,
                    "end_ms": line.end_ms,
                }
            }
        )
        said.append(f"{line.speaker}: {line.text}")
    return tasks


def lines_jsonl(lines: Iterable[SampledLine]) -> str:
    return "".join(
        json.dumps(
            {
                "line_id": x.line_id,
                "call_id": x.call_id,
                "speaker": x.speaker,
                "start_ms": x.start_ms,
                "end_ms": x.end_ms,
                "text": x.text,
            },
            ensure_ascii=False,
        )
        + "\n"
        for x in lines
    )


def _result_value(result: Sequence[Mapping[str, Any]], name: str, key: str) -> str | None:
    for item in result:
        if item.get("from_name") == name:
            values = item.get("value", {}).get(key) or []
            return str(values[0]) if values else None
    return None


def read_label_studio_export(path: Path) -> list[Annotation]:
    """Every completed, not cancelled annotation of a Label Studio JSON export, one Annotation per task and
    annotator. The annotator is ``completed_by``: Label Studio's standard JSON export gives the user's id
    (tests/training/test_label_studio.py, against a real server); an export that carries the user object
    gives its e-mail."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LabelError(f"{path}: not JSON ({exc}); export the project as JSON from Label Studio") from None
    if not isinstance(tasks, list):
        raise LabelError(f"{path}: a Label Studio JSON export is a list of tasks")
    rows: list[Annotation] = []
    for n, task in enumerate(tasks):
        line_id = (task.get("data") or {}).get("line_id")
        if not line_id:
            raise LabelError(
                f"{path}: task {n} has no data.line_id: was it exported by callsense labels export?"
            )
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                continue
            result = annotation.get("result") or []
            label = _result_value(result, "label", "choices")
            if label is None:
                continue  # skipped without a label
            who = annotation.get("completed_by")
            annotator = str(who.get("email") or who.get("id")) if isinstance(who, dict) else str(who)
            if label not in LABELS:
                raise LabelError(f"{path}: task {line_id}: label {label!r} is not one of {', '.join(LABELS)}")
            objection = _result_value(result, "objection", "choices")
            if objection is not None and objection not in OBJECTIONS:
                raise LabelError(f"{path}: task {line_id}: objection {objection!r} is not one of the five")
            rows.append(
                Annotation(
                    str(line_id), annotator, label, objection, _result_value(result, "why", "text") or ""
                )
            )
    return rows


def read_label_file(path: Path) -> list[Annotation]:
    """Labels from a Label Studio JSON export, JSON Lines, or CSV (columns line_id, annotator, label,
    objection, why), chosen by the file's suffix."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_label_studio_export(path)
    if suffix == ".jsonl":
        return read_annotations(path, default_annotator=path.stem)
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = {"line_id", "label"} - set(reader.fieldnames or ())
            if missing:
                raise LabelError(f"{path}: no {', '.join(sorted(missing))} column")
            rows = [(f"{path}:{n}", row) for n, row in enumerate(reader, 2)]
        return annotations_from_rows(rows, default_annotator=path.stem)
    raise LabelError(f"{path}: expected .json (Label Studio export), .jsonl or .csv")
