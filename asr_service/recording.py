"""Whole recorded calls through the offline Whisper decoder (``Asr.TranscribeRecording``, ``callsense
analyze``).

A recording is a file: ``read_recording`` decodes it to 16 kHz 16-bit samples (``transcribe_file``:
anything FFmpeg reads; an empty, truncated or non-audio file, or one longer than ``MAX_RECORDING_S``,
raises ValueError saying what to fix) and gives each channel its role (``transcribe_file.channel_roles``:
mono is ``mixed``, stereo ``agent`` then ``customer``, ``("mixed",)`` downmixes).

A recording heard as one channel can be split between its two speakers (``speakers``, issue 14): by
default a mono file is (``auto``), with the one who opens the call as the agent; ``customer-first`` says
the customer opens (an outbound call the customer picks up), ``none`` keeps one ``mixed`` channel, and
``agent-first``/``customer-first`` also split a file downmixed with ``("mixed",)``. The diarisation
(``diarization.DiarizationRun``: pyannote's segmentation model, a batch of windows per step) runs before
Whisper; Whisper then transcribes the one channel once and each word goes to the role who talks when it
is said (``attribution``: why words and not two cut-out channels). A recording in which only one voice is
found stays ``mixed``: nobody can say whose it is.

Each channel then goes through faster-whisper's stock ``WhisperModel.transcribe``, the offline decoder
``callsense transcribe``'s streaming path is measured against (tests/asr_service/test_asr_wer.py): it sees
whole stretches of speech with their context, so it is the more accurate of the two when nobody is waiting
for partials. Settings (``OfflineOptions``): beam 5 with temperature fallback (faster-whisper's
defaults), no conditioning on earlier text, word times, and faster-whisper's Silero VAD filter, so that
long silences (on a stereo file, each channel is silent while the other speaker talks) are skipped rather
than decoded into "Thank you." Every segment
then passes the hallucination filter live audio passes (``hallucination.judge``) and gets prosody; the
result is a ``streaming.Transcript`` like a live final, segment ids counting from 0 per channel.

Scheduling (``ChannelDecode``, ``split_speakers``): each diarisation model step is one job of the
process's ``InferenceScheduler``, like Whisper's (the linking after it runs on a worker thread). The
``transcribe`` call itself only runs the VAD and computes the log-mel features of the whole channel
(front-end work, for a thread the caller picks); the generator it returns runs Whisper one 30 s window
at a time. Each ``step`` (one segment, so at most one window of
Whisper) is one job of the process's ``InferenceScheduler``: a long recording takes turns with the live
calls instead of holding the inference thread for minutes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from asr_service import diarization
from asr_service.attribution import split_transcript
from asr_service.audio import TARGET_RATE_HZ
from asr_service.diarization import DiarizationRun, SegmentationModel
from asr_service.hallucination import FilterConfig, judge
from asr_service.prosody import analyze
from asr_service.recognizer import Recognition, RecognizedWord
from asr_service.scheduler import StreamHandle
from asr_service.speakers import ROLES, SpeakerTimeline
from asr_service.streaming import Transcript, Word
from asr_service.transcribe_file import channel_roles, decode_audio

log = logging.getLogger(__name__)

MAX_RECORDING_S = 3600.0
"""Longest recording taken: its samples, features and VAD copies (about 600 MB for an hour of one
channel) are held in memory while it is decoded."""
MAX_RECORDING_BYTES = 256 * 1024 * 1024
"""Largest file taken (an hour of 16-bit stereo WAV at 44.1 kHz is about 635 MB: such files are
expected compressed, or at telephony rates)."""

SPEAKER_SPLITS = ("auto", "none", "agent-first", "customer-first")
"""How a recording heard as one channel is given to its speakers (the module docstring)."""

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Recording:
    """A decoded recording: 16 kHz samples, one column per channel heard."""

    roles: tuple[str, ...]
    """'agent', 'customer' or 'mixed': the role of each channel of the transcripts (``Transcript.channel``
    indexes it). One per column of ``samples``, except for a channel split by speaker: one column,
    roles ('agent', 'customer')."""
    samples: Int16Array
    """(frames, columns) at 16 kHz."""
    opener: str | None = None
    """Set while the one channel is still to be split by speaker: the role of who opens the call."""
    speakers: SpeakerTimeline | None = None
    """Who talks when, once the one channel has been diarised (``with_speakers``)."""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / TARGET_RATE_HZ

    @property
    def columns(self) -> int:
        return int(self.samples.shape[1])

    @property
    def split(self) -> bool:
        """Whether the one channel's words go to two speakers' roles."""
        return self.speakers is not None and self.speakers.roles is not None

    def channel(self, index: int) -> FloatArray:
        """One channel as float32 in [-1, 1) (what Whisper takes)."""
        return (self.samples[:, index].astype(np.float32) / 32768.0).astype(np.float32)


def read_recording(
    source: IO[bytes],
    name: str,
    roles: Sequence[str] | None = None,
    *,
    speakers: str = "auto",
    max_duration_s: float = MAX_RECORDING_S,
) -> Recording:
    """Decode a recording (a seekable file object; ``name`` stands for it in messages) and assign its
    channels' roles, or who opens it when its one channel is to be split by speaker (``speakers``: one
    of ``SPEAKER_SPLITS``); ValueError, saying what to fix, when it cannot be used."""
    audio = decode_audio(source, name, sample_rate_hz=TARGET_RATE_HZ, max_duration_s=max_duration_s)
    try:
        names = channel_roles(audio.channels, roles)
        opener = split_opener(speakers, audio.channels, names, explicit_roles=roles is not None)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    samples = audio.samples if len(names) == audio.channels else audio.mono()[:, None]
    return Recording(names, np.ascontiguousarray(samples), opener=opener)


def split_opener(
    speakers: str, file_channels: int, roles: Sequence[str], *, explicit_roles: bool = False
) -> str | None:
    """Who opens the call when a recording heard as one channel is to be split by speaker ('agent' or
    'customer'); None when it is not split. ValueError for a split that cannot apply."""
    if speakers not in SPEAKER_SPLITS:
        raise ValueError(f"speakers {speakers!r} is not one of {', '.join(SPEAKER_SPLITS)}")
    if speakers == "none":
        return None
    if len(roles) == 1 and roles[0] != "mixed":
        if speakers == "auto":
            return None  # the caller said whose the one channel is
        raise ValueError(
            f"speakers {speakers} splits a mixed channel, and this recording's one channel is given "
            f"the role {roles[0]}; give channel roles 'mixed' (or none), or leave speakers at auto"
        )
    if len(roles) > 1:
        if speakers == "auto":
            return None  # each channel is one speaker already
        raise ValueError(
            f"speakers {speakers} splits a recording heard as one channel, and this one has "
            f"{len(roles)} ({', '.join(roles)}); give channel roles 'mixed' to downmix it first, "
            "or leave speakers at auto"
        )
    if speakers == "auto":
        # A mono file the caller said nothing of: split. A downmix the caller asked for stays mixed.
        if file_channels != 1 or explicit_roles:
            return None
        if not diarization.available():
            log.warning("mono recording left mixed: %s", _unavailable())
            return None
        return "agent"
    return speakers.removesuffix("-first")


def _unavailable() -> str:
    try:
        diarization.model_path()
    except diarization.DiarizationUnavailable as exc:
        return str(exc)
    return ""


def speaker_run(recording: Recording, model: SegmentationModel | None = None) -> DiarizationRun | None:
    """The diarisation a recording still needs (None: none), to ``step`` and then ``with_speakers``.
    DiarizationUnavailable when the model is not installed."""
    if recording.opener is None or recording.speakers is not None:
        return None
    return DiarizationRun(recording.channel(0), opener=recording.opener, model=model)


def with_speakers(recording: Recording, speakers: SpeakerTimeline) -> Recording:
    """``recording`` with its one channel's speakers known: roles agent and customer, or still mixed
    when only one voice was found."""
    roles = ROLES if speakers.roles is not None else recording.roles
    return replace(recording, roles=roles, opener=None, speakers=speakers)


@dataclass(frozen=True)
class OfflineOptions:
    language: str = "en"
    """For multilingual models; English-only models ignore it."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    beam_size: int = 5
    """As faster-whisper's own default: on asr_dev, tiny.en offline made 6.15 % errors with beam 5 and
    temperature fallback against 8.92 % greedy (README, Benchmarks)."""
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    """The first, then the fallbacks when a window's decode is too repetitive or unsure."""


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
        self._split_ids: dict[int, int] = {}
        self.done = False

    def prepare(self) -> None:
        """The VAD and log-mel features of the whole channel (no Whisper yet)."""
        self._audio = self._recording.channel(self.channel)
        segments, _info = self._model.transcribe(
            self._audio,
            language=self._options.language,
            beam_size=self._options.beam_size,
            best_of=self._options.beam_size,
            temperature=list(self._options.temperatures),
            # Not conditioned on the previous window's text: on an hour of audio one bad window would
            # otherwise seed the next (Whisper's known repetition cascade).
            condition_on_previous_text=False,
            word_timestamps=True,
            vad_filter=True,
        )
        self._segments = iter(segments)

    def step(self) -> list[Transcript]:
        """Decode the next segment: its final transcript (one per speaker on a channel split by
        speaker), or none when the filter drops it or the channel has ended (``done`` then turns True)."""
        if self._segments is None or self._audio is None:
            raise RuntimeError("prepare() the channel before stepping through it")
        segment = next(self._segments, None)
        if segment is None:
            self.done = True
            self._audio = None  # the channel's samples are no longer needed
            return []
        recognition = _recognition(segment)
        if judge(recognition, self._options.filter) is not None:
            return []
        transcript = self._transcript(segment, recognition)
        self._next_id += 1
        speakers = self._recording.speakers
        if self._recording.split and speakers is not None:
            return split_transcript(transcript, speakers, self._audio, self._recording.roles, self._split_ids)
        return [transcript]

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
    """One decode per column; a recording still to be split by speaker must go through
    ``split_speakers`` (or ``speaker_run``) first."""
    if recording.opener is not None and recording.speakers is None:
        raise RuntimeError("the recording is to be split by speaker: diarise it before decoding")
    return [ChannelDecode(model, recording, c, options) for c in range(recording.columns)]


def diarize_recording(recording: Recording, segmentation: SegmentationModel | None = None) -> Recording:
    """``recording`` diarised on this thread when it is to be split by speaker, else as it is (a
    command-line tool's way; ``split_speakers`` is a service's)."""
    run = speaker_run(recording, segmentation)
    return recording if run is None else with_speakers(recording, run.finish())


def transcribe_recording(
    model: Any, recording: Recording, options: OfflineOptions | None = None
) -> list[Transcript]:
    """The whole recording on this thread (a command-line tool's way); channel after channel. A
    recording to be split by speaker goes through ``diarize_recording`` first (its roles then name the
    transcripts' channels)."""
    transcripts: list[Transcript] = []
    for decode in channel_decodes(model, recording, options):
        decode.prepare()
        while not decode.done:
            transcripts += decode.step()
    return transcripts


async def split_speakers(
    recording: Recording, stream: StreamHandle, segmentation: SegmentationModel | None = None
) -> Recording:
    """``recording`` diarised when it is to be split by speaker (each model step a job of ``stream``,
    so live calls keep their turn; the linking on a worker thread), else as it is."""
    run = await asyncio.to_thread(speaker_run, recording, segmentation)  # loads the model once
    if run is None:
        return recording
    while not run.heard:
        await asyncio.wrap_future(stream.submit(run.step))
    return with_speakers(recording, await asyncio.to_thread(run.finish))


async def stream_recording(
    decodes: Sequence[ChannelDecode], stream: StreamHandle, frontend: Executor | None = None
) -> AsyncIterator[Transcript]:
    """The recording's transcripts as they are decoded (a service's way): each channel is prepared on
    ``frontend`` (None: asyncio's default executor), each step is a job of ``stream``."""
    loop = asyncio.get_running_loop()
    for decode in decodes:
        await loop.run_in_executor(frontend, decode.prepare)
        while not decode.done:
            for transcript in await asyncio.wrap_future(stream.submit(decode.step)):
                yield transcript
