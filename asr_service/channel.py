"""One channel of a call: the VAD's segments, and when to decode them (plain synchronous logic).

The VAD cuts the channel's 16 kHz stream into segments; while a segment is open a partial decode of
everything heard so far is requested every ``partial_interval_s`` (the first once it holds
``min_partial_s``), and the final decode as soon as the VAD ends the segment (``VadConfig.min_silence_ms``
of silence, 500 ms by default). Audio outside segments is never decoded: silence and noise cost only the
front end (audio decoding, resampling and the VAD: 2-5 ms of CPU per second of audio).

A final's request also carries the pause before its segment, as far back as the end of the previous
segment and at most ``context_s``, and says how much of that the previous segment covered (see
``decoding`` for what the decoder does with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from asr_service.decoding import DecodeRequest, DecodingConfig
from asr_service.hallucination import FilterConfig
from asr_service.recognizer import MAX_AUDIO_S
from asr_service.vad import SAMPLE_RATE, SpeechEnd, SpeechStart, StreamingVad, VadConfig

FloatArray = npt.NDArray[np.float32]
MAX_AUDIO_SAMPLES = int(MAX_AUDIO_S * SAMPLE_RATE)


@dataclass(frozen=True)
class StreamingConfig:
    vad: VadConfig = field(default_factory=VadConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    """How finals are decoded (beam, the channel's previous text as prompt, temperature fallback)."""
    partials: bool = True
    partial_interval_s: float = 1.0
    """Time between two partial decodes of an open segment."""
    min_partial_s: float = 1.0
    """Audio a segment must hold before its first partial (shorter ones are mostly one word)."""
    context_s: float = 2.0
    """Audio before a segment that its final's decode may hear (0: none); see the module docstring."""
    history_s: float = 1.0
    """Audio kept before an open segment (or the present, between segments), on top of ``context_s``:
    VAD padding + min speech + a window, with room."""
    gap_tolerance_ms: int = 250
    """A chunk's timestamp this far ahead of the samples counted means lost audio."""


class _AudioBuffer:
    """Recent samples of a channel addressed by absolute position; appends without re-copying."""

    def __init__(self) -> None:
        self._chunks: list[FloatArray] = []
        self._start = 0  # position of the first kept sample
        self._length = 0

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        return self._start + self._length

    def append(self, samples: FloatArray) -> None:
        if len(samples):
            self._chunks.append(samples)
            self._length += len(samples)

    def skip(self, n: int) -> None:
        """Lost audio: forget everything, the next sample is at ``end + n``."""
        self._start = self.end + n
        self._chunks, self._length = [], 0

    def slice(self, start: int, end: int) -> FloatArray:
        start, end = max(start, self._start), min(end, self.end)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        self._compact()
        return self._chunks[0][start - self._start : end - self._start].copy()

    def trim_before(self, position: int) -> None:
        drop = min(position, self.end) - self._start
        if drop <= 0:
            return
        self._compact()
        self._chunks = [self._chunks[0][drop:]]
        self._start += drop
        self._length -= drop

    def _compact(self) -> None:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]


class ChannelDecoder:
    """One channel: VAD segments, and when to decode them (no threads, no model calls)."""

    def __init__(self, channel: int, vad: StreamingVad, config: StreamingConfig | None = None) -> None:
        self.channel = channel
        self.vad = vad
        self.config = config or StreamingConfig()
        self._buffer = _AudioBuffer()
        self._segment = 0
        self._open_start: int | None = None
        self._previous_end = 0  # where the previous segment ended: its words are not transcribed again
        self._last_partial = 0
        self.speech_s = 0.0
        """Seconds of audio sent to finals so far."""

    @property
    def position(self) -> int:
        """Samples of this channel so far (16 kHz), lost audio included."""
        return self._buffer.end

    def push(self, samples: npt.ArrayLike) -> list[DecodeRequest]:
        """Take the next samples; the decodes they make due."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._buffer.append(x)
        requests = self._apply(self.vad.feed(x))
        requests += self._partial_due()
        self._trim()
        return requests

    def skip(self, n_samples: int) -> list[DecodeRequest]:
        """``n_samples`` of audio were lost: an open segment ends before the gap."""
        requests = self._apply(self.vad.skip(n_samples))
        self._buffer.skip(n_samples)
        return requests

    def flush(self) -> list[DecodeRequest]:
        """End of the call: the open segment's final, if any."""
        requests = self._apply(self.vad.flush())
        self._trim()
        return requests

    def _apply(self, events: Sequence[SpeechStart | SpeechEnd]) -> list[DecodeRequest]:
        requests = []
        for event in events:
            if isinstance(event, SpeechStart):
                self._open_start = event.sample
                self._last_partial = event.sample
            elif self._open_start is not None:
                requests.append(self._request(self._open_start, event.sample, is_final=True))
                self.speech_s += (event.sample - self._open_start) / SAMPLE_RATE
                self._open_start = None
                self._previous_end = event.sample
                self._segment += 1
        return requests

    def _partial_due(self) -> list[DecodeRequest]:
        c = self.config
        start = self._open_start
        if not c.partials or start is None:
            return []
        now = self.position
        if now - start < c.min_partial_s * SAMPLE_RATE or now - self._last_partial < c.partial_interval_s * (
            SAMPLE_RATE
        ):
            return []
        self._last_partial = now
        return [self._request(start, now, is_final=False)]

    def _request(self, start: int, end: int, *, is_final: bool) -> DecodeRequest:
        audio = self._buffer.slice(start, end)
        start = max(start, end - len(audio))  # the buffer may hold less than asked right after a gap
        if not is_final or self.config.context_s <= 0:
            return DecodeRequest(self.channel, self._segment, is_final, start, audio)
        # Context and segment together fit the recogniser's window.
        context_samples = min(int(self.config.context_s * SAMPLE_RATE), MAX_AUDIO_SAMPLES - len(audio))
        context = self._buffer.slice(start - max(context_samples, 0), start)
        transcribed = min(max(self._previous_end - (start - len(context)), 0), len(context))
        return DecodeRequest(self.channel, self._segment, is_final, start, audio, context, transcribed)

    def _trim(self) -> None:
        history = int((self.config.history_s + self.config.context_s) * SAMPLE_RATE)
        keep = (self._open_start if self._open_start is not None else self.position) - history
        # Trim only once twice the history has piled up: compacting on every 20 ms chunk would copy
        # the whole history fifty times a second.
        if keep - self._buffer.start >= history:
            self._buffer.trim_before(keep)
