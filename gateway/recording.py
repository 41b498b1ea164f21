"""A finished call's recording, analysed after the fact: ``POST /v1/sentiment/batch`` with a file.

The gateway holds no speech model: the recording goes to the ASR service's ``TranscribeRecording``
(streamed in 1 MB messages; the ASR decodes it with FFmpeg and runs its offline decoder), and the final
segments that come back become text utterances for the same path as a JSON batch
(``Gateway.analyze_batch``: chopper, scorer, store, statistics). So the answer has the same shape, and
the same idempotency: the offline decoder is deterministic (greedy, temperature 0, one thread), so the
same recording under the same call_id gives the same utterances, which the store already holds, and
nothing is stored twice; another recording under a used call_id is a ``call_conflict``.

A recording heard as one channel may be split between the call's two speakers (``speakers``, as
``callsense analyze --speakers``, passed on as ``RecordingStart.speaker_split``): the ASR diarises it and
its segments come back on the AGENT and CUSTOMER channels, so the scores and statistics are per role as for
a stereo file. ``auto`` (the default) leaves it to the ASR, which splits a mono file sent without
channel_roles (the opener being the agent) and nothing else: what the gateway did before it took
``speakers``, so a stereo file, or one whose roles are given, is analysed as ever.

Errors say what to fix, and nothing is stored for a recording that could not be used:
``invalid_recording`` (not audio, truncated, empty, roles that do not fit its channels, too long: the
ASR's own message), ``no_speech`` (it decoded, but nobody said anything the recogniser believed),
``stage_failed`` (no ASR service, or it is busy or down: try again), ``recording_too_large`` (past
``SessionSettings.max_recording_bytes``, checked by the transports as the bytes arrive, before anything
reaches the ASR), ``invalid_speakers`` (not a speaker split, or a split asked of channel_roles that already
say who speaks: checked before the upload is read; a split asked of a stereo file sent without
channel_roles is only found by the ASR, an ``invalid_recording``).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Literal

import grpc
import grpc.aio

from callsense.domain import Channel
from callsense.telemetry import call_context
from callsense.v1 import asr_pb2
from gateway.calls.errors import ErrorCode, InputError
from gateway.calls.inputs import CHANNELS, CallInfo, UtteranceInput, channel_from_role, validate_call_id
from gateway.calls.service import BatchResult, Gateway

UPLOAD_PIECE_BYTES = 1024 * 1024
"""Bytes per RecordingChunk: well under gRPC's 4 MB message limit."""
RECORDING_TIMEOUT_S = 3600.0
"""Deadline of one recording's transcription (the ASR takes up to an hour of audio; on one busy core
tiny.en decodes an hour in about 15 minutes)."""
SUPPORTED = "wav, flac, mp3 or ogg"
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
"""An upload stays in memory up to this size, then goes to a temporary file."""

SpeakerSplit = Literal["auto", "agent-first", "customer-first", "none"]
SPEAKER_SPLITS: Mapping[SpeakerSplit, asr_pb2.SpeakerSplit] = {
    "auto": asr_pb2.SPEAKER_SPLIT_UNSPECIFIED,  # the ASR's own default (asr.proto), not a choice made here
    "agent-first": asr_pb2.SPEAKER_SPLIT_AGENT_FIRST,
    "customer-first": asr_pb2.SPEAKER_SPLIT_CUSTOMER_FIRST,
    "none": asr_pb2.SPEAKER_SPLIT_NONE,
}
"""The ``speakers`` values (``callsense analyze --speakers``'s) and the ASR's SpeakerSplit for each."""
SPEAKER_SPLIT_NAMES: Mapping[int, SpeakerSplit] = {split: name for name, split in SPEAKER_SPLITS.items()}


@dataclass(frozen=True)
class Recording:
    """An uploaded recording: a readable file object (the caller closes it) and what the client said of it."""

    file: IO[bytes]
    filename: str = ""
    content_type: str = ""
    channel_roles: tuple[Channel, ...] = ()
    """One role per channel of the file, or ("mixed",) to downmix; () for the default (mono: one channel,
    split by ``speakers``; stereo: agent then customer)."""
    speakers: SpeakerSplit = "auto"
    """Whether a recording heard as one channel is split between agent and customer, and who opens
    (``SPEAKER_SPLITS``; checked against ``channel_roles`` by ``check_speakers``)."""


@dataclass(frozen=True)
class RecordingResult:
    batch: BatchResult
    transcript: tuple[asr_pb2.TranscriptEvent, ...]
    """The final segments the ASR heard, by start time (text unmasked, as a transcript event's is)."""


def parse_channel_roles(value: str | Sequence[str] | None) -> tuple[Channel, ...]:
    """``"agent,customer"`` (or a list) as roles; InputError naming the bad one."""
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(name, str) for name in names):
        raise InputError(
            ErrorCode.INVALID_CHANNEL, 'channel_roles: give role names, e.g. ["agent", "customer"]'
        )
    roles = tuple(name.strip().lower() for name in names if name.strip())
    for role in roles:
        if role not in CHANNELS:
            raise InputError(
                ErrorCode.INVALID_CHANNEL,
                f"channel_roles: {role!r} is not a role; give one of customer, agent, mixed per channel "
                'of the file, in channel order (e.g. "agent,customer"), or "mixed" to downmix',
            )
    if len(set(roles)) != len(roles):
        raise InputError(ErrorCode.INVALID_CHANNEL, "channel_roles repeats a role: give each channel its own")
    return roles  # type: ignore[return-value]  # each checked against CHANNELS above


def parse_speakers(value: str | None) -> SpeakerSplit:
    """A ``speakers`` value (any case; None or empty: auto); InputError listing the values."""
    name = (value or "auto").strip().lower()
    for split in SPEAKER_SPLITS:
        if name == split:
            return split
    raise InputError(
        ErrorCode.INVALID_SPEAKERS,
        f"speakers {(value or '')[:40]!r} is not a speaker split; give auto (the default: a mono file is "
        "split, who speaks first being the agent), agent-first, customer-first (the customer speaks "
        "first) or none (one mixed channel)",
    )


def speakers_of_split(split: int) -> SpeakerSplit:
    """gRPC's ``RecordingUpload.speaker_split`` as a ``speakers`` value; InputError for a number that is
    not a SpeakerSplit (proto3 keeps unknown enum values: a newer client's, or a mistake)."""
    name = SPEAKER_SPLIT_NAMES.get(split)
    if name is None:
        raise InputError(
            ErrorCode.INVALID_SPEAKERS,
            f"speaker_split {split} is not a SpeakerSplit; give SPEAKER_SPLIT_UNSPECIFIED (auto), "
            "SPEAKER_SPLIT_AGENT_FIRST, SPEAKER_SPLIT_CUSTOMER_FIRST or SPEAKER_SPLIT_NONE",
        )
    return name


def check_speakers(speakers: SpeakerSplit, channel_roles: Sequence[Channel]) -> None:
    """InputError when ``speakers`` asks for a split that ``channel_roles`` rules out (the ASR would refuse
    it too, after the whole upload; this says so before). A stereo file sent without roles is only known
    as such to the ASR."""
    if speakers in ("auto", "none") or not channel_roles or tuple(channel_roles) == ("mixed",):
        return
    if len(channel_roles) > 1:
        raise InputError(
            ErrorCode.INVALID_SPEAKERS,
            f"speakers {speakers} splits a recording heard as one channel, and channel_roles gives "
            f"{len(channel_roles)} ({', '.join(channel_roles)}); send channel_roles mixed to downmix it "
            "first, or leave speakers at auto",
        )
    raise InputError(
        ErrorCode.INVALID_SPEAKERS,
        f"speakers {speakers} splits a mixed channel, and channel_roles gives the recording's one channel "
        f"the role {channel_roles[0]}; send channel_roles mixed (or none), or leave speakers at auto",
    )


def too_large(max_bytes: int) -> InputError:
    return InputError(
        ErrorCode.RECORDING_TOO_LARGE,
        f"the recording is larger than {max_bytes:,} bytes, the most this gateway takes; send a compressed "
        "file (mp3, ogg) or split the call",
    )


async def spool(pieces: AsyncIterator[bytes], max_bytes: int) -> IO[bytes]:
    """The pieces of an upload in a temporary file (in memory while small), rewound; ``too_large`` as
    soon as they outgrow ``max_bytes``. The caller closes the file."""
    file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)  # noqa: SIM115 (returned open)
    try:
        size = 0
        async for piece in pieces:
            size += len(piece)
            if size > max_bytes:
                raise too_large(max_bytes)
            await asyncio.to_thread(file.write, piece)  # may be on disk
        file.seek(0)
    except BaseException:
        file.close()
        raise
    return file


async def analyze_recording(
    gateway: Gateway, call_id: str, metadata: CallInfo, recording: Recording
) -> RecordingResult:
    """Transcribe ``recording`` with the ASR, then score it as a batch (see the module docstring)."""
    validate_call_id(call_id)
    check_speakers(recording.speakers, recording.channel_roles)  # the transports check it sooner, too
    if gateway.registry.get(call_id) is not None:  # before minutes of transcription, not after
        raise InputError(
            ErrorCode.CALL_CONFLICT,
            f"call {call_id} is live on this gateway; analyse it after it ends",
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    with call_context(call_id):
        finals = await transcribe(gateway, call_id, recording)
    utterances = [
        UtteranceInput(
            e.text.strip(),
            channel_from_role(e.channel),
            e.start_ms,
            e.end_ms,
            e.prosody if e.HasField("prosody") else None,  # the scorer fuses the voice's tone with the words
        )
        for e in finals
    ]
    if not utterances:
        raise InputError(
            ErrorCode.NO_SPEECH,
            f"no speech was recognised in {recording.filename or 'the recording'}; nothing was stored "
            "(check that it is the call's audio and that channel_roles name the speaking channels)",
        )
    batch = await gateway.analyze_batch(call_id, metadata, utterances)
    return RecordingResult(batch, tuple(finals))


async def transcribe(gateway: Gateway, call_id: str, recording: Recording) -> list[asr_pb2.TranscriptEvent]:
    """The recording's final segments with text, by start time; the ASR's refusals as InputErrors."""
    asr = gateway.stages.asr
    if asr is None:
        raise InputError(
            ErrorCode.STAGE_FAILED,
            "recordings need the ASR service, which this gateway is not configured with; send utterances "
            "as JSON instead",
            grpc.StatusCode.UNAVAILABLE,
        )
    call = asr.TranscribeRecording(_requests(call_id, recording), timeout=RECORDING_TIMEOUT_S)
    try:
        events = [e async for e in call if e.is_final and e.text.strip()]
    except grpc.aio.AioRpcError as exc:
        refusal = _refusal(exc)
        if refusal is None:
            raise  # down, or failed: the transport's handler answers 503 stage_failed
        raise refusal from exc
    finally:
        call.cancel()  # a no-op once finished; ends the RPC when this task is cancelled
    return sorted(events, key=lambda e: (e.start_ms, e.channel))


async def _requests(call_id: str, recording: Recording) -> AsyncIterator[asr_pb2.RecordingChunk]:
    start = asr_pb2.RecordingStart(
        call_id=call_id,
        filename=recording.filename,
        content_type=recording.content_type,
        channel_roles=[CHANNELS[r] for r in recording.channel_roles],  # type: ignore[misc]
        speaker_split=SPEAKER_SPLITS[recording.speakers],
    )
    yield asr_pb2.RecordingChunk(call_id=call_id, start=start)
    while piece := await asyncio.to_thread(recording.file.read, UPLOAD_PIECE_BYTES):  # may be on disk
        yield asr_pb2.RecordingChunk(data=piece)


def _refusal(exc: grpc.aio.AioRpcError) -> InputError | None:
    """What a failed TranscribeRecording means for the client, when the client can do something."""
    details = exc.details() or ""
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InputError(
            ErrorCode.INVALID_RECORDING, details or f"the recording cannot be used; send {SUPPORTED}"
        )
    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return InputError(
            ErrorCode.STAGE_FAILED,
            f"the ASR service is busy ({details}); try again in a minute",
            grpc.StatusCode.UNAVAILABLE,
        )
    return None
