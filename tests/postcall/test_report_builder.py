"""Post-call work yields to the live path: reports are built a bounded number at a time, a report nobody
waits for any more is not built, and the worker's process runs below the live services' CPU priority with
NumPy's BLAS on one thread."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio
import pytest

from callsense.domain import UtteranceScore
from callsense.report import report_from_proto, utterance_to_proto
from callsense.v1 import postcall_pb2, postcall_pb2_grpc
from postcall.__main__ import parse_args
from postcall.objections import LocalObjectionTagger
from postcall.reports import ReportBuilder, ReportExpiredError
from postcall.server import PostCallServicer, add_postcall
from tools.ports import free_port

LINES = (
    ("agent", "The premium plan comes to five thousand a month for your team."),
    ("customer", "Honestly that's well over what we budgeted for this year."),
    ("customer", "I'd have to take it to our CFO before we go any further."),
)


def _call(call_id: str) -> list[UtteranceScore]:
    return [
        UtteranceScore(
            call_id=call_id,
            utterance_id=i,
            channel=channel,  # type: ignore[arg-type]
            start_ms=i * 4000,
            end_ms=i * 4000 + 3000,
            text=text,
            label="neutral",
            p_negative=0.3,
            p_neutral=0.5,
            p_positive=0.2,
            score=0.45,
            model_version="test-1",
        )
        for i, (channel, text) in enumerate(LINES)
    ]


class WatchedTagger:
    """The real local tagger, watched: how many calls it is tagging at once (at most), which calls it
    tagged, and, while ``gate`` is clear, every tagging waits for it."""

    def __init__(self) -> None:
        self.inner = LocalObjectionTagger()
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.tagged: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def tag(self, events: Sequence[UtteranceScore]) -> list:  # type: ignore[type-arg]
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.tagged.append(events[0].call_id)
        self.started.set()
        try:
            self.gate.wait(timeout=30)
            return self.inner.tag(events)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture(scope="module")
def tagger() -> WatchedTagger:
    return WatchedTagger()


async def test_reports_are_built_at_most_workers_at_once(tagger: WatchedTagger) -> None:
    tagger.most_at_once, tagger.tagged = 0, []
    builder = ReportBuilder(tagger, workers=2)  # type: ignore[arg-type]
    try:
        reports = await asyncio.gather(*(builder.build_async(_call(f"c{i}")) for i in range(6)))
    finally:
        builder.close()
    assert sorted(tagger.tagged) == [f"c{i}" for i in range(6)]
    assert tagger.most_at_once == 2
    assert all(report.tags for report in reports), "the budget line is a pricing objection in every call"
    # The same report as a direct build: the threads change when, never what.
    assert json.dumps(reports[0].to_json()) == json.dumps(
        ReportBuilder(tagger.inner).build(_call("c0")).to_json()
    )


async def test_a_report_past_its_deadline_is_not_built(tagger: WatchedTagger) -> None:
    tagger.tagged = []
    builder = ReportBuilder(tagger, workers=1)  # type: ignore[arg-type]
    try:
        with pytest.raises(ReportExpiredError):
            await builder.build_async(_call("late"), deadline=time.monotonic() - 0.001)
        await builder.build_async(_call("on-time"), deadline=time.monotonic() + 60)
    finally:
        builder.close()
    assert tagger.tagged == ["on-time"]


def test_workers_must_be_positive(tagger: WatchedTagger) -> None:
    with pytest.raises(ValueError, match="workers"):
        ReportBuilder(tagger, workers=0)  # type: ignore[arg-type]


@pytest.fixture
async def worker(tagger: WatchedTagger) -> AsyncIterator[str]:
    """The PostCall service on a builder with one thread, over real gRPC."""
    builder = ReportBuilder(tagger, workers=1)  # type: ignore[arg-type]
    server = grpc.aio.server()
    add_postcall(server, PostCallServicer(builder))
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    try:
        yield address
    finally:
        tagger.gate.set()
        await server.stop(grace=None)
        builder.close()


async def test_over_grpc_a_report_queued_past_its_deadline_is_skipped(
    worker: str, tagger: WatchedTagger
) -> None:
    tagger.tagged, tagger.started = [], threading.Event()
    tagger.gate.clear()
    async with grpc.aio.insecure_channel(worker) as channel:
        stub = postcall_pb2_grpc.PostCallStub(channel)

        def request(call_id: str) -> postcall_pb2.ReportRequest:
            return postcall_pb2.ReportRequest(
                call_id=call_id, utterances=map(utterance_to_proto, _call(call_id))
            )

        first = asyncio.ensure_future(stub.Report(request("first"), timeout=60))
        await asyncio.to_thread(tagger.started.wait, 30)  # the one thread is busy with "first"
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.Report(request("queued"), timeout=0.3)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        tagger.gate.set()
        assert report_from_proto(await first).tags
        after = await stub.Report(request("after"), timeout=60)  # queued behind whatever "queued" left
        assert report_from_proto(after).tags
    assert tagger.tagged == ["first", "after"], "the report nobody waited for was built anyway"


def test_the_worker_yields_the_cpu_and_keeps_blas_on_one_thread() -> None:
    probe = (
        "import os, json; from threadpoolctl import threadpool_info; "
        "from postcall.__main__ import yield_to_the_live_path; before = os.nice(0); "
        "yield_to_the_live_path(7); "
        "print(json.dumps([os.nice(0) - before, [p['num_threads'] for p in threadpool_info() "
        "if p['user_api'] == 'blas']]))"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    niceness, blas_threads = json.loads(out.stdout.strip().splitlines()[-1])
    assert niceness == 7
    assert blas_threads and set(blas_threads) == {1}


def test_the_worker_flags() -> None:
    args = parse_args([])
    assert args.report_workers == 1 and args.nice == 10
    assert parse_args(["--report-workers", "3", "--nice", "0"]).report_workers == 3
    for bad in (["--report-workers", "0"], ["--nice", "20"], ["--nice", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
