"""Group commit: the scores of every live call on one database written together, one transaction at a time.

A live score is stored before anyone sees it (gateway/calls/session.py), so each one used to cost its own
pool checkout (with the pool's liveness check, a round trip), its own INSERT and its own commit (a WAL
flush): three round trips and a flush per utterance, on the gateway's event loop and in PostgreSQL, at
every load. Here a caller's score joins the batch that forms while the previous one is being written; one
writer task takes whatever has gathered (up to ``max_batch``) and writes it in one transaction. At a
handful of calls every batch is one score and nothing waits longer than before; at hundreds of calls a
batch holds the few scores that arrived during one write, and the cost per score falls with the load
instead of rising with it.

Each caller still gets its own answer: its write returns once its batch is committed. A batch the database
refuses as a whole because of one row (a call it does not know) is written again row by row, so only that
row's caller gets the error; a connection failure fails every caller of the batch, each of which spools
its own score (gateway/spool.py). Writes are idempotent (unique on call_id + utterance_id), so a batch
that landed after its callers stopped waiting does no harm when they write again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from callsense.domain import UtteranceScore
from gateway.store import UNREACHABLE

log = logging.getLogger(__name__)

WriteBatch = Callable[[Sequence[UtteranceScore]], Awaitable[object]]
WriteOne = Callable[[UtteranceScore], Awaitable[object]]
Pending = tuple[UtteranceScore, "asyncio.Future[None]"]


class GroupCommit:
    """One database's live scores, written in shared transactions (see the module docs)."""

    def __init__(
        self,
        write_batch: WriteBatch,
        write_one: WriteOne,
        *,
        max_batch: int = 64,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        """``write_batch``: all or nothing in one transaction (``Store.record_scores``); ``write_one``: one
        row (``Store.record_score``), for a lone score and for telling a refused batch's rows apart.
        ``on_written``: told each committed batch's size (the gateway's metrics)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write_batch = write_batch
        self._write_one = write_one
        self._max_batch = max_batch
        self._on_written = on_written
        self._waiting: list[Pending] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Scores gathered for the next batch (not yet being written)."""
        return len(self._waiting)

    async def write(self, score: UtteranceScore) -> None:
        """Until ``score`` is committed; raises what its batch (or, for a refused batch, its own row) raised.

        A caller that stops waiting (cancelled, or its timeout) does not stop the batch: the others in it
        still need it, and the write is idempotent."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((score, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="group commit")
        await done

    async def close(self) -> None:
        """Let the batches under way finish (their callers are waiting for them)."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _write_all(self) -> None:
        batch: list[Pending] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                await self._write(batch)
        finally:  # cancelled (a shutdown): nobody may wait for a batch that will not come
            for _, done in batch + self._waiting:
                done.cancel()
            self._waiting.clear()

    async def _write(self, batch: list[Pending]) -> None:
        try:
            if len(batch) == 1:  # one INSERT that commits itself: a transaction would add two round trips
                await self._write_one(batch[0][0])
            else:
                await self._write_batch([score for score, _ in batch])
        except UNREACHABLE as exc:
            _settle(batch, exc)  # each caller spools its own score
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch, exc)
                return
            # The database refused the batch because of a row (a call it does not know, a bad value):
            # each row alone, so that only its own caller hears of it.
            log.info("a batch of %d scores was refused (%s): writing them one by one", len(batch), exc)
            for pending in batch:
                await self._write_alone(pending)
        else:
            _settle(batch, None)
            if self._on_written is not None:
                self._on_written(len(batch))

    async def _write_alone(self, pending: Pending) -> None:
        score, _ = pending
        try:
            await self._write_one(score)
        except Exception as exc:
            _settle([pending], exc)
        else:
            _settle([pending], None)


def _settle(batch: list[Pending], exc: BaseException | None) -> None:
    for _, done in batch:
        if done.done():  # its caller stopped waiting
            continue
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)
