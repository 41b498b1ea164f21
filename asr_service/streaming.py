"""The incremental decoder: a call's audio in, partial and final transcript segments out.

Per channel (``ChannelDecoder``, plain synchronous logic): the VAD cuts the 16 kHz stream into
segments; while a segment is open a partial decode of everything heard so far is requested every
``partial_interval_s`` (the first once it holds ``min_partial_s``), and the final decode as soon as the
VAD ends the segment (``VadConfig.min_silence_ms`` of silence, 500 ms by default). Audio outside
segments is never decoded: silence and noise cost only the front end (audio decoding, resampling
and the VAD: 2-5 ms of CPU per second of audio).

Decoding (``run_decode``, on the one inference thread of ``scheduler``): Whisper without the 30 s pad
(``recognizer``), then the hallucination filter (``hallucination.judge``); finals also get word times
and prosody. Partials skip word alignment: they are replaced within a second anyway.

Context for finals (``StreamingConfig.context_s``, 2 s; partials decode their segment alone):

- a final's decode also hears the pause before its segment, as far back as the end of the previous
  segment and at most ``context_s``: speech too soft for the VAD is often there (a quiet "ask not",
  the start of a sentence on an 8 kHz line), and its words then belong to the segment (their times
  are clipped to it);
- a final the filter rejects is decoded once more, hearing the end of the previous segment as well when
  that ended less than ``context_s`` before it, and its words left out (the recogniser's
  ``context_s``): alone, "ask not" came out as "S NOT!" and was dropped, after "And so my fellow
  Americans" it is heard right. The previous speech is not heard on the first try because Whisper
  merges a phrase said twice ("Hello? ... Hello?") into one.

This costs the decode of up to 2 s more audio per final, and a second decode for a rejected final:
on 65 clips of real speech (LJSpeech, JFK, RAVDESS), each at 16 kHz and at 8 kHz, a final took 167 ms
of CPU on average instead of 138, and all the decodes of a call (partials included) 7 % more.

Per call (``CallTranscriber``, asyncio): audio decoding and the VAD run on a front-end thread, decodes
on the scheduler's thread, so the event loop only moves bytes and results. Events come out in the order
their decodes were requested, which keeps every partial before its segment's final.

Segment ids are public per channel and given out when a segment first yields text (a partial or its
final), so they run 0, 1, 2, ... with no gaps for segments that turned out to hold nothing. Exactly one
final is sent for each id. If a segment showed partials and its final is then rejected (it was a
hallucination after all), its final is sent with empty text and no words: listeners drop what the
partials showed, and the chopper cuts no utterance from it.

Times are milliseconds from the start of the call: each channel counts its 16 kHz samples, and a chunk
whose ``timestamp_ms`` jumps ahead of that count (lost audio) moves the count forward, the gap counting
as silence.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from asr_service.audio import AudioDecoder, AudioSpec, Encoding
from asr_service.hallucination import FilterConfig, judge
from asr_service.prosody import ProsodyFeatures, analyze
from asr_service.recognizer import MAX_AUDIO_S, Recognition, WhisperRecognizer
from asr_service.scheduler import StreamHandle
from asr_service.vad import SAMPLE_RATE, SileroModel, SpeechEnd, SpeechStart, StreamingVad, VadConfig

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
SAMPLES_PER_MS = SAMPLE_RATE // 1000
MAX_AUDIO_SAMPLES = int(MAX_AUDIO_S * SAMPLE_RATE)


@dataclass(frozen=True)
class StreamingConfig:
    vad: VadConfig = field(default_factory=VadConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
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


# ------------------------------------------------------------------------------- channel logic


@dataclass(frozen=True)
class DecodeRequest:
    """A stretch of one channel's audio to decode: a segment so far (partial) or whole (final)."""

    channel: int
    segment: int
    """Internal segment number within the channel (every VAD segment, whether it yields text or not)."""
    is_final: bool
    start_sample: int
    """Position of ``audio[0]`` in the channel, 16 kHz samples from the start of the call."""
    audio: FloatArray
    context: FloatArray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """Audio just before ``audio`` (finals; see the module docstring)."""
    context_transcribed: int = 0
    """Samples at the start of ``context`` that the previous segment covered; after them, the pause."""

    @property
    def start_ms(self) -> int:
        return self.start_sample // SAMPLES_PER_MS

    @property
    def heard_start_sample(self) -> int:
        """Position of the first sample the recogniser hears (context included)."""
        return self.start_sample - len(self.context)

    @property
    def end_ms(self) -> int:
        return (self.start_sample + len(self.audio)) // SAMPLES_PER_MS

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


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


# ------------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Word:
    text: str
    start_ms: int
    end_ms: int
    probability: float


@dataclass(frozen=True)
class DecodeResult:
    """What the inference thread made of a request."""

    request: DecodeRequest
    recognition: Recognition
    rejected: str | None
    """Why the text was dropped (hallucination filter), or None."""
    words: tuple[Word, ...]
    prosody: ProsodyFeatures | None
    decode_ms: float
    """Wall time of the decode (recognition, filter, prosody) on the inference thread. (Not CPU time:
    CTranslate2 computes on a worker thread of its own.)"""


def run_decode(
    recognizer: WhisperRecognizer, request: DecodeRequest, filter_config: FilterConfig | None = None
) -> DecodeResult:
    """Recognise, judge and (for an accepted final) measure prosody; runs on the inference thread."""
    started = time.perf_counter()
    recognition, heard_from = _recognize(recognizer, request, with_previous=False)
    rejected = judge(recognition, filter_config)
    if rejected and request.context_transcribed:  # heard after the previous speech, it may be clear
        retry, retry_from = _recognize(recognizer, request, with_previous=True)
        if judge(retry, filter_config) is None:
            recognition, heard_from, rejected = retry, retry_from, None
    # Within the segment: word alignment stretches the first word over the silence heard before it.
    words = _clip_words(
        tuple(
            Word(
                w.text,
                (heard_from + int(round(w.start_s * SAMPLE_RATE))) // SAMPLES_PER_MS,
                (heard_from + int(round(w.end_s * SAMPLE_RATE))) // SAMPLES_PER_MS,
                w.probability,
            )
            for w in recognition.words
        ),
        request.start_ms,
        request.end_ms,
    )
    prosody = None
    if request.is_final and rejected is None:
        span = (words[-1].end_ms - words[0].start_ms) / 1000.0 if words else None
        prosody = analyze(request.audio, n_words=len(recognition.text.split()), speech_span_s=span)
    decode_ms = (time.perf_counter() - started) * 1000.0
    if rejected:
        log.debug(
            "segment %d.%d dropped: %s (%r)", request.channel, request.segment, rejected, recognition.text
        )
    return DecodeResult(request, recognition, rejected, words, prosody, decode_ms)


def _recognize(
    recognizer: WhisperRecognizer, request: DecodeRequest, *, with_previous: bool
) -> tuple[Recognition, int]:
    """The segment heard with the pause before it, and with the end of the previous segment too if
    ``with_previous`` (its words left out); and the channel position of the first sample heard."""
    skip = 0 if with_previous else request.context_transcribed
    heard = np.concatenate([request.context[skip:], request.audio]) if len(request.context) else request.audio
    recognition = recognizer.recognize(
        heard,
        word_timestamps=request.is_final,
        context_s=request.context_transcribed / SAMPLE_RATE if with_previous else 0.0,
    )
    return recognition, request.heard_start_sample + skip


@dataclass(frozen=True)
class Transcript:
    """A partial or final transcript of one segment of one channel (the service's output)."""

    channel: int
    """Index of the channel in the call's layout."""
    segment_id: int
    is_final: bool
    text: str
    words: tuple[Word, ...]
    start_ms: int
    end_ms: int
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float
    prosody: ProsodyFeatures | None


class SegmentNumbering:
    """Public segment ids and which results become events (see the module docstring)."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}
        self._assigned: dict[tuple[int, int], int] = {}
        self._last_partial: dict[tuple[int, int], str] = {}

    def event(self, result: DecodeResult) -> Transcript | None:
        r = result.request
        key = (r.channel, r.segment)
        accepted = result.rejected is None
        if not r.is_final:
            if not accepted or self._last_partial.get(key) == result.recognition.text:
                return None  # nothing said yet, or nothing new
            self._last_partial[key] = result.recognition.text
            return self._transcript(result, self._id(key), text=True)
        self._last_partial.pop(key, None)
        if accepted:
            return self._transcript(result, self._id(key), text=True)
        if key in self._assigned:  # partials were shown: close the segment with no text
            return self._transcript(result, self._assigned.pop(key), text=False)
        return None

    def _id(self, key: tuple[int, int]) -> int:
        if key not in self._assigned:
            channel = key[0]
            self._assigned[key] = self._next.get(channel, 0)
            self._next[channel] = self._assigned[key] + 1
        return self._assigned[key]

    def _transcript(self, result: DecodeResult, segment_id: int, *, text: bool) -> Transcript:
        r, rec = result.request, result.recognition
        if r.is_final:
            self._assigned.pop((r.channel, r.segment), None)
        return Transcript(
            channel=r.channel,
            segment_id=segment_id,
            is_final=r.is_final,
            text=rec.text if text else "",
            words=result.words if text else (),
            start_ms=r.start_ms,
            end_ms=r.end_ms,
            no_speech_prob=rec.no_speech_prob,
            avg_logprob=rec.avg_logprob,
            compression_ratio=rec.compression_ratio,
            prosody=result.prosody if text else None,
        )


def _clip_words(words: tuple[Word, ...], start_ms: int, end_ms: int) -> tuple[Word, ...]:
    out = []
    for w in words:
        a = min(max(w.start_ms, start_ms), end_ms)
        out.append(Word(w.text, a, min(max(w.end_ms, a), end_ms), w.probability))
    return tuple(out)


# ------------------------------------------------------------------------------- one call


class CallTranscriber:
    """One call's streaming transcription: feed audio, finish, read ``events()``.

    ``feed`` takes either interleaved audio of all channels (``channel=None``) or one channel's mono
    audio; each source has its own byte carry and resampler. Decodes go to ``stream`` (a slot of the
    process's ``InferenceScheduler``); ``close`` releases it and cancels what is queued. ``on_result``
    sees every decode result on the event loop, rejected ones included.
    """

    def __init__(
        self,
        *,
        recognizer: WhisperRecognizer,
        stream: StreamHandle,
        spec: AudioSpec,
        vad_model: SileroModel,
        config: StreamingConfig | None = None,
        frontend: Executor | None = None,
        on_result: Callable[[DecodeResult], None] | None = None,
    ) -> None:
        spec.validate()
        self.spec = spec
        self.config = config or StreamingConfig()
        self._recognizer = recognizer
        self._stream = stream
        self._frontend = frontend
        self._channels = [
            ChannelDecoder(i, StreamingVad(vad_model, self.config.vad), self.config)
            for i in range(spec.channels)
        ]
        self._decoders: dict[int | None, AudioDecoder] = {}
        self._queue: asyncio.Queue[tuple[DecodeRequest, ThreadFuture[DecodeResult | None]] | None] = (
            asyncio.Queue()
        )
        self._numbering = SegmentNumbering()
        self._on_result = on_result
        self._finished = False
        self._closed = False

    @property
    def channels(self) -> int:
        return len(self._channels)

    async def feed(self, data: bytes, *, channel: int | None = None, timestamp_ms: int | None = None) -> None:
        """Decode a chunk (off the event loop) and queue the decodes it makes due."""
        if self._finished:
            raise ValueError("audio after the end of the call")
        if channel is not None and not 0 <= channel < len(self._channels):
            raise ValueError(f"channel {channel} is not one of the call's {len(self._channels)} channels")
        loop = asyncio.get_running_loop()
        requests = await loop.run_in_executor(self._frontend, self._front, data, channel, timestamp_ms)
        self._submit(requests)

    async def finish(self) -> None:
        """The call ended: decode what is left; ``events()`` ends after the last final."""
        if self._finished:
            return
        self._finished = True
        loop = asyncio.get_running_loop()
        requests = await loop.run_in_executor(self._frontend, self._flush)
        self._submit(requests)
        self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[Transcript]:
        """Transcripts in request order, until the call's last final after ``finish``."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            _, future = item
            result = await asyncio.wrap_future(future)
            if result is None:  # a partial replaced by a newer one
                continue
            if self._on_result is not None:
                self._on_result(result)  # every result, rejected ones included (metrics, tests)
            event = self._numbering.event(result)
            if event is not None:
                yield event

    def close(self) -> None:
        """Release the scheduler slot and cancel queued decodes (also after a normal end)."""
        if not self._closed:
            self._closed = True
            self._stream.close(cancel=True)

    # ---------------------------------------------------------------- front-end thread

    def _decoder(self, channel: int | None) -> AudioDecoder:
        decoder = self._decoders.get(channel)
        if decoder is None:
            spec = (
                self.spec if channel is None else AudioSpec(self.spec.encoding, self.spec.sample_rate_hz, 1)
            )
            decoder = self._decoders[channel] = AudioDecoder(spec)
        return decoder

    def _front(self, data: bytes, channel: int | None, timestamp_ms: int | None) -> list[DecodeRequest]:
        targets = self._channels if channel is None else [self._channels[channel]]
        requests: list[DecodeRequest] = []
        if timestamp_ms:
            requests += self._catch_up(targets, timestamp_ms)
        decoded = self._decoder(channel).decode(data)
        for target, samples in zip(targets, decoded, strict=True):
            requests += target.push(samples)
        return requests

    def _catch_up(self, targets: Sequence[ChannelDecoder], timestamp_ms: int) -> list[DecodeRequest]:
        """Skip lost audio: the chunk starts later than the samples counted so far."""
        requests: list[DecodeRequest] = []
        expected = timestamp_ms * SAMPLES_PER_MS
        for target in targets:
            gap = expected - target.position
            if gap > self.config.gap_tolerance_ms * SAMPLES_PER_MS:
                requests += target.skip(gap)
        return requests

    def _flush(self) -> list[DecodeRequest]:
        requests: list[DecodeRequest] = []
        for source, decoder in self._decoders.items():
            tails = decoder.flush()
            targets = self._channels if source is None else [self._channels[source]]
            for target, samples in zip(targets, tails, strict=True):
                requests += target.push(samples)
        for target in self._channels:
            requests += target.flush()
        return requests

    # ---------------------------------------------------------------- submission (event loop)

    def _submit(self, requests: Sequence[DecodeRequest]) -> None:
        for request in requests:
            key = ("channel", request.channel)
            future = self._stream.submit(
                functools.partial(run_decode, self._recognizer, request, self.config.filter),
                partial_key=None if request.is_final else key,
                final_key=key if request.is_final else None,
            )
            self._queue.put_nowait((request, future))


def pcm16_spec(sample_rate_hz: int = SAMPLE_RATE, channels: int = 1) -> AudioSpec:
    """The layout of plain 16-bit PCM (tests and tools)."""
    return AudioSpec(Encoding.PCM16, sample_rate_hz, channels)
