"""Live calls: one CallSession per call, the only place that knows the whole pipeline.

A CallSession opens ONE ``Chopper.Chop`` stream and ONE ``Scorer.Score`` stream for its call (inside
``call_context(call_id)``, so every span downstream carries ``call.id``) and runs them as a pipeline:

    submit() -> inbox -> Chopper.Chop -> utterances -> Scorer.Score -> store.record_score -> publish

Each scored utterance also goes through the call's ``LiveCoach`` (gateway/live.py, settings per tenant):
the badge changes and coaching cues it returns are call events like the scores, in the same sequence,
each right after the score that caused it.

Every hop is a bounded asyncio queue: a client that sends faster than the mesh scores waits in
``submit`` (and through it its socket), memory never grows without limit. Events go out through
Subscriptions that never block the call: a subscriber that reads too slowly has its backlog trimmed and
is told so with an error event (the ``seq`` numbers show the gap).

The transports (WebSocket in app.py, gRPC in grpc_api.py) stay thin: they parse their wire format and
drive a ``CallDriver`` (one client's side of the protocol: start, utterances, stop) or read a
Subscription. ``Gateway`` bundles what a process holds (stores, stage stubs, the registry, metrics) and
also serves the after-the-fact batch path and call look-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callsense.config import Config
from callsense.grpc_runtime import service_channel, service_name
from callsense.ids import is_valid_call_id
from callsense.telemetry import call_context
from callsense.v1 import (
    asr_pb2,
    asr_pb2_grpc,
    audio_pb2,
    chopper_pb2,
    chopper_pb2_grpc,
    scorer_pb2,
    scorer_pb2_grpc,
)
from gateway.enrichment.postcall import AfterCall
from gateway.enrichment.summary import CallReport, tag_names
from gateway.live import (
    BadgeChange,
    BadgeSettings,
    BadgeState,
    CoachingCue,
    LiveCoach,
    LiveEvent,
    ScoredUtteranceView,
    settings_for,
)
from gateway.stats import CallStatistics, GatewayMetrics, compute_call_stats
from gateway.store import CallRow, ScoredEvent, Store, StoreRouter, start_embedded_database

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- input rules

"""What a call_id may look like: what audio.proto's CallStart allows; safe in URLs, logs and span tags."""
MAX_TEXT_CHARS = 8_000
"""Longest utterance text accepted; longer text is rejected here, before it reaches the chopper, which
would end the call's whole stream over it (its own limit is 8,192 characters: stay at or below it)."""
MAX_METADATA_CHARS = 128
MAX_LABELS = 32
MAX_MS = 2**31 - 1
"""Times are stored as PostgreSQL integers: about 24 days of call time is the ceiling."""
MAX_BATCH_UTTERANCES = 5_000
MAX_AUDIO_FRAME_BYTES = 1 << 20
"""Largest binary (audio) frame accepted; the gateway cuts frames into chunks the ASR service takes."""
AUDIO_CHUNK_MS = 100
"""Longest AudioChunk sent to the ASR (it refuses chunks over 1 s of audio)."""
AUDIO_ENCODINGS: Mapping[str, int] = {
    "pcm16": audio_pb2.PCM16,
    "mulaw": audio_pb2.MULAW,
    "alaw": audio_pb2.ALAW,
}
_BYTES_PER_SAMPLE: Mapping[str, int] = {"pcm16": 2, "mulaw": 1, "alaw": 1}
MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ = 8_000, 48_000

Channel = Literal["customer", "agent", "mixed"]
CHANNELS: Mapping[str, int] = {
    "customer": audio_pb2.CUSTOMER,
    "agent": audio_pb2.AGENT,
    "mixed": audio_pb2.MIXED,
}
_ROLE_TO_CHANNEL: Mapping[int, Channel] = {
    audio_pb2.CUSTOMER: "customer",
    audio_pb2.AGENT: "agent",
    audio_pb2.MIXED: "mixed",
    audio_pb2.CHANNEL_ROLE_UNSPECIFIED: "mixed",  # audio.proto: unknown is treated like MIXED
}
_LABELS: Mapping[int, Literal["negative", "neutral", "positive"]] = {
    scorer_pb2.NEGATIVE: "negative",
    scorer_pb2.NEUTRAL: "neutral",
    scorer_pb2.POSITIVE: "positive",
}


class ErrorCode:
    """The ``code`` of error events and HTTP error bodies (snake_case, stable: clients switch on them)."""

    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_MESSAGE = "invalid_message"
    INVALID_CALL_ID = "invalid_call_id"
    INVALID_METADATA = "invalid_metadata"
    TEXT_TOO_LONG = "text_too_long"
    EMPTY_TEXT = "empty_text"
    INVALID_CHANNEL = "invalid_channel"
    INVALID_TIMES = "invalid_times"
    NOT_STARTED = "not_started"
    ALREADY_STARTED = "already_started"
    STOPPED = "stopped"
    CALL_ACTIVE = "call_active"
    CALL_ENDED = "call_ended"
    CALL_CONFLICT = "call_conflict"
    CALL_FAILED = "call_failed"
    NOT_FOUND = "not_found"
    AUDIO_NOT_ENABLED = "audio_not_enabled"
    INVALID_AUDIO_FORMAT = "invalid_audio_format"
    FRAME_TOO_LARGE = "frame_too_large"
    TOO_MANY_UTTERANCES = "too_many_utterances"
    SLOW_CONSUMER = "slow_consumer"
    STAGE_FAILED = "stage_failed"
    DATABASE_UNAVAILABLE = "database_unavailable"
    STORAGE_FAILED = "storage_failed"
    TIMEOUT = "timeout"
    INVALID_RECORDING = "invalid_recording"
    RECORDING_TOO_LARGE = "recording_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NO_SPEECH = "no_speech"


class InputError(Exception):
    """A client's message cannot be used. ``code`` is an ErrorCode; ``status`` its gRPC equivalent."""

    def __init__(
        self, code: str, message: str, status: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class CallMetadata:
    """Who and where a call belongs to (audio.proto's CallMetadata)."""

    tenant: str = ""
    agent: str = ""
    team: str = ""
    region: str = ""
    language: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def for_store(self) -> dict[str, Any]:
        """tenant/agent/team/region/language get columns; labels land in calls.metadata."""
        return {
            "tenant": self.tenant,
            "agent": self.agent,
            "team": self.team,
            "region": self.region,
            "language": self.language,
            **({"labels": dict(self.labels)} if self.labels else {}),
        }


@dataclass(frozen=True)
class TextUtterance:
    """One utterance given as text, validated."""

    text: str
    channel: Channel
    start_ms: int
    end_ms: int


def validate_call_id(call_id: object) -> str:
    if not isinstance(call_id, str) or not call_id:
        raise InputError(ErrorCode.INVALID_CALL_ID, "call_id is required")
    if not is_valid_call_id(call_id):
        shown = call_id[:40] + ("..." if len(call_id) > 40 else "")
        raise InputError(
            ErrorCode.INVALID_CALL_ID,
            f"call_id {shown!r} is malformed: use 1-128 characters of A-Z a-z 0-9 . _ : -",
        )
    return call_id


def validate_metadata(
    tenant: str = "",
    agent: str = "",
    team: str = "",
    region: str = "",
    language: str = "",
    labels: Mapping[str, str] | None = None,
) -> CallMetadata:
    values = {"tenant": tenant, "agent": agent, "team": team, "region": region, "language": language}
    for name, value in values.items():
        if len(value) > MAX_METADATA_CHARS:
            raise InputError(
                ErrorCode.INVALID_METADATA, f"metadata.{name} is longer than {MAX_METADATA_CHARS} characters"
            )
    labels = dict(labels or {})
    if len(labels) > MAX_LABELS:
        raise InputError(ErrorCode.INVALID_METADATA, f"metadata.labels holds more than {MAX_LABELS} entries")
    for key, value in labels.items():
        if len(key) > MAX_METADATA_CHARS or len(value) > 1024:
            raise InputError(
                ErrorCode.INVALID_METADATA,
                f"metadata.labels: keys are limited to {MAX_METADATA_CHARS} characters, values to 1024",
            )
    return CallMetadata(**{k: v.strip() for k, v in values.items()}, labels=labels)


def validate_text(text: object) -> str:
    if not isinstance(text, str):
        raise InputError(ErrorCode.INVALID_MESSAGE, "text must be a string")
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(
            ErrorCode.TEXT_TOO_LONG,
            f"text is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,} per utterance "
            "(split long text into several utterances)",
        )
    if not text.strip():
        raise InputError(ErrorCode.EMPTY_TEXT, "text is empty: an utterance needs some words")
    return text


def validate_channel(channel: object) -> Channel:
    if channel not in CHANNELS:
        raise InputError(
            ErrorCode.INVALID_CHANNEL, f"channel {channel!r} is unknown: use customer, agent or mixed"
        )
    return channel  # type: ignore[return-value]  # checked against CHANNELS just above


def validate_times(start_ms: object, end_ms: object) -> tuple[int, int]:
    for name, value in (("start_ms", start_ms), ("end_ms", end_ms)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MS:
            raise InputError(
                ErrorCode.INVALID_TIMES, f"{name} must be an integer number of milliseconds in 0..{MAX_MS}"
            )
    assert isinstance(start_ms, int) and isinstance(end_ms, int)
    if end_ms < start_ms:
        raise InputError(ErrorCode.INVALID_TIMES, f"end_ms ({end_ms}) is before start_ms ({start_ms})")
    return start_ms, end_ms


def validate_utterance(text: object, channel: object, start_ms: object, end_ms: object) -> TextUtterance:
    """The one set of rules for an utterance, whatever the transport."""
    checked_text = validate_text(text)
    checked_channel = validate_channel(channel)
    start, end = validate_times(start_ms, end_ms)
    return TextUtterance(checked_text, checked_channel, start, end)


@dataclass(frozen=True)
class AudioFormat:
    """The audio layout a call declared in its start message, validated."""

    encoding: str
    sample_rate_hz: int
    channels: int
    channel_roles: tuple[Channel, ...]

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample of every channel: audio is cut only at multiples of this."""
        return _BYTES_PER_SAMPLE[self.encoding] * self.channels

    def bytes_for_ms(self, ms: int) -> int:
        return self.frame_bytes * self.sample_rate_hz * ms // 1000

    def call_start(self, call_id: str, metadata: CallMetadata) -> audio_pb2.CallStart:
        return audio_pb2.CallStart(
            call_id=call_id,
            format=audio_pb2.AudioFormat(
                encoding=AUDIO_ENCODINGS[self.encoding],  # type: ignore[arg-type]  # an AudioEncoding int
                sample_rate_hz=self.sample_rate_hz,
                channels=self.channels,
            ),
            channel_roles=[CHANNELS[r] for r in self.channel_roles],  # type: ignore[misc]
            metadata=audio_pb2.CallMetadata(
                tenant=metadata.tenant,
                agent=metadata.agent,
                team=metadata.team,
                region=metadata.region,
                language=metadata.language,
                labels=dict(metadata.labels),
            ),
        )


def _bad_audio(message: str) -> InputError:
    return InputError(ErrorCode.INVALID_AUDIO_FORMAT, f"audio: {message}")


def validate_audio_format(audio: object) -> AudioFormat:
    """``{"encoding", "sample_rate_hz", "channels", "channel_roles"}`` of a start message."""
    if not isinstance(audio, Mapping):
        raise _bad_audio(
            'must be an object: {"encoding": "pcm16"|"mulaw"|"alaw", "sample_rate_hz": 16000, '
            '"channels": 1|2, "channel_roles": ["customer"]}'
        )
    unknown = sorted(set(audio) - {"encoding", "sample_rate_hz", "channels", "channel_roles"})
    if unknown:
        raise _bad_audio(f"unknown field(s) {', '.join(map(repr, unknown))}")
    encoding = audio.get("encoding")
    if encoding not in AUDIO_ENCODINGS:
        raise _bad_audio(f"encoding {encoding!r} is unsupported: use pcm16, mulaw or alaw")
    rate = audio.get("sample_rate_hz")
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int)
        or not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ
    ):
        raise _bad_audio(
            f"sample_rate_hz {rate!r} is unsupported: use an integer in "
            f"{MIN_SAMPLE_RATE_HZ}..{MAX_SAMPLE_RATE_HZ} (e.g. 8000 or 16000)"
        )
    channels = audio.get("channels", 1)
    if isinstance(channels, bool) or channels not in (1, 2):
        raise _bad_audio(f"channels {channels!r} is unsupported: use 1 (mono or mixed) or 2 (stereo)")
    roles = audio.get("channel_roles")
    if roles is None:
        roles = ["mixed"] if channels == 1 else ["agent", "customer"]
    if not isinstance(roles, list) or any(r not in CHANNELS for r in roles):
        raise _bad_audio("channel_roles must be a list of customer, agent or mixed, one per channel")
    if len(roles) != channels:
        raise _bad_audio(f"channel_roles has {len(roles)} role(s) for {channels} channel(s): give one each")
    if len(set(roles)) != len(roles):
        raise _bad_audio("channel_roles repeats a role: give each channel its own")
    return AudioFormat(str(encoding), rate, channels, tuple(roles))


def channel_from_role(role: int) -> Channel:
    return _ROLE_TO_CHANNEL.get(role, "mixed")


def transcript_event(call_id: str, segment_id: int, utterance: TextUtterance) -> asr_pb2.TranscriptEvent:
    """A text utterance as the final transcript segment the chopper expects (text, channel, times)."""
    return asr_pb2.TranscriptEvent(
        call_id=call_id,
        segment_id=segment_id,
        is_final=True,
        text=utterance.text,
        start_ms=utterance.start_ms,
        end_ms=utterance.end_ms,
        channel=CHANNELS[utterance.channel],  # type: ignore[arg-type]  # an int of the ChannelRole enum
    )


# --------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class CallSummary:
    """The end of a call: how it ended and its statistics."""

    call_id: str
    status: Literal["ended", "failed"]
    reason: str
    stats: CallStatistics
    lines: tuple[str, ...]
    objection_tags: tuple[str, ...] = ()
    badge: BadgeState | None = None
    """The live badge's colour at the end of the call; None for a batch (it had no live badge)."""
    report: CallReport | None = None
    """Spikes, turning points, quarters and tagged segments (gateway/enrichment/summary.py)."""

    @classmethod
    def of(
        cls,
        call_id: str,
        status: Literal["ended", "failed"],
        reason: str,
        stats: CallStatistics,
        report: CallReport,
        badge: BadgeState | None = None,
    ) -> CallSummary:
        tags = tuple(tag_names(report.tags))
        return cls(call_id, status, reason, stats, report.lines, tags, badge, report)

    def for_store(self) -> dict[str, Any]:
        """What goes into calls.summary (jsonb): the report, the reason and the final badge."""
        stored: dict[str, Any] = {
            **(self.report.to_json() if self.report is not None else {}),
            "reason": self.reason,
            "lines": list(self.lines),
            "customer_min_sentiment": self.stats.customer_min_sentiment,
            "label_counts": dict(self.stats.label_counts),
        }
        if self.badge is not None:
            stored["badge"] = self.badge.value
        return stored


@dataclass(frozen=True)
class ScoreEvent:
    call_id: str
    seq: int
    scored: ScoredEvent


@dataclass(frozen=True)
class BadgeEvent:
    """The live badge changed colour (``change.at_ms`` is call time)."""

    call_id: str
    seq: int
    change: BadgeChange


@dataclass(frozen=True)
class CueEvent:
    """A coaching cue for the rep (``cue.at_ms`` is call time)."""

    call_id: str
    seq: int
    cue: CoachingCue


@dataclass(frozen=True)
class SummaryEvent:
    call_id: str
    seq: int
    summary: CallSummary


@dataclass(frozen=True)
class ErrorEvent:
    """A problem. ``seq`` is None for errors addressed to one client only (its bad input, its backlog):
    they are not events of the call and take no place in its sequence."""

    call_id: str
    seq: int | None
    code: str
    message: str
    fatal: bool
    status: str = "INVALID_ARGUMENT"  # gRPC status code name, for sentiment.proto's Error.code


@dataclass(frozen=True)
class TranscriptEvent:
    """A partial or final transcript segment from the ASR (``source`` has words and prosody too)."""

    call_id: str
    seq: int
    source: asr_pb2.TranscriptEvent

    @property
    def channel(self) -> Channel:
        return channel_from_role(self.source.channel)


CallEvent = TranscriptEvent | ScoreEvent | BadgeEvent | CueEvent | SummaryEvent | ErrorEvent


def client_error(call_id: str, err: InputError, *, fatal: bool = False) -> ErrorEvent:
    return ErrorEvent(call_id, None, err.code, err.message, fatal, err.status.name)


# --------------------------------------------------------------------------------------------- fan-out


class Subscription:
    """One subscriber's bounded queue of events; ``offer`` never blocks the call.

    When the queue is full the backlog is dropped and replaced by one ``slow_consumer`` error: a live
    screen wants the newest events, and the seq numbers show what was missed. Iterate with ``async for``;
    iteration ends once the call has ended (after its summary) or ``close()`` was called.
    """

    def __init__(self, call_id: str, maxsize: int) -> None:
        self.call_id = call_id
        self._maxsize = max(2, maxsize)
        self._events: deque[CallEvent] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self.dropped = 0
        self.on_drop: Callable[[int], None] | None = None

    def offer(self, event: CallEvent) -> None:
        if self._closed:
            return
        if len(self._events) >= self._maxsize - 1:
            dropped = len(self._events)
            self.dropped += dropped
            self._events.clear()
            self._events.append(
                ErrorEvent(
                    self.call_id,
                    None,
                    ErrorCode.SLOW_CONSUMER,
                    f"{dropped} events were dropped because this client reads too slowly",
                    fatal=False,
                    status="RESOURCE_EXHAUSTED",
                )
            )
            if self.on_drop is not None:
                self.on_drop(dropped)
        self._events.append(event)
        self._wakeup.set()

    def close(self) -> None:
        """No more events after those queued."""
        self._closed = True
        self._wakeup.set()

    def __aiter__(self) -> AsyncIterator[CallEvent]:
        return self

    async def __anext__(self) -> CallEvent:
        while not self._events:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._events.popleft()


# --------------------------------------------------------------------------------------------- the session


@dataclass(frozen=True)
class SessionSettings:
    """Queue bounds and timeouts of every session of a gateway."""

    inbox_size: int = 64
    """Accepted utterances not yet sent to the chopper; a full inbox makes ``submit`` wait."""
    utterance_queue_size: int = 64
    """Chopped utterances not yet sent to the scorer."""
    subscriber_queue_size: int = 1024
    """Events a subscriber may lag behind before its backlog is dropped."""
    history_size: int = 1024
    """Events kept for replay to a watcher that joins late."""
    grace_s: float = 30.0
    """How long a call whose client vanished stays open for it to come back before it is ended."""
    finish_timeout_s: float = 120.0
    """How long stop() waits for outstanding scores before the call is ended as failed."""
    stage_timeout_s: float = 60.0
    audio_queue_size: int = 64
    """Audio chunks (<= AUDIO_CHUNK_MS each) not yet sent to the ASR; a full queue makes audio wait."""
    """Deadline of one batch request to the chopper or the scorer."""
    audio_idle_timeout_s: float | None = 600.0
    """An audio call whose audio stops for this long (the client neither sends nor stops) is stopped with
    reason ``audio_timeout``: its speech is transcribed and scored, the summary follows. The ASR already
    ends the open segment after a 2 s stall, so nothing waits for this to be scored. None: never."""
    max_recording_bytes: int = 100 * 1024 * 1024
    """Largest recording ``POST /v1/sentiment/batch`` takes (413 past it)."""
    store_attempts: int = 3
    badge_settings: Mapping[str, BadgeSettings] = field(default_factory=dict)
    """Live-rule settings (badge and cues) per tenant id; a tenant not named gets live.DEFAULT_SETTINGS."""


@dataclass(frozen=True)
class Stages:
    """The gRPC stubs of the services a call goes through; shared by every call (they are stateless)."""

    chopper: chopper_pb2_grpc.ChopperStub
    scorer: scorer_pb2_grpc.ScorerStub
    asr: asr_pb2_grpc.AsrStub | None = None
    """Only calls that declare audio open a Transcribe stream (at their first audio frame)."""


_SessionState = Literal["live", "stopping", "closed"]


@dataclass(frozen=True)
class _AudioPiece:
    """One AudioChunk's worth of a call's audio, on its way to the ASR."""

    audio: bytes
    role: int  # audio_pb2.ChannelRole; CHANNEL_ROLE_UNSPECIFIED: all channels interleaved
    timestamp_ms: int | None = None


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
        metadata: CallMetadata,
        *,
        store: Store,
        stages: Stages,
        metrics: GatewayMetrics,
        settings: SessionSettings,
        on_closed: Callable[[CallSession], None] = lambda _: None,
        audio: AudioFormat | None = None,
        after_call: AfterCall | None = None,
    ) -> None:
        self.call_id = call_id
        self.metadata = metadata
        self.audio = audio
        self._audio: asyncio.Queue[_AudioPiece | None] = asyncio.Queue(settings.audio_queue_size)
        # Per source (None: interleaved frames; a role: that channel's mono frames), the part of the last
        # frame short of a whole sample.
        self._audio_rest: dict[Channel | None, bytes] = {}
        self._store = store
        self._stages = stages
        self._metrics = metrics
        self._settings = settings
        self._on_closed = on_closed
        self._after_call = after_call or AfterCall()
        self._inbox: asyncio.Queue[asr_pb2.TranscriptEvent | None] = asyncio.Queue(settings.inbox_size)
        self._utterances: asyncio.Queue[chopper_pb2.Utterance | None] = asyncio.Queue(
            settings.utterance_queue_size
        )
        self._state: _SessionState = "live"
        self._stop_reason = "hangup"
        self._segment_ids: dict[Channel, int] = {}
        self._accepted_at: dict[tuple[Channel, int], float] = {}  # (channel, segment_id) -> accept time
        self._pending: dict[int, tuple[chopper_pb2.Utterance, float]] = {}  # utterance_id -> (utt, sent at)
        self._scored: list[ScoredEvent] = []
        self._history: deque[CallEvent] = deque(maxlen=settings.history_size)
        self._subscribers: set[Subscription] = set()
        self._next_seq = 0
        self._abort_reason: str | None = None
        self._pipeline: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._grace: asyncio.Task[None] | None = None
        self._idle_stop: asyncio.Future[CallSummary] | None = None
        self._coach = LiveCoach(settings_for(metadata.tenant, settings.badge_settings))
        self._done: asyncio.Future[CallSummary] = asyncio.get_running_loop().create_future()
        self.driver_attached = False
        self.accepted = 0

    # -- lifecycle

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

    async def submit(self, utterance: TextUtterance) -> None:
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
        if self.audio is None or self._stages.asr is None:
            raise InputError(
                ErrorCode.AUDIO_NOT_ENABLED,
                f"audio is not enabled for call {self.call_id}: declare it in start, e.g. "
                '"audio": {"encoding": "pcm16", "sample_rate_hz": 16000, "channels": 1, '
                '"channel_roles": ["customer"]}',
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        if len(frame) > MAX_AUDIO_FRAME_BYTES:
            raise InputError(
                ErrorCode.FRAME_TOO_LARGE,
                f"an audio frame of {len(frame):,} bytes; the limit is {MAX_AUDIO_FRAME_BYTES:,} "
                "(send about 20-100 ms per frame)",
            )
        if role is not None and role not in self.audio.channel_roles:
            raise InputError(
                ErrorCode.INVALID_CHANNEL,
                f"audio for channel {role!r}, which is not one of the call's channel_roles "
                f"({', '.join(self.audio.channel_roles)})",
            )
        if self._state != "live":
            raise InputError(
                ErrorCode.STOPPED, f"call {self.call_id} was stopped; nothing more is accepted for it"
            )
        unit = self.audio.frame_bytes if role is None else _BYTES_PER_SAMPLE[self.audio.encoding]
        data = self._audio_rest.get(role, b"") + frame
        usable = len(data) - len(data) % unit
        self._audio_rest[role] = data[usable:]
        step = max(unit, unit * self.audio.sample_rate_hz * AUDIO_CHUNK_MS // 1000)
        proto_role = audio_pb2.CHANNEL_ROLE_UNSPECIFIED if role is None else CHANNELS[role]
        for offset in range(0, usable, step):
            at_ms = None
            if timestamp_ms is not None:
                at_ms = timestamp_ms + (offset // unit) * 1000 // self.audio.sample_rate_hz
            piece = _AudioPiece(data[offset : min(offset + step, usable)], proto_role, at_ms)
            await self._put(self._audio, piece)
        self._metrics.count("callsense_gateway_audio_bytes_total", len(frame))

    def report_error(self, err: InputError) -> None:
        """Publish a client's bad input as a (non-fatal) event of the call, for its watchers: for
        transports whose client reads nothing back (e.g. a telephony media stream)."""
        status = err.status.name
        self._publish(lambda seq: ErrorEvent(self.call_id, seq, err.code, err.message, False, status))

    async def stop(self, reason: str = "hangup") -> CallSummary:
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

    async def wait_closed(self) -> CallSummary:
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

    def _publish(self, make: Callable[[int], CallEvent]) -> None:
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

    async def _run_asr(self, audio: AudioFormat) -> None:
        """Opens the call's one Transcribe stream at its first audio, publishes every transcript event,
        feeds the finals to the chopper and, once the ASR has flushed its last finals, ends the chopper's
        stream."""
        first = await self._audio.get()
        if first is not None:
            assert self._stages.asr is not None
            stream = self._stages.asr.Transcribe(self._transcribe_requests(audio, first))
            try:
                async for event in stream:
                    await self._on_transcript(event)
            except grpc.aio.AioRpcError as exc:
                raise StageError("asr", exc) from exc
            finally:
                stream.cancel()
        await self._inbox.put(None)

    async def _transcribe_requests(
        self, audio: AudioFormat, first: _AudioPiece
    ) -> AsyncIterator[asr_pb2.TranscribeRequest]:
        call_id = self.call_id
        yield asr_pb2.TranscribeRequest(call_id=call_id, start=audio.call_start(call_id, self.metadata))
        seq = 0
        piece: _AudioPiece | None = first
        while piece is not None:
            chunk = audio_pb2.AudioChunk(
                call_id=call_id,
                seq=seq,
                channel=piece.role,  # type: ignore[arg-type]  # an int of the ChannelRole enum
                timestamp_ms=piece.timestamp_ms or 0,
                audio=piece.audio,
            )
            yield asr_pb2.TranscribeRequest(call_id=call_id, chunk=chunk)
            seq += 1
            piece = await self._next_audio()
        end = audio_pb2.CallEnd(call_id=call_id, reason=self._stop_reason)
        yield asr_pb2.TranscribeRequest(call_id=call_id, end=end)

    async def _next_audio(self) -> _AudioPiece | None:
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
        self._publish(lambda seq: TranscriptEvent(self.call_id, seq, event))
        self._metrics.count("callsense_gateway_transcripts_total", final=str(event.is_final).lower())
        if event.is_final and event.text.strip():
            self._accepted_at[(channel_from_role(event.channel), event.segment_id)] = time.perf_counter()
            self.accepted += 1
            await self._inbox.put(event)

    async def _chop_requests(self) -> AsyncIterator[chopper_pb2.ChopRequest]:
        while True:
            event = await self._inbox.get()
            if event is None:
                end = audio_pb2.CallEnd(call_id=self.call_id, reason=self._stop_reason)
                yield chopper_pb2.ChopRequest(call_id=self.call_id, end=end)
                return
            yield chopper_pb2.ChopRequest(call_id=self.call_id, transcript=event)

    async def _run_chopper(self) -> None:
        stream = self._stages.chopper.Chop(self._chop_requests())
        try:
            await self._read_chopper(stream)
        except grpc.aio.AioRpcError as exc:
            raise StageError("chopper", exc) from exc
        finally:
            stream.cancel()  # a no-op once finished; ends the RPC when this task is cancelled
        await self._utterances.put(None)

    async def _read_chopper(self, stream: AsyncIterator[chopper_pb2.Utterance]) -> None:
        async for utterance in stream:
            started = self._accepted_at.get(
                (channel_from_role(utterance.channel), utterance.source_segment_id)
            )
            if started is not None:
                self._metrics.observe_latency("chopper", (time.perf_counter() - started) * 1000)
            await self._utterances.put(utterance)

    async def _score_requests(self) -> AsyncIterator[scorer_pb2.ScoreRequest]:
        while True:
            utterance = await self._utterances.get()
            if utterance is None:
                return
            self._pending[utterance.utterance_id] = (utterance, time.perf_counter())
            yield scorer_pb2.ScoreRequest(call_id=self.call_id, utterance=utterance)

    async def _run_scorer(self) -> None:
        stream = self._stages.scorer.Score(self._score_requests())
        try:
            await self._read_scorer(stream)
        except grpc.aio.AioRpcError as exc:
            raise StageError("scorer", exc) from exc
        finally:
            stream.cancel()
        if self._pending:
            raise RuntimeError(f"the scorer answered no score for {len(self._pending)} utterance(s)")

    async def _read_scorer(self, stream: AsyncIterator[scorer_pb2.SentimentScore]) -> None:
        async for score in stream:
            entry = self._pending.pop(score.utterance_id, None)
            if entry is None:
                log.warning("call %s: score for unknown utterance %d", self.call_id, score.utterance_id)
                continue
            utterance, sent_at = entry
            self._metrics.observe_latency("scorer", (time.perf_counter() - sent_at) * 1000)
            await self._on_score(utterance, score)

    async def _on_score(self, utterance: chopper_pb2.Utterance, score: scorer_pb2.SentimentScore) -> None:
        """Store a score (idempotent), then publish it: a subscriber never sees an unstored score."""
        event = scored_event(utterance, score)
        self._scored.append(event)
        await self._store_score(event)
        started = self._accepted_at.get((event.channel, utterance.source_segment_id))
        if started is not None:
            self._metrics.observe_latency("end_to_end", (time.perf_counter() - started) * 1000)
        self._metrics.count("callsense_gateway_scores_total", label=event.label)
        self._publish(lambda seq: ScoreEvent(self.call_id, seq, event))
        self._coach_on(event)

    def _coach_on(self, event: ScoredEvent) -> None:
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

    def _live_event(self, live: LiveEvent, seq: int) -> CallEvent:
        if isinstance(live, BadgeChange):
            return BadgeEvent(self.call_id, seq, live)
        return CueEvent(self.call_id, seq, live)

    async def _store_score(self, event: ScoredEvent) -> None:
        started = time.perf_counter()
        for attempt in range(1, self._settings.store_attempts + 1):
            try:
                await self._store.record_score(event)
                self._metrics.observe_latency("store", (time.perf_counter() - started) * 1000)
                return
            except Exception:
                if attempt == self._settings.store_attempts:
                    log.exception("call %s: storing utterance %d failed", self.call_id, event.utterance_id)
                    self._publish(
                        lambda seq: ErrorEvent(
                            self.call_id,
                            seq,
                            ErrorCode.STORAGE_FAILED,
                            f"utterance {event.utterance_id} was scored but could not be stored",
                            fatal=False,
                            status="UNAVAILABLE",
                        )
                    )
                    return
                await asyncio.sleep(0.1 * 2**attempt)  # a pool replacing a broken connection needs a moment

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
        self._publish(lambda seq: ErrorEvent(self.call_id, seq, code, message, fatal=True, status=status))

    async def _finish(self, status: Literal["ended", "failed"], reason: str) -> None:
        self._state = "closed"
        self._cancel_grace()
        stats = compute_call_stats(self._scored)
        report = await self._after_call.report(self._scored, stats)
        summary = CallSummary.of(self.call_id, status, reason, stats, report, self._coach.badge_state)
        try:
            await self._store.end_call(
                self.call_id,
                stats.to_store(),
                status=status,
                summary=summary.for_store(),
                objection_tags=summary.objection_tags,
                outbox=self._after_call.outbox(),
            )
            self._after_call.on_enqueued()
        except Exception:
            log.exception("call %s: storing the end of the call failed", self.call_id)
            self._publish(
                lambda seq: ErrorEvent(
                    self.call_id,
                    seq,
                    ErrorCode.STORAGE_FAILED,
                    "the call's summary could not be stored",
                    fatal=False,
                    status="UNAVAILABLE",
                )
            )
        self._publish(lambda seq: SummaryEvent(self.call_id, seq, summary))
        for sub in tuple(self._subscribers):
            sub.close()
        self._subscribers.clear()
        self._metrics.call_ended(status, _reason_label(reason))
        self._done.set_result(summary)
        self._on_closed(self)
        log.info("call %s %s (%s): %d utterances", self.call_id, status, reason, stats.utterance_count)

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


class StageError(Exception):
    """A stage's stream of a call failed."""

    def __init__(self, stage: str, error: grpc.aio.AioRpcError) -> None:
        super().__init__(f"{stage}: {error.code().name}")
        self.stage = stage
        self.error = error


def describe_failure(exc: BaseException) -> str:
    """A client-safe line about a failed pipeline: which stage, its status and details."""
    if isinstance(exc, BaseExceptionGroup):
        return describe_failure(exc.exceptions[0])
    if isinstance(exc, StageError):
        details = exc.error.details() or ""
        return f"the {exc.stage} failed: {exc.error.code().name}" + (f": {details}" if details else "")
    return f"the pipeline failed: {type(exc).__name__}"


def scored_event(utterance: chopper_pb2.Utterance, score: scorer_pb2.SentimentScore) -> ScoredEvent:
    """The stored form of a scored utterance."""
    return ScoredEvent(
        call_id=utterance.call_id,
        utterance_id=utterance.utterance_id,
        channel=channel_from_role(utterance.channel),
        start_ms=utterance.start_ms,
        end_ms=utterance.end_ms,
        text=utterance.text,
        label=_LABELS.get(score.label, _label_of(score)),
        p_negative=float(score.p_negative),
        p_neutral=float(score.p_neutral),
        p_positive=float(score.p_positive),
        score=min(1.0, max(0.0, float(score.score))),  # float32 rounding must not break the CHECK
        model_version=score.model_version,
        inference_ms=float(score.inference_ms),
    )


def _label_of(score: scorer_pb2.SentimentScore) -> Literal["negative", "neutral", "positive"]:
    """The most probable class, for a score whose label was left unset."""
    ranked = sorted(
        [(score.p_negative, "negative"), (score.p_neutral, "neutral"), (score.p_positive, "positive")]
    )
    label = ranked[-1][1]
    return "negative" if label == "negative" else "neutral" if label == "neutral" else "positive"


# --------------------------------------------------------------------------------------------- registry


class NotFoundError(LookupError):
    pass


class SessionRegistry:
    """call_id -> CallSession of the live calls held by this gateway replica."""

    def __init__(
        self,
        stores: StoreRouter,
        stages: Stages,
        *,
        metrics: GatewayMetrics | None = None,
        settings: SessionSettings | None = None,
        after_call: AfterCall | None = None,
    ) -> None:
        self.stores = stores
        self.stages = stages
        self.metrics = metrics or GatewayMetrics()
        self.settings = settings or SessionSettings()
        self.after_call = after_call or AfterCall()
        """Objection tags, the report and the CRM push when a call ends (shared by all its calls)."""
        self._sessions: dict[str, CallSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, call_id: str) -> CallSession | None:
        return self._sessions.get(call_id)

    def live_calls(self) -> list[CallSession]:
        """The sessions still taking input, oldest first."""
        return [s for s in self._sessions.values() if s.state == "live"]

    def held_calls(self) -> list[CallSession]:
        """Every session this replica holds, those finishing too (still live in the database)."""
        return list(self._sessions.values())

    async def start_call(
        self, call_id: str, metadata: CallMetadata, audio: AudioFormat | None = None
    ) -> tuple[CallSession, bool]:
        """The session of a call for a driving client; True when it resumes one (a reconnect)."""
        validate_call_id(call_id)  # transports check too; a bad id must never reach the mesh
        existing = self._sessions.get(call_id)
        if existing is not None:
            if existing.driver_attached or existing.state != "live":
                raise InputError(
                    ErrorCode.CALL_ACTIVE,
                    f"call {call_id} is already live and driven by another client",
                    grpc.StatusCode.ALREADY_EXISTS,
                )
            existing.attach()  # its client came back within the grace period
            return existing, True
        store = self.stores.for_region(metadata.region)
        session = CallSession(
            call_id,
            metadata,
            store=store,
            stages=self.stages,
            metrics=self.metrics,
            settings=self.settings,
            on_closed=self._forget,
            after_call=self.after_call,
            audio=audio,
        )
        session.driver_attached = True
        self._sessions[call_id] = session  # claimed before the first await: a racing start sees it
        try:
            stored = await store.get_call(call_id)
            if stored is not None and stored.status != "live":
                raise InputError(
                    ErrorCode.CALL_ENDED,
                    f"call {call_id} has already ended ({stored.status}); a new call needs a new call_id",
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
            await session.open()
        except BaseException:
            self._sessions.pop(call_id, None)
            raise
        # A call still 'live' in the database without a session here: a client re-sending after a gateway
        # restart. Utterance ids restart at 0 and the store keeps the first write of each, so a replay
        # of the same text stores nothing twice.
        return session, stored is not None

    def subscribe(self, call_id: str) -> Subscription:
        session = self._sessions.get(call_id)
        if session is None:
            raise NotFoundError(f"call {call_id} is not live on this gateway")
        return session.subscribe(replay=True)

    def _forget(self, session: CallSession) -> None:
        if self._sessions.get(session.call_id) is session:
            del self._sessions[session.call_id]

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop every live call (reason shutdown); abort those that cannot finish in time."""
        sessions = list(self._sessions.values())
        if not sessions:
            return
        stops = [asyncio.ensure_future(s.stop("shutdown")) for s in sessions]
        _, pending = await asyncio.wait(stops, timeout=timeout_s)
        for session in sessions:
            session.abort("the gateway shut down")
        if pending:
            await asyncio.wait(pending, timeout=5.0)


# --------------------------------------------------------------------------------------------- driver


class CallDriver:
    """One client's side of the live protocol (start, utterances, stop), whatever the transport.

    It enforces the order of messages: utterance or stop before start -> ``not_started``; a second
    start while a call runs -> ``already_started``; anything after stop -> ``stopped``. A connection may
    start a new call once the previous one has ended.
    """

    def __init__(self, registry: SessionRegistry) -> None:
        self._registry = registry
        self.session: CallSession | None = None
        self._stopping = False

    @property
    def call_id(self) -> str | None:
        return self.session.call_id if self.session else None

    @property
    def live(self) -> bool:
        return self.session is not None and not self._stopping and self.session.state == "live"

    async def start(
        self, call_id: str, metadata: CallMetadata, audio: AudioFormat | None = None
    ) -> tuple[CallSession, bool]:
        if self.session is not None and self.session.state != "closed":
            if self._stopping:
                raise InputError(
                    ErrorCode.ALREADY_STARTED,
                    f"call {self.session.call_id} is still finishing; start the next call after its summary",
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
            raise InputError(
                ErrorCode.ALREADY_STARTED,
                f"call {self.session.call_id} is already running on this connection; stop it first",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        session, resumed = await self._registry.start_call(call_id, metadata, audio)
        self.session, self._stopping = session, False
        return session, resumed

    def _require_live(self) -> CallSession:
        if self.session is None:
            raise InputError(
                ErrorCode.NOT_STARTED,
                "no call is running: send start with a call_id first",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        if not self._stopping and self.session.state == "closed":
            raise InputError(
                ErrorCode.CALL_ENDED,
                f"call {self.session.call_id} has ended; start a new call to go on",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        if self._stopping or self.session.state != "live":
            raise InputError(
                ErrorCode.STOPPED,
                f"call {self.session.call_id} was stopped; this message was ignored",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        return self.session

    async def utterance(self, utterance: TextUtterance) -> None:
        await self._require_live().submit(utterance)

    async def audio(
        self, chunk: bytes, *, role: Channel | None = None, timestamp_ms: int | None = None
    ) -> None:
        if self.session is None:
            raise InputError(
                ErrorCode.AUDIO_NOT_ENABLED,
                "audio is not enabled: no call is running; send start with the audio format first, e.g. "
                '"audio": {"encoding": "pcm16", "sample_rate_hz": 16000, "channels": 1, '
                '"channel_roles": ["customer"]}',
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        await self._require_live().submit_audio(chunk, role=role, timestamp_ms=timestamp_ms)

    def stop(self, reason: str = "hangup") -> asyncio.Future[CallSummary]:
        """Stop the call; the returned future holds its summary. Later messages get ``stopped`` at once,
        so a transport need not wait for the flush before reading on."""
        session = self._require_live()
        self._stopping = True
        return asyncio.ensure_future(session.stop(reason or "hangup"))

    def disconnect(self) -> None:
        """The client went away: a call it was still driving is left to the grace period."""
        if self.session is not None and self.session.state == "live" and not self._stopping:
            self.session.detach()


# --------------------------------------------------------------------------------------------- gateway


@dataclass(frozen=True)
class BatchResult:
    call_id: str
    events: tuple[ScoredEvent, ...]
    summary: CallSummary


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: Mapping[str, str]  # component -> "ok" or why not


class Gateway:
    """What one gateway process holds: stores, stage channels, the live calls, metrics.

    Open it with ``await Gateway.open(config, database_url)`` (or build it from parts in tests) and
    close it with ``await gateway.close()``; the HTTP app and the gRPC servicer share one instance.
    """

    def __init__(
        self,
        registry: SessionRegistry,
        *,
        health_targets: Mapping[str, tuple[grpc.aio.Channel, str]] | None = None,
        on_close: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        """``health_targets``: name -> (channel, service) that /readyz checks; ``on_close``: clean-ups
        run by ``close()`` in reverse order (close channels, stores, an embedded database)."""
        self.registry = registry
        self.stores = registry.stores
        self.stages = registry.stages
        self.metrics = registry.metrics
        self.settings = registry.settings
        self._health_targets = dict(health_targets or {})
        self._on_close = list(on_close)

    @classmethod
    async def open(
        cls,
        config: Config,
        *,
        stores: StoreRouter | None = None,
        database_url: str | None = None,
        settings: SessionSettings | None = None,
        metrics: GatewayMetrics | None = None,
        after_call: AfterCall | None = None,
    ) -> Gateway:
        """Channels to the chopper and scorer, and the stores unless given: ``database_url``, else
        ``config.database_url``, else an embedded PostgreSQL under ``config.data_dir`` started here."""
        cleanups: list[Callable[[], Awaitable[None]]] = []
        try:
            if stores is None:
                url = database_url or config.database_url
                if url is None:
                    url = await _start_embedded_database(config, cleanups)
                stores = await StoreRouter.open(url)
                cleanups.append(stores.close)
            chopper_channel = service_channel(config.chopper_addr, "chopper", config.mesh_proxy)
            scorer_channel = service_channel(config.scorer_addr, "scorer", config.mesh_proxy)
            asr_channel = service_channel(config.asr_addr, "asr", config.mesh_proxy)  # connects when used
            cleanups += [chopper_channel.close, scorer_channel.close, asr_channel.close]
        except BaseException:
            await _run_cleanups(cleanups)
            raise
        stages = Stages(
            chopper=chopper_pb2_grpc.ChopperStub(chopper_channel),
            scorer=scorer_pb2_grpc.ScorerStub(scorer_channel),
            asr=asr_pb2_grpc.AsrStub(asr_channel),
        )
        registry = SessionRegistry(stores, stages, metrics=metrics, settings=settings, after_call=after_call)
        targets = {
            "chopper": (chopper_channel, service_name(chopper_pb2, "Chopper")),
            "scorer": (scorer_channel, service_name(scorer_pb2, "Scorer")),
        }
        return cls(registry, health_targets=targets, on_close=cleanups)

    async def close(self) -> None:
        """End the live calls (reason shutdown), then release channels and stores."""
        await self.registry.shutdown()
        await _run_cleanups(self._on_close)

    # -- look-ups

    async def get_call(self, call_id: str) -> CallRow | None:
        return await self.stores.get_call(validate_call_id(call_id))

    async def readiness(self, timeout_s: float = 2.0) -> Readiness:
        """Database, chopper and scorer reachable (checked concurrently)."""
        names = ["database", *self._health_targets]
        checks = [self._check_database(timeout_s)]
        checks += [_check_grpc(ch, service, timeout_s) for ch, service in self._health_targets.values()]
        results = await asyncio.gather(*checks)
        return Readiness(all(r == "ok" for r in results), dict(zip(names, results, strict=True)))

    async def _check_database(self, timeout_s: float) -> str:
        try:
            # Any read proves the pool can reach the database; a call id nobody can create (the pattern
            # forbids "/") keeps it a pure index miss.
            async with asyncio.timeout(timeout_s):
                await self.stores.get_call("/readyz")
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    # -- batch

    async def analyze_batch(
        self, call_id: str, metadata: CallMetadata, utterances: Sequence[TextUtterance]
    ) -> BatchResult:
        """Score a finished call's utterances: chopper (split, mask) then scorer; idempotent on call_id.

        The store keeps the first write of each (call_id, utterance_id), and the answer is read back from
        it: repeating a request returns the same result and stores nothing twice. A call_id that already
        holds different utterances, or that is live here, is refused with ``call_conflict``.
        """
        validate_call_id(call_id)
        if not utterances:
            raise InputError(ErrorCode.EMPTY_TEXT, "utterances is empty: a batch needs at least one")
        if len(utterances) > MAX_BATCH_UTTERANCES:
            raise InputError(
                ErrorCode.TOO_MANY_UTTERANCES,
                f"{len(utterances):,} utterances; the limit is {MAX_BATCH_UTTERANCES:,} per request",
            )
        if self.registry.get(call_id) is not None:
            raise InputError(
                ErrorCode.CALL_CONFLICT,
                f"call {call_id} is live on this gateway; analyse it after it ends",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        store = self.stores.for_region(metadata.region)
        with call_context(call_id):
            chopped = await self._chop_all(call_id, sorted(utterances, key=lambda u: u.start_ms))
            scores = await self._score_all(chopped)
        events = [scored_event(u, s) for u, s in zip(chopped, scores, strict=True)]
        await _check_batch_conflict(store, call_id, events)
        await store.upsert_call_start(call_id, metadata.for_store())
        await store.record_scores(events)
        stored = tuple(await store.list_events(call_id))
        stats = compute_call_stats(stored)
        report = await self.registry.after_call.report(stored, stats)
        summary = CallSummary.of(call_id, "ended", "batch", stats, report)
        await store.end_call(
            call_id,
            stats.to_store(),
            status="ended",
            summary=summary.for_store(),
            objection_tags=summary.objection_tags,
            outbox=self.registry.after_call.outbox(),
        )
        self.registry.after_call.on_enqueued()
        self.metrics.count("callsense_gateway_batches_total")
        return BatchResult(call_id, stored, summary)

    async def _chop_all(
        self, call_id: str, utterances: Sequence[TextUtterance]
    ) -> list[chopper_pb2.Utterance]:
        started = time.perf_counter()

        async def requests() -> AsyncIterator[chopper_pb2.ChopRequest]:
            segment_ids: dict[Channel, int] = {}
            for u in utterances:
                segment_id = segment_ids.get(u.channel, 0)
                segment_ids[u.channel] = segment_id + 1
                event = transcript_event(call_id, segment_id, u)
                yield chopper_pb2.ChopRequest(call_id=call_id, transcript=event)
            end = audio_pb2.CallEnd(call_id=call_id, reason="batch")
            yield chopper_pb2.ChopRequest(call_id=call_id, end=end)

        stream = self.stages.chopper.Chop(requests(), timeout=self.settings.stage_timeout_s)
        chopped = [u async for u in stream]
        self.metrics.observe_latency("chopper", (time.perf_counter() - started) * 1000)
        return chopped

    async def _score_all(
        self, utterances: Sequence[chopper_pb2.Utterance]
    ) -> list[scorer_pb2.SentimentScore]:
        scores: list[scorer_pb2.SentimentScore] = []
        chunk = 256  # chopped utterances are < 128 tokens: 256 of them stay far below the 4 MB limit
        for i in range(0, len(utterances), chunk):
            started = time.perf_counter()
            reply = await self.stages.scorer.ScoreBatch(
                scorer_pb2.ScoreBatchRequest(utterances=utterances[i : i + chunk]),
                timeout=self.settings.stage_timeout_s,
            )
            self.metrics.observe_latency("scorer", (time.perf_counter() - started) * 1000)
            scores.extend(reply.scores)
        if len(scores) != len(utterances):
            raise RuntimeError(f"the scorer answered {len(scores)} scores for {len(utterances)} utterances")
        return scores


async def _check_batch_conflict(store: Store, call_id: str, events: Sequence[ScoredEvent]) -> None:
    """Refuse a call_id that already holds other utterances (replaying the same ones is fine)."""
    stored = await store.list_events(call_id)
    mine = {e.utterance_id: _identity(e) for e in events}
    for event in stored:
        if mine.get(event.utterance_id) != _identity(event):
            raise InputError(
                ErrorCode.CALL_CONFLICT,
                f"call {call_id} already holds different utterances; use a new call_id",
                grpc.StatusCode.ALREADY_EXISTS,
            )


def _identity(event: ScoredEvent) -> tuple[object, ...]:
    """What makes two scored utterances the same utterance (scores may differ in the last float bits)."""
    return (event.channel, event.start_ms, event.end_ms, event.text)


async def _start_embedded_database(config: Config, cleanups: list[Callable[[], Awaitable[None]]]) -> str:
    embedded = await start_embedded_database(config)

    async def stop() -> None:
        await asyncio.to_thread(embedded.stop)

    cleanups.append(stop)
    return embedded.uri


async def _run_cleanups(cleanups: Sequence[Callable[[], Awaitable[None]]]) -> None:
    for cleanup in reversed(cleanups):
        try:
            await cleanup()
        except Exception:
            log.exception("clean-up %r failed", cleanup)


async def _check_grpc(channel: grpc.aio.Channel, service: str, timeout_s: float) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        return f"unreachable: {exc.code().name}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return "ok"
