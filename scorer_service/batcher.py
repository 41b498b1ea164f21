"""Micro-batching of scoring requests from every concurrent stream into few forward passes.

Plain asyncio, no gRPC. Every stream's requests go into ONE bounded queue; a collector task takes up to
``max_batch`` items, or as many as arrived within ``max_wait_ms`` of the oldest one, splits them into
buckets of similar token length (a batch is padded to its longest item, and the field notes measured that
padding ate the whole gain of batching), and runs each bucket as one ``predict_encoded`` call on a single
dedicated inference thread. The model is not thread-safe and a forward pass takes milliseconds of CPU, so
it must never run on the event loop nor on two threads at once. (On the CPU backend a call makes one pass
per item, so that a score never depends on its batch-mates; the group still costs one thread hop.)

Why this shape:
- Tokenisation happens in the caller, before ``submit``: a text the model cannot take raises
  ``TextRejected`` for that request alone and never occupies a batch slot.
- While one batch is on the inference thread, new requests queue up; the next batch takes them all at
  once (up to ``max_batch``), so batches grow with load and stay at 1 when the service is idle.
  A request that finds the queue empty is sent alone at once; when others are already queued with it (a
  burst), the collector waits for more up to ``max_wait_ms`` from the oldest one's arrival, so a request
  never waits for batch-mates longer than that.
- The queue is bounded: when it is full, ``submit`` waits. That pushes back on the gRPC streams (HTTP/2
  flow control) instead of letting memory and latency grow without limit.
- ``max_batch=1`` or ``max_wait_ms=0`` turns micro-batching off (one request per forward pass, never a
  wait), so the benchmark can compare against it.
- A request may name the model it is for (``submit(encoded, model)``): the one whose tokenizer encoded
  it. While the scorer swaps in a new model version, requests encoded by the old one are still queued;
  a forward pass never mixes models, so each is scored by the model that encoded it, on the same single
  inference thread (the old model is dropped once its last request is done).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from callsense.tokenization import EncodedText
from scorer_service.inference import Prediction

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_QUEUE = 1024
# Bucketing: items share a forward pass when the longest is at most this much longer than the shortest.
# 8 tokens is about one short clause; 25 % keeps the padded share small for long utterances too.
DEFAULT_SLACK_TOKENS = 8
DEFAULT_SLACK_RATIO = 0.25


class BatcherClosed(RuntimeError):
    """``submit`` after ``close()``: the scorer is shutting down."""


class Predictor(Protocol):
    """What the batcher needs of the model (``SentimentModel`` has it)."""

    def predict_encoded(self, batch: Sequence[EncodedText]) -> list[Prediction]: ...


@dataclass(frozen=True)
class Scored:
    """The result of one request."""

    prediction: Prediction
    inference_ms: float
    """Time of the forward pass that held this request (queueing excluded)."""
    batch_size: int
    """Number of requests in that forward pass."""


@dataclass(frozen=True)
class BatchReport:
    """One forward pass, for metrics (``on_batch`` gets one per pass, on the event loop)."""

    size: int
    tokens: int
    """Padded width of the pass (its longest item)."""
    inference_ms: float
    queue_depth: int
    """Requests still waiting in the queue when the pass finished."""


@dataclass
class BatcherStats:
    """Running totals since start (cheap to keep; read them for tests, logs and the benchmark)."""

    requests: int = 0
    """Requests scored."""
    dropped: int = 0
    """Requests whose caller gave up (cancelled) before their forward pass: skipped."""
    batches: int = 0
    failed_batches: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    """How many forward passes had each size."""

    @property
    def mean_batch_size(self) -> float:
        return self.requests / self.batches if self.batches else 0.0

    @property
    def max_batch_size(self) -> int:
        return max(self.batch_sizes, default=0)

    @property
    def padding_fraction(self) -> float:
        """Share of the tokens fed to the model that were padding."""
        return 1.0 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0


@dataclass
class _Request:
    encoded: EncodedText
    future: asyncio.Future[Scored]
    enqueued_at: float  # loop.time() of submit
    model: Predictor


def plan_buckets(
    lengths: Sequence[int],
    max_batch: int,
    slack_tokens: int = DEFAULT_SLACK_TOKENS,
    slack_ratio: float = DEFAULT_SLACK_RATIO,
) -> list[list[int]]:
    """Group item indices into forward passes of similar length, each at most ``max_batch`` long.

    Sorted by length, a new group starts when an item is longer than the group's shortest by more than
    ``max(slack_tokens, slack_ratio * shortest)``: padding waste stays bounded while short utterances
    (most of a call) still share a pass. Indices within a group keep ascending length.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    shortest = 0
    for index in order:
        length = lengths[index]
        fits = current and len(current) < max_batch
        if fits and length - shortest <= max(slack_tokens, slack_ratio * shortest):
            current.append(index)
            continue
        if current:
            groups.append(current)
        current, shortest = [index], length
    if current:
        groups.append(current)
    return groups


class MicroBatcher:
    """Collects requests from all streams into length-bucketed forward passes on one inference thread.

    Use it from one event loop. It starts on the first ``submit`` (or ``start()``); ``close()`` stops
    taking requests, finishes every queued one and stops the thread. Usable as ``async with``.
    """

    def __init__(
        self,
        model: Predictor,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        slack_tokens: int = DEFAULT_SLACK_TOKENS,
        slack_ratio: float = DEFAULT_SLACK_RATIO,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.model = model
        # max_batch=1 or max_wait_ms=0 both mean "no micro-batching" (the benchmark's baseline): one
        # request per forward pass, nothing waited for.
        self.max_batch = 1 if max_wait_ms == 0 else max_batch
        self.max_wait_s = 0.0 if self.max_batch == 1 else max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.slack_tokens = slack_tokens
        self.slack_ratio = slack_ratio
        self.on_batch = on_batch
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Request | None] | None = None  # None in the queue: stop
        self._collector: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._putting = 0  # submitters inside queue.put (blocked by back-pressure, or about to return)
        self._puts_done: asyncio.Event | None = None

    # ----------------------------------------------------------------------------------------- public

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a forward pass (not counting the one running)."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Start the collector and the inference thread; needs a running loop. Idempotent."""
        if self._collector is not None:
            return
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        # Created here, not in __init__: asyncio objects belong to the loop that first uses them.
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._puts_done = asyncio.Event()
        self._puts_done.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer-inference")
        self._collector = asyncio.get_running_loop().create_task(self._collect(), name="micro-batcher")

    async def submit(self, encoded: EncodedText, model: Predictor | None = None) -> Scored:
        """Queue one encoded text and wait for its prediction; waits first while the queue is full.

        ``model``: the model to score it with (the one that encoded it); default ``self.model``. Cancelling
        the caller drops the request (it is skipped if its batch has not run yet).
        """
        if self._closed:
            raise BatcherClosed("the scorer is shutting down; retry on another replica")
        self.start()
        assert self._queue is not None and self._puts_done is not None and self._collector is not None
        if self._collector.done():  # a bug killed the collector: fail now rather than hang forever
            raise RuntimeError("the micro-batcher's collector has stopped")
        loop = asyncio.get_running_loop()
        request = _Request(encoded, loop.create_future(), loop.time(), model or self.model)
        self._putting += 1
        self._puts_done.clear()
        try:
            await self._queue.put(request)  # back-pressure: waits while max_queue requests are queued
        finally:
            self._putting -= 1
            if self._putting == 0:
                self._puts_done.set()
        request.enqueued_at = loop.time()  # its wait for batch-mates starts once it is in the queue
        return await request.future

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, then stop the inference thread."""
        if self._closed:
            if self._collector is not None:
                await self._collector  # another close() is draining: return when it is done
            return
        self._closed = True
        if self._collector is None or self._queue is None:
            return
        # The stop marker must come after every accepted request: first let the submitters that are
        # blocked on a full queue get in (a woken putter can otherwise lose its turn to our put).
        assert self._puts_done is not None
        await self._puts_done.wait()
        await self._queue.put(None)
        await self._collector
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> MicroBatcher:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --------------------------------------------------------------------------------------- internal

    async def _collect(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await queue.get()
            if first is None:
                break
            batch = [first]
            deadline = first.enqueued_at + self.max_wait_s
            while len(batch) < self.max_batch:
                try:  # take what is already there without yielding to the loop
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or len(batch) == 1:
                        # A request that finds no company goes at once: at low load waiting is pure
                        # latency, and under load requests pile up behind the running forward pass and
                        # batch themselves. Only a burst already under way is worth waiting for.
                        break
                    try:
                        # Queue.get is cancellation-safe and wait_for returns an item that won the race
                        # with the timeout, so no request is lost here.
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                await self._run(batch)
            except Exception:  # never let one bad batch stop the collector; _run failed its futures
                log.exception("micro-batch failed")

    async def _run(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        live = [r for r in batch if not r.future.done()]  # callers that gave up need no forward pass
        self.stats.dropped += len(batch) - len(live)
        if not live:
            return
        for model, requests in _by_model(live):
            for group in plan_buckets(
                [len(r.encoded) for r in requests], self.max_batch, self.slack_tokens, self.slack_ratio
            ):
                await self._forward(loop, model, [requests[i] for i in group])

    async def _forward(
        self, loop: asyncio.AbstractEventLoop, model: Predictor, requests: list[_Request]
    ) -> None:
        """One forward pass of ``requests`` through ``model`` on the inference thread; settles their
        futures (with its exception when it fails)."""
        encoded = [r.encoded for r in requests]
        try:
            predictions, inference_ms = await loop.run_in_executor(self._executor, _timed, model, encoded)
        except Exception as exc:
            self.stats.failed_batches += 1
            for request in requests:
                if not request.future.done():
                    request.future.set_exception(exc)
            log.exception("forward pass of %d items failed", len(requests))
            return
        size = len(requests)
        width = max(len(e) for e in encoded)
        self.stats.requests += size
        self.stats.batches += 1
        self.stats.batch_sizes[size] += 1
        self.stats.padded_tokens += width * size
        self.stats.real_tokens += sum(len(e) for e in encoded)
        for request, prediction in zip(requests, predictions, strict=True):
            if not request.future.done():
                request.future.set_result(Scored(prediction, inference_ms, size))
        if self.on_batch is not None:
            try:
                self.on_batch(BatchReport(size, width, inference_ms, self.queue_depth))
            except Exception:  # metrics must never break scoring
                log.exception("on_batch hook failed")


def _by_model(requests: list[_Request]) -> list[tuple[Predictor, list[_Request]]]:
    """``requests`` grouped by the model they are for, in order of first appearance (by identity: a model
    need not be hashable)."""
    groups: dict[int, tuple[Predictor, list[_Request]]] = {}
    for request in requests:
        groups.setdefault(id(request.model), (request.model, []))[1].append(request)
    return list(groups.values())


def _timed(model: Predictor, encoded: list[EncodedText]) -> tuple[list[Prediction], float]:
    """Runs on the inference thread: one forward pass and its duration in ms."""
    started = time.perf_counter()
    predictions = model.predict_encoded(encoded)
    return predictions, (time.perf_counter() - started) * 1000.0
