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
row's caller gets the error. A connection failure, a batch that outlasts ``timeout_s``, or a writer that
is stopped fails every score gathered so far with an error of ``UNREACHABLE``'s kinds, so each caller
spools its own score (gateway/spool.py) and the writer never works through a backlog against a database
that is away. Writes are idempotent (unique on call_id + utterance_id), so a batch that landed after its
callers stopped waiting does no harm when they write again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import psycopg

from callsense.domain import UtteranceScore
from gateway.store import UNREACHABLE

log = logging.getLogger(__name__)

WriteBatch = Callable[[Sequence[UtteranceScore]], Awaitable[object]]
WriteOne = Callable[[UtteranceScore], Awaitable[object]]
Pending = tuple[UtteranceScore, "asyncio.Future[None]"]


class GroupCommitStopped(psycopg.OperationalError):
    """The writer was stopped (a shutdown) before this score's batch was written: spool it."""


class GroupCommit:
    """One database's live scores, written in shared transactions (see the module docs)."""

    def __init__(
        self,
        write_batch: WriteBatch,
        write_one: WriteOne,
        *,
        max_batch: int = 64,
        timeout_s: float | None = None,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        """``write_batch``: all or nothing in one transaction (``Store.record_scores``); ``write_one``: one
        row (``Store.record_score``), for a lone score and for telling a refused batch's rows apart.
        ``timeout_s``: the longest one batch may take (its callers have stopped waiting by then: the
        spool's own limit); ``on_written``: told each committed batch's size (the gateway's metrics)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write_batch = write_batch
        self._write_one = write_one
        self._max_batch = max_batch
        self._timeout_s = timeout_s
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

    async def close(self, timeout_s: float = 1.0) -> None:
        """Let the batch under way finish for up to ``timeout_s``, then stop the writer: whoever still
        waits gets ``GroupCommitStopped`` and spools."""
        writer = self._writer
        if writer is None or writer.done():
            return
        _, pending = await asyncio.wait({writer}, timeout=timeout_s)
        if pending:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _write_all(self) -> None:
        batch: list[Pending] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                await self._write(batch)
        except BaseException:  # stopped (a shutdown) or broken: nobody may wait for a batch that won't come
            self._fail_all(batch, GroupCommitStopped("the score writer was stopped"))
            raise

    async def _write(self, batch: list[Pending]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                if len(batch) == 1:  # one INSERT that commits itself: a transaction adds two round trips
                    await self._write_one(batch[0][0])
                else:
                    await self._write_batch([score for score, _ in batch])
        except UNREACHABLE as exc:
            self._fail_all(batch, exc)  # the rest would only wait for the same failure
            return
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch, exc)
                return
            # The database refused the batch because of a row (a call it does not know, a bad value; the
            # batch's UnknownCallError names every call in it): each row alone, so that only its own
            # caller hears of it.
            log.info("a batch of %d scores was refused (%s): writing them one by one", len(batch), exc)
            for position, pending in enumerate(batch):
                if (lost := await self._write_alone(pending)) is not None:
                    self._fail_all(batch[position + 1 :], lost)
                    return
            return
        _settle(batch, None)
        if self._on_written is not None:
            self._on_written(len(batch))

    async def _write_alone(self, pending: Pending) -> BaseException | None:
        """One row, its caller told the outcome; returns the error when the database could not be reached."""
        score, _ = pending
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._write_one(score)
        except UNREACHABLE as exc:
            _settle([pending], exc)
            return exc
        except Exception as exc:
            _settle([pending], exc)
        else:
            _settle([pending], None)
        return None

    def _fail_all(self, batch: list[Pending], exc: BaseException) -> None:
        """``batch`` and every score gathered after it fail with ``exc`` (their callers spool)."""
        _settle(batch, exc)
        _settle(self._waiting, exc)
        self._waiting.clear()


def _settle(batch: list[Pending], exc: BaseException | None) -> None:
    for _, done in batch:
        if done.done():  # its caller stopped waiting, or it was settled already
            continue
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)
