"""The input rules: what a client may send for a call, checked once here whatever the transport.

The limits (MAX_*), who a call belongs to (CallInfo), one text utterance (UtteranceInput), the audio a
call declares (AudioInputFormat), and the mapping between the wire's channel roles (audio.proto's
ChannelRole) and the domain's Channel. Transports parse their wire format and call the ``validate_*``
functions; what comes out is safe to hand to the pipeline. An InputError carries the ErrorCode to answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from callsense.domain import Channel
from callsense.ids import is_valid_call_id
from callsense.v1 import asr_pb2, audio_pb2, prosody_pb2
from gateway.calls.errors import ErrorCode, InputError

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
BYTES_PER_SAMPLE: Mapping[str, int] = {"pcm16": 2, "mulaw": 1, "alaw": 1}
MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ = 8_000, 48_000

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


@dataclass(frozen=True)
class CallInfo:
    """Who and where a call belongs to, validated; parsed from audio.proto's CallMetadata (or JSON)."""

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
class UtteranceInput:
    """One utterance given as text, validated."""

    text: str
    channel: Channel
    start_ms: int
    end_ms: int
    prosody: prosody_pb2.Prosody | None = field(default=None, compare=False)  # a message is not hashable
    """How it was said, when it came from the ASR (a recording): the scorer fuses it with the text."""


def validate_call_id(call_id: object) -> str:
    """A call_id as audio.proto's CallStart allows it: safe in URLs, logs and span tags."""
    if not isinstance(call_id, str) or not call_id:
        raise InputError(ErrorCode.INVALID_CALL_ID, "call_id is required")
    if not is_valid_call_id(call_id):
        shown = call_id[:40] + ("..." if len(call_id) > 40 else "")
        raise InputError(
            ErrorCode.INVALID_CALL_ID,
            f"call_id {shown!r} is malformed: use 1-128 characters of A-Z a-z 0-9 . _ : -",
        )
    return call_id


def decode_json(text: str) -> Any:
    """A JSON message as Python values; InputError ``bad_json`` for anything that is not JSON, and for
    JSON nested too deep to decode (which would otherwise raise RecursionError and drop the connection)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InputError(ErrorCode.BAD_JSON, f"the message is not valid JSON: {reason}") from None


def storable(value: str, field: str, code: str) -> str:
    """``value`` unless it holds what no database column or UTF-8 frame can carry: a NUL character, or a
    lone UTF-16 surrogate (JSON's "\\ud800"); InputError with ``code`` naming ``field`` then."""
    if "\x00" in value:
        raise InputError(code, f"{field} holds a NUL character (\\u0000): remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(code, f"{field} holds a lone UTF-16 surrogate: send valid Unicode text") from None
    return value


def validate_metadata(
    tenant: str = "",
    agent: str = "",
    team: str = "",
    region: str = "",
    language: str = "",
    labels: Mapping[str, str] | None = None,
) -> CallInfo:
    values = {"tenant": tenant, "agent": agent, "team": team, "region": region, "language": language}
    for name, value in values.items():
        storable(value, f"metadata.{name}", ErrorCode.INVALID_METADATA)
        if len(value) > MAX_METADATA_CHARS:
            raise InputError(
                ErrorCode.INVALID_METADATA, f"metadata.{name} is longer than {MAX_METADATA_CHARS} characters"
            )
    labels = dict(labels or {})
    if len(labels) > MAX_LABELS:
        raise InputError(ErrorCode.INVALID_METADATA, f"metadata.labels holds more than {MAX_LABELS} entries")
    for key, value in labels.items():
        storable(key, "metadata.labels", ErrorCode.INVALID_METADATA)
        storable(value, f"metadata.labels.{key}", ErrorCode.INVALID_METADATA)
        if len(key) > MAX_METADATA_CHARS or len(value) > 1024:
            raise InputError(
                ErrorCode.INVALID_METADATA,
                f"metadata.labels: keys are limited to {MAX_METADATA_CHARS} characters, values to 1024",
            )
    return CallInfo(**{k: v.strip() for k, v in values.items()}, labels=labels)


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
    return storable(text, "text", ErrorCode.INVALID_TEXT)


def validate_channel(channel: object) -> Channel:
    if not isinstance(channel, str) or channel not in CHANNELS:
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


def validate_utterance(text: object, channel: object, start_ms: object, end_ms: object) -> UtteranceInput:
    """The one set of rules for an utterance, whatever the transport."""
    checked_text = validate_text(text)
    checked_channel = validate_channel(channel)
    start, end = validate_times(start_ms, end_ms)
    return UtteranceInput(checked_text, checked_channel, start, end)


@dataclass(frozen=True)
class AudioInputFormat:
    """The audio layout a call declared in its start message, validated."""

    encoding: str
    sample_rate_hz: int
    channels: int
    channel_roles: tuple[Channel, ...]

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample of one channel (the unit of one channel's mono audio)."""
        return BYTES_PER_SAMPLE[self.encoding]

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample of every channel: audio is cut only at multiples of this."""
        return self.sample_bytes * self.channels

    def bytes_for_ms(self, ms: int) -> int:
        return self.frame_bytes * self.sample_rate_hz * ms // 1000

    def call_start(self, call_id: str, metadata: CallInfo) -> audio_pb2.CallStart:
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


def validate_audio_format(audio: object) -> AudioInputFormat:
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
    if not isinstance(encoding, str) or encoding not in AUDIO_ENCODINGS:
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
    if not isinstance(roles, list) or any(not isinstance(r, str) or r not in CHANNELS for r in roles):
        raise _bad_audio("channel_roles must be a list of customer, agent or mixed, one per channel")
    if len(roles) != channels:
        raise _bad_audio(f"channel_roles has {len(roles)} role(s) for {channels} channel(s): give one each")
    if len(set(roles)) != len(roles):
        raise _bad_audio("channel_roles repeats a role: give each channel its own")
    return AudioInputFormat(str(encoding), rate, channels, tuple(roles))


def channel_from_role(role: int) -> Channel:
    return _ROLE_TO_CHANNEL.get(role, "mixed")


def transcript_event(call_id: str, segment_id: int, utterance: UtteranceInput) -> asr_pb2.TranscriptEvent:
    """A text utterance as the final transcript segment the chopper expects (text, channel, times)."""
    return asr_pb2.TranscriptEvent(
        call_id=call_id,
        segment_id=segment_id,
        is_final=True,
        text=utterance.text,
        start_ms=utterance.start_ms,
        end_ms=utterance.end_ms,
        channel=CHANNELS[utterance.channel],  # type: ignore[arg-type]  # an int of the ChannelRole enum
        prosody=utterance.prosody,
    )
