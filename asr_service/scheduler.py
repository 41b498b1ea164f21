"""The inference threads of the whole process (one by default), shared fairly by every stream.

Each Whisper decode runs on one CPU thread (more threads per decode only fight on two cores), so every
stream's decodes go through one queue served by ``workers`` threads (the model is loaded with as many
CTranslate2 workers, so their decodes run in parallel). Fairness is round-robin across streams: a thread
takes the oldest job of the next stream that has one, so a caller who talks for an hour cannot starve a
call that just started. Within a stream jobs run one at a time in submission order (a stream whose job
is running is passed over), which keeps a segment's partials before its final and a call's events in
order.

Finals first: a stream with a final (or any job that is not a partial) in its queue is served before any
stream with only partials queued. A final is what the rep waits for (end of speech -> score); a partial
that waits is replaced by a fresher one anyway. Under load partials thus come less often and finals keep
their pace (``bench/live_audio.py``). A replaceable job submitted ``urgent`` (a speculative final: the
segment's final decoded while its silence is still being confirmed) is served in the finals' turn too,
though it stays replaceable and never joins a batch: behind another call's partials it would often still
wait when the final came, and the final would decode again from the start. A partial queued ahead of
its own stream's final or urgent job (the call's other channel) is served in the finals' turn, alone: a
stream's jobs run in order, so it stands between that job and the thread. It ranks level with other
streams' finals (which may wait for it), and its stream then goes to the back of the ring like any
other, so its own final comes after one job of each other stream with a final queued.

Partials are best effort: a partial job that has not started yet is replaced when a newer one for the
same key (a channel of the stream) arrives, and dropped when that key's final arrives; its future
resolves to None. Under load partials thus come less often, while every final still runs.

Batches of partials (``max_batch``): when a thread takes a partial job that says how it may run with
others (``Batch``), it also takes the partial jobs at the head of the streams after it in the ring whose
``Batch.key`` is the same, up to ``max_batch`` jobs, and runs them with one call of the first job's
``Batch.run`` (one Whisper encode and generate for all: CTranslate2's per-step cost is shared; see
bench/asr_batching.py). Only heads join, so a stream's order holds; only in the partials' turn, so a final
or urgent job queued in a stream is never passed over for one (it waits for the batch under way, as for a
single decode), and a partial taken in the finals' turn runs alone; the streams served go to the back of
the ring in turn. A job alone runs its own ``fn``.

The number of open streams is capped (``StreamLimitError`` past it): each costs memory and a share of the
thread, and a client told RESOURCE_EXHAUSTED can go to another replica.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class StreamLimitError(RuntimeError):
    """No more streams may be opened now."""


@dataclass(frozen=True)
class Batch:
    """How a partial job may run together with other streams' partials."""

    key: Hashable
    """Jobs whose keys are equal may run in one batch (the same model and the same filter)."""
    item: Any
    """What ``run`` takes for this job."""
    run: Callable[[list[Any]], list[Any]]
    """The results of several jobs' items, in order, each what the job's ``fn`` would return."""


@dataclass
class _Job:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]
    partial_key: Hashable | None = None
    """Set for replaceable (partial) jobs: the key that a newer partial or the final shares."""
    batch: Batch | None = None
    """Set for partial jobs (not urgent ones) that may run in a batch."""
    urgent: bool = False
    """A replaceable job served in the finals' turn, never batched (a speculative final)."""

    @property
    def deferrable(self) -> bool:
        """A partial: on its own it never puts its stream in the finals' turn (``_Stream.deferrable``)."""
        return self.partial_key is not None and not self.urgent


@dataclass
class _Stream:
    id: int
    jobs: collections.deque[_Job] = field(default_factory=collections.deque)
    closed: bool = False
    running: bool = False
    """One of its jobs is on a thread: its next one waits (a stream's jobs run in order)."""

    @property
    def deferrable(self) -> bool:
        """Only partials are queued: the stream waits for the partials' turn. A final or urgent job
        anywhere in its queue has it served in the finals' turn, the partials ahead of it included:
        they stand between that job and the thread."""
        return all(job.deferrable for job in self.jobs)


class InferenceScheduler:
    """Runs jobs on ``workers`` threads, finals first, round-robin across streams, in order within one."""

    def __init__(
        self, max_streams: int = 8, *, workers: int = 1, max_batch: int = 1, name: str = "asr-inference"
    ) -> None:
        if max_streams < 1:
            raise ValueError("max_streams must be at least 1")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_streams = max_streams
        self.max_batch = max_batch
        self._lock = threading.Condition()
        self._streams: dict[int, _Stream] = {}
        self._ring: collections.deque[int] = collections.deque()  # stream ids in round-robin order
        self._ids = itertools.count()
        self._stopping = False
        self.jobs_run = 0
        self.partials_dropped = 0
        self.batches_run = 0
        """Batches of two jobs or more (their jobs count in ``jobs_run``)."""
        self.batched_jobs = 0
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # -------------------------------------------------------------------------------- streams

    def open_stream(self) -> StreamHandle:
        """A new stream; raises StreamLimitError when ``max_streams`` are open."""
        with self._lock:
            if self._stopping:
                raise StreamLimitError("the ASR service is shutting down")
            if len(self._streams) >= self.max_streams:
                raise StreamLimitError(
                    f"{self.max_streams} streams are open, the most this ASR replica serves; retry later "
                    "or on another replica"
                )
            stream = _Stream(next(self._ids))
            self._streams[stream.id] = stream
            self._ring.append(stream.id)
            return StreamHandle(self, stream.id)

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    @property
    def queued_jobs(self) -> int:
        with self._lock:
            return sum(len(s.jobs) for s in self._streams.values())

    def _submit(
        self,
        stream_id: int,
        fn: Callable[[], Any],
        partial_key: Hashable | None,
        final_key: Hashable | None,
        batch: Batch | None,
        urgent: bool = False,
    ) -> concurrent.futures.Future[Any]:
        if urgent and partial_key is None:
            raise ValueError("urgent is for replaceable jobs (a partial_key); a final is served first anyway")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None or stream.closed:
                raise RuntimeError("the stream is closed")
            replaced = partial_key if partial_key is not None else final_key
            if replaced is not None:
                self._drop_partials(stream, replaced)
            kept_batch = batch if partial_key is not None and not urgent else None
            stream.jobs.append(_Job(fn, future, partial_key, kept_batch, urgent))
            self._lock.notify()
        return future

    def _drop_partials(self, stream: _Stream, key: Hashable) -> None:
        kept: collections.deque[_Job] = collections.deque()
        for job in stream.jobs:
            if job.partial_key is not None and job.partial_key == key:
                job.future.set_result(None)
                self.partials_dropped += 1
            else:
                kept.append(job)
        stream.jobs = kept

    def _close(self, stream_id: int, cancel: bool) -> None:
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None:
                return
            stream.closed = True
            if cancel:
                for job in stream.jobs:
                    job.future.cancel()
                stream.jobs.clear()
            if not stream.jobs and not stream.running:
                self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        self._streams.pop(stream.id, None)
        with contextlib.suppress(ValueError):  # not in the ring: already forgotten
            self._ring.remove(stream.id)

    # -------------------------------------------------------------------------------- thread

    def _next_jobs(self) -> list[tuple[_Stream, _Job]] | None:
        """The next job: the next job of the first stream in round-robin order that has a final (or
        urgent) job queued, else of the first that has a partial; streams with a job running are
        passed over. A partial with a ``Batch`` taken in the partials' turn brings the matching heads of
        the streams after it (see the module docstring). None when stopping. Holds the lock while
        waiting."""
        with self._lock:
            while True:
                for deferrable in (False, True):
                    for offset in range(len(self._ring)):
                        stream = self._streams[self._ring[offset]]
                        if stream.running or not stream.jobs or stream.deferrable != deferrable:
                            continue
                        self._ring.rotate(-(offset + 1))  # the streams after it come first next time
                        stream.running = True
                        taken = [(stream, stream.jobs.popleft())]
                        batch = taken[0][1].batch
                        if deferrable and batch is not None and self.max_batch > 1:
                            taken += self._batch_mates(batch.key)
                        return taken
                if self._stopping:
                    return None
                self._lock.wait()

    def _batch_mates(self, key: Hashable) -> list[tuple[_Stream, _Job]]:
        """Up to ``max_batch - 1`` partial heads batched under ``key``, in ring order (the stream just
        served is last in the ring); each joins the back of the ring as it is taken, so the streams
        passed over keep their place ahead of it. Holds the lock."""
        mates: list[tuple[_Stream, _Job]] = []
        for stream_id in list(self._ring)[:-1]:
            if len(mates) == self.max_batch - 1:
                break
            stream = self._streams[stream_id]
            head = stream.jobs[0] if stream.jobs and not stream.running else None
            if head is None or head.batch is None or head.batch.key != key:
                continue
            self._ring.remove(stream_id)
            self._ring.append(stream_id)
            stream.running = True
            mates.append((stream, stream.jobs.popleft()))
        return mates

    def _done(self, stream: _Stream) -> None:
        with self._lock:
            stream.running = False
            if stream.closed and not stream.jobs:
                self._forget(stream)
            self._lock.notify_all()  # its next job may run now, on any thread

    def _run(self) -> None:
        while True:
            taken = self._next_jobs()
            if taken is None:
                return
            running = []
            for stream, job in taken:
                if job.future.set_running_or_notify_cancel():
                    running.append((stream, job))
                else:
                    self._done(stream)
            if not running:
                continue
            results: list[Any] = []
            error: BaseException | None = None
            try:
                if len(running) == 1:
                    results = [running[0][1].fn()]
                else:
                    batch = running[0][1].batch
                    assert batch is not None  # only jobs with a Batch are taken together
                    results = batch.run([job.batch.item for _, job in running if job.batch is not None])
                    if len(results) != len(running):
                        raise RuntimeError(f"a batch of {len(running)} jobs gave {len(results)} results")
            except BaseException as exc:  # reported to the streams that submitted them
                log.exception("inference job failed")
                error = exc
            with self._lock:  # several workers count
                self.jobs_run += len(running)
                if len(running) > 1:
                    self.batches_run += 1
                    self.batched_jobs += len(running)
            for i, (stream, job) in enumerate(running):
                # The stream's books first: whoever the result wakes sees its slot as it now is.
                self._done(stream)
                if error is not None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(results[i])

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking streams, cancel queued jobs, let the running one finish."""
        with self._lock:
            self._stopping = True
            for stream in self._streams.values():
                for job in stream.jobs:
                    job.future.cancel()
                stream.jobs.clear()
            self._lock.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()


@dataclass(frozen=True)
class StreamHandle:
    """One stream's access to the scheduler; ``close`` it when the stream ends."""

    scheduler: InferenceScheduler
    id: int

    def submit(
        self,
        fn: Callable[[], Any],
        *,
        partial_key: Hashable | None = None,
        final_key: Hashable | None = None,
        batch: Batch | None = None,
        urgent: bool = False,
    ) -> concurrent.futures.Future[Any]:
        """Queue ``fn``; a ``partial_key`` makes it replaceable, a ``final_key`` drops queued partials,
        a ``batch`` lets a partial run together with other streams', ``urgent`` serves a replaceable job
        in the finals' turn, never batched (see the module docstring)."""
        return self.scheduler._submit(self.id, fn, partial_key, final_key, batch, urgent)

    def close(self, *, cancel: bool = False) -> None:
        """Release the stream's slot: at once with ``cancel``, else once its queued jobs have run."""
        self.scheduler._close(self.id, cancel)
