"""The Scorer gRPC service: a thin layer over ``SentimentModel`` and the ``MicroBatcher``.

``Score`` (bidi stream) answers each ScoreRequest with one SentimentScore, in request order. A stream's
requests are read as they come and scored concurrently (so they join forward passes with each other and
with every other stream), then emitted in the order they were sent: a call's scores never overtake each
other. At most ``max_in_flight`` requests of one stream are being scored at a time; past that, reading
pauses and HTTP/2 flow control pushes back on the client.

``ScoreBatch`` (unary) checks and tokenises the whole list first, then scores it through the same batcher,
so after-the-fact batches share forward passes with live calls.

Bad input, and why it ends the stream: ``SentimentScore`` has no error field, and a made-up score for a
rejected utterance (a 0 would read as "most negative") would be worse than no score. So a request without
``call_id``, with empty text or with text over the model's 128 tokens ends the stream with
INVALID_ARGUMENT whose message names the call, the utterance id and what to fix. Every utterance sent
before the bad one still gets its score first (results are emitted in order; the abort comes in the bad
utterance's slot). Only that stream ends: other streams on the same server and channel go on. The chopper
guarantees non-empty text under 128 tokens, so a rejection means a client bug, which should be loud.
(If the contract gains a per-utterance error, the stream could go on instead.) ``ScoreBatch`` fails as a
whole with INVALID_ARGUMENT naming the index of the first bad utterance.

Text longer than ``MAX_TEXT_CHARS`` is rejected without tokenising it: tokenising runs on the event loop
(about 0.2 ms for an utterance) and a 1 MB text would hold every stream up for half a second.

Model versions: the servicer scores with ``model`` until ``swap_model`` hands it another (the rolling reload
of scorer_service/reload.py). An utterance is scored by the model whose tokenizer encoded it, through the
one batcher (a forward pass never mixes models), so requests already queued or in a forward pass finish on
the old model, new ones go to the new model, and none fails. Each score's ``model_version`` is the
version that scored it. ``ModelVersionTrailer`` adds the served version to every health check's trailing
metadata (the health protocol has no field for it), which the gateway's /readyz reports.

Tone (issue 15): with a ``ToneFuser``, an utterance that carries prosody is scored on its text, then fused
with how it was said (scorer_service/fusion). The speaker's baseline is read and updated when the request
is read, in the stream's order (so it grows as the call went, whatever order the batcher finishes in);
the fusion itself is a few microseconds of NumPy on the event loop once the text probabilities are back.
``Score`` keeps each call's baselines while a stream carries it (bounded, idle calls evicted:
fusion/calls.py) and lets them go when the last stream carrying it ends; ``ScoreBatch`` reads each call of
the request on its own, from its first utterance there, and keeps nothing. Every score carries the text
model's probabilities beside the fused ones; without prosody they are the same and ``tone_fused`` is false.

Telemetry: each utterance is scored in a ``scorer.score_utterance`` span opened inside
``call_context(call_id)``, so it carries ``call.id`` (a shared stream may carry several calls); metrics are
the forward-pass latency (``callsense.scorer.inference``), batch sizes (``callsense.scorer.batch_size``),
time from request to score (``callsense.scorer.latency``), the queue depth
(``callsense.scorer.queue_depth``, an observable gauge over every batcher in the process) and the model
served (``callsense.scorer.model``: 1 per servicer, with its ``model.version`` and ``scorer.backend``, an
info metric).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from opentelemetry import metrics

from callsense import telemetry
from callsense.grpc_runtime import HEALTH_SERVICE_NAME, MODEL_VERSION_TRAILER
from callsense.tokenization import EncodedText, TextRejected
from callsense.v1 import chopper_pb2, scorer_pb2, scorer_pb2_grpc
from scorer_service.batcher import BatcherClosed, BatchReport, MicroBatcher
from scorer_service.fusion.features import FloatArray
from scorer_service.fusion.tone import ToneFuser
from scorer_service.inference import SentimentInput, SentimentModel
from scorer_service.offline import MAX_PREVIOUS_CHARS, role_of, score_message

log = logging.getLogger(__name__)

SERVICE_NAME = "callsense.v1.Scorer"
MAX_TEXT_CHARS = 8192
"""Longer texts are refused before tokenising; 128 tokens of speech are well under 1,000 characters."""
DEFAULT_MAX_IN_FLIGHT = 64

BATCH_SIZE_BUCKETS: Sequence[float] = (1, 2, 4, 8, 16, 32, 64, 128)


class Rejected(ValueError):
    """A request that cannot be scored as sent; the message says which one and what to fix."""


# ------------------------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class _Metrics:
    inference: metrics.Histogram
    batch_size: metrics.Histogram
    latency: metrics.Histogram


def _metrics() -> _Metrics:
    return _Metrics(
        inference=telemetry.histogram(
            "callsense.scorer.inference", description="Forward-pass time of one micro-batch"
        ),
        batch_size=telemetry.histogram(
            "callsense.scorer.batch_size",
            unit="1",
            description="Utterances per forward pass",
            boundaries=BATCH_SIZE_BUCKETS,
        ),
        latency=telemetry.histogram(
            "callsense.scorer.latency", description="Request received to score ready (queueing included)"
        ),
    )


# Every live batcher of the process reports into one gauge (observable gauges are registered once).
_batchers: weakref.WeakSet[MicroBatcher] = weakref.WeakSet()
_gauge_lock = threading.Lock()
_gauge_registered = False


def _observe_queue_depth(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    yield metrics.Observation(sum(b.queue_depth for b in list(_batchers)))


def _register_queue_gauge(batcher: MicroBatcher) -> None:
    global _gauge_registered
    with _gauge_lock:
        _batchers.add(batcher)
        if not _gauge_registered:
            metrics.get_meter("callsense").create_observable_gauge(
                "callsense.scorer.queue_depth",
                callbacks=[_observe_queue_depth],
                unit="1",
                description="Utterances waiting for a forward pass",
            )
            _gauge_registered = True


# Every servicer of the process reports the model it serves into one info gauge (registered once).
_servicers: weakref.WeakSet[ScorerServicer] = weakref.WeakSet()
_model_gauge_registered = False


def observe_models(_options: metrics.CallbackOptions | None = None) -> Iterable[metrics.Observation]:
    """The ``callsense.scorer.model`` gauge's observations: 1 per servicer, labelled with what it serves."""
    for servicer in list(_servicers):
        model = servicer.model
        attributes = {"model.version": model.info.version, "scorer.backend": model.backend.name}
        yield metrics.Observation(1, attributes)


def _register_model_gauge(servicer: ScorerServicer) -> None:
    global _model_gauge_registered
    with _gauge_lock:
        _servicers.add(servicer)
        if not _model_gauge_registered:
            metrics.get_meter("callsense").create_observable_gauge(
                "callsense.scorer.model",
                callbacks=[observe_models],
                unit="1",
                description="The model version served (1, labelled with model.version and scorer.backend)",
            )
            _model_gauge_registered = True


# ------------------------------------------------------------------------------------------ servicer


@dataclass(frozen=True)
class _Encoded:
    """An utterance's tokens and the model whose tokenizer made them (the one that must score them)."""

    model: SentimentModel
    tokens: EncodedText


class ScorerServicer(scorer_pb2_grpc.ScorerServicer):
    """Scores utterances with ``model`` through ``batcher`` (which must wrap the same model).

    Construct it, and use it, on the server's event loop. ``swap_model`` serves another model from then on;
    ``close()`` drains the batcher.
    """

    def __init__(
        self,
        model: SentimentModel,
        batcher: MicroBatcher,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        tone: ToneFuser | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self._model = model
        self.tone = tone
        """None: every utterance is scored on its text alone."""
        self._streams_per_call: dict[str, int] = {}
        self.batcher = batcher
        self.max_in_flight = max_in_flight
        self._metrics = _metrics()
        previous_hook = batcher.on_batch

        def on_batch(report: BatchReport) -> None:
            self._metrics.inference.record(report.inference_ms)
            self._metrics.batch_size.record(report.size)
            if previous_hook is not None:
                previous_hook(report)

        batcher.on_batch = on_batch
        _register_queue_gauge(batcher)
        _register_model_gauge(self)

    @classmethod
    def create(
        cls,
        model: SentimentModel,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        tone: ToneFuser | None = None,
    ) -> ScorerServicer:
        """A servicer with its own batcher over ``model``."""
        batcher = MicroBatcher(model, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
        return cls(model, batcher, max_in_flight=max_in_flight, tone=tone)

    @property
    def model(self) -> SentimentModel:
        """The model new requests are encoded and scored with."""
        return self._model

    def swap_model(self, model: SentimentModel) -> None:
        """Serve ``model`` (loaded and warmed up) from now on; call it on the server's event loop.

        Requests encoded before keep the old model and are scored by it: a swap never fails a request nor
        gives one the wrong tokenizer's ids. The old model goes once its last request is done.
        """
        previous = self._model
        self._model = model
        self.batcher.model = model
        log.info("serving model %s (was %s)", model.info.version, previous.info.version)

    async def close(self) -> None:
        """Finish every queued utterance and stop the inference thread (after the server stopped)."""
        await self.batcher.close()

    # ------------------------------------------------------------------------------------------- RPCs

    async def Score(
        self, request_iterator: AsyncIterator[scorer_pb2.ScoreRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scorer_pb2.SentimentScore]:
        # Tasks in request order; None marks the end of the requests. The semaphore bounds the tasks.
        pending: asyncio.Queue[asyncio.Task[scorer_pb2.SentimentScore] | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.max_in_flight)
        calls: set[str] = set()  # the calls this stream carried: their baselines go when it ends
        reader = asyncio.create_task(self._read_stream(request_iterator, pending, slots, calls))
        try:
            while (task := await pending.get()) is not None:
                try:
                    score = await task
                except Exception as exc:
                    await self._abort(context, exc)
                    raise  # abort raises; not reached
                finally:
                    slots.release()
                yield score
            await reader  # surfaces a failure to read the requests
        finally:
            # The stream ended early (abort, client cancel): drop the work of the requests not emitted.
            reader.cancel()
            leftovers: list[asyncio.Future[Any]] = [reader]
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
                    leftovers.append(leftover)
            # Retrieve their outcomes, or asyncio logs "exception was never retrieved" for each.
            await asyncio.gather(*leftovers, return_exceptions=True)
            self._stream_ended(calls)

    async def ScoreBatch(
        self, request: scorer_pb2.ScoreBatchRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.ScoreBatchResponse:
        encoded: list[_Encoded] = []
        for index, utterance in enumerate(request.utterances):
            where = f"utterances[{index}]"
            try:
                if not utterance.call_id:
                    raise Rejected(f"{where}: call_id is required: set utterance.call_id")
                encoded.append(self._encode(utterance, where))
            except Rejected as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                raise  # abort raises; not reached
        # The request's calls on their own: a batch is whole calls after the fact, and the same request
        # must get the same answer whatever was scored before it.
        tone = self.tone.fresh() if self.tone is not None else None
        now = asyncio.get_running_loop().time()
        tasks = []
        for utterance, item in zip(request.utterances, encoded, strict=True):
            z = tone.observe(utterance.call_id, utterance, now) if tone is not None else None
            with telemetry.call_context(utterance.call_id):  # the task copies the context: its spans too
                tasks.append(asyncio.create_task(self._score_encoded(utterance, item, tone=tone, z=z)))
        try:
            scores = await asyncio.gather(*tasks)
        except Exception as exc:
            await self._abort(context, exc)
            raise  # abort raises; not reached
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return scorer_pb2.ScoreBatchResponse(scores=scores)

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
        """End the RPC with the status that fits ``exc`` (raises)."""
        if isinstance(exc, Rejected):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if isinstance(exc, BatcherClosed):
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        await context.abort(grpc.StatusCode.INTERNAL, f"scoring failed: {type(exc).__name__}: {exc}")

    # -------------------------------------------------------------------------------------- internals

    async def _read_stream(
        self,
        request_iterator: AsyncIterator[scorer_pb2.ScoreRequest],
        pending: asyncio.Queue[asyncio.Task[scorer_pb2.SentimentScore] | None],
        slots: asyncio.Semaphore,
        calls: set[str],
    ) -> None:
        try:
            index = 0
            async for request in request_iterator:
                await slots.acquire()  # at most max_in_flight of this stream's requests at once
                call_id = request.call_id or request.utterance.call_id
                z = self._observe_tone(request, calls)  # here: in the stream's order
                # Each request's task starts inside its own call context (tasks copy the context).
                with telemetry.call_context(call_id) if call_id else contextlib.nullcontext():
                    pending.put_nowait(asyncio.create_task(self._score_request(request, index, z)))
                index += 1
        finally:
            pending.put_nowait(None)  # unbounded queue: never blocks, also when cancelled

    def _observe_tone(self, request: scorer_pb2.ScoreRequest, calls: set[str]) -> FloatArray | None:
        """The request's deviation from its speaker's baseline (None: text alone); counts the stream as
        one that carries the call, so the call's baselines stay until the last such stream ends."""
        call_id = request.call_id
        if self.tone is None or not call_id or request.utterance.call_id not in ("", call_id):
            return None  # a bad request is refused by _score_request; it must not touch a baseline
        if call_id not in calls:
            calls.add(call_id)
            self._streams_per_call[call_id] = self._streams_per_call.get(call_id, 0) + 1
        return self.tone.observe(call_id, request.utterance, asyncio.get_running_loop().time())

    def _stream_ended(self, calls: set[str]) -> None:
        ended = set()
        for call_id in calls:
            left = self._streams_per_call.pop(call_id, 1) - 1
            if left > 0:
                self._streams_per_call[call_id] = left
            else:
                ended.add(call_id)
        if self.tone is not None:
            self.tone.release(ended)

    async def _score_request(
        self, request: scorer_pb2.ScoreRequest, index: int, z: FloatArray | None = None
    ) -> scorer_pb2.SentimentScore:
        utterance = request.utterance
        where = f"request {index} (utterance_id {utterance.utterance_id})"
        if not request.call_id:
            raise Rejected(f"{where}: call_id is required: set ScoreRequest.call_id to the call's id")
        if utterance.call_id and utterance.call_id != request.call_id:
            raise Rejected(
                f"{where}: call_id {request.call_id!r} differs from utterance.call_id "
                f"{utterance.call_id!r}: they must be equal"
            )
        where = f"call {request.call_id}, utterance_id {utterance.utterance_id}"
        encoded = self._encode(utterance, where)
        return await self._score_encoded(utterance, encoded, request.call_id, tone=self.tone, z=z)

    def _encode(self, utterance: chopper_pb2.Utterance, where: str) -> _Encoded:
        text = utterance.text
        if len(text) > MAX_TEXT_CHARS:
            raise Rejected(
                f"{where}: text is {len(text)} characters; the model takes at most 128 tokens (a few "
                "hundred characters): split it into utterances (the chopper service does this)"
            )
        model = self._model  # the utterance stays with this model, also if another is swapped in meanwhile
        try:
            tokens = model.encode(
                SentimentInput(
                    text, utterance.previous_text[-MAX_PREVIOUS_CHARS:], role_of(utterance.channel)
                )
            )
            return _Encoded(model, tokens)
        except TextRejected as exc:
            raise Rejected(f"{where}: {exc}") from None

    async def _score_encoded(
        self,
        utterance: chopper_pb2.Utterance,
        encoded: _Encoded,
        call_id: str | None = None,
        *,
        tone: ToneFuser | None = None,
        z: FloatArray | None = None,
    ) -> scorer_pb2.SentimentScore:
        loop = asyncio.get_running_loop()
        started = loop.time()
        version = encoded.model.info.version
        with telemetry.tracer("callsense.scorer").start_as_current_span("scorer.score_utterance") as span:
            span.set_attribute("utterance.id", utterance.utterance_id)
            span.set_attribute("scorer.tokens", len(encoded.tokens))
            span.set_attribute("model.version", version)
            scored = await self.batcher.submit(encoded.tokens, encoded.model)
            span.set_attribute("scorer.batch_size", scored.batch_size)
            span.set_attribute("scorer.inference_ms", scored.inference_ms)
            # The role prior is applied here, after the batch: it is per utterance, not per forward pass.
            text = encoded.model.for_role(scored.prediction, role_of(utterance.channel))
            fused = tone.fuse(text, z) if tone is not None and z is not None else None
            span.set_attribute("scorer.tone_fused", fused is not None)
        self._metrics.latency.record((loop.time() - started) * 1000.0)
        return score_message(
            call_id or utterance.call_id,
            utterance.utterance_id,
            text,
            fused,
            model_version=version,
            inference_ms=scored.inference_ms,
            batch_size=scored.batch_size,
        )


_HEALTH_CHECK = f"/{HEALTH_SERVICE_NAME}/Check"


class ModelVersionTrailer(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio is untyped here
    """Adds ``MODEL_VERSION_TRAILER``: the version ``servicer`` serves, to every health check's answer.

    The health protocol has no field for it, and readiness is where an operator looks during a rollout:
    which version each replica serves (the gateway's /readyz shows it). Install it with
    ``grpc_runtime.start_server(..., interceptors=[ModelVersionTrailer(servicer)])``.
    """

    def __init__(self, servicer: ScorerServicer) -> None:
        self._servicer = servicer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler_call_details.method != _HEALTH_CHECK or handler is None or handler.unary_unary is None:
            return handler
        check = handler.unary_unary
        servicer = self._servicer

        async def check_with_version(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            version = servicer.model.info.version
            if version.isascii() and version.isprintable():  # metadata values must be printable ASCII
                context.set_trailing_metadata(((MODEL_VERSION_TRAILER, version),))
            result = check(request, context)
            return await result if inspect.isawaitable(result) else result

        replaced: grpc.RpcMethodHandler = handler._replace(unary_unary=check_with_version)
        return replaced


def add_scorer(server: grpc.aio.Server, servicer: ScorerServicer) -> list[str]:
    """Register ``servicer`` on ``server``; returns the service names (for ``grpc_runtime``)."""
    scorer_pb2_grpc.add_ScorerServicer_to_server(servicer, server)
    return [SERVICE_NAME]
