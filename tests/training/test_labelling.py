"""A user's own stored calls out to annotators and their labels back (`callsense labels export|import`):
calls made through the gateway's batch API (the real chopper and scorer, a real PostgreSQL), exported,
and labels read back in Label Studio's export shape, JSON Lines and CSV."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest

from tests.support.auth import bearer
from tests.support.mesh import RunningGateway

pytestmark = pytest.mark.slow  # the mesh, a real PostgreSQL and the CLI in a child process

ROOT = Path(__file__).resolve().parents[2]
# What buyers and reps said, as the gateway stores it (masked); from the sales corpus's first calls.
SAID = [
    json.loads(line)
    for line in (ROOT / "data" / "sales" / "lines.jsonl").read_text(encoding="utf-8").splitlines()[:120]
]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "labels", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


async def _batch_calls(gateway: RunningGateway, tenant: str, count: int) -> None:
    """``count`` calls through POST /v1/sentiment/batch, each six lines of a written sales call."""
    headers = bearer(await gateway.make_key(tenant))
    async with httpx.AsyncClient(base_url=gateway.http_url, headers=headers, timeout=60.0) as http:
        for n in range(count):
            rows = SAID[(n * 6) % 100 : (n * 6) % 100 + 6]
            utterances = [
                {
                    "text": row["text"],
                    "channel": row["speaker"],
                    "start_ms": i * 3000,
                    "end_ms": i * 3000 + 2500,
                }
                for i, row in enumerate(rows)
            ]
            body = {"call_id": f"{tenant}-call-{n:02d}", "metadata": {"tenant": tenant, "team": "east"}}
            reply = await http.post("/v1/sentiment/batch", json={**body, "utterances": utterances})
            assert reply.status_code == 200, reply.text


def _label_studio_export(tasks: list[dict[str, Any]], annotators: dict[int, str]) -> list[dict[str, Any]]:
    """Tasks as Label Studio exports them once annotated (JSON export: data + annotations[].result)."""

    def result(label: str, why: str, objection: str | None) -> list[dict[str, Any]]:
        items = [
            {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}},
            {"from_name": "why", "to_name": "text", "type": "textarea", "value": {"text": [why]}},
        ]
        if objection:
            items.append(
                {
                    "from_name": "objection",
                    "to_name": "text",
                    "type": "choices",
                    "value": {"choices": [objection]},
                }
            )
        return items

    exported = []
    for i, task in enumerate(tasks):
        # Each annotator's judgement, scripted: they agree on every task but the first.
        label = ("negative", "neutral", "positive", "neutral")[i % 4]
        annotations = []
        for user_id, email in annotators.items():
            own = "positive" if i == 0 and user_id == 2 else label
            objection = (
                "pricing pushback" if own == "negative" and task["data"]["speaker"] == "customer" else None
            )
            annotations.append(
                {
                    "id": i * 10 + user_id,
                    "completed_by": {"id": user_id, "email": email},
                    "was_cancelled": False,
                    "result": result(own, f"scripted {own}", objection),
                }
            )
        annotations.append({"id": i * 10 + 9, "completed_by": 9, "was_cancelled": True, "result": []})
        exported.append({"id": i + 1, "data": task["data"], "annotations": annotations})
    return exported


async def test_export_samples_stored_calls_and_import_brings_labels_back(
    running_gateway: RunningGateway, gateway_db_url: str, tmp_path: Path
) -> None:
    acme, globex = f"acme-{uuid.uuid4().hex[:6]}", f"globex-{uuid.uuid4().hex[:6]}"
    await _batch_calls(running_gateway, acme, 20)
    await _batch_calls(running_gateway, globex, 5)
    today = datetime.now(UTC).date()
    out = tmp_path / "export"
    result = _cli(
        "export", "--since", str(today), "--until", str(today + timedelta(days=1)), "--tenant", acme,
        "--share", "0.1", "--seed", "7", "--database-url", gateway_db_url, "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tasks = json.loads((out / "tasks.json").read_text())
    lines = [json.loads(x) for x in (out / "lines.jsonl").read_text().splitlines()]
    calls = {t["data"]["call_id"] for t in tasks}
    assert len(calls) == 2 and all(c.startswith(acme) for c in calls)  # 10 % of acme's 20, no globex
    assert [t["data"]["line_id"] for t in tasks] == [x["line_id"] for x in lines]
    assert tasks[0]["data"]["context"] == "(start of the call)" and ": " in tasks[1]["data"]["context"]
    config = ElementTree.fromstring((out / "label_config.xml").read_text())
    choices = {c.get("name"): [x.get("value") for x in c] for c in config.iter("Choices")}
    assert choices["label"] == ["negative", "neutral", "positive"] and len(choices["objection"]) == 5
    names = {e.get("name") for e in config.iter() if e.get("name")}
    assert {"text", "context", "label", "why", "objection"} <= names  # every $field of a task is shown

    export = tmp_path / "project-1-at-2026-11-20.json"
    export.write_text(json.dumps(_label_studio_export(tasks, {1: "ana@acme.example", 2: "ben@acme.example"})))
    labels = tmp_path / "labels.jsonl"
    result = _cli("import", str(export), "--out", str(labels))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(x) for x in labels.read_text().splitlines()]
    assert len(rows) == 2 * len(tasks) and {r["annotator"] for r in rows} == {
        "ana@acme.example",
        "ben@acme.example",
    }
    result = _cli("agreement", str(labels), "--min-alpha", "0.5")
    assert result.returncode == 0, result.stderr
    assert (
        "lines they differ on: 1" in result.stdout
        and "Cohen's kappa ana@acme.example / ben@acme.example" in result.stdout
    )


def test_import_reads_csv_and_refuses_bad_files_writing_nothing(tmp_path: Path) -> None:
    good = tmp_path / "ann-1.csv"
    with good.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["line_id", "label", "objection", "why"])
        writer.writeheader()
        writer.writerow({"line_id": "c:0", "label": "negative", "objection": "authority", "why": "CFO signs"})
        writer.writerow({"line_id": "c:1", "label": "neutral", "objection": "", "why": "logistics"})
    out = tmp_path / "labels.jsonl"
    assert _cli("import", str(good), "--out", str(out)).returncode == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert (first["annotator"], first["objection"]) == ("ann-1", "authority")

    out.unlink()
    bad = tmp_path / "ann-2.csv"
    bad.write_text("line_id,label\nc:0,furious\n")
    result = _cli("import", str(good), str(bad), "--out", str(out))
    assert result.returncode == 2 and "'furious' is not one of" in result.stderr and not out.exists()
    headless = tmp_path / "ann-3.csv"
    headless.write_text("id,sentiment\nc:0,negative\n")
    result = _cli("import", str(headless), "--out", str(out))
    assert result.returncode == 2 and "no label, line_id column" in result.stderr
    one = tmp_path / "only.jsonl"
    one.write_text(json.dumps({"line_id": "c:0", "label": "neutral", "annotator": "ana"}) + "\n")
    result = _cli("agreement", str(one))
    assert result.returncode == 2 and "two annotators" in result.stderr
