"""A live call's audio on its way to the ASR: client frames cut into chunks, and the Transcribe requests.

Clients send frames of any size up to MAX_AUDIO_FRAME_BYTES, every channel interleaved or one channel's
mono audio at a time; the ASR takes AudioChunks of at most AUDIO_CHUNK_MS (it refuses chunks over 1 s).
A CallSession (gateway/calls/session.py) checks and cuts each frame with its ``AudioCutter``, queues the
pieces (bounded: back-pressure on the client) and streams them with ``transcribe_requests``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from callsense.domain import Channel
from callsense.v1 import asr_pb2, audio_pb2
from gateway.calls.errors import ErrorCode, InputError
from gateway.calls.inputs import (
    AUDIO_CHUNK_MS,
    CHANNELS,
    MAX_AUDIO_FRAME_BYTES,
    AudioInputFormat,
    CallInfo,
)


@dataclass(frozen=True)
class AudioPiece:
    """One AudioChunk's worth of a call's audio, on its way to the ASR."""

    audio: bytes
    role: int  # audio_pb2.ChannelRole; CHANNEL_ROLE_UNSPECIFIED: all channels interleaved
    timestamp_ms: int | None = None


class AudioCutter:
    """Cuts one call's frames at whole samples into pieces of at most AUDIO_CHUNK_MS."""

    def __init__(self, audio: AudioInputFormat) -> None:
        self.audio = audio
        # Per source (None: interleaved frames; a role: that channel's mono frames), the part of the last
        # frame short of a whole sample.
        self._rest: dict[Channel | None, bytes] = {}

    def check(self, frame: bytes, role: Channel | None) -> None:
        """Refuse a frame over MAX_AUDIO_FRAME_BYTES, or one for a channel the call did not declare."""
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

    def cut(self, frame: bytes, role: Channel | None, timestamp_ms: int | None) -> list[AudioPiece]:
        """The whole samples of ``frame`` (after what was left of the source's last frame), in pieces;
        ``timestamp_ms`` (call time of the frame's first sample) gives each piece its own."""
        audio = self.audio
        unit = audio.frame_bytes if role is None else audio.sample_bytes
        data = self._rest.get(role, b"") + frame
        usable = len(data) - len(data) % unit
        self._rest[role] = data[usable:]
        step = max(unit, unit * audio.sample_rate_hz * AUDIO_CHUNK_MS // 1000)
        proto_role = audio_pb2.CHANNEL_ROLE_UNSPECIFIED if role is None else CHANNELS[role]
        pieces = []
        for offset in range(0, usable, step):
            at_ms = None
            if timestamp_ms is not None:
                at_ms = timestamp_ms + (offset // unit) * 1000 // audio.sample_rate_hz
            pieces.append(AudioPiece(data[offset : min(offset + step, usable)], proto_role, at_ms))
        return pieces


async def transcribe_requests(
    call_id: str,
    audio: AudioInputFormat,
    info: CallInfo,
    first: AudioPiece,
    next_piece: Callable[[], Awaitable[AudioPiece | None]],
    end_reason: Callable[[], str],
) -> AsyncIterator[asr_pb2.TranscribeRequest]:
    """A call's Transcribe stream: its start, its pieces of audio until ``next_piece`` answers None, then
    its end (with the reason the call has by then)."""
    yield asr_pb2.TranscribeRequest(call_id=call_id, start=audio.call_start(call_id, info))
    seq = 0
    piece: AudioPiece | None = first
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
        piece = await next_piece()
    end = audio_pb2.CallEnd(call_id=call_id, reason=end_reason())
    yield asr_pb2.TranscribeRequest(call_id=call_id, end=end)
