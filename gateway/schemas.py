"""The JSON shapes of the gateway's HTTP and WebSocket API, as Pydantic models (they make /docs).

Validation rules live in ``gateway.calls.inputs`` (one set for every transport); the validators here call
them and turn an ``InputError`` into a Pydantic error whose ``type`` is the error code, so a 422 body
and a WebSocket error event name the same problem the same way.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from callsense.domain import CallStatistics, Channel, Label, UtteranceScore
from callsense.topics import Topic
from callsense.v1 import asr_pb2
from gateway.calls.errors import ErrorCode, InputError
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
from gateway.calls.inputs import (
    MAX_BATCH_UTTERANCES,
    MAX_TEXT_CHARS,
    AudioInputFormat,
    CallInfo,
    UtteranceInput,
    channel_from_role,
    validate_audio_format,
    validate_call_id,
    validate_metadata,
    validate_utterance,
)
from gateway.recording import SpeakerSplit, check_speakers, parse_channel_roles, parse_speakers
from gateway.store import CallRow

BadgeName = Literal["green", "amber", "red"]


def _custom_error(err: InputError) -> PydanticCustomError:
    # The message is a template: braces in client text must not be read as placeholders.
    return PydanticCustomError(err.code, err.message.replace("{", "{{").replace("}", "}}"))


# --------------------------------------------------------------------------------------------- input


class Metadata(BaseModel):
    """Who and where a call belongs to; stored with the call."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(
        default="", description="Tenant (customer organisation) that owns the call; <= 128 chars."
    )
    agent: str = Field(default="", description="Identifier of the sales agent on the call; <= 128 chars.")
    team: str = Field(default="", description="Team of the agent, for daily roll-ups; <= 128 chars.")
    region: str = Field(
        default="",
        description='Data-residency region, e.g. "eu": an EU call is stored only in the EU database.',
    )
    language: str = Field(
        default="", description='Spoken language as a BCP-47 tag, e.g. "en"; empty: detect.'
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Free-form labels (campaign, CRM ids), stored unchanged."
    )

    @model_validator(mode="after")
    def _check(self) -> Metadata:
        try:
            validate_metadata(**self.model_dump())
        except InputError as err:
            raise _custom_error(err) from None
        return self

    def to_domain(self) -> CallInfo:
        return validate_metadata(**self.model_dump())


class UtteranceIn(BaseModel):
    """One utterance as text, with its speaker and times."""

    text: str = Field(
        description=f"What was said, unmasked (PII is masked before storage); 1..{MAX_TEXT_CHARS:,} chars."
    )
    channel: str = Field(
        description='Who said it: "customer", "agent" or "mixed".',
        json_schema_extra={"enum": ["customer", "agent", "mixed"]},
    )
    start_ms: int = Field(description="Start, in milliseconds from the start of the call.")
    end_ms: int = Field(description="End, in milliseconds from the start of the call; >= start_ms.")

    @model_validator(mode="after")
    def _check(self) -> UtteranceIn:
        try:
            validate_utterance(self.text, self.channel, self.start_ms, self.end_ms)
        except InputError as err:
            raise _custom_error(err) from None
        return self

    def to_domain(self) -> UtteranceInput:
        return validate_utterance(self.text, self.channel, self.start_ms, self.end_ms)


class _CallIdMixin(BaseModel):
    # Defaults to "" so that a missing call_id gets the same clear invalid_call_id as a malformed one.
    call_id: str = Field(
        default="",
        validate_default=True,
        description="Id of the call, chosen by the client: 1-128 chars of [A-Za-z0-9._:-].",
    )

    @field_validator("call_id", mode="after")
    @classmethod
    def _check_call_id(cls, value: str) -> str:
        try:
            return validate_call_id(value)
        except InputError as err:
            raise _custom_error(err) from None


class StartMessage(_CallIdMixin):
    """WebSocket, client -> server: opens a call (or resumes it after a reconnect)."""

    type: Literal["start"]
    metadata: Metadata = Field(
        default_factory=lambda: Metadata(), description="Who and where the call belongs to."
    )
    audio: dict[str, Any] | None = Field(
        default=None,
        description='The audio the client will send as binary frames: {"encoding": "pcm16"|"mulaw"|"alaw", '
        '"sample_rate_hz": 8000..48000, "channels": 1|2, "channel_roles": ["agent", "customer"]}. '
        "Without it binary frames are refused (audio_not_enabled).",
    )

    @field_validator("audio", mode="before")
    @classmethod
    def _check_audio(cls, value: object) -> object:
        if value is not None:
            try:
                validate_audio_format(value)
            except InputError as err:
                raise _custom_error(err) from None
        return value

    def audio_format(self) -> AudioInputFormat | None:
        return None if self.audio is None else validate_audio_format(self.audio)


class UtteranceMessage(UtteranceIn):
    """WebSocket, client -> server: one utterance of the running call."""

    type: Literal["utterance"]


class StopMessage(BaseModel):
    """WebSocket, client -> server: the call ended; the summary follows once everything is scored."""

    type: Literal["stop"]
    reason: str = Field(default="hangup", max_length=64, description='Why the call ended, e.g. "hangup".')


class WatchMessage(_CallIdMixin):
    """WebSocket, client -> server: follow a live call driven by another client (a second screen)."""

    type: Literal["watch"]


ClientMessage = StartMessage | UtteranceMessage | StopMessage | WatchMessage
MESSAGE_TYPES: Mapping[str, type[BaseModel]] = {
    "start": StartMessage,
    "utterance": UtteranceMessage,
    "stop": StopMessage,
    "watch": WatchMessage,
}

M = TypeVar("M", bound=BaseModel)


def parse_message(model: type[M], data: Mapping[str, Any]) -> M:
    """Validate a decoded message; the first problem becomes an InputError with a stable code."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise input_error_from(exc) from None


def input_error_from(exc: ValidationError) -> InputError:
    first = exc.errors(include_input=False, include_url=False)[0]
    code = first["type"]
    if code not in vars(ErrorCode).values():
        where = ".".join(str(part) for part in first["loc"])
        return InputError(ErrorCode.INVALID_MESSAGE, f"{where}: {first['msg']}" if where else first["msg"])
    return InputError(code, first["msg"])


class BatchRequest(_CallIdMixin):
    """A finished call's utterances to score; idempotent on call_id."""

    metadata: Metadata = Field(
        default_factory=lambda: Metadata(), description="Who and where the call belongs to."
    )
    utterances: list[UtteranceIn] = Field(
        description=f"The call's utterances in any order (sorted by start_ms); 1..{MAX_BATCH_UTTERANCES:,}."
    )

    @field_validator("utterances", mode="after")
    @classmethod
    def _check_count(cls, value: list[UtteranceIn]) -> list[UtteranceIn]:
        if not value:
            raise PydanticCustomError(ErrorCode.EMPTY_TEXT, "utterances is empty: a batch needs at least one")
        if len(value) > MAX_BATCH_UTTERANCES:
            raise PydanticCustomError(
                ErrorCode.TOO_MANY_UTTERANCES,
                f"{len(value):,} utterances; the limit is {MAX_BATCH_UTTERANCES:,} per request",
            )
        return value


class RecordingFields(_CallIdMixin):
    """The form fields that come with an uploaded recording, validated (the file is read apart).
    ``metadata`` may come as JSON text, ``channel_roles`` as "agent,customer" or a JSON list, ``speakers``
    as one of ``gateway.recording.SPEAKER_SPLITS``."""

    metadata: Metadata = Field(default_factory=lambda: Metadata())
    channel_roles: tuple[Channel, ...] = ()
    speakers: SpeakerSplit = "auto"

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_json(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            parsed = json.loads(value or "{}")
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise PydanticCustomError(
                ErrorCode.INVALID_METADATA,
                'metadata must be a JSON object, e.g. {"tenant": "acme", "agent": "sam"}',
            )
        return parsed

    @field_validator("channel_roles", mode="before")
    @classmethod
    def _roles_list(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().startswith("["):
            with contextlib.suppress(ValueError):  # else read as a comma list: the bad role is named
                value = json.loads(value)
        if isinstance(value, str | list | tuple):
            try:
                return parse_channel_roles(value if isinstance(value, str) else list(value))
            except InputError as err:
                raise _custom_error(err) from None
        return value

    @field_validator("speakers", mode="before")
    @classmethod
    def _speakers_name(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return parse_speakers(value)
            except InputError as err:  # else Pydantic's literal_error, without the code
                raise _custom_error(err) from None
        return value

    @model_validator(mode="after")
    def _split_fits_roles(self) -> RecordingFields:
        try:
            check_speakers(self.speakers, self.channel_roles)
        except InputError as err:
            raise _custom_error(err) from None
        return self


class BatchRecordingForm(BaseModel):
    """A finished call's recording to transcribe, score and summarise (``multipart/form-data``)."""

    call_id: str = Field(description="Id of the call, chosen by the client: 1-128 chars of [A-Za-z0-9._:-].")
    metadata: str = Field(
        default="{}",
        description='Who and where the call belongs to, as JSON text: {"tenant", "agent", "team", "region", '
        '"language", "labels"} (the JSON body\'s metadata object).',
    )
    channel_roles: str = Field(
        default="",
        description='Who speaks on each channel of the file, in channel order: "agent,customer" (or a JSON '
        'list). Default: a mono file is one channel (split by `speakers`), a stereo file "agent,customer"; '
        '"mixed" downmixes.',
    )
    speakers: SpeakerSplit = Field(
        default="auto",
        description="Whether a recording heard as one channel (a mono file, or any file with channel_roles "
        '"mixed") is split between agent and customer by a speaker model, as `callsense analyze --speakers`: '
        '"auto" (a mono file sent without channel_roles is split, who speaks first being the agent; it '
        'stays "mixed" when the ASR has no speaker model or hears one voice; any other file is not split), '
        '"agent-first" or "customer-first" (split, who speaks first being the agent or the customer; also '
        'splits a "mixed" downmix), "none" (never split: a mono file is one "mixed" channel). A split gives '
        "utterances, scores and statistics per role. 422 `invalid_speakers` for another value or a split "
        'with channel_roles other than "mixed"; 400 `invalid_recording` for a split of a stereo file sent '
        'without channel_roles "mixed".',
    )
    recording: bytes = Field(
        description="The call's audio file: wav, flac, mp3 or ogg (anything FFmpeg reads), any sample rate, "
        "mono or stereo, up to an hour and the gateway's size limit (100 MB by default).",
        json_schema_extra={"format": "binary"},
    )


# --------------------------------------------------------------------------------------------- output


class ScoredUtteranceOut(BaseModel):
    """An utterance as the chopper emitted it (split, PII masked), with its sentiment."""

    utterance_id: int = Field(description="Id within the call, from 0 in emission order; stable.")
    text: str = Field(description='The text with PII masked, e.g. "[EMAIL]".')
    channel: Channel = Field(description="Who said it.")
    start_ms: int = Field(description="Start, in milliseconds from the start of the call.")
    end_ms: int = Field(description="End, in milliseconds from the start of the call.")
    label: Label = Field(description="The most probable class.")
    p_negative: float = Field(description="Probability of negative, in [0, 1].")
    p_neutral: float = Field(description="Probability of neutral, in [0, 1].")
    p_positive: float = Field(description="Probability of positive, in [0, 1].")
    score: float = Field(description="p_positive + 0.5 * p_neutral, in [0, 1]: 0 most negative.")
    model_version: str = Field(description="Version of the model that scored it.")
    tone_fused: bool = Field(
        default=False,
        description="Whether label, p_* and score fuse how it was said (the speaker's voice against their "
        "own earlier turns in the call) with the words; false for text input, a mixed channel and a "
        "speaker's first turn, where they are the words' alone.",
    )
    text_p_negative: float = Field(default=0.0, description="The words' probability of negative alone.")
    text_p_neutral: float = Field(default=0.0, description="The words' probability of neutral alone.")
    text_p_positive: float = Field(default=0.0, description="The words' probability of positive alone.")
    text_score: float = Field(default=0.0, description="The words' score alone (= score when not fused).")
    text_label: Label = Field(default="neutral", description="The words' most probable class alone.")
    tone_moved: bool = Field(
        default=False,
        description="Tone changed the label, or moved the score by at least 0.15, against the words alone.",
    )
    fusion_version: str | None = Field(default=None, description="The fusion head's version when fused.")

    @classmethod
    def of(cls, event: UtteranceScore) -> ScoredUtteranceOut:
        fused = event.tone_fused
        text = (
            (event.text_p_negative or 0.0, event.text_p_neutral or 0.0, event.text_p_positive or 0.0)
            if fused
            else (event.p_negative, event.p_neutral, event.p_positive)
        )
        return cls(
            utterance_id=event.utterance_id,
            text=event.text,
            channel=event.channel,
            start_ms=event.start_ms,
            end_ms=event.end_ms,
            label=event.label,
            p_negative=event.p_negative,
            p_neutral=event.p_neutral,
            p_positive=event.p_positive,
            score=event.score,
            model_version=event.model_version,
            tone_fused=fused,
            text_p_negative=text[0],
            text_p_neutral=text[1],
            text_p_positive=text[2],
            text_score=event.text_score,
            text_label=event.text_label,
            tone_moved=event.tone_moved,
            fusion_version=event.fusion_version,
        )


class CallStatsOut(BaseModel):
    """Aggregates of a call's scores; averages are null when there was no (such) utterance."""

    utterance_count: int = Field(description="Number of scored utterances (all speakers).")
    avg_sentiment: float | None = Field(description="Mean score over all utterances.")
    min_sentiment: float | None = Field(description="Lowest score over all utterances.")
    customer_avg_sentiment: float | None = Field(description="Mean score of the customer's utterances.")
    customer_min_sentiment: float | None = Field(description="Lowest score of the customer's utterances.")
    agent_avg_sentiment: float | None = Field(description="Mean score of the agent's utterances.")
    label_counts: dict[str, int] = Field(description="Utterances per label.")

    @classmethod
    def of(cls, stats: CallStatistics) -> CallStatsOut:
        return cls(
            utterance_count=stats.utterance_count,
            avg_sentiment=stats.avg_sentiment,
            min_sentiment=stats.min_sentiment,
            customer_avg_sentiment=stats.customer_avg_sentiment,
            customer_min_sentiment=stats.customer_min_sentiment,
            agent_avg_sentiment=stats.agent_avg_sentiment,
            label_counts=dict(stats.label_counts),
        )


class TranscriptSegmentOut(BaseModel):
    """A final segment the recogniser heard in an uploaded recording."""

    channel: Channel
    segment_id: int = Field(description="Segment within the channel, from 0.")
    start_ms: int
    end_ms: int
    text: str = Field(description="As recognised, not PII-masked (only what is stored is masked).")

    @classmethod
    def of(cls, event: asr_pb2.TranscriptEvent) -> TranscriptSegmentOut:
        return cls(
            channel=channel_from_role(event.channel),
            segment_id=event.segment_id,
            start_ms=event.start_ms,
            end_ms=event.end_ms,
            text=event.text.strip(),
        )


class BatchResponse(BaseModel):
    """Scores and statistics of a batch-analysed call."""

    call_id: str
    utterances: list[ScoredUtteranceOut] = Field(description="One per emitted utterance, by utterance_id.")
    stats: CallStatsOut
    summary: list[str] = Field(description="Lines a manager can scan.")
    transcript: list[TranscriptSegmentOut] | None = Field(
        default=None, description="For an uploaded recording: what was heard, by start time; else null."
    )


class CallOut(BaseModel):
    """Everything stored about a call."""

    call_id: str
    status: Literal["live", "ended", "failed"] = Field(description="Lifecycle state.")
    live_here: bool = Field(description="True while this gateway holds the call's live session.")
    metadata: Metadata
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    stats: CallStatsOut = Field(description="Computed from the stored events (so live calls have them too).")
    objection_tags: list[str]
    summary: dict[str, Any] | None = Field(description="Stored at the end: reason, summary lines.")
    events: list[ScoredUtteranceOut] = Field(description="Scored utterances by utterance_id.")

    @classmethod
    def of(cls, row: CallRow, stats: CallStatistics, *, live_here: bool) -> CallOut:
        labels = row.metadata.get("labels") if isinstance(row.metadata.get("labels"), dict) else {}
        return cls(
            call_id=row.call_id,
            status=row.status,
            live_here=live_here,
            metadata=Metadata.model_construct(
                tenant=row.tenant,
                agent=row.agent,
                team=row.team,
                region=row.region,
                language=row.language,
                labels=labels or {},
            ),
            started_at=row.started_at,
            ended_at=row.ended_at,
            duration_s=row.duration_s,
            stats=CallStatsOut.of(stats),
            objection_tags=list(row.objection_tags),
            summary=row.summary,
            events=[ScoredUtteranceOut.of(e) for e in row.events],
        )


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description="Where in the request the problem is.")
    msg: str
    type: str = Field(description="An error code (see ErrorBody.code) or Pydantic's error type.")


class ErrorBody(BaseModel):
    """What every error response of the HTTP API holds under "error"."""

    code: str = Field(description='Stable machine-readable code, e.g. "text_too_long", "not_found".')
    message: str = Field(description="Human-readable explanation, safe to show.")
    details: list[ErrorDetail] = Field(default_factory=list, description="Each validation problem.")


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> JSONResponse:
    """An HTTP error in the API's one shape (ErrorResponse): a stable code, a message saying what to fix."""
    return JSONResponse(
        {"error": {"code": code, "message": message, "details": details or []}}, status_code=status
    )


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessOut(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(description='Component -> "ok" or why it is not ready.')
    models: dict[str, str] = Field(
        default_factory=dict,
        description="Stage -> the model version it serves, as its health check says (the scorer's; with "
        "several replicas, the one that answered).",
    )


# --------------------------------------------------------------------------------------------- events


class StartedEvent(BaseModel):
    """WebSocket, server -> client: the call is open; send utterances."""

    type: Literal["started"] = "started"
    call_id: str
    resumed: bool = Field(description="True when this start re-attached to a call that was already live.")
    max_text_chars: int = Field(default=MAX_TEXT_CHARS, description="Longest utterance text accepted.")


class WatchingEvent(BaseModel):
    """WebSocket, server -> client: this connection now follows a live call."""

    type: Literal["watching"] = "watching"
    call_id: str


class ScoreEventOut(ScoredUtteranceOut):
    """WebSocket, server -> client: an utterance was scored (and stored)."""

    type: Literal["score"] = "score"
    call_id: str
    seq: int = Field(description="Sequence number of the event within the call, from 0; gaps mean loss.")


class TranscriptEventOut(BaseModel):
    """WebSocket, server -> client: a partial or final transcript segment of an audio call. Partials of a
    segment are replaced by later ones; its one final is then scored like a text utterance."""

    type: Literal["transcript"] = "transcript"
    call_id: str
    seq: int = Field(description="Sequence number of the event within the call (shared with scores).")
    segment_id: int = Field(description="Segment within the call and channel; partials and final share it.")
    is_final: bool
    text: str = Field(description="The segment's text as recognised (not PII-masked).")
    channel: Channel
    start_ms: int
    end_ms: int
    unheard_reason: str = Field(
        default="",
        description="Only on a final with empty text whose segment held a second or more of speech that no "
        "decode could transcribe: why (the turn is reported, not scored). Empty otherwise.",
    )

    @classmethod
    def of(cls, event: LiveTranscript) -> TranscriptEventOut:
        t = event.source
        return cls(
            call_id=event.call_id,
            seq=event.seq,
            segment_id=t.segment_id,
            is_final=t.is_final,
            text=t.text,
            channel=event.channel,
            start_ms=t.start_ms,
            end_ms=t.end_ms,
            unheard_reason=t.unheard_reason,
        )


class ProvisionalEventOut(BaseModel):
    """WebSocket, server -> client: the mood of a turn still being spoken, from the words its partials agree
    on so far. Replaced by the next provisional event of the same segment and, in the end, by the ``score``
    events of its final's utterances. Never stored; the badge and the cues act on finals only."""

    type: Literal["provisional"] = "provisional"
    call_id: str
    seq: int = Field(description="Sequence number of the event within the call (shared with scores).")
    channel: Channel = Field(description="Who is speaking.")
    segment_id: int = Field(description="The transcript segment (of the partials) whose words were scored.")
    text: str = Field(description="The stable words scored (the tail from the last sentence; not masked).")
    end_ms: int = Field(description="Call time of the end of the partial scored, in ms.")
    label: Label = Field(description="The most probable class.")
    p_negative: float
    p_neutral: float
    p_positive: float
    score: float = Field(description="p_positive + 0.5 * p_neutral, in [0, 1]: 0 most negative.")
    model_version: str

    @classmethod
    def of(cls, event: LiveProvisional) -> ProvisionalEventOut:
        mood, score = event.mood, event.mood.score
        return cls(
            call_id=event.call_id,
            seq=event.seq,
            channel=mood.channel,
            segment_id=mood.segment_id,
            text=mood.text,
            end_ms=mood.end_ms,
            label=mood.label,
            p_negative=score.p_negative,
            p_neutral=score.p_neutral,
            p_positive=score.p_positive,
            score=min(1.0, max(0.0, score.score)),
            model_version=score.model_version,
        )


class BadgeEventOut(BaseModel):
    """WebSocket, server -> client: the live badge changed colour (after the score that changed it)."""

    type: Literal["badge"] = "badge"
    call_id: str
    seq: int = Field(description="Sequence number of the event within the call (shared with scores).")
    state: BadgeName = Field(
        description="The new colour. Red: the customer's rolling sentiment has stayed below 0.30 for more "
        "than 5 s; it leaves red only with hysteresis. Every call starts amber (no event for that)."
    )
    rolling_score: float = Field(
        description="Time-weighted rolling average of the customer's score at the change, in [0, 1]."
    )
    at_ms: int = Field(description="Call time of the change (end of the utterance that caused it), in ms.")


class CueEventOut(BaseModel):
    """WebSocket, server -> client: a coaching hint for the rep, on a sustained negative trend (never on
    a single low sentence) and throttled."""

    type: Literal["cue"] = "cue"
    call_id: str
    seq: int = Field(description="Sequence number of the event within the call (shared with scores).")
    topic: Topic = Field(description='What the call is about when the cue fires, e.g. "pricing".')
    text: str = Field(description="The hint as shown to the rep, one short sentence.")
    at_ms: int = Field(description="Call time the cue fired, in ms.")


class ErrorEventOut(BaseModel):
    """WebSocket, server -> client: a problem; the connection goes on unless fatal."""

    type: Literal["error"] = "error"
    call_id: str | None = None
    seq: int | None = Field(
        default=None, description="Set for events of the call; null for errors to you only."
    )
    code: str = Field(description='Stable code, e.g. "bad_json", "text_too_long", "not_started".')
    message: str
    fatal: bool = Field(description="True: the call cannot go on (its summary follows).")


class SummaryEventOut(CallStatsOut):
    """WebSocket, server -> client: the call ended; its last event."""

    type: Literal["summary"] = "summary"
    call_id: str
    seq: int
    status: Literal["ended", "failed"]
    reason: str = Field(description='Why it ended: "hangup", "client_gone", "stage_failed", ...')
    lines: list[str] = Field(description="Lines a manager can scan.")
    objection_tags: list[str]
    badge: BadgeName | None = Field(default=None, description="The live badge's colour at the end.")


def summary_json(summary: CallOutcome, seq: int) -> dict[str, Any]:
    stats = CallStatsOut.of(summary.stats).model_dump()
    return SummaryEventOut(
        **stats,
        call_id=summary.call_id,
        seq=seq,
        status=summary.status,
        reason=summary.reason,
        lines=list(summary.lines),
        objection_tags=list(summary.objection_tags),
        badge=summary.badge.value if summary.badge is not None else None,
    ).model_dump()


def event_json(event: CallUpdate) -> dict[str, Any]:
    """A call event as the WebSocket sends it."""
    if isinstance(event, LiveTranscript):
        return TranscriptEventOut.of(event).model_dump()
    if isinstance(event, LiveProvisional):
        return ProvisionalEventOut.of(event).model_dump()
    if isinstance(event, LiveScore):
        scored = ScoredUtteranceOut.of(event.scored).model_dump()
        return ScoreEventOut(**scored, call_id=event.call_id, seq=event.seq).model_dump()
    if isinstance(event, LiveBadge):
        change = event.change
        return BadgeEventOut(
            call_id=event.call_id,
            seq=event.seq,
            state=change.state.value,
            rolling_score=change.rolling_score,
            at_ms=change.at_ms,
        ).model_dump()
    if isinstance(event, LiveCue):
        cue = event.cue
        return CueEventOut(
            call_id=event.call_id, seq=event.seq, topic=cue.topic, text=cue.text, at_ms=cue.at_ms
        ).model_dump()
    if isinstance(event, LiveSummary):
        return summary_json(event.summary, event.seq)
    return error_json(event)


def error_json(event: LiveError) -> dict[str, Any]:
    return ErrorEventOut(
        call_id=event.call_id or None,
        seq=event.seq,
        code=event.code,
        message=event.message,
        fatal=event.fatal,
    ).model_dump()


def input_error_json(err: InputError, call_id: str | None = None, *, fatal: bool = False) -> dict[str, Any]:
    return ErrorEventOut(call_id=call_id, code=err.code, message=err.message, fatal=fatal).model_dump()
