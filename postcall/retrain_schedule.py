"""The monthly retrain, run by the post-call worker (``python -m postcall --retrain-schedule monthly``).

Where there is no Kubernetes CronJob (deploy/kubernetes/retrain.yaml) to run ``callsense retrain``, the
worker runs it: on day 1 of each month at ``--retrain-at`` (UTC, default 03:00), as a subprocess, because
a service imports neither ``training`` nor ``tools`` (nor torch, hours of CPU and gigabytes of memory belong
in a process of their own). The command is ``[sys.executable, "-m", "tools.cli", "retrain", *ARGS]``, ARGS
being ``--retrain-args "..."`` (or ``CALLSENSE_RETRAIN_ARGS``) split as a shell would (shlex; a single
option is given as ``--retrain-args=--no-promote``, argparse taking a lone ``--x`` for a flag):
``python -m tools.cli`` is what the ``callsense`` console script runs, and needs no script on the PATH. The
worker's Python must have the ``train`` extra (torch), or every run ends with exit 2. The retrain's own
output goes to the worker's stdout and stderr; the worker logs its outcome by exit code (0 the gate passed,
3 the gate refused the candidate, 2 bad input, 1 failed).

A run is recorded when it *starts*, in ``CALLSENSE_DATA_DIR/retrain-schedule.json`` (then its outcome when
it ends), so a restart in the same month does not run it again, even after a run that failed or was cut
short: like the CronJob (``backoffLimit: 0``), a failed retrain is read before it is tried again (by hand:
``callsense retrain ...``). A run missed while the worker was down runs once when it starts, if that
month's run time has passed and no run since is recorded; a month missed entirely is not caught up in the
next one, whose own run comes on its day.

Never two at once: one run per scheduler, and an exclusive lock (flock) beside the state file while it
runs, so two workers sharing a data directory do not both start one. Stopping the worker stops a retrain
in progress (SIGTERM, then SIGKILL after ``kill_after_s``) and records it as interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import IO, Any

from callsense.background import BackgroundLoop
from callsense.model_files import write_json_atomically

log = logging.getLogger(__name__)

RETRAIN_ARGS_ENV = "CALLSENSE_RETRAIN_ARGS"
DEFAULT_RETRAIN_AT = time(3, 0)
STATE_FILE = "retrain-schedule.json"
SCHEDULES = ("off", "monthly")

OUTCOMES = {0: "passed", 3: "refused", 2: "bad_input", 1: "failed"}
"""``callsense retrain``'s exit codes (tools/retrain_cli.py); any other code (a signal) is "failed"."""
_OUTCOME_LOG = {
    "passed": (logging.INFO, "the gate passed: the candidate is promoted (or added, with --no-promote)"),
    "refused": (logging.WARNING, "the gate refused the candidate; the registry untouched (see the report)"),
    "bad_input": (logging.ERROR, "bad input (labels, sets, checkpoint or registry): fix it, run it by hand"),
    "failed": (logging.ERROR, "the run failed (its traceback is in this log)"),
    "interrupted": (logging.WARNING, "stopped with the worker; it runs again next month, or by hand"),
}

# An hour at most between looks at the clock: a month-long sleep would not notice the wall clock being set.
_MAX_SLEEP_S = 3600.0


def parse_retrain_at(value: str) -> time:
    """``--retrain-at``: a UTC time of day, "HH:MM" (no offset); ValueError otherwise."""
    at = time.fromisoformat(value.strip())
    if at.tzinfo is not None:
        raise ValueError(f"{value!r}: give the time in UTC, without an offset")
    return at


def retrain_command(args: str, python: str = sys.executable) -> list[str]:
    """The argv of the retrain: ``python -m tools.cli retrain`` and ``args`` split as a shell would (a
    ValueError for an unclosed quote)."""
    return [python, "-m", "tools.cli", "retrain", *shlex.split(args)]


def retrain_args_from(flag: str | None, env: Mapping[str, str]) -> str:
    """The operator's retrain arguments: ``--retrain-args``, else ``CALLSENSE_RETRAIN_ARGS``."""
    return flag if flag is not None else env.get(RETRAIN_ARGS_ENV, "")


@dataclass(frozen=True)
class MonthlySchedule:
    """Day 1 of every month at ``at`` (UTC)."""

    at: time = DEFAULT_RETRAIN_AT

    def run_at(self, year: int, month: int) -> datetime:
        """The run time of the month ``year``-``month``."""
        return datetime.combine(date(year, month, 1), self.at, UTC)

    def due(self, now: datetime) -> datetime | None:
        """The run time of ``now``'s month once it has come (at it exactly included), else None."""
        now = now.astimezone(UTC)
        this_month = self.run_at(now.year, now.month)
        return this_month if this_month <= now else None

    def next_run(self, now: datetime) -> datetime:
        """The first run time strictly after ``now``."""
        now = now.astimezone(UTC)
        this_month = self.run_at(now.year, now.month)
        if this_month > now:
            return this_month
        year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
        return self.run_at(year, month)


@dataclass(frozen=True)
class RetrainRun:
    """One run of the command: when it started, how it ended."""

    started_at: datetime
    exit_code: int | None
    """None when the command could not be started at all."""
    outcome: str
    """passed, refused, bad_input, failed, or interrupted (stopped with the worker)."""


def outcome_of(exit_code: int | None) -> str:
    return OUTCOMES.get(exit_code, "failed") if exit_code is not None else "failed"


def last_run_at(state_path: Path) -> datetime | None:
    """When the last recorded run started; None without a (readable) state file. Blocks on the disk."""
    try:
        data: Any = json.loads(state_path.read_text())
        return datetime.fromisoformat(data["last_run_at"]).astimezone(UTC)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # A broken file must not stop the schedule for good: the next due run goes ahead.
        log.warning("%s is unreadable (%r): taken as no run recorded", state_path, exc)
        return None


def _write_state(state_path: Path, started_at: datetime, run: RetrainRun | None) -> None:
    state: dict[str, Any] = {"last_run_at": started_at.isoformat(timespec="seconds")}
    if run is not None:
        state |= {"exit_code": run.exit_code, "outcome": run.outcome}
    write_json_atomically(state_path, state)


class RetrainRunner:
    """Launches ``argv`` and waits for it, one run at a time, recording each in ``state_path``."""

    def __init__(
        self,
        argv: Sequence[str],
        state_path: Path,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        kill_after_s: float = 10.0,
    ) -> None:
        if not argv:
            raise ValueError("the retrain command is empty")
        self.argv = list(argv)
        self.state_path = state_path
        self._lock_path = state_path.with_name(state_path.name + ".lock")
        self._clock = clock
        self._kill_after_s = kill_after_s
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    async def run(self, *, unless_ran_since: datetime | None = None) -> RetrainRun | None:
        """Run the command and return how it ended; None when it did not run: one is running already
        (here, or in another worker sharing the state file), or a run at or after ``unless_ran_since`` is
        recorded."""
        if self._running:  # set before any await: two callers on this loop cannot both pass
            log.info("retrain: one is running already")
            return None
        self._running = True
        try:
            lock = await asyncio.to_thread(self._try_lock)
            if lock is None:
                log.info("retrain: another worker is running one (%s is locked)", self._lock_path)
                return None
            try:
                return await self._run_locked(unless_ran_since)
            finally:
                lock.close()  # releases the flock
        finally:
            self._running = False

    def _try_lock(self) -> IO[str] | None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        lock = self._lock_path.open("a")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return None
        return lock

    async def _run_locked(self, unless_ran_since: datetime | None) -> RetrainRun | None:
        # Read under the lock: a worker that has just finished the month's run has recorded it.
        last = await asyncio.to_thread(last_run_at, self.state_path)
        if unless_ran_since is not None and last is not None and last >= unless_ran_since:
            return None
        started_at = self._clock()
        # Recorded before the launch: a worker that dies mid-run does not start it again this month.
        await asyncio.to_thread(_write_state, self.state_path, started_at, None)
        log.info("retrain: starting %s", shlex.join(self.argv))
        try:
            # stdin closed: the retrain never waits on the worker's terminal; its output is the worker's.
            process = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            log.error("retrain: cannot start %s: %s", self.argv[0], exc)
            run = RetrainRun(started_at, None, "failed")
        else:
            try:
                code = await process.wait()
            except asyncio.CancelledError:
                code = await self._terminate(process)
                run = RetrainRun(started_at, code, "interrupted")
                await asyncio.to_thread(_write_state, self.state_path, started_at, run)
                self._log(run)
                raise
            run = RetrainRun(started_at, code, outcome_of(code))
        await asyncio.to_thread(_write_state, self.state_path, started_at, run)
        self._log(run)
        return run

    async def _terminate(self, process: asyncio.subprocess.Process) -> int:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(self._kill_after_s):
                return await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()

    def _log(self, run: RetrainRun) -> None:
        level, meaning = _OUTCOME_LOG[run.outcome]
        log.log(level, "retrain %s (exit %s): %s", run.outcome, run.exit_code, meaning)


class RetrainScheduler(BackgroundLoop):
    """Runs ``runner`` on ``schedule``; an asyncio task. At start-up, and after each wake, it runs the
    month's retrain once its time has come unless a run since then is recorded."""

    task_name = "retrain-scheduler"

    def __init__(
        self,
        runner: RetrainRunner,
        schedule: MonthlySchedule | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.runner = runner
        self.schedule = schedule or MonthlySchedule()
        self._clock = clock

    async def run_due(self) -> RetrainRun | None:
        """Run the month's retrain if it is due and not recorded; None when nothing ran."""
        due = self.schedule.due(self._clock())
        if due is None:
            return None
        return await self.runner.run(unless_ran_since=due)

    async def _run(self) -> None:
        log.info("retrain: monthly, on day 1 at %s UTC", self.schedule.at.isoformat("minutes"))
        while True:
            try:
                await self.run_due()
            except Exception:  # the state file not writable, say: not launched, and looked at again later
                log.exception("retrain: could not run the monthly retrain")
            now = self._clock()
            until_next = (self.schedule.next_run(now) - now).total_seconds()
            await asyncio.sleep(max(1.0, min(until_next, _MAX_SLEEP_S)))
