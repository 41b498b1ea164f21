"""Whole recorded calls through the offline Whisper decoder (``Asr.TranscribeRecording``, ``callsense
analyze``).

A recording is a file: ``read_recording`` decodes it to 16 kHz 16-bit samples (``transcribe_file``:
anything FFmpeg reads; an empty, truncated or non-audio file, or one longer than ``MAX_RECORDING_S``,
raises ValueError saying what to fix) and gives each channel its role (``transcribe_file.channel_roles``:
mono is ``mixed``, stereo ``agent`` then ``customer``, ``("mixed",)`` downmixes).

Each channel then goes through faster-whisper's stock ``WhisperModel.transcribe``, the offline decoder
``callsense transcribe``'s streaming path is measured against (tests/asr_service/test_asr_wer.py): it sees
whole stretches of speech with their context, so it is the more accurate of the two when nobody is waiting
for partials. Settings: greedy, temperature 0, no conditioning on earlier text (as the reference), word
times, and faster-whisper's Silero VAD filter, so that long silences (on a stereo file, each channel is
silent while the other speaker talks) are skipped rather than decoded into "Thank you." Every segment
then passes the hallucination filter live audio passes (``hallucination.judge``) and gets prosody; the
result is a ``streaming.Transcript`` like a live final, segment ids counting from 0 per channel.

Scheduling (``ChannelDecode``): the ``transcribe`` call itself only runs the VAD and computes the
log-mel features of the whole channel (front-end work, for a thread the caller picks); the generator
it returns runs Whisper one 30 s window at a time. Each ``step`` (one segment, so at most one window of
Whisper) is one job of the process's ``InferenceScheduler``: a long recording takes turns with the live
calls instead of holding the inference thread for minutes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from asr_service.audio import TARGET_RATE_HZ
from asr_service.hallucination import FilterConfig, judge
from asr_service.prosody import analyze
from asr_service.recognizer import Recognition, RecognizedWord
from asr_service.scheduler import StreamHandle
from asr_service.streaming import Transcript, Word
from asr_service.transcribe_file import channel_roles, decode_audio

MAX_RECORDING_S = 3600.0
"""Longest recording taken: its samples, features and VAD copies (about 600 MB for an hour of one
channel) are held in memory while it is decoded."""
MAX_RECORDING_BYTES = 256 * 1024 * 1024
"""Largest file taken (an hour of 16-bit stereo WAV at 44.1 kHz is about 635 MB: such files are
expected compressed, or at telephony rates)."""

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Recording:
    """A decoded recording: 16 kHz samples, one column per role."""

    roles: tuple[str, ...]
    """'agent', 'customer' or 'mixed', one per column of ``samples``."""
    samples: Int16Array
    """(frames, len(roles)) at 16 kHz."""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / TARGET_RATE_HZ

    def channel(self, index: int) -> FloatArray:
        """One channel as float32 in [-1, 1) (what Whisper takes)."""
        return (self.samples[:, index].astype(np.float32) / 32768.0).astype(np.float32)


def read_recording(
    source: IO[bytes],
    name: str,
    roles: Sequence[str] | None = None,
    *,
    max_duration_s: float = MAX_RECORDING_S,
) -> Recording:
    """Decode a recording (a seekable file object; ``name`` stands for it in messages) and assign its
    channels' roles; ValueError, saying what to fix, when it cannot be used."""
    audio = decode_audio(source, name, sample_rate_hz=TARGET_RATE_HZ, max_duration_s=max_duration_s)
    try:
        names = channel_roles(audio.channels, roles)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    samples = audio.samples if len(names) == audio.channels else audio.mono()[:, None]
    return Recording(names, np.ascontiguousarray(samples))


@dataclass(frozen=True)
class OfflineOptions:
    language: str = "en"
    """For multilingual models; English-only models ignore it."""
    filter: FilterConfig = field(default_factory=FilterConfig)


class ChannelDecode:
    """One channel of a recording through the offline decoder: ``prepare`` once (front end), then
    ``step`` (one segment each, Whisper) until ``done``. Not thread-safe: one step at a time."""

    def __init__(
        self, model: Any, recording: Recording, channel: int, options: OfflineOptions | None = None
    ) -> None:
        self._model = model
        self._recording = recording
        self.channel = channel
        self._options = options or OfflineOptions()
        self._audio: FloatArray | None = None
        self._segments: Iterator[Any] | None = None
        self._next_id = 0
        self.done = False

    def prepare(self) -> None:
        """The VAD and log-mel features of the whole channel (no Whisper yet)."""
        self._audio = self._recording.channel(self.channel)
        segments, _info = self._model.transcribe(
            self._audio,
            language=self._options.language,
            beam_size=1,
            best_of=1,
            temperature=0.0,
            condition_on_previous_text=False,
            word_timestamps=True,
            vad_filter=True,
        )
        self._segments = iter(segments)

    def step(self) -> Transcript | None:
        """Decode the next segment: a final transcript, or None when the filter drops it (or the
        channel has ended: ``done`` then turns True)."""
        if self._segments is None or self._audio is None:
            raise RuntimeError("prepare() the channel before stepping through it")
        segment = next(self._segments, None)
        if segment is None:
            self.done = True
            self._audio = None  # the channel's samples are no longer needed
            return None
        recognition = _recognition(segment)
        if judge(recognition, self._options.filter) is not None:
            return None
        transcript = self._transcript(segment, recognition)
        self._next_id += 1
        return transcript

    def _transcript(self, segment: Any, recognition: Recognition) -> Transcript:
        assert self._audio is not None
        start_ms, end_ms = _ms(segment.start), max(_ms(segment.end), _ms(segment.start))
        words = tuple(_clipped(w, start_ms, end_ms) for w in recognition.words)
        audio = self._audio[start_ms * TARGET_RATE_HZ // 1000 : end_ms * TARGET_RATE_HZ // 1000]
        span = recognition.words[-1].end_s - recognition.words[0].start_s if recognition.words else None
        return Transcript(
            channel=self.channel,
            segment_id=self._next_id,
            is_final=True,
            text=recognition.text,
            words=words,
            start_ms=start_ms,
            end_ms=end_ms,
            no_speech_prob=recognition.no_speech_prob,
            avg_logprob=recognition.avg_logprob,
            compression_ratio=recognition.compression_ratio,
            prosody=analyze(audio, n_words=len(recognition.text.split()), speech_span_s=span),
        )


def _ms(seconds: float) -> int:
    return max(0, int(round(seconds * 1000)))


def _clipped(word: RecognizedWord, start_ms: int, end_ms: int) -> Word:
    """A word with its times kept within its segment's."""
    start = min(max(_ms(word.start_s), start_ms), end_ms)
    return Word(word.text, start, min(max(_ms(word.end_s), start), end_ms), word.probability)


def _recognition(segment: Any) -> Recognition:
    """A faster-whisper segment in the terms the hallucination filter judges (times in call seconds)."""
    words = tuple(RecognizedWord(w.word, w.start, w.end, w.probability) for w in segment.words or ())
    return Recognition(
        text=segment.text.strip(),
        words=words,
        no_speech_prob=float(segment.no_speech_prob),
        avg_logprob=float(segment.avg_logprob),
        compression_ratio=float(segment.compression_ratio),
        audio_s=max(0.0, float(segment.end - segment.start)),
    )


def channel_decodes(
    model: Any, recording: Recording, options: OfflineOptions | None = None
) -> list[ChannelDecode]:
    return [ChannelDecode(model, recording, c, options) for c in range(len(recording.roles))]


def transcribe_recording(
    model: Any, recording: Recording, options: OfflineOptions | None = None
) -> list[Transcript]:
    """The whole recording on this thread (a command-line tool's way); channel after channel."""
    transcripts: list[Transcript] = []
    for decode in channel_decodes(model, recording, options):
        decode.prepare()
        while not decode.done:
            transcript = decode.step()
            if transcript is not None:
                transcripts.append(transcript)
    return transcripts


async def stream_recording(
    decodes: Sequence[ChannelDecode], stream: StreamHandle, frontend: Executor | None = None
) -> AsyncIterator[Transcript]:
    """The recording's transcripts as they are decoded (a service's way): each channel is prepared on
    ``frontend`` (None: asyncio's default executor), each step is a job of ``stream``."""
    loop = asyncio.get_running_loop()
    for decode in decodes:
        await loop.run_in_executor(frontend, decode.prepare)
        while not decode.done:
            transcript = await asyncio.wrap_future(stream.submit(decode.step))
            if transcript is not None:
                yield transcript
