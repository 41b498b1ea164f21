"""The monthly retrain run by the post-call worker (postcall/retrain_schedule.py, ``--retrain-schedule``).

A fake clock decides what is due; the commands are real subprocesses (tiny Python one-liners standing in
for ``callsense retrain``), and a test knows one is running because it opens a FIFO that the child opens
for reading: no sleeps, no polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, time, timedelta, timezone
from pathlib import Path
from typing import IO

import pytest

from callsense.config import load_config
from postcall.__main__ import parse_args, retrain_scheduler
from postcall.retrain_schedule import (
    STATE_FILE,
    MonthlySchedule,
    RetrainRunner,
    RetrainScheduler,
    last_run_at,
    retrain_command,
)


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _exits(code: int) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.exit({code})"]


def _waits_on(fifo: Path, code: int = 0) -> list[str]:
    """A command that runs until the test writes to (and closes) ``fifo``, then exits ``code``."""
    return [sys.executable, "-c", f"import sys; open(sys.argv[1]).read(); sys.exit({code})", str(fifo)]


@asynccontextmanager
async def _running(fifo: Path) -> AsyncIterator[IO[str]]:
    """Returns once the child has opened ``fifo`` (it is running); the child ends when the block exits."""
    try:
        async with asyncio.timeout(30):
            # Opening a FIFO for writing blocks until a reader opens it: the child's open() is the event.
            writer = await asyncio.to_thread(open, fifo, "w")
    except TimeoutError:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # frees the thread still blocked in open()
        raise
    with writer:
        yield writer


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "go"
    os.mkfifo(path)
    return path


def _state(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data


# --- the schedule --------------------------------------------------------------------------------------


def test_next_run_rolls_over_months_and_years() -> None:
    schedule = MonthlySchedule(time(3, 0))
    assert schedule.next_run(_utc(2025, 1, 15, 12)) == _utc(2025, 2, 1, 3)
    assert schedule.next_run(_utc(2025, 12, 20)) == _utc(2026, 1, 1, 3)
    assert schedule.next_run(_utc(2025, 12, 1, 3, 0, 1)) == _utc(2026, 1, 1, 3)
    assert schedule.next_run(_utc(2025, 2, 1, 2, 59, 59)) == _utc(2025, 2, 1, 3)
    # Exactly at the run time: this month's run is due, the next one is next month's.
    assert schedule.due(_utc(2025, 2, 1, 3)) == _utc(2025, 2, 1, 3)
    assert schedule.next_run(_utc(2025, 2, 1, 3)) == _utc(2025, 3, 1, 3)
    assert schedule.due(_utc(2025, 2, 1, 2, 59, 59)) is None
    assert schedule.due(_utc(2025, 2, 28, 23, 59)) == _utc(2025, 2, 1, 3)
    # A clock in another zone is read as the UTC instant it is: 03:30 in Paris on the 1st is 02:30 UTC.
    paris = timezone(timedelta(hours=1))
    assert schedule.due(datetime(2025, 2, 1, 3, 30, tzinfo=paris)) is None
    assert schedule.next_run(datetime(2025, 2, 1, 3, 30, tzinfo=paris)) == _utc(2025, 2, 1, 3)
    assert schedule.due(datetime(2025, 2, 1, 4, 0, tzinfo=paris)) == _utc(2025, 2, 1, 3)
    # Midnight: the month's first instant.
    assert MonthlySchedule(time(0, 0)).due(_utc(2025, 3, 1)) == _utc(2025, 3, 1)
    assert MonthlySchedule(time(0, 0)).next_run(_utc(2025, 2, 28, 23, 59, 59)) == _utc(2025, 3, 1)


# --- running it ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "outcome", "level"),
    [
        (0, "passed", logging.INFO),
        (3, "refused", logging.WARNING),
        (2, "bad_input", logging.ERROR),
        (1, "failed", logging.ERROR),
        (-9, "failed", logging.ERROR),  # killed by a signal
    ],
)
async def test_the_exit_code_of_a_real_subprocess_is_the_outcome(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, code: int, outcome: str, level: int
) -> None:
    argv = _exits(code) if code >= 0 else [sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"]
    state = tmp_path / "data" / STATE_FILE
    runner = RetrainRunner(argv, state, clock=FakeClock(_utc(2025, 2, 1, 3)))
    with caplog.at_level(logging.INFO, logger="postcall.retrain_schedule"):
        run = await runner.run()
    assert run is not None and (run.exit_code, run.outcome) == (code, outcome)
    assert run.started_at == _utc(2025, 2, 1, 3)
    assert _state(state) == {
        "last_run_at": "2025-02-01T03:00:00+00:00",
        "exit_code": code,
        "outcome": outcome,
    }
    (record,) = [r for r in caplog.records if r.getMessage().startswith(f"retrain {outcome}")]
    assert record.levelno == level


async def test_a_command_that_cannot_start_is_a_failed_run(tmp_path: Path) -> None:
    runner = RetrainRunner([str(tmp_path / "no-such-command")], tmp_path / STATE_FILE)
    run = await runner.run()
    assert run is not None and (run.exit_code, run.outcome) == (None, "failed")
    assert _state(tmp_path / STATE_FILE)["outcome"] == "failed"


async def test_a_restart_in_the_same_month_does_not_run_it_again(tmp_path: Path) -> None:
    state = tmp_path / STATE_FILE
    clock = FakeClock(_utc(2025, 2, 1, 3))
    first = RetrainScheduler(RetrainRunner(_exits(3), state, clock=clock), clock=clock)
    run = await first.run_due()
    assert run is not None and run.outcome == "refused"
    assert await first.run_due() is None  # the same worker, later the same day

    clock.now = _utc(2025, 2, 27, 23, 59)
    restarted = RetrainScheduler(RetrainRunner(_exits(0), state, clock=clock), clock=clock)
    assert await restarted.run_due() is None  # a refused (or failed) run is not retried within the month
    assert _state(state)["outcome"] == "refused"

    clock.now = _utc(2025, 3, 1, 2, 59)
    assert await restarted.run_due() is None  # March's run is not due yet
    clock.now = _utc(2025, 3, 1, 3)
    run = await restarted.run_due()
    assert run is not None and run.outcome == "passed"
    assert last_run_at(state) == _utc(2025, 3, 1, 3)


async def test_a_run_missed_while_down_runs_once_on_start(tmp_path: Path, fifo: Path) -> None:
    state = tmp_path / STATE_FILE
    state.write_text(json.dumps({"last_run_at": "2025-01-01T03:00:07+00:00", "outcome": "passed"}))
    clock = FakeClock(_utc(2025, 2, 10, 9, 30))  # down over February's run, started on the 10th
    scheduler = RetrainScheduler(RetrainRunner(_waits_on(fifo), state, clock=clock), clock=clock)
    await scheduler.start()
    try:
        async with _running(fifo):  # the loop's first look at the clock started it
            assert scheduler.runner.running
            assert last_run_at(state) == clock.now  # recorded as it starts
    finally:
        await scheduler.stop()
    # Restarted again the same month: nothing more to do.
    again = RetrainScheduler(RetrainRunner(_exits(0), state, clock=clock), clock=clock)
    assert await again.run_due() is None


async def test_a_month_missed_entirely_is_not_run_in_the_next_one_before_its_time(tmp_path: Path) -> None:
    state = tmp_path / STATE_FILE
    state.write_text(json.dumps({"last_run_at": "2024-12-01T03:00:00+00:00"}))
    clock = FakeClock(_utc(2025, 2, 1, 1))  # down all January; February's run is two hours away
    scheduler = RetrainScheduler(RetrainRunner(_exits(0), state, clock=clock), clock=clock)
    assert await scheduler.run_due() is None
    assert last_run_at(state) == _utc(2024, 12, 1, 3)


async def test_no_two_runs_overlap(tmp_path: Path, fifo: Path) -> None:
    state = tmp_path / STATE_FILE
    clock = FakeClock(_utc(2025, 2, 1, 3))
    runner = RetrainRunner(_waits_on(fifo, 3), state, clock=clock)
    other_worker = RetrainRunner(_exits(0), state, clock=clock)  # a second worker on the same data dir
    first = asyncio.create_task(runner.run())
    async with _running(fifo):
        assert await runner.run() is None  # the same runner: one at a time
        assert await other_worker.run() is None  # another process's runner: the state file's lock
        assert not first.done()
    run = await first
    assert run is not None and run.outcome == "refused"
    # Once it is over the lock is free again (and the month's run recorded).
    assert await other_worker.run(unless_ran_since=_utc(2025, 2, 1, 3)) is None
    second = await other_worker.run()
    assert second is not None and second.outcome == "passed"


async def test_stopping_the_worker_stops_the_retrain(tmp_path: Path, fifo: Path) -> None:
    state = tmp_path / STATE_FILE
    clock = FakeClock(_utc(2025, 2, 1, 3, 5))
    scheduler = RetrainScheduler(RetrainRunner(_waits_on(fifo), state, clock=clock), clock=clock)
    await scheduler.start()
    async with _running(fifo):
        await scheduler.stop()  # the child is terminated, not left behind
        assert not scheduler.runner.running
    recorded = _state(state)
    assert recorded["outcome"] == "interrupted" and recorded["exit_code"] == -15  # SIGTERM
    assert await scheduler.run_due() is None  # not run again this month


# --- the worker's flags --------------------------------------------------------------------------------


def test_the_worker_accepts_the_retrain_flags(tmp_path: Path) -> None:
    default = parse_args([])
    assert default.retrain_schedule == "off"
    assert retrain_scheduler(default, load_config({}), {"CALLSENSE_RETRAIN_ARGS": "--labels x"}) is None

    args = parse_args(
        [
            "--retrain-schedule",
            "monthly",
            "--retrain-at",
            "04:30",
            "--retrain-args",
            "--labels 'my gold.jsonl'",
        ]
    )
    config = load_config({"CALLSENSE_DATA_DIR": str(tmp_path)})
    scheduler = retrain_scheduler(args, config, {})
    assert scheduler is not None and scheduler.schedule == MonthlySchedule(time(4, 30))
    assert scheduler.runner.argv == [
        sys.executable,
        "-m",
        "tools.cli",
        "retrain",
        "--labels",
        "my gold.jsonl",
    ]
    assert scheduler.runner.state_path == tmp_path / STATE_FILE

    # Without --retrain-args, CALLSENSE_RETRAIN_ARGS; with neither, the worker refuses to start.
    monthly = parse_args(["--retrain-schedule", "monthly"])
    assert monthly.retrain_at == time(3, 0)
    from_env = retrain_scheduler(monthly, config, {"CALLSENSE_RETRAIN_ARGS": "--labels g.jsonl --threads 2"})
    assert from_env is not None and from_env.runner.argv[4:] == ["--labels", "g.jsonl", "--threads", "2"]
    with pytest.raises(ValueError, match="CALLSENSE_RETRAIN_ARGS"):
        retrain_scheduler(monthly, config, {})

    for bad in (
        ["--retrain-schedule", "weekly"],
        ["--retrain-at", "25:00"],
        ["--retrain-at", "03:00+02:00"],
        ["--retrain-args", "--labels 'unclosed"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_the_default_command_is_the_callsense_cli() -> None:
    """``python -m tools.cli retrain`` is what the ``callsense`` console script runs, and parses."""
    from tools.cli import build_parser

    argv = retrain_command("--labels gold.jsonl --no-promote")
    assert argv[:3] == [sys.executable, "-m", "tools.cli"]
    parsed = build_parser().parse_args(argv[3:])
    assert parsed.command == "retrain" and not parsed.promote
    assert shlex.join(argv[3:]) == "retrain --labels gold.jsonl --no-promote"
