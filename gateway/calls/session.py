"""A live call: one CallSession per call, the only place that knows the whole live pipeline.

A CallSession opens ONE ``Chopper.Chop`` stream and ONE ``Scorer.Score`` stream for its call (inside
``call_context(call_id)``, so every span downstream carries ``call.id``) and runs them as a pipeline:

    submit() -> inbox -> Chopper.Chop -> utterances -> Scorer.Score -> store.record_score -> publish

A call that declares audio also opens one ``Asr.Transcribe`` stream (at its first audio) whose finals feed
the inbox. Each scored utterance also goes through the call's ``LiveCoach`` (gateway/live.py, settings per
tenant): the badge changes and coaching cues it returns are call events like the scores, in the same
sequence, each right after the score that caused it. The partials of an audio call also go to its
``ProvisionalScorer`` (gateway/calls/provisional.py): the mood of a turn while it is being spoken, published
and never stored. The call ends through ``finish_call`` (gateway/calls/finish.py), the same end as a batch's.

Every hop is a bounded asyncio queue: a client that sends faster than the mesh scores waits in
``submit`` (and through it its socket), memory never grows without limit. Events go out through
Subscriptions (gateway/calls/fanout.py) that never block the call.

The transports do not drive a CallSession directly: they go through a ``CallDriver`` and the
``SessionRegistry`` (gateway/calls/registry.py), or the ``Gateway`` facade (gateway/calls/service.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

import grpc
import grpc.aio

from callsense.domain import Channel, UtteranceScore
from callsense.report import CallReport
from callsense.telemetry import call_context
from callsense.v1 import asr_pb2, chopper_pb2, scorer_pb2
from gateway.calls.asr_stream import AsrStream
from gateway.calls.audio import AudioCutter, AudioPiece
from gateway.calls.errors import ErrorCode, InputError, describe_failure
from gateway.calls.events import (
    CallOutcome,
    CallUpdate,
    LiveBadge,
    LiveCue,
    LiveError,
    LiveProvisional,
    LiveScore,
    LiveSummary,
    LiveTranscript,
)
from gateway.calls.fanout import Subscription
from gateway.calls.finish import finish_call
from gateway.calls.inputs import (
    AudioInputFormat,
    CallInfo,
    UtteranceInput,
    channel_from_role,
    transcript_event,
)
from gateway.calls.provisional import ProvisionalMood, ProvisionalScorer
from gateway.calls.settings import SessionSettings
from gateway.calls.stage_streams import ChopperStream, Reopening, ScorerStream
from gateway.calls.stages import Stages, utterance_score
from gateway.live import BadgeChange, LiveCoach, LiveEvent, ScoredUtteranceView, settings_for
from gateway.metrics import GatewayMetrics
from gateway.postcall_client import AfterCall
from gateway.spool import SpooledStore

log = logging.getLogger(__name__)


_SessionState = Literal["live", "stopping", "closed"]


class CallSession:
    """One live call: its two streams, its bounded queues, its subscribers, its statistics.

    Lifecycle: ``open()`` (stores the call, opens the streams), any number of ``submit()``, then
    ``stop()``: the chopper is flushed with a CallEnd, outstanding scores are awaited and stored, the
    summary is stored and published, subscribers are closed. A client that vanishes calls ``detach()``:
    what it sent is still scored and stored, and unless it comes back (``attach()``) within the grace
    period the call is stopped with reason ``client_gone``.
    """

    def __init__(
        self,
        call_id: str,
        metadata: CallInfo,
        *,
        store: SpooledStore,
        stages: Stages,
        metrics: GatewayMetrics,
        settings: SessionSettings,
        on_closed: Callable[[CallSession], None] = lambda _: None,
        audio: AudioInputFormat | None = None,
        after_call: AfterCall | None = None,
    ) -> None:
        self.call_id = call_id
        self.metadata = metadata
        self.audio = audio
        self._audio: asyncio.Queue[AudioPiece | None] = asyncio.Queue(settings.audio_queue_size)
        self._cutter = AudioCutter(audio) if audio is not None else None
        self._store = store
        self._stages = stages
        self._metrics = metrics
        self._settings = settings
        self._on_closed = on_closed
        self._after_call = after_call or AfterCall()
        self._store_text = self._after_call.tenants.for_tenant(metadata.tenant).store_transcripts
        """False: the tenant stores scores without what was said (the live clients still see it)."""
        self._inbox: asyncio.Queue[asr_pb2.TranscriptEvent | None] = asyncio.Queue(settings.inbox_size)
        self._utterances: asyncio.Queue[chopper_pb2.Utterance | None] = asyncio.Queue(
            settings.utterance_queue_size
        )
        self._state: _SessionState = "live"
        self._stop_reason = "hangup"
        self._segment_ids: dict[Channel, int] = {}
        self._accepted_at: dict[tuple[Channel, int], float] = {}  # (channel, segment_id) -> accept time
        self._scored: list[UtteranceScore] = []
        self._history: deque[CallUpdate] = deque(maxlen=settings.history_size)
        self._subscribers: set[Subscription] = set()
        self._next_seq = 0
        self._abort_reason: str | None = None
        self._pipeline: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._grace: asyncio.Task[None] | None = None
        self._idle_stop: asyncio.Future[CallOutcome] | None = None
        self._coach = LiveCoach(settings_for(metadata.tenant, settings.badge_settings))
        self._provisional = ProvisionalScorer(
            call_id,
            stages.scorer,
            self._publish_provisional,
            metrics,
            context=lambda: self._scored[-1].text if self._scored else "",
            settings=settings.provisional,
        )
        self._done: asyncio.Future[CallOutcome] = asyncio.get_running_loop().create_future()
        self.driver_attached = False
        self.accepted = 0
        self._taken_over: chopper_pb2.ChopResume | None = None
        self._stored_keys: set[tuple[str, int, int, str]] = set()
        """Utterances stored by the gateway that held the call before (``take_over``), by content."""

    # -- lifecycle

    def take_over(self, stored: Sequence[UtteranceScore]) -> None:
        """Go on with a call another gateway held (it died; the client came back here): its stored scores
        become this session's history (replayed to the client, fed to the badge), utterance ids go on after
        them, and an utterance the client sends again (same channel, times and text) is not scored twice. An
        audio call's audio without timestamps goes on after the last stored utterance's end."""
        for event in sorted(stored, key=lambda e: e.utterance_id):
            self._scored.append(event)
            self._stored_keys.add((event.channel, event.start_ms, event.end_ms, event.text))
            self._publish(functools.partial(self._score_update, event))
            self._coach_on(event)
        if self._scored:
            last = self._scored[-1]
            self._taken_over = chopper_pb2.ChopResume(
                next_utterance_id=max(e.utterance_id for e in self._scored) + 1, previous_text=last.text
            )
            if self._cutter is not None:
                self._cutter.continue_after(max(e.end_ms for e in self._scored))

    async def open(self) -> None:
        """Store the call's start and open its streams; the pipeline runs as tasks of this call."""
        await self._store.upsert_call_start(self.call_id, self.metadata.for_store())
        # Tasks copy the context they are created in: the streams they open carry call.id.
        with call_context(self.call_id):
            self._pipeline = asyncio.create_task(self._run_pipeline(), name=f"pipeline {self.call_id}")
            self._runner = asyncio.create_task(self._run(), name=f"session {self.call_id}")
        self._metrics.call_started()
        log.info("call %s started", self.call_id, extra={"call_id": self.call_id})

    @property
    def state(self) -> _SessionState:
        return self._state

    async def submit(self, utterance: UtteranceInput) -> None:
        """Accept one utterance; waits while the call's inbox is full (back-pressure on the client)."""
        if self._state != "live":
            raise InputError(
                ErrorCode.STOPPED, f"call {self.call_id} was stopped; nothing more is accepted for it"
            )
        channel = utterance.channel
        segment_id = self._segment_ids.get(channel, 0)
        self._segment_ids[channel] = segment_id + 1
        await self._enqueue(transcript_event(self.call_id, segment_id, utterance))
        self._accepted_at[(channel, segment_id)] = time.perf_counter()
        self.accepted += 1
        self._metrics.count("callsense_gateway_utterances_accepted_total")

    async def submit_audio(
        self, frame: bytes, *, role: Channel | None = None, timestamp_ms: int | None = None
    ) -> None:
        """Accept one frame of audio (any size up to MAX_AUDIO_FRAME_BYTES); it goes to the ASR in
        chunks of at most AUDIO_CHUNK_MS. Waits while the audio queue is full (back-pressure).

        Without ``role`` the frame holds every channel interleaved as the start declared; with ``role``
        (one of the call's channel_roles) it is that one channel's mono audio, tagged with its role for
        the ASR (e.g. the two tracks of a phone call arriving separately). ``timestamp_ms`` (call time of
        the frame's first sample) lets the ASR notice lost audio."""
        if self._cutter is None or self._stages.asr is None:
            raise InputError(
                ErrorCode.AUDIO_NOT_ENABLED,
                f"audio is not enabled for call {self.call_id}: declare it in start, e.g. "
                '"audio": {"encoding": "pcm16", "sample_rate_hz": 16000, "channels": 1, '
                '"channel_roles": ["customer"]}',
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        self._cutter.check(frame, role)
        if self._state != "live":
            raise InputError(
                ErrorCode.STOPPED, f"call {self.call_id} was stopped; nothing more is accepted for it"
            )
        for piece in self._cutter.cut(frame, role, timestamp_ms):
            await self._put(self._audio, piece)
        self._metrics.count("callsense_gateway_audio_bytes_total", len(frame))

    def report_error(self, err: InputError) -> None:
        """Publish a client's bad input as a (non-fatal) event of the call, for its watchers: for
        transports whose client reads nothing back (e.g. a telephony media stream)."""
        status = err.status.name
        self._publish(lambda seq: LiveError(self.call_id, seq, err.code, err.message, False, status))

    async def stop(self, reason: str = "hangup") -> CallOutcome:
        """Flush, wait for outstanding scores, store and publish the summary; idempotent."""
        if self._state == "live":
            self._state = "stopping"
            self._stop_reason = reason
            self._cancel_grace()
            with contextlib.suppress(InputError):  # a pipeline that already died needs no end marker
                # An audio call ends its ASR stream first; its last finals then flush the chopper.
                await self._put(self._audio if self.audio is not None else self._inbox, None)
            self._metrics.count("callsense_gateway_calls_stopped_total", reason=_reason_label(reason))
            assert self._pipeline is not None
            _, pending = await asyncio.wait({self._pipeline}, timeout=self._settings.finish_timeout_s)
            if pending:
                self._abort(f"outstanding scores did not arrive within {self._settings.finish_timeout_s:g} s")
        return await asyncio.shield(self._done)

    async def wait_closed(self) -> CallOutcome:
        return await asyncio.shield(self._done)

    def detach(self) -> None:
        """The driving client vanished: keep scoring what it sent, end the call after the grace period."""
        self.driver_attached = False
        if self._state == "live" and self._grace is None:
            self._grace = asyncio.create_task(self._expire_after_grace(), name=f"grace {self.call_id}")

    def attach(self) -> None:
        """A driving client (back) on this call."""
        self.driver_attached = True
        self._cancel_grace()

    def abort(self, reason: str) -> None:
        """End the call now as failed (gateway shutdown past its deadline)."""
        self._abort(reason)

    # -- fan-out

    def subscribe(self, *, replay: bool = True) -> Subscription:
        """A new subscriber; with replay it first gets the call's events so far (bounded history)."""
        sub = Subscription(self.call_id, self._settings.subscriber_queue_size)
        sub.on_drop = lambda n: self._metrics.count("callsense_gateway_events_dropped_total", n)
        if replay:
            for event in self._history:
                sub.offer(event)
        if self._done.done():
            sub.close()
        else:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        sub.close()

    def _publish(self, make: Callable[[int], CallUpdate]) -> None:
        event = make(self._next_seq)
        self._next_seq += 1
        self._history.append(event)
        for sub in tuple(self._subscribers):
            sub.offer(event)

    # -- the pipeline

    async def _enqueue(self, item: asr_pb2.TranscriptEvent | None) -> None:
        """Put into the inbox, waiting while it is full, unless the pipeline dies meanwhile."""
        await self._put(self._inbox, item)

    async def _put(self, queue: asyncio.Queue[Any], item: object) -> None:
        """Put into one of the call's input queues, waiting while it is full, unless the pipeline dies."""
        assert self._pipeline is not None
        if self._pipeline.done():
            raise InputError(
                ErrorCode.CALL_FAILED, f"call {self.call_id} has failed", grpc.StatusCode.FAILED_PRECONDITION
            )
        if not queue.full():
            queue.put_nowait(item)
            return
        put = asyncio.ensure_future(queue.put(item))
        await asyncio.wait({put, self._pipeline}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            raise InputError(
                ErrorCode.CALL_FAILED, f"call {self.call_id} has failed", grpc.StatusCode.FAILED_PRECONDITION
            )

    async def _run_pipeline(self) -> None:
        async with asyncio.TaskGroup() as group:
            if self.audio is not None:
                group.create_task(self._run_asr(self.audio))
            group.create_task(self._run_chopper())
            group.create_task(self._run_scorer())

    async def _run_asr(self, audio: AudioInputFormat) -> None:
        """Opens the call's Transcribe stream at its first audio (again if the ASR goes away), publishes
        every transcript event, feeds the finals to the chopper and, once the ASR has flushed its last
        finals, ends the chopper's stream."""
        first = await self._audio.get()
        if first is not None:
            assert self._stages.asr is not None
            asr = AsrStream(
                self._stages.asr,
                audio.call_start(self.call_id, self.metadata),
                self._next_audio,
                lambda: self._stop_reason,
                self._reopening("asr"),
                replay_ms=int(self._settings.asr_replay_s * 1000),
            )
            try:
                await asr.run(first, self._on_transcript)
            finally:
                await self._provisional.close()
        await self._inbox.put(None)

    async def _next_audio(self) -> AudioPiece | None:
        """The next piece of audio, or None at the end; stops the call once its audio has stopped for
        ``audio_idle_timeout_s`` (a client that went quiet without a stop must not hold it forever)."""
        try:
            async with asyncio.timeout(self._settings.audio_idle_timeout_s):
                return await self._audio.get()  # a get cut short by the timeout takes nothing
        except TimeoutError:
            log.info(
                "call %s: no audio for %g s; stopping it", self.call_id, self._settings.audio_idle_timeout_s
            )
            self._idle_stop = asyncio.ensure_future(self.stop("audio_timeout"))  # puts the end marker
            return await self._audio.get()

    async def _on_transcript(self, event: asr_pb2.TranscriptEvent) -> None:
        self._publish(lambda seq: LiveTranscript(self.call_id, seq, event))
        self._provisional.on_transcript(event)
        self._metrics.count("callsense_gateway_transcripts_total", final=str(event.is_final).lower())
        if event.is_final and event.text.strip():
            self._accepted_at[(channel_from_role(event.channel), event.segment_id)] = time.perf_counter()
            self.accepted += 1
            await self._inbox.put(event)

    def _publish_provisional(self, mood: ProvisionalMood) -> None:
        self._publish(lambda seq: LiveProvisional(self.call_id, seq, mood))

    async def _run_chopper(self) -> None:
        chopper = ChopperStream(
            self.call_id,
            self._stages.chopper,
            self._inbox,
            lambda: self._stop_reason,
            self._reopening("chopper"),
            taken_over=self._taken_over,
        )
        await chopper.run(self._on_chopped)
        await self._utterances.put(None)

    async def _on_chopped(self, utterance: chopper_pb2.Utterance) -> None:
        key = (channel_from_role(utterance.channel), utterance.start_ms, utterance.end_ms, utterance.text)
        if key in self._stored_keys:  # sent again after a gateway died: its score is in the history
            self._metrics.count("callsense_gateway_resent_utterances_total")
            return
        started = self._accepted_at.get((channel_from_role(utterance.channel), utterance.source_segment_id))
        if started is not None:
            self._metrics.observe_latency("chopper", (time.perf_counter() - started) * 1000)
        await self._utterances.put(utterance)

    async def _run_scorer(self) -> None:
        scorer = ScorerStream(self.call_id, self._stages.scorer, self._utterances, self._reopening("scorer"))
        await scorer.run(self._on_scored)

    async def _on_scored(
        self, utterance: chopper_pb2.Utterance, score: scorer_pb2.SentimentScore, sent_at: float
    ) -> None:
        self._metrics.observe_latency("scorer", (time.perf_counter() - sent_at) * 1000)
        await self._on_score(utterance, score)

    def _reopening(self, stage: str) -> Reopening:
        return Reopening(stage, self.call_id, self._settings.stage_reopen_s, self._metrics)

    async def _on_score(self, utterance: chopper_pb2.Utterance, score: scorer_pb2.SentimentScore) -> None:
        """Store a score (idempotent), then publish it: a subscriber never sees an unstored score."""
        event = utterance_score(utterance, score)
        self._scored.append(event)
        await self._store_score(event)
        started = self._accepted_at.get((event.channel, utterance.source_segment_id))
        if started is not None:
            self._metrics.observe_latency("end_to_end", (time.perf_counter() - started) * 1000)
        self._metrics.count("callsense_gateway_scores_total", label=event.label)
        self._publish(lambda seq: LiveScore(self.call_id, seq, event))
        self._coach_on(event)

    def _coach_on(self, event: UtteranceScore) -> None:
        """Feed a published score to the live rules and publish what they answer, after the score that
        caused it (so every subscriber, and a replay, sees cause before effect)."""
        view = ScoredUtteranceView(
            event.utterance_id, event.channel, event.start_ms, event.end_ms, event.text, event.score
        )
        try:
            live_events = self._coach.observe(view)
        except Exception:
            # A fault in the coaching rules must cost the call its badge, never its scores.
            log.exception("call %s: the live rules failed on utterance %d", self.call_id, event.utterance_id)
            return
        for live in live_events:
            if isinstance(live, BadgeChange):
                self._metrics.count("callsense_gateway_badge_changes_total", state=live.state.value)
            else:
                self._metrics.count("callsense_gateway_cues_total", topic=live.topic)
            self._publish(functools.partial(self._live_event, live))

    def _score_update(self, event: UtteranceScore, seq: int) -> CallUpdate:
        return LiveScore(self.call_id, seq, event)

    def _live_event(self, live: LiveEvent, seq: int) -> CallUpdate:
        if isinstance(live, BadgeChange):
            return LiveBadge(self.call_id, seq, live)
        return LiveCue(self.call_id, seq, live)

    async def _store_score(self, event: UtteranceScore) -> None:
        """Into the database, or into the spool while it is unreachable (gateway/spool.py): either way
        durable before anyone sees the score, and never a wait on the database of more than half a second."""
        started = time.perf_counter()
        try:
            await self._store.record_score(event if self._store_text else replace(event, text=""))
        except Exception:
            # Not a connection failure (those spool): the database refuses this write for good.
            log.exception("call %s: storing utterance %d failed", self.call_id, event.utterance_id)
            self._publish(
                lambda seq: LiveError(
                    self.call_id,
                    seq,
                    ErrorCode.STORAGE_FAILED,
                    f"utterance {event.utterance_id} was scored but could not be stored",
                    fatal=False,
                    status="UNAVAILABLE",
                )
            )
            return
        self._metrics.observe_latency("store", (time.perf_counter() - started) * 1000)

    # -- the end

    async def _run(self) -> None:
        assert self._pipeline is not None
        await asyncio.wait({self._pipeline})
        status: Literal["ended", "failed"] = "ended"
        reason = self._stop_reason
        if self._pipeline.cancelled():
            status, reason = "failed", "aborted"
            self._publish_failure(
                ErrorCode.TIMEOUT, self._abort_reason or "the call was aborted", "DEADLINE_EXCEEDED"
            )
        elif (exc := self._pipeline.exception()) is not None:
            status, reason = "failed", "stage_failed"
            self._publish_failure(ErrorCode.STAGE_FAILED, describe_failure(exc), "UNAVAILABLE")
        await self._finish(status, reason)

    def _publish_failure(self, code: str, message: str, status: str) -> None:
        log.error("call %s failed: %s", self.call_id, message)
        self._publish(lambda seq: LiveError(self.call_id, seq, code, message, fatal=True, status=status))

    async def _finish(self, status: Literal["ended", "failed"], reason: str) -> None:
        self._state = "closed"
        self._cancel_grace()
        summary = await finish_call(
            self.call_id,
            self._scored,
            status=status,
            reason=reason,
            store=self._store,
            after_call=self._after_call,
            badge=self._coach.badge_state,
            on_store_failure=self._on_end_not_stored,
            on_report_owed=self._on_report_owed,
            store_text=self._store_text,
        )
        self._publish(lambda seq: LiveSummary(self.call_id, seq, summary))
        for sub in tuple(self._subscribers):
            sub.close()
        self._subscribers.clear()
        self._metrics.call_ended(status, _reason_label(reason))
        self._done.set_result(summary)
        self._on_closed(self)
        log.info(
            "call %s %s (%s): %d utterances", self.call_id, status, reason, summary.stats.utterance_count
        )

    def _on_end_not_stored(self) -> None:
        """The call has ended but its end could not be stored: its watchers are told, the summary follows."""
        log.exception("call %s: storing the end of the call failed", self.call_id)
        self._publish(
            lambda seq: LiveError(
                self.call_id,
                seq,
                ErrorCode.STORAGE_FAILED,
                "the call's summary could not be stored",
                fatal=False,
                status="UNAVAILABLE",
            )
        )

    def _on_report_owed(self, report: CallReport) -> None:
        """The post-call worker did not build the report: the call's clients hear why its summary has no
        lines (the code is the same either way; the message says whether the worker is busy or away)."""
        if report.worker_busy:
            message = (
                "the post-call worker is busy with other calls' reports: the call and its scores are "
                "stored; its objection tags, summary lines and CRM push follow when the worker catches up"
            )
        else:
            message = (
                "the post-call worker is unavailable: the call and its scores are stored; its objection "
                "tags, summary lines and CRM push follow when the worker is back"
            )
        status = "RESOURCE_EXHAUSTED" if report.worker_busy else "UNAVAILABLE"
        self._publish(
            lambda seq: LiveError(
                self.call_id, seq, ErrorCode.POSTCALL_UNAVAILABLE, message, fatal=False, status=status
            )
        )

    def _abort(self, reason: str) -> None:
        if self._pipeline is not None and not self._pipeline.done():
            self._abort_reason = reason
            self._pipeline.cancel()

    async def _expire_after_grace(self) -> None:
        await asyncio.sleep(self._settings.grace_s)
        self._grace = None  # stop() must not cancel the task it runs in
        log.info("call %s: client gone for %.0f s; ending the call", self.call_id, self._settings.grace_s)
        await self.stop("client_gone")

    def _cancel_grace(self) -> None:
        grace, self._grace = self._grace, None
        if grace is not None and grace is not asyncio.current_task():
            grace.cancel()


_KNOWN_REASONS = frozenset(
    {
        "hangup",
        "client_gone",
        "client_closed",
        "shutdown",
        "aborted",
        "stage_failed",
        "batch",
        "audio_timeout",
    }
)


def _reason_label(reason: str) -> str:
    """Reasons are free text from clients: keep metric label values to a known few."""
    return reason if reason in _KNOWN_REASONS else "other"
