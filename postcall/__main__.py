"""``python -m postcall``: the post-call worker, until SIGINT or SIGTERM.

    python -m postcall [--bind ADDR] [--sweep-interval-s S] [--report-workers N]
                       [--max-waiting-reports N] [--nice N]
                       [--retrain-schedule off|monthly [--retrain-at HH:MM] [--retrain-args "..."]]

One process, one event loop:
- the ``PostCall`` gRPC service (``Report``: a finished call's report, built in a thread), with health and
  reflection; the gateway asks it for each call's report as the call ends;
- the webhook outbox dispatcher of every database (CRM pushes, Slack alerts), woken by the databases'
  notifications;
- the nightly roll-up scheduler with its alerts (``CALLSENSE_ROLLUP_AT``, default 00:15), and with it the
  drift check of each tenant's day (postcall/drift_job.py: the shipped baseline postcall/drift_baseline.json
  and the served model's tokenizer, loaded at start-up; without them the roll-ups run without drift);
- the sweep that completes the reports owed for calls that ended while this worker was unreachable;
- the hourly retention purge of the tenants that set ``retention_days`` (postcall/retention.py);
- with ``--retrain-schedule monthly``, the monthly ``callsense retrain`` as a subprocess, on day 1 at
  ``--retrain-at`` UTC, with ``--retrain-args`` (or ``CALLSENSE_RETRAIN_ARGS``), its last run kept under
  ``CALLSENSE_DATA_DIR`` (postcall/retrain_schedule.py). Off by default: on Kubernetes the retrain CronJob
  does it (deploy/kubernetes/retrain.yaml).

Post-call work yields to the live path: reports are built ``--report-workers`` at a time (default 1, about
one core each; the NumPy encoder's BLAS on one thread too, where two cost 60 % more CPU for 20 % less wall
time), at most ``--max-waiting-reports`` are held (past it a call's report is owed at once, and the sweep
builds it), and the process lowers its own CPU priority by ``--nice`` (default 10, its session's autogroup
too; 0 keeps it), so on a node it shares with the live services, their scores come first and the reports
catch up (docs/capacity.md).

The address defaults to ``CALLSENSE_POSTCALL_ADDR``; the database is ``DATABASE_URL`` (with each region's
``DATABASE_URL_<REGION>``), else an embedded PostgreSQL; tenants come from ``CALLSENSE_TENANTS_FILE`` (the
gateway's file); the objection LLM, if any, from ``CALLSENSE_OBJECTIONS_LLM_*``. The sentence encoder is
loaded before the server binds, so health reports SERVING once a report is answered at full speed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import time
from pathlib import Path

import grpc.aio

from callsense import grpc_runtime
from callsense.config import Config, ConfigError, load_config, split_host_port
from callsense.storage import Database, RegionalStores, default_database_url
from callsense.telemetry import setup_telemetry
from callsense.tenants import TenantsConfig, load_tenants
from postcall.drift_job import DriftJob
from postcall.objections import tagger_from_env
from postcall.outbox_store import OutboxStore
from postcall.reports import DEFAULT_MAX_WAITING, DEFAULT_SWEEP_INTERVAL_S, OwedReportSweep, ReportBuilder
from postcall.retention import RetentionPurge
from postcall.retrain_schedule import (
    DEFAULT_RETRAIN_AT,
    RETRAIN_ARGS_ENV,
    SCHEDULES,
    STATE_FILE,
    MonthlySchedule,
    RetrainRunner,
    RetrainScheduler,
    parse_retrain_at,
    retrain_args_from,
    retrain_command,
)
from postcall.rollup import RollupScheduler, rollup_time_from_env
from postcall.server import PostCallServicer, add_postcall
from postcall.webhooks import OutboxDispatcher

log = logging.getLogger("postcall")

DEFAULT_NICE = 10


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m postcall", description="Run the post-call worker until SIGINT or SIGTERM."
    )
    parser.add_argument(
        "--bind", help="host:port to listen on (default: CALLSENSE_POSTCALL_ADDR, 127.0.0.1:50054)"
    )
    parser.add_argument(
        "--sweep-interval-s",
        type=float,
        default=DEFAULT_SWEEP_INTERVAL_S,
        help="how often to look for calls whose report is owed (default "
        f"{DEFAULT_SWEEP_INTERVAL_S:g}; also at start-up)",
    )
    parser.add_argument(
        "--report-workers",
        type=int,
        default=1,
        help="reports built at once, each on about one core (default 1; more where the worker has cores "
        "of its own)",
    )
    parser.add_argument(
        "--max-waiting-reports",
        type=int,
        default=DEFAULT_MAX_WAITING,
        help=f"reports queued or being built at most; past it a call's report is owed at once and the "
        f"sweep builds it later (default {DEFAULT_MAX_WAITING})",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=DEFAULT_NICE,
        help=f"lower this process's CPU priority by N (default {DEFAULT_NICE}: the live services on the same "
        "node come first; 0 keeps it)",
    )
    parser.add_argument(
        "--retrain-schedule",
        choices=SCHEDULES,
        default="off",
        help="run `callsense retrain` from this worker: monthly, on day 1 at --retrain-at (default off)",
    )
    parser.add_argument(
        "--retrain-at",
        type=_utc_time,
        default=DEFAULT_RETRAIN_AT,
        help=f"UTC time of day of the monthly retrain, HH:MM (default {DEFAULT_RETRAIN_AT:%H:%M})",
    )
    parser.add_argument(
        "--retrain-args",
        help="the retrain's arguments as one shell-quoted string, e.g. '--labels gold.jsonl' "
        f"(default: {RETRAIN_ARGS_ENV})",
    )
    args = parser.parse_args(argv)
    if args.bind:
        try:
            split_host_port(args.bind)
        except ConfigError as exc:
            parser.error(f"--bind: {exc}")
    if not args.sweep_interval_s > 0:
        parser.error("--sweep-interval-s must be > 0")
    if not 1 <= args.report_workers <= args.max_waiting_reports:
        parser.error("need 1 <= --report-workers <= --max-waiting-reports")
    if not 0 <= args.nice <= 19:
        parser.error("--nice must be in 0..19")
    if args.retrain_args is not None:
        try:
            retrain_command(args.retrain_args)
        except ValueError as exc:  # an unclosed quote
            parser.error(f"--retrain-args: {exc}")
    return args


def _utc_time(value: str) -> time:
    try:
        return parse_retrain_at(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a UTC time of day as HH:MM ({exc})") from None


def retrain_scheduler(
    args: argparse.Namespace, config: Config, env: Mapping[str, str]
) -> RetrainScheduler | None:
    """The monthly retrain ``args`` ask for, None when off; ValueError when its arguments are missing or
    do not split (a retrain without ``--labels`` would only exit 2 every month)."""
    if args.retrain_schedule == "off":
        return None
    argv = retrain_command(retrain_args_from(args.retrain_args, env))
    if argv == retrain_command(""):
        raise ValueError(
            f"--retrain-schedule {args.retrain_schedule} needs the retrain's arguments: --retrain-args "
            f'"--labels FILE ..." or {RETRAIN_ARGS_ENV}'
        )
    runner = RetrainRunner(argv, config.data_dir / STATE_FILE)
    return RetrainScheduler(runner, MonthlySchedule(args.retrain_at))


async def serve(
    config: Config,
    bind: str,
    tenants: TenantsConfig,
    rollup_at: time,
    builder: ReportBuilder,
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S,
    drift: DriftJob | None = None,
    retrain: RetrainScheduler | None = None,
) -> None:
    async with default_database_url(config) as url:
        databases = await RegionalStores[Database].open_with(Database.open, url)
        dispatcher = OutboxDispatcher([OutboxStore(db.pool) for db in databases.stores], tenants)
        scheduler = RollupScheduler(
            databases.stores, tenants, at=rollup_at, on_alerts=dispatcher.notify, drift=drift
        )
        sweep = OwedReportSweep(
            databases.stores, builder, tenants, interval_s=sweep_interval_s, on_enqueued=dispatcher.notify
        )
        purge = RetentionPurge(databases.stores, tenants)
        servicer = PostCallServicer(builder)

        def add(server: grpc.aio.Server) -> list[str]:
            return add_postcall(server, servicer)

        try:
            await dispatcher.start()
            await scheduler.start()
            await sweep.start()
            await purge.start()
            if retrain is not None:
                await retrain.start()
            # The server stops first (health NOT_SERVING, reports in progress finish within the grace).
            await grpc_runtime.serve_forever(add, bind)
        finally:
            if retrain is not None:
                await retrain.stop()  # a retrain in progress is stopped, and recorded as interrupted
            await purge.stop()
            await sweep.stop()
            await scheduler.stop()
            await dispatcher.stop()  # what is not delivered yet stays in the outbox for the next start
            await databases.close()


AUTOGROUP = Path("/proc/self/autogroup")


def yield_to_the_live_path(nice: int, autogroup: Path = AUTOGROUP) -> bool:
    """Lower this process's CPU priority and keep NumPy's BLAS on one thread (see the module docstring);
    returns whether the session's autogroup got the nice value too.

    Where the kernel groups processes by session (CONFIG_SCHED_AUTOGROUP, on by default in desktop and
    many cloud kernels), a nice value only ranks threads within their own session's group, and `callsense
    up` starts every service in a session of its own: the group's own nice value is what ranks the worker
    against the live services, so it is set too (sched(7); raising it needs no privilege)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    if not nice:
        return False
    os.nice(nice)
    try:
        autogroup.write_text(str(nice))
    except OSError as exc:  # no autogroups (the file is absent) or a read-only /proc: os.nice is what counts
        if autogroup.exists():
            log.warning("could not lower the CPU priority of this session's autogroup: %s", exc)
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    yield_to_the_live_path(args.nice)
    setup_telemetry("postcall")  # before any server or channel exists: it instruments grpc.aio
    try:
        config = load_config()
        bind = args.bind or config.postcall_addr
        tenants, rollup_at = load_tenants(), rollup_time_from_env(os.environ)
        builder = ReportBuilder(
            tagger_from_env(), workers=args.report_workers, max_waiting=args.max_waiting_reports
        )
        retrain = retrain_scheduler(args, config, os.environ)
    except (ConfigError, ValueError) as exc:
        # ValueError: a half-configured LLM endpoint, a bad model file, the retrain's arguments missing
        log.error("%s", exc)
        return 2
    try:
        builder.warm_up()
    except Exception as exc:  # the encoder's weights missing: reports go out without model tags
        log.warning("the objection tagger could not load its encoder: %s", exc)
    drift = None
    try:
        drift = DriftJob.load()
    except Exception as exc:  # no baseline or tokenizer: the roll-ups and alerts matter more than drift
        log.warning("the drift check is off: %s", exc)
    try:
        asyncio.run(serve(config, bind, tenants, rollup_at, builder, args.sweep_interval_s, drift, retrain))
    except RuntimeError as exc:  # e.g. the address is taken
        log.error("%s", exc)
        return 1
    except Exception:  # e.g. the database is unreachable: say so once, with the cause, and exit non-zero
        log.exception("the post-call worker could not start")
        return 1
    finally:
        builder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
