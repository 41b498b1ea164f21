"""The labelling round trip through a real Label Studio server, as a user does it: the project's tasks and
labelling config imported over the REST API, two annotators labelling with their own tokens, the standard
JSON export read back by `callsense labels import`, and `callsense labels agreement` on the result.

Label Studio lives in its own virtualenv (.venv-labelstudio/, made by ./dev.sh test): its pins clash with
ours. Without it the test is skipped, saying so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools.ports import free_port
from training.labelling import LABEL_STUDIO_CONFIG, SampledLine, label_studio_tasks

pytestmark = [pytest.mark.slow]  # a Label Studio server (Django, SQLite) in a child process

ROOT = Path(__file__).resolve().parents[2]
LS_VENV = ROOT / ".venv-labelstudio"
LABEL_STUDIO = LS_VENV / "bin" / "label-studio"
READY_S = 240  # first start: Django migrations of a fresh SQLite database

# Who labels: e-mail, password, API token (a legacy token: `Authorization: Token ...`).
ANA = ("ana@acme.example", "ana-Secret-42", "ana0token0for0the0test0000000000000000000")
BEN = ("ben@acme.example", "ben-Secret-42", "ben0token0for0the0test0000000000000000000")

# Two calls as the gateway stores them (masked): a buyer and a rep, politely.
CALLS = [
    ("acme-call-01", "rep", "Thanks for making the time, I've put the proposal on screen."),
    ("acme-call-01", "customer", "That's a bit more than we'd pencilled in, to be honest."),
    ("acme-call-01", "customer", "Let me run it past Maria, she owns the budget."),
    ("acme-call-01", "customer", "We're also looking at what [ORG] offers, just so you know."),
    ("acme-call-02", "rep", "So the pilot would start in the first week of the month."),
    ("acme-call-02", "customer", "Great, send the contract over."),
    ("acme-call-02", "customer", "Could we push the start to after the quarter closes?"),
    ("acme-call-02", "customer", "Honestly, this is exactly what the team has been asking for."),
]
# (label, objection, why) per line and annotator; they differ on line 6 (the timeline question) only.
ANA_LABELS = [
    ("neutral", None, "rep sets up the call"),
    ("negative", "pricing pushback", "price above their budget"),
    ("negative", "authority", "someone else signs"),
    ("negative", "competitor mention", "comparing with another vendor"),
    ("neutral", None, "rep logistics"),
    ("positive", None, "ready to sign"),
    ("negative", "timeline concern", "wants a later start"),
    ("positive", None, "enthusiastic"),
]
BEN_LABELS = [
    *ANA_LABELS[:6],
    ("neutral", None, "just scheduling"),
    ANA_LABELS[7],
]


def _lines() -> list[SampledLine]:
    return [
        SampledLine(f"{call}:{n}", call, "acme", "east", speaker, n * 4000, n * 4000 + 3000, text)
        for n, (call, speaker, text) in enumerate(CALLS)
    ]


def _result(label: str, objection: str | None, why: str) -> list[dict[str, Any]]:
    """An annotation's result as the labelling UI submits it for LABEL_STUDIO_CONFIG."""
    items: list[dict[str, Any]] = [
        {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}},
        {"from_name": "why", "to_name": "text", "type": "textarea", "value": {"text": [why]}},
    ]
    if objection:
        value = {"choices": [objection]}
        items.append({"from_name": "objection", "to_name": "text", "type": "choices", "value": value})
    return items


@dataclass
class Server:
    url: str
    log: Path

    def call(self, token: str, method: str, path: str, body: Any = None) -> Any:
        """One REST call as the token's user; the decoded JSON answer (raw bytes when it is not JSON)."""
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            answer = exc.read().decode(errors="replace")
            raise AssertionError(f"{method} {path}: {exc.code} {answer}") from None
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return raw


def _label_studio(data_dir: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "COLLECT_ANALYTICS": "false",  # no calls home from the test
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
    }
    for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        env.pop(name, None)
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(LABEL_STUDIO), *args, "--data-dir", str(data_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=data_dir,
            start_new_session=True,
        )


def _add_user(data_dir: Path, email: str, password: str, token: str, log: Path) -> None:
    """`label-studio init` with a user: the first becomes the organisation's owner (legacy tokens on), the
    next joins it; each gets the given API token."""
    process = _label_studio(
        data_dir,
        "init",
        "--username", email, "--password", password, "--user-token", token, "--enable-legacy-api-token",
        log=log,
    )  # fmt: skip
    assert process.wait(timeout=READY_S) == 0, f"label-studio init {email} failed:\n{log.read_text()[-3000:]}"


@pytest.fixture
def label_studio(tmp_path: Path) -> Iterator[Server]:
    if not LABEL_STUDIO.exists():
        missing = f"no Label Studio at {LABEL_STUDIO}: run ./dev.sh test once (it makes {LS_VENV.name}/)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing}; on CI the set-up must have made it")
        pytest.skip(missing)
    data_dir = tmp_path / "label-studio"
    data_dir.mkdir()
    log = tmp_path / "label-studio.log"
    for email, password, token in (ANA, BEN):
        _add_user(data_dir, email, password, token, log)
    port = free_port()
    process = _label_studio(
        data_dir, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port), log=log
    )
    server = Server(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + READY_S
        while True:
            assert process.poll() is None, f"Label Studio exited:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(server.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            up_in_time = time.monotonic() < deadline
            assert up_in_time, f"Label Studio not up in {READY_S} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield server
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=20)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "labels", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_label_studio_round_trip_two_annotators(label_studio: Server, tmp_path: Path) -> None:
    ls = label_studio
    token = {ANA[0]: ANA[2], BEN[0]: BEN[2]}
    user_id = {email: ls.call(token[email], "GET", "/api/current-user/whoami")["id"] for email in token}
    assert user_id[ANA[0]] != user_id[BEN[0]]

    # The project: Label Studio validates the labelling config on creation (a 400 with the reason if not).
    project = ls.call(
        ANA[2], "POST", "/api/projects", {"title": "acme east, week 45", "label_config": LABEL_STUDIO_CONFIG}
    )
    validated = ls.call(ANA[2], "POST", "/api/projects/validate/", {"label_config": LABEL_STUDIO_CONFIG})
    assert validated is None or not validated.get("validation_errors"), validated
    broken = LABEL_STUDIO_CONFIG.replace('toName="text"', 'toName="txt"', 1)
    with pytest.raises(AssertionError, match="400"):  # so the validation above is a real one
        ls.call(ANA[2], "POST", "/api/projects/validate/", {"label_config": broken})

    tasks = label_studio_tasks(_lines())
    imported = ls.call(ANA[2], "POST", f"/api/projects/{project['id']}/import", tasks)
    assert imported["task_count"] == len(tasks), imported
    stored = ls.call(ANA[2], "GET", f"/api/projects/{project['id']}/tasks/?page_size=-1")
    by_line = {t["data"]["line_id"]: t["id"] for t in stored}
    assert sorted(by_line) == sorted(t["data"]["line_id"] for t in tasks)

    for (email, _, own_token), labels in ((ANA, ANA_LABELS), (BEN, BEN_LABELS)):
        for task, (label, objection, why) in zip(tasks, labels, strict=True):
            made = ls.call(
                own_token,
                "POST",
                f"/api/tasks/{by_line[task['data']['line_id']]}/annotations/",
                {"result": _result(label, objection, why), "was_cancelled": False},
            )
            assert made["completed_by"] == user_id[email], made

    exported = ls.call(ANA[2], "GET", f"/api/projects/{project['id']}/export?exportType=JSON")
    export = tmp_path / f"project-{project['id']}-export.json"
    export.write_bytes(exported if isinstance(exported, bytes) else json.dumps(exported).encode())

    labels = tmp_path / "labels.jsonl"
    result = _cli("import", str(export), "--out", str(labels))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(x) for x in labels.read_text().splitlines()]
    assert len(rows) == 2 * len(tasks)
    # Label Studio's standard JSON export names the annotator by user id (completed_by: 1), not e-mail.
    annotator = {str(user_id[ANA[0]]): ANA_LABELS, str(user_id[BEN[0]]): BEN_LABELS}
    assert {r["annotator"] for r in rows} == set(annotator)
    line_of = {t["data"]["line_id"]: n for n, t in enumerate(tasks)}
    for row in rows:
        label, objection, why = annotator[row["annotator"]][line_of[row["line_id"]]]
        assert (row["label"], row["objection"], row["why"]) == (label, objection, why), row

    result = _cli("agreement", str(labels), "--min-alpha", "0.5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lines they differ on: 1" in result.stdout, result.stdout
    assert f"Cohen's kappa {min(annotator)} / {max(annotator)}" in result.stdout, result.stdout
