"""Post-call work yields to the live path: reports are built a bounded number at a time, with the caller's
context; the queue is bounded; a report nobody waits for any more is not built; the worker's process runs
below the live services' CPU priority (its session's autogroup too) with NumPy's BLAS on one thread."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import grpc
import grpc.aio
import pytest

from callsense.domain import UtteranceScore, compute_call_stats
from callsense.report import report_from_proto, utterance_to_proto
from callsense.telemetry import call_context, current_call_id
from callsense.v1 import postcall_pb2, postcall_pb2_grpc
from gateway.postcall_client import AfterCall
from postcall.__main__ import parse_args
from postcall.objections import LocalObjectionTagger
from postcall.reports import ReportBuilder, ReportQueueFullError
from postcall.server import PostCallServicer, add_postcall
from scorer_service.inference import SentimentModel
from tests.support.scored_lines import score_lines
from tools.ports import free_port

LINES = (
    ("agent", 0, "The premium plan comes to five thousand a month for your team."),
    ("customer", 4, "Honestly that's well over what we budgeted for this year."),
    ("customer", 8, "I'd have to take it to our CFO before we go any further."),
)


@functools.cache
def _scored() -> tuple[UtteranceScore, ...]:
    """LINES with the shipped sentiment model's scores, as the gateway stores them (scored once)."""
    return tuple(score_lines(SentimentModel.load(), LINES, call_id="scored", utterance_ms=3000))


def _call(call_id: str) -> list[UtteranceScore]:
    return [replace(event, call_id=call_id) for event in _scored()]


class WatchedTagger:
    """The real local tagger, watched: how many calls it is tagging at once (at most), which calls it
    tagged and under which call id of the telemetry context, and, while ``gate`` is clear, every tagging
    waits for it."""

    def __init__(self) -> None:
        self.inner = LocalObjectionTagger()
        self.gate = threading.Event()
        self.gate.set()
        self.tagged: list[str] = []
        self.context_call_ids: list[str | None] = []
        self.running = 0
        self.most_at_once = 0
        self._changed = threading.Condition()

    def reset(self) -> None:
        self.tagged, self.context_call_ids, self.most_at_once = [], [], 0

    def wait_running(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.running >= count, timeout=30), self.running

    def tag(self, events: Sequence[UtteranceScore]) -> list:  # type: ignore[type-arg]
        with self._changed:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.tagged.append(events[0].call_id)
            self.context_call_ids.append(current_call_id())
            self._changed.notify_all()
        try:
            self.gate.wait(timeout=30)
            return self.inner.tag(events)
        finally:
            with self._changed:
                self.running -= 1
                self._changed.notify_all()


@pytest.fixture(scope="module")
def tagger() -> WatchedTagger:
    return WatchedTagger()


async def test_reports_are_built_at_most_workers_at_once(tagger: WatchedTagger) -> None:
    tagger.reset()
    tagger.gate.clear()
    builder = ReportBuilder(tagger, workers=2)  # type: ignore[arg-type]
    try:
        jobs = [asyncio.ensure_future(builder.build_async(_call(f"c{i}"))) for i in range(6)]
        await asyncio.to_thread(tagger.wait_running, 2)  # both threads held at the gate
        assert tagger.running == 2 and builder.waiting == 6
        tagger.gate.set()
        reports = await asyncio.gather(*jobs)
    finally:
        tagger.gate.set()
        builder.close()
    assert sorted(tagger.tagged) == [f"c{i}" for i in range(6)]
    assert tagger.most_at_once == 2 and builder.waiting == 0
    assert all(report.tags for report in reports), "the budget line is a pricing objection in every call"
    # The same report as a direct build: the threads change when, never what.
    direct = ReportBuilder(tagger.inner).build(_call("c0"))
    assert json.dumps(reports[0].to_json()) == json.dumps(direct.to_json())


async def test_a_full_queue_refuses_at_once_and_a_cancelled_report_is_not_built(
    tagger: WatchedTagger,
) -> None:
    tagger.reset()
    tagger.gate.clear()
    builder = ReportBuilder(tagger, workers=1, max_waiting=3)  # type: ignore[arg-type]
    try:
        first = asyncio.ensure_future(builder.build_async(_call("first")))
        await asyncio.to_thread(tagger.wait_running, 1)
        abandoned = asyncio.ensure_future(builder.build_async(_call("abandoned")))
        kept = asyncio.ensure_future(builder.build_async(_call("kept")))
        await asyncio.sleep(0)  # let both reach the queue
        assert builder.waiting == 3
        with pytest.raises(ReportQueueFullError):
            await builder.build_async(_call("refused"))
        abandoned.cancel()  # its caller stopped waiting (a gRPC deadline cancels the handler so)
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        tagger.gate.set()
        await asyncio.gather(first, kept)
    finally:
        tagger.gate.set()
        builder.close()
    assert tagger.tagged == ["first", "kept"]


async def test_a_report_keeps_the_callers_call_id(tagger: WatchedTagger) -> None:
    tagger.reset()
    builder = ReportBuilder(tagger)  # type: ignore[arg-type]
    try:
        with call_context("ctx-call"):
            await builder.build_async(_call("ctx-call"))
    finally:
        builder.close()
    assert tagger.context_call_ids == ["ctx-call"]


def test_workers_and_queue_must_make_sense(tagger: WatchedTagger) -> None:
    for workers, waiting in ((0, 4), (3, 2)):
        with pytest.raises(ValueError, match="workers"):
            ReportBuilder(tagger, workers=workers, max_waiting=waiting)  # type: ignore[arg-type]


@pytest.fixture
async def worker(tagger: WatchedTagger) -> AsyncIterator[str]:
    """The PostCall service on a builder with one thread and room for two reports, over real gRPC."""
    builder = ReportBuilder(tagger, workers=1, max_waiting=2)  # type: ignore[arg-type]
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


async def test_over_grpc_a_busy_worker_refuses_and_a_report_nobody_waits_for_is_not_built(
    worker: str, tagger: WatchedTagger
) -> None:
    tagger.reset()
    tagger.gate.clear()
    async with grpc.aio.insecure_channel(worker) as channel:
        stub = postcall_pb2_grpc.PostCallStub(channel)

        def request(call_id: str) -> postcall_pb2.ReportRequest:
            return postcall_pb2.ReportRequest(
                call_id=call_id, utterances=map(utterance_to_proto, _call(call_id))
            )

        first = asyncio.ensure_future(stub.Report(request("first"), timeout=60))
        await asyncio.to_thread(tagger.wait_running, 1)  # the one thread is busy with "first"
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.Report(request("late"), timeout=0.3)  # queued, then its caller gives up
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        queued = asyncio.ensure_future(stub.Report(request("queued"), timeout=60))
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # "first" and "queued" fill the two places
            await stub.Report(request("refused"), timeout=60)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "busy" in (refused.value.details() or "")
        # The gateway's side: the call ends with its report owed, and its clients hear the worker is busy.
        events = _call("refused-by-the-gateway")
        after_call = AfterCall(worker)
        try:
            owed = await after_call.report(events, compute_call_stats(events))
        finally:
            await after_call.close()
        assert owed.pending and owed.worker_busy
        tagger.gate.set()
        assert report_from_proto(await first).tags and report_from_proto(await queued).tags
    assert tagger.tagged == ["first", "queued"], "a report nobody waited for, or one refused, was built"


def test_the_worker_yields_the_cpu_and_keeps_blas_on_one_thread() -> None:
    # In a session of its own, as `callsense up` starts it: where the kernel has autogroups, the group's
    # nice value is what ranks the worker against the live services' sessions.
    probe = (
        "import os, json, pathlib; from threadpoolctl import threadpool_info; "
        "from postcall.__main__ import yield_to_the_live_path; before = os.nice(0); "
        "grouped = yield_to_the_live_path(7); group = pathlib.Path('/proc/self/autogroup'); "
        "print(json.dumps([os.nice(0) - before, group.read_text() if grouped else None, "
        "[p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']]))"
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        start_new_session=True,
    )
    niceness, autogroup, blas_threads = json.loads(out.stdout.strip().splitlines()[-1])
    assert niceness == 7
    assert autogroup is None or autogroup.strip().endswith("nice 7"), autogroup  # None: no autogroup here
    assert blas_threads and set(blas_threads) == {1}


def test_the_worker_flags() -> None:
    args = parse_args([])
    assert (args.report_workers, args.max_waiting_reports, args.nice) == (1, 64, 10)
    assert parse_args(["--report-workers", "3", "--nice", "0"]).report_workers == 3
    bad_flags = (["--report-workers", "0"], ["--report-workers", "9", "--max-waiting-reports", "8"])
    for bad in (*bad_flags, ["--nice", "20"], ["--nice", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
