"""A live call's audio on its way to the ASR: client frames cut into chunks, and the Transcribe requests.

Clients send frames of any size up to MAX_AUDIO_FRAME_BYTES, every channel interleaved or one channel's
mono audio at a time; the ASR takes AudioChunks of at most AUDIO_CHUNK_MS (it refuses chunks over 1 s).
A CallSession (gateway/calls/session.py) checks and cuts each frame with its ``AudioCutter`` and queues the
pieces (bounded: back-pressure on the client); its ``AsrStream`` (gateway/calls/asr_stream.py) sends them,
keeping in an ``AudioReplay`` what the ASR has not made finals of yet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from callsense.domain import Channel
from callsense.v1 import audio_pb2
from gateway.calls.errors import ErrorCode, InputError
from gateway.calls.inputs import (
    AUDIO_CHUNK_MS,
    CHANNELS,
    MAX_AUDIO_FRAME_BYTES,
    AudioInputFormat,
)


@dataclass(frozen=True)
class AudioPiece:
    """One AudioChunk's worth of a call's audio, on its way to the ASR."""

    audio: bytes
    role: int  # audio_pb2.ChannelRole; CHANNEL_ROLE_UNSPECIFIED: all channels interleaved
    timestamp_ms: int
    """Call time of the piece's first sample: the client's timestamp where it sent one, else its source's
    samples counted so far. Every piece has one, so audio sent again on a new ASR stream (after the ASR
    went away) keeps its place in the call."""
    end_ms: int
    """Call time just after the piece's last sample."""


class AudioCutter:
    """Cuts one call's frames at whole samples into pieces of at most AUDIO_CHUNK_MS."""

    def __init__(self, audio: AudioInputFormat) -> None:
        self.audio = audio
        # Per source (None: interleaved frames; a role: that channel's mono frames), the part of the last
        # frame short of a whole sample, and the call time (in samples) of the source's next sample.
        self._rest: dict[Channel | None, bytes] = {}
        self._clock: dict[Channel | None, int] = {}
        self._origin = 0  # where a source's first frame without a timestamp starts, in samples

    def continue_after(self, call_ms: int) -> None:
        """The call began at another gateway (it died) and was heard there up to ``call_ms``: frames
        without a timestamp go on after that, not from 0 (their words must not land on stored ones)."""
        self._origin = call_ms * self.audio.sample_rate_hz // 1000

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
        ``timestamp_ms`` (call time of the frame's first sample) places them in the call, else they
        follow the source's previous frame."""
        audio = self.audio
        rate = audio.sample_rate_hz
        unit = audio.frame_bytes if role is None else audio.sample_bytes
        data = self._rest.get(role, b"") + frame
        usable = len(data) - len(data) % unit
        self._rest[role] = data[usable:]
        first = (
            timestamp_ms * rate // 1000 if timestamp_ms is not None else self._clock.get(role, self._origin)
        )
        self._clock[role] = first + usable // unit
        step = max(unit, unit * rate * AUDIO_CHUNK_MS // 1000)
        proto_role = audio_pb2.CHANNEL_ROLE_UNSPECIFIED if role is None else CHANNELS[role]
        pieces = []
        for offset in range(0, usable, step):
            end = min(offset + step, usable)
            start_ms = (first + offset // unit) * 1000 // rate
            end_ms = (first + end // unit) * 1000 // rate
            pieces.append(AudioPiece(data[offset:end], proto_role, start_ms, end_ms))
        return pieces


class AudioReplay:
    """The part of a call's audio the ASR has not yet made finals of, kept to be sent again on a new
    Transcribe stream when the ASR goes away (gateway/calls/asr_stream.py).

    Per channel, the audio up to the end of its last final is done; a channel's own pieces are dropped once
    done, interleaved pieces once done on every channel. A channel that stays silent makes no finals, so
    at most ``limit_ms`` before the newest piece is kept whatever: the memory a call holds is bounded
    (30 s of 16 kHz stereo PCM16 is about 2 MB), and a failure after longer than that loses the oldest
    unfinished audio, which is only ever silence or speech the ASR was already far behind on.
    """

    def __init__(self, roles: Sequence[int], limit_ms: int) -> None:
        self._finalised_ms = dict.fromkeys(roles, 0)
        self._limit_ms = limit_ms
        self._pieces: deque[AudioPiece] = deque()
        self._newest_ms = 0

    def add(self, piece: AudioPiece) -> None:
        self._pieces.append(piece)
        self._newest_ms = max(self._newest_ms, piece.end_ms)
        self._trim()

    def finalised(self, role: int, end_ms: int) -> None:
        """The ASR made a final of ``role``'s audio up to ``end_ms``."""
        if end_ms > self._finalised_ms.get(role, end_ms):
            self._finalised_ms[role] = end_ms
            self._trim()

    def finalised_ms(self, role: int) -> int:
        """Call time up to which ``role``'s audio has finals."""
        return self._finalised_ms.get(role, 0)

    def pending(self) -> list[AudioPiece]:
        """The pieces still to be made finals of, in the order they came."""
        return [piece for piece in self._pieces if piece.end_ms > self._done_ms(piece)]

    def _done_ms(self, piece: AudioPiece) -> int:
        if piece.role == audio_pb2.CHANNEL_ROLE_UNSPECIFIED:
            return min(self._finalised_ms.values())
        return self._finalised_ms.get(piece.role, 0)

    def _trim(self) -> None:
        pieces, oldest_kept = self._pieces, self._newest_ms - self._limit_ms
        while pieces and (pieces[0].end_ms <= self._done_ms(pieces[0]) or pieces[0].end_ms < oldest_kept):
            pieces.popleft()
