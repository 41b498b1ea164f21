"""`callsense retrain`: bad input exits 2 before anything is trained; and end to end, a tenant's stored calls
exported for labelling, labelled by two annotators, imported and adjudicated, retrained on a small budget
from the registry's current version (a small model made here, with its checkpoint), gated, promoted and
picked up by a running scorer without a failed request; then a candidate made worse on purpose (every
training label shuffled) refused, the report naming the set and the check that failed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from callsense import telemetry
from callsense.domain import UtteranceScore
from callsense.model_registry import ModelRegistry
from callsense.v1 import chopper_pb2, scorer_pb2, scorer_pb2_grpc
from gateway.store import Store
from tests.support.model_versions import shipped_version
from tools.cli import main as callsense
from tools.ports import free_port
from tools.retrain_cli import OUTCOME_METRIC

ROOT = Path(__file__).resolve().parents[2]
SALES = ROOT / "data" / "sales"
SMALL_VERSION = "2026.12.01-small"
WHY = {
    "negative": "pushes back on the deal",
    "neutral": "logistics, no stance",
    "positive": "keen on the offer",
}

# ------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def own_labels(tmp_path: Path) -> Path:
    """Labels in the project's label format, two calls: enough to split."""
    rows = [
        {
            "text": "That sounds fantastic, let's sign the contract today.",
            "label": "positive",
            "call_id": "c1",
        },
        {"text": "Honestly that's more than we'd budgeted for.", "label": "negative", "call_id": "c2"},
    ]
    path = tmp_path / "own.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def retrain_args(tmp_path: Path, labels: Path, *extra: str) -> list[str]:
    return ["retrain", "--labels", str(labels), "--registry", str(tmp_path / "registry"),
            "--work", str(tmp_path / "work"), *extra]  # fmt: skip


def test_labels_without_their_lines_exit_2_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped_version()
    imported = tmp_path / "labels.jsonl"  # `callsense labels import`'s output: no text
    imported.write_text(json.dumps({"line_id": "c1:0", "annotator": "ana", "label": "positive"}) + "\n")
    # Sets that are in the repository (meld:dev, a default gate set, is not where ../shared is absent).
    sets = ["--base-sets", str(imported), "--gate-sets", "sales:test"]
    assert callsense(retrain_args(tmp_path, imported, *sets)) == 2
    assert "give the lines.jsonl that `callsense labels export` wrote" in capsys.readouterr().err
    assert not (tmp_path / "work").exists() and not (tmp_path / "registry").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--base-sets", "sales:test"], "sales:test cannot be a training set"),
        (["--base-sets", "sales:dev", "--gate-sets", "sales:dev"], "sales:dev cannot be a training set"),
        (["--base-sets", "nowhere.jsonl"], "nowhere.jsonl: not found"),
        (["--held-out-share", "1.5"], "--held-out-share must be between 0 and 1"),
        (["--max-drop", "-1"], "0 or more"),
        (["--init", "."], "not a Hugging Face checkpoint"),
    ],
    ids=["test-split", "gate-set", "missing-set", "share", "limit", "init"],
)
def test_bad_options_exit_2_saying_what_to_fix(
    tmp_path: Path, own_labels: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    shipped_version()
    base = [] if "--base-sets" in extra else ["--base-sets", str(own_labels)]
    assert callsense(retrain_args(tmp_path, own_labels, *base, "--gate-sets", "sales:test", *extra)) == 2
    assert message in capsys.readouterr().err


def test_one_call_is_too_few_to_hold_one_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shipped_version()
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "Sounds good.", "label": "positive", "call_id": "c1"}) + "\n")
    assert callsense(retrain_args(tmp_path, one, "--base-sets", str(one), "--gate-sets", "sales:test")) == 2
    assert "a retrain needs two at least" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ end to end


def sales_calls(count: int) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The first ``count`` calls of the sales corpus's train split (never its test split: the gate's), as
    (call, [(speaker, text, gold label)]): polite buyers, reps, prices, objections. From the corpus's
    first two batches (writers w1-w10), so that a batch added later does not change this tenant's calls:
    the budgets and limits below were sized on them (batch 3's calls, which sort among them, gave a
    two-layer candidate an INT8 loss of 8.6 points on 116 held-out lines)."""
    first_batches = {f"w{n}" for n in range(1, 11)}
    gold = {
        row["line_id"]: row["label"]
        for row in map(json.loads, (SALES / "gold.jsonl").read_text(encoding="utf-8").splitlines())
    }
    calls: dict[str, list[tuple[str, str, str]]] = {}
    for line in map(json.loads, (SALES / "lines.jsonl").read_text(encoding="utf-8").splitlines()):
        if (
            line["split"] == "train"
            and gold.get(line["line_id"])
            and line["call_id"].split("-")[0] in first_batches
        ):
            calls.setdefault(line["call_id"], []).append(
                (line["speaker"], line["text"], gold[line["line_id"]])
            )
    return list(calls.items())[:count]


async def store_calls(url: str, tenant: str, day: datetime, calls: list[tuple[str, list[Any]]]) -> None:
    """The calls as the gateway stores them: started, scored (any score: labels ignore it), ended."""
    store = await Store.open(url, min_size=1, max_size=2)
    try:
        for n, (call, said) in enumerate(calls):
            call_id = f"{tenant}-{call}"
            meta = {"tenant": tenant, "team": "east", "agent": "sam"}
            await store.upsert_call_start(call_id, meta, started_at=day + timedelta(minutes=5 * n))
            await store.record_scores(
                [
                    UtteranceScore(
                        call_id,
                        i,
                        speaker,
                        i * 4000,
                        i * 4000 + 3500,
                        text,
                        "neutral",
                        0.2,
                        0.6,
                        0.2,
                        0.5,
                        "stored",
                    )  # fmt: skip
                    for i, (speaker, text, _) in enumerate(said)
                ]
            )
            await store.end_call(call_id)
    finally:
        await store.close()


def annotate(exported: Path, truth: dict[str, str], out: Path, annotator: str, every: int = 0) -> Path:
    """One annotator's answers to the exported lines: the truth, except every ``every``-th line, which they
    hear as neutral (or, for a neutral line, as positive)."""
    rows = []
    for n, line in enumerate(map(json.loads, exported.read_text(encoding="utf-8").splitlines())):
        label = truth[line["line_id"]]
        if every and n % every == every - 1:
            label = "positive" if label == "neutral" else "neutral"
        rows.append({"line_id": line["line_id"], "label": label, "objection": None, "why": WHY[label]})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def small_registry(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A registry whose current version is a small model (MiniLM cut to two layers, a few steps on MELD
    train), exported as `callsense export` does (uncalibrated: less to do) and added with its checkpoint:
    the served model a retrain starts from."""
    from training.evaluate import render_markdown
    from training.ship import ShipConfig, ship
    from training.train import TrainConfig, Trainer

    work = tmp_path_factory.mktemp("small")
    run = TrainConfig(output=str(work / "run"), train=["meld:train"], dev=["meld:dev"], layers=2,
                      max_steps=4, learning_rate=5e-5)  # fmt: skip
    Trainer(run).run()
    shipped = work / "ship"
    # A model this barely trained loses more than 0.5 points to INT8, and it is only the stand-in to beat.
    config = ShipConfig(
        work / "run" / "best",
        shipped,
        work / "onnx",
        report_sets=["meld:dev"],
        max_f1_drop=100,
        calibrate=False,
    )
    card = ship(config)
    card["version"] = SMALL_VERSION
    (shipped / "model_card.json").write_text(json.dumps(card))
    (shipped / "MODEL_CARD.md").write_text(render_markdown(card))
    registry = ModelRegistry(work / "registry")
    registry.add(shipped, checkpoint=work / "run" / "best")
    registry.promote(SMALL_VERSION)
    return registry.root


@dataclass
class Requests:
    """ScoreBatch requests to a scorer, one every 50 ms on a thread of their own, until stopped."""

    address: str
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = scorer_pb2_grpc.ScorerStub(channel)
            n = 0
            while not self.stopping.is_set():
                text = ("That works for us.", "That's more than we'd pencilled in.")[n % 2]
                utterance = chopper_pb2.Utterance(call_id="retrain-e2e", utterance_id=n, text=text)
                try:
                    reply = stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(utterances=[utterance]), timeout=30)
                    self.versions.append(reply.scores[0].model_version)
                except grpc.RpcError as exc:
                    self.failures.append(repr(exc))
                n += 1
                self.stopping.wait(0.05)

    def wait_for(self, version: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and version not in self.versions[-3:]:
            time.sleep(0.1)
        assert version in self.versions, f"the scorer never served {version}: {self.versions[-3:]}"

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)


@contextlib.contextmanager
def scorer_following(registry: Path, log: Path) -> Iterator[str]:
    """`python -m scorer_service` following ``registry``; yields its address once it serves."""
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    command = [sys.executable, "-m", "scorer_service", "--bind", address, "--max-wait-ms", "2"]
    command += ["--registry", str(registry), "--registry-poll-s", "0.2"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=120)
        yield address
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, log.read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()


def outcomes_counted() -> dict[str, int]:
    """callsense.retrain.outcomes by outcome, as this process's metric reader holds them."""
    instance = telemetry.get_telemetry()
    assert instance is not None
    data: Any = instance.metric_reader.get_metrics_data()  # the SDK's unions: a counter has sums only
    counts: dict[str, int] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == OUTCOME_METRIC:
                    for point in metric.data.data_points:
                        counts[str(point.attributes["outcome"])] = int(point.value)
    return counts


@pytest.mark.slow
def test_labelled_calls_to_a_promoted_model_and_a_worse_one_refused(
    small_registry: Path, fresh_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tenant's calls are stored, a sample (here all of them) exported for labelling.
    tenant = "acme"  # a database of this test's own; the held-out calls (8 of 40) follow from the call ids
    calls = sales_calls(40)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    asyncio.run(store_calls(fresh_db_url, tenant, today, calls))
    exported = tmp_path / "labelling"
    assert callsense(["labels", "export", "--since", today.date().isoformat(),
                      "--until", (today + timedelta(days=1)).date().isoformat(), "--tenant", tenant,
                      "--share", "1", "--seed", "1", "--database-url", fresh_db_url,
                      "--out", str(exported)]) == 0  # fmt: skip
    lines = exported / "lines.jsonl"
    truth = {f"{tenant}-{call}:{i}": label for call, said in calls for i, (_, _, label) in enumerate(said)}
    assert len(lines.read_text().splitlines()) == len(truth)

    # Two annotators label them, agreeing on all but one line in 17; imported and adjudicated.
    ana = annotate(lines, truth, tmp_path / "ana.jsonl", "ana")
    ben = annotate(lines, truth, tmp_path / "ben.jsonl", "ben", every=17)
    imported, gold = tmp_path / "labels.jsonl", tmp_path / "gold.jsonl"
    assert callsense(["labels", "import", str(ana), str(ben), "--out", str(imported)]) == 0
    assert callsense(["labels", "adjudicate", str(imported), "--out", str(gold)]) == 1  # some undecided
    capsys.readouterr()

    # The retrain, while a scorer follows the registry and answers requests.
    registry = ModelRegistry(small_registry)
    common = ["--labels", str(gold), "--lines", str(lines), "--registry", str(small_registry)]
    # A small budget, so a higher learning rate than the recipe's and the tenant's lines weighed more. The
    # INT8 limit is wider than the rule's 0.5 (tests/training/test_gate.py checks that one): a two-layer
    # model's INT8 moves macro-F1 a point or two either way on these sets (MELD dev: +1.3 once).
    budget = ["--budget-steps", "60", "--learning-rate", "2e-4", "--labels-repeat", "10"]
    budget += ["--max-int8-loss", "3"]
    with scorer_following(small_registry, tmp_path / "scorer.log") as address:
        requests = Requests(address)
        requests.wait_for(SMALL_VERSION)
        code = callsense(["retrain", *common, *budget, "--work", str(tmp_path / "run1"),
                          "--report", str(tmp_path / "reports" / "good.json")])  # fmt: skip
        report = json.loads((tmp_path / "run1" / "retrain_report.json").read_text())
        assert code == 0, json.dumps(report["gate"], indent=1)
        candidate = report["candidate"]["version"]
        assert registry.current().version == candidate != SMALL_VERSION
        requests.wait_for(candidate)
        requests.stop()
    assert requests.failures == []
    switch = requests.versions.index(candidate)
    assert requests.versions == [SMALL_VERSION] * switch + [candidate] * (len(requests.versions) - switch)

    assert report["outcome"] == "promoted" and report["current"]["version"] == SMALL_VERSION
    assert report["training"]["init_kind"] == "registry checkpoint" and report["training"]["steps"] == 60
    labels = report["labels"]
    assert labels["kind"] == "adjudicated" and labels["undecided_left_out"] > 0
    assert labels["train_lines"] + labels["held_out_lines"] == labels["lines"] > 300
    gate = {s["name"]: s for s in report["gate"]["sets"]}
    assert list(gate) == ["held-out labels", "sales:test", "meld:dev"]
    assert all(
        s["passed"] and s["delta_points"] >= -0.5 and s["int8_loss_points"] <= 3 for s in gate.values()
    )
    assert gate["held-out labels"]["n"] == labels["held_out_lines"]
    # The held-out calls were never trained on.
    trained = {
        json.loads(x)["call_id"] for x in (tmp_path / "run1" / "labels.train.jsonl").read_text().splitlines()
    }
    assert trained and not trained & set(labels["held_out_calls"])
    assert (tmp_path / "reports" / "good.json").is_file()
    markdown = (tmp_path / "reports" / "good.md").read_text()
    assert f"**Promoted**: {candidate} is now served (was {SMALL_VERSION})" in markdown
    promoted = registry.get(candidate)
    assert promoted.checkpoint_dir is not None  # the next retrain continues from it

    # A candidate made worse on purpose: every training label shuffled. Refused; the registry untouched.
    code = callsense(["retrain", *common, "--work", str(tmp_path / "run2"), "--budget-steps", "20",
                      "--learning-rate", "3e-4", "--shuffle-labels"])  # fmt: skip
    bad = json.loads((tmp_path / "run2" / "retrain_report.json").read_text())
    assert code == 3, json.dumps(bad["gate"], indent=1)
    assert bad["outcome"] == "refused" and bad["current"]["version"] == candidate
    assert registry.current().version == candidate
    assert bad["candidate"]["version"] not in {v.version for v in registry.versions()}
    failed = [s for s in bad["gate"]["sets"] if not s["passed"]]
    assert failed and any("drops" in reason for s in failed for reason in s["reasons"])
    assert bad["gate"]["reasons"] == [reason for s in bad["gate"]["sets"] for reason in s["reasons"]]
    refused_md = (tmp_path / "run2" / "retrain_report.md").read_text()
    assert f"**Refused**: {candidate} stays served." in refused_md and "FAIL" in refused_md
    assert failed[0]["reasons"][0] in refused_md
    assert "--shuffle-labels" in " ".join(bad["notes"])
    # The recipe went through the retrained model's card: the same base sets, this run's tenant labels.
    assert bad["training"]["base_sets"] == ["meld:train"] == report["training"]["base_sets"]

    counted = outcomes_counted()
    assert counted.get("promoted", 0) >= 1 and counted.get("refused", 0) >= 1
