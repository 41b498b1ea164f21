"""Storage off the live path: a live call's writes go to PostgreSQL while it answers, and to a local,
fsynced journal (the spool) when it does not, to be written back in order and once when it is back.

A live call never waits on the database for more than ``direct_timeout_s`` (half a second): the first
write that fails or takes longer turns the store to *spooling*, and from then on every write of every call
of that database is appended to the spool (a few milliseconds, fsync included) until a background drainer
has written all of it back. Appends and the drainer keep one order, so a call's start is written before
its scores and its scores before its end; every write is idempotent (a call's start is an upsert, a score
is unique on call_id + utterance_id, an end keeps its first ended_at, the CRM push is unique on its dedupe
key), so a write that timed out but landed, or a drain cut short by a crash, does no harm when repeated.

The spool is one JSON Lines file per database and gateway instance under ``<data_dir>/spool/``; a gateway
that restarts with the same instance name (its HTTP address) picks up what it had not written back. In a
cluster, mount a volume there (the file must outlive the pod). Only connection failures spool: an error the
database would repeat (a constraint, bad data) is raised as before, never parked where it blocks the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from callsense.domain import CallStatistics, UtteranceScore
from callsense.outbox import OutboxSource
from gateway.group_commit import GroupCommit
from gateway.metrics import GatewayMetrics
from gateway.store import UNREACHABLE, Store

log = logging.getLogger(__name__)

Entry = dict[str, Any]


class SpooledStore:
    """The live path's writes to one database (a region's or the default one), see the module docs."""

    def __init__(
        self,
        store: Store,
        path: Path,
        outbox: Callable[[], OutboxSource],
        *,
        metrics: GatewayMetrics | None = None,
        direct_timeout_s: float = 0.5,
        retry_s: float = 1.0,
        max_retry_s: float = 10.0,
    ) -> None:
        """``outbox``: the CRM push of a call that ends (the AfterCall's), asked again when a spooled end is
        written back (it is a function of the call's stored row)."""
        self.store = store
        self.path = path
        self._outbox = outbox
        self._metrics = metrics or GatewayMetrics()
        self._direct_timeout_s = direct_timeout_s
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._scores = GroupCommit(  # gateway/group_commit.py
            store.record_scores,
            store.record_score,
            timeout_s=direct_timeout_s,  # by then its callers have spooled
            on_written=self._count_score_batch,
        )
        self._lock = asyncio.Lock()  # one order for appends and for the switch back to direct writes
        self._spooling = path.exists() and path.stat().st_size > 0  # left by a previous run: drain it first
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        self._drained = asyncio.Event()
        if not self._spooling:
            self._drained.set()

    def _count_score_batch(self, size: int) -> None:
        # Scores per transaction (rows / batches): how much the group commit saves at this load.
        self._metrics.count("callsense_gateway_score_batches_total")
        self._metrics.count("callsense_gateway_score_batch_rows_total", size)

    @property
    def spooling(self) -> bool:
        return self._spooling

    def start(self) -> None:
        """Write back what a previous run left in the spool (call once the event loop runs)."""
        if self._spooling:
            log.warning("spool %s holds writes of a previous run: writing them back", self.path)
            self._ensure_drainer()

    async def wait_drained(self) -> None:
        """Until the spool is empty and writes go straight to the database again."""
        await self._drained.wait()

    async def close(self) -> None:
        """Stop the drainer; what is still spooled stays on disk for the next start."""
        self._closed = True  # scores spooled from here on wait on disk for the next start
        await self._scores.close(timeout_s=self._direct_timeout_s)  # what still waits then spools
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)

    # -- the writes

    async def upsert_call_start(self, call_id: str, metadata: Mapping[str, Any]) -> None:
        entry = {"op": "start", "call_id": call_id, "metadata": dict(metadata)}
        await self._write(entry, lambda: self.store.upsert_call_start(call_id, metadata))

    async def record_score(self, event: UtteranceScore) -> None:
        entry = {"op": "score", "event": _score_json(event)}
        await self._write(entry, lambda: self._scores.write(event))

    async def end_call(
        self,
        call_id: str,
        stats: CallStatistics,
        *,
        status: Literal["ended", "failed"],
        summary: Mapping[str, Any],
        objection_tags: Sequence[str],
        outbox: OutboxSource = (),
    ) -> None:
        """``outbox`` goes with a direct write; a spooled end asks the AfterCall again when written back."""
        entry = {
            "op": "end",
            "call_id": call_id,
            "stats": asdict(stats),
            "status": status,
            "summary": dict(summary),
            "objection_tags": list(objection_tags),
        }
        await self._write(
            entry,
            lambda: self.store.end_call(
                call_id, stats, status=status, summary=summary, objection_tags=objection_tags, outbox=outbox
            ),
        )

    async def _write(self, entry: Entry, direct: Callable[[], Awaitable[object]]) -> None:
        if not self._spooling:
            try:
                async with asyncio.timeout(self._direct_timeout_s):  # no task per write, unlike wait_for
                    await direct()
                return
            except UNREACHABLE as exc:
                await self._start_spooling(exc)
        await self._append(entry)

    async def _start_spooling(self, exc: BaseException) -> None:
        async with self._lock:
            if not self._spooling:
                log.warning(
                    "database unreachable (%s): live writes go to the spool %s until it is back",
                    type(exc).__name__,
                    self.path,
                )
                self._spooling = True
                self._drained.clear()

    async def _append(self, entry: Entry) -> None:
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        async with self._lock:
            await asyncio.to_thread(_append_synced, self.path, line)
            self._spooling = True
            self._drained.clear()
        self._metrics.count("callsense_gateway_spooled_writes_total", op=entry["op"])
        self._ensure_drainer()

    # -- writing back

    def _ensure_drainer(self) -> None:
        if self._closed:
            return
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name=f"drain {self.path.name}")

    async def _drain(self) -> None:
        delay, offset = self._retry_s, 0
        while True:
            try:
                offset = await self._write_back(offset)
                if await self._finish_if_empty(offset):
                    return
                delay = self._retry_s  # more was appended meanwhile: go on at once
            except UNREACHABLE as exc:
                log.info("spool %s: database still unreachable (%s)", self.path.name, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_s)
            except Exception:
                # A write the database refuses for good: kept on disk (nothing is lost), retried slowly,
                # and said loudly; the rest waits behind it to keep each call's order.
                log.exception("spool %s: an entry at byte %d cannot be written back", self.path, offset)
                await asyncio.sleep(self._max_retry_s)

    async def _write_back(self, offset: int) -> int:
        """Apply the entries from ``offset`` to the end of the file, in order; the offset reached."""
        entries = await asyncio.to_thread(_read_from, self.path, offset)
        for entry, end in entries:
            await self._apply(entry)
            offset = end
        if entries:
            self._metrics.count("callsense_gateway_spool_written_back_total", len(entries))
        return offset

    async def _finish_if_empty(self, offset: int) -> bool:
        async with self._lock:  # no append is under way: bytes past the last whole line are a crash's
            if await asyncio.to_thread(_read_from, self.path, offset):
                return False
            torn = await asyncio.to_thread(_size, self.path) - offset
            if torn > 0:
                log.error("spool %s: dropping a torn line (%d bytes, a crash mid-append)", self.path, torn)
            await asyncio.to_thread(_truncate, self.path)
            self._spooling = False
            self._drained.set()
        log.warning("spool %s written back: live writes go to the database again", self.path.name)
        return True

    async def _apply(self, entry: Entry) -> None:
        op = entry["op"]
        if op == "start":
            await self.store.upsert_call_start(entry["call_id"], entry["metadata"])
        elif op == "score":
            await self.store.record_score(UtteranceScore(**entry["event"]))
        elif op == "end":
            await self.store.end_call(
                entry["call_id"],
                CallStatistics(**entry["stats"]),
                status=entry["status"],
                summary=entry["summary"],
                objection_tags=entry["objection_tags"],
                outbox=self._outbox(),
            )
        else:
            raise ValueError(f"unknown spool entry {op!r}")


def spool_path(directory: Path, instance: str, region: str) -> Path:
    """One file per database (region) and gateway instance; names made of safe characters only."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{region or 'default'}-{instance}")
    return directory / f"{safe}.jsonl"


def _score_json(event: UtteranceScore) -> dict[str, Any]:
    values = asdict(event)
    values.pop("created_at", None)  # set by the database
    return values


def _append_synced(path: Path, line: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as spool:
        spool.write(line)
        spool.flush()
        os.fsync(spool.fileno())


def _read_from(path: Path, offset: int) -> list[tuple[Entry, int]]:
    """The whole lines from ``offset`` on, each with the offset after it (a torn last line, from a crash
    mid-append, is left for later and never half-read)."""
    try:
        with path.open("rb") as spool:
            spool.seek(offset)
            data = spool.read()
    except FileNotFoundError:
        return []
    entries, position = [], offset
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        position += len(line)
        entries.append((json.loads(line), position))
    return entries


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _truncate(path: Path) -> None:
    with path.open("r+b") as spool:
        spool.truncate(0)
        spool.flush()
        os.fsync(spool.fileno())
