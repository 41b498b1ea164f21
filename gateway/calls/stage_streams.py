"""A live call's streams to the chopper and the scorer, re-opened when the process behind one goes away.

A chopper or scorer that dies (a crash, a SIGKILL, a rolling restart) ends the call's stream with
UNAVAILABLE (or, through Envoy, INTERNAL / UNKNOWN). The call does not fail for that: the stream is opened
again through the same channel (Envoy sends it to any healthy replica, the supervisor restarts the dead
one), with back-off, for up to ``SessionSettings.stage_reopen_s``, and what the old stream had not answered
is sent again:

- **the scorer** is stateless: every utterance sent and not yet scored is sent again, in id order. A score
  is taken once per utterance id, so one that the old stream answered late is never taken twice.
- **the chopper** keeps state per call (utterance ids, the previous utterance as context): the new stream
  starts with ``ChopResume`` (the next id, the last text) and gets every transcript segment from the last one
  answered on, in order. Utterances of that last segment come back again and are dropped by their content
  (channel, segment, times, text), so nothing is doubled; the segment is resent because its answer may have
  been cut off midway.

Any other status (INVALID_ARGUMENT: the call's own input; DEADLINE_EXCEEDED) still fails the call, as does
a stage that stays away longer than the budget. The ASR's stream is re-opened the same way, with the audio
it had not made finals of (gateway/calls/asr_stream.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from callsense.v1 import asr_pb2, audio_pb2, chopper_pb2, chopper_pb2_grpc, scorer_pb2, scorer_pb2_grpc
from gateway.calls.errors import StageError
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

REOPENABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}
)
"""What a stage that went away looks like from the client (directly, or through Envoy)."""


@dataclass
class Reopening:
    """How long a call waits for a stage to come back, and how often it tries."""

    stage: str
    call_id: str
    budget_s: float
    metrics: GatewayMetrics
    first_delay_s: float = 0.2
    max_delay_s: float = 2.0
    _since: float | None = None
    _delay_s: float = 0.0

    async def after(self, exc: grpc.aio.AioRpcError) -> None:
        """Wait before the next attempt, or raise StageError when the failure is final."""
        now = time.monotonic()
        if self._since is None:
            self._since, self._delay_s = now, self.first_delay_s
        if exc.code() not in REOPENABLE or now - self._since > self.budget_s:
            raise StageError(self.stage, exc) from exc
        log.warning(
            "call %s: the %s stream failed (%s); opening it again",
            self.call_id,
            self.stage,
            exc.code().name,
            extra={"call_id": self.call_id},
        )
        self.metrics.count("callsense_gateway_stage_reopens_total", stage=self.stage)
        await asyncio.sleep(self._delay_s)
        self._delay_s = min(self._delay_s * 2, self.max_delay_s)

    def answered(self) -> None:
        """The stage answered: a later failure gets the whole budget again."""
        self._since = None


async def stop_stream(call: Any, writer: asyncio.Task[None]) -> None:
    """End a stream and its writer task, whatever state either is in."""
    writer.cancel()
    call.cancel()  # a no-op once finished; ends the RPC when the call's task is cancelled
    await asyncio.gather(writer, return_exceptions=True)


class ChopperStream:
    """The call's Chop stream: transcript finals in (from ``inbox``; None ends the call), utterances out."""

    def __init__(
        self,
        call_id: str,
        stub: chopper_pb2_grpc.ChopperStub,
        inbox: asyncio.Queue[asr_pb2.TranscriptEvent | None],
        stop_reason: Callable[[], str],
        reopening: Reopening,
        *,
        taken_over: chopper_pb2.ChopResume | None = None,
    ) -> None:
        """``taken_over``: the call was begun by another gateway (its stored utterances' next id and last
        text), so even the first stream resumes it."""
        self._call_id = call_id
        self._stub = stub
        self._inbox = inbox
        self._stop_reason = stop_reason
        self._reopening = reopening
        self._unanswered: deque[asr_pb2.TranscriptEvent] = deque()  # from the last answered segment on
        self._ended = False  # the end was taken from the inbox
        self._seen: set[tuple[int, int, int, int, str]] = set()  # utterances of the last answered segment
        self._seen_segment: tuple[int, int] | None = None
        self._next_id = taken_over.next_utterance_id if taken_over else 0
        self._previous_text = taken_over.previous_text if taken_over else ""
        self._taken_over = taken_over

    async def run(self, on_utterance: Callable[[chopper_pb2.Utterance], Awaitable[None]]) -> None:
        resume = self._taken_over
        while True:
            call = self._stub.Chop()
            writer = asyncio.create_task(self._write(call, resume))
            try:
                async for utterance in call:
                    if self._take(utterance):
                        self._reopening.answered()
                        await on_utterance(utterance)
                return
            except grpc.aio.AioRpcError as exc:
                await self._reopening.after(exc)
                resume = chopper_pb2.ChopResume(
                    next_utterance_id=self._next_id, previous_text=self._previous_text
                )
            finally:
                await stop_stream(call, writer)

    async def _write(self, call: Any, resume: chopper_pb2.ChopResume | None) -> None:
        first = True

        def request(**payload: Any) -> chopper_pb2.ChopRequest:
            nonlocal first
            message = chopper_pb2.ChopRequest(call_id=self._call_id, **payload)
            if first and resume is not None:
                message.resume.CopyFrom(resume)
            first = False
            return message

        for sent in tuple(self._unanswered):  # a re-opened stream: what the old one had not answered
            await call.write(request(transcript=sent))
        while not self._ended:
            event = await self._inbox.get()
            if event is None:
                self._ended = True
                break
            self._unanswered.append(event)  # before the write: a write cut short is sent again
            await call.write(request(transcript=event))
        end = audio_pb2.CallEnd(call_id=self._call_id, reason=self._stop_reason())
        await call.write(request(end=end))
        await call.done_writing()

    def _take(self, utterance: chopper_pb2.Utterance) -> bool:
        """Record an utterance as the answer to its segment; False for one already taken (re-cut)."""
        segment = (utterance.channel, utterance.source_segment_id)
        key = (*segment, utterance.start_ms, utterance.end_ms, utterance.text)
        if segment == self._seen_segment and key in self._seen:
            return False
        if segment != self._seen_segment:
            self._seen_segment, self._seen = segment, set()
            # Every segment sent before this one is answered; this one stays until the next is.
            while self._unanswered and _segment_of(self._unanswered[0]) != segment:
                self._unanswered.popleft()
        self._seen.add(key)
        self._next_id = max(self._next_id, utterance.utterance_id + 1)
        self._previous_text = utterance.text
        return True


def _segment_of(event: asr_pb2.TranscriptEvent) -> tuple[int, int]:
    return event.channel, event.segment_id


class ScorerStream:
    """The call's Score stream: utterances in (from ``utterances``; None ends it), one score each out."""

    def __init__(
        self,
        call_id: str,
        stub: scorer_pb2_grpc.ScorerStub,
        utterances: asyncio.Queue[chopper_pb2.Utterance | None],
        reopening: Reopening,
    ) -> None:
        self._call_id = call_id
        self._stub = stub
        self._utterances = utterances
        self._reopening = reopening
        self._pending: dict[int, tuple[chopper_pb2.Utterance, float]] = {}  # id -> (utterance, sent at)
        self._ended = False

    async def run(
        self, on_score: Callable[[chopper_pb2.Utterance, scorer_pb2.SentimentScore, float], Awaitable[None]]
    ) -> None:
        """``on_score(utterance, score, sent_at)`` once per utterance, in the order the scorer answers."""
        while True:
            call = self._stub.Score()
            writer = asyncio.create_task(self._write(call))
            try:
                async for score in call:
                    entry = self._pending.pop(score.utterance_id, None)
                    if entry is None:  # an answer the old stream sent late: already taken
                        continue
                    self._reopening.answered()
                    await on_score(entry[0], score, entry[1])
                break
            except grpc.aio.AioRpcError as exc:
                await self._reopening.after(exc)
            finally:
                await stop_stream(call, writer)
        if self._pending:
            raise RuntimeError(f"the scorer answered no score for {len(self._pending)} utterance(s)")

    async def _write(self, call: Any) -> None:
        for utterance_id in sorted(self._pending):  # a re-opened stream: what is still unscored
            unscored = self._pending[utterance_id][0]
            await call.write(scorer_pb2.ScoreRequest(call_id=self._call_id, utterance=unscored))
        while not self._ended:
            utterance = await self._utterances.get()
            if utterance is None:
                self._ended = True
                break
            self._pending[utterance.utterance_id] = (utterance, time.perf_counter())
            await call.write(scorer_pb2.ScoreRequest(call_id=self._call_id, utterance=utterance))
        await call.done_writing()
