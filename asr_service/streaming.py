"""The incremental decoder: a call's audio in, partial and final transcript segments out.

Per channel (``channel.ChannelDecoder``, plain synchronous logic): the VAD cuts the 16 kHz stream into
segments and says when a partial or final decode is due. Decoding (``decoding.run_decode``, on the one
inference thread of ``scheduler``): Whisper without the 30 s pad (``recognizer``), then the hallucination
filter (``hallucination.judge``); finals are decoded as offline decoding would (beam search, the
channel's previous text as the prompt, temperature fallback) and also get word times and prosody.

Per call (``CallTranscriber``, asyncio): audio decoding and the VAD run on a front-end thread, decodes
on the scheduler's thread, so the event loop only moves bytes and results. Events come out in the order
their decodes were requested, which keeps every partial before its segment's final. Each partial's text
also goes back to its channel (``ChannelDecoder.note_partial``), whose early end may then end the segment
and ask for its final; a probe of the early end is not sent as an event when partials are off.

A speculative final (``channel``: the final asked for once the silence has lasted the VAD's pad) is
queued as a replaceable job with its channel's partials' key, served in the finals' turn
(``scheduler``: urgent), and never becomes an event itself. When the VAD ends the segment, the final's
job takes the speculation's result if that was decoded alike (``decoding.same_decode``) and has run,
which it has unless the final's arrival replaced it while it waited (a call's jobs run one at a time, in
order); else it decodes. The speculation's result also goes back to its channel
(``ChannelDecoder.note_speculation``): with ``speculative_end_ms`` it may end the segment there and then
(``channel``: the speculative end); when the speaker went on after that pause, it may become the
segment's committed prefix (``channel``: commits at pauses), which the later partials carry and their
results are joined to (``decoding.join``), so their events show the whole segment. A speculation whose
segment went on is replaced by the channel's next partial, speculation or final while queued, and skips
itself if it comes up first. It is never batched with other calls' partials (its result must be the
final's, as decoded alone); partials and probes are (``scheduler.Batch``;
``decoding.run_partial_batch``). ``speculation_counts`` says how many were made, decoded, taken by their
final and committed (the ASR's ``callsense.asr.speculations`` metric).

Segment ids are public per channel and given out when a segment first yields text (a partial or its
final), so they run 0, 1, 2, ... with no gaps for segments that turned out to hold nothing. Exactly one
final is sent for each id. If a segment showed partials and its final is then rejected (it was a
hallucination after all), its final is sent with empty text and no words: listeners drop what the
partials showed, and the chopper cuts no utterance from it. A rejected final of a segment in which the
VAD heard at least a second of speech is sent the same way, with ``unheard_reason`` saying why: a turn
nobody could transcribe is visible rather than gone.

Times are milliseconds from the start of the call: each channel counts its 16 kHz samples, and a chunk
whose ``timestamp_ms`` jumps ahead of that count (lost audio) moves the count forward, the gap counting
as silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass

from asr_service.audio import AudioDecoder, AudioSpec, Encoding
from asr_service.channel import ChannelDecoder, StreamingConfig
from asr_service.decoding import (
    ChannelText,
    DecodeRequest,
    DecodeResult,
    Word,
    adopt,
    run_decode,
    run_partial_batch,
    same_decode,
)
from asr_service.prosody import ProsodyFeatures
from asr_service.recognizer import WhisperRecognizer
from asr_service.scheduler import Batch, StreamHandle
from asr_service.vad import SAMPLE_RATE, SileroModel, StreamingVad

SAMPLES_PER_MS = SAMPLE_RATE // 1000
__all__ = [
    "CallTranscriber",
    "SegmentNumbering",
    "SpeculationCounts",
    "StreamingConfig",
    "Transcript",
    "Word",
    "pcm16_spec",
]


@dataclass(frozen=True)
class SpeculationCounts:
    """A call's speculative finals so far, all channels together."""

    made: int
    """Speculative finals asked for (``ChannelDecoder.speculations``)."""
    decoded: int
    """Of those, the ones Whisper decoded (the others were replaced or skipped before their turn: the
    speaker went on, or the final came first)."""
    adopted: int
    """Of those, the ones a final took instead of decoding (the others were pauses: decoded for nothing)."""
    ended: int
    """Segments ended by the speculative end (``speculative_end_ms``)."""
    committed: int = 0
    """Of the decoded ones, those made their segment's committed prefix when the speaker went on
    (``channel``: commits at pauses)."""

    @property
    def outcomes(self) -> dict[str, int]:
        """Each speculation once: ``used`` (a final took its decode), ``committed`` (the speaker went on,
        and its text became the segment's committed prefix), ``wasted`` (decoded for nothing: a pause),
        ``replaced`` (never decoded: dropped or skipped). Read after the call closed, made >= decoded;
        the floors guard a read taken while it still ran."""
        return {
            "used": self.adopted,
            "committed": self.committed,
            "wasted": max(self.decoded - self.adopted - self.committed, 0),
            "replaced": max(self.made - self.decoded, 0),
        }


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
    unheard_reason: str = ""
    """Set on an empty final of a segment with speech that no decode could transcribe: why."""


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
        if result.unheard:  # speech nobody could transcribe: say so rather than drop it
            return self._transcript(result, self._id(key), text=False)
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
            unheard_reason=(result.rejected or "") if result.unheard else "",
        )


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
        # Each channel's accepted finals, the prompt of its next final (read and written on the
        # inference thread only, where this call's decodes run one at a time and in order).
        self._channel_texts = [
            ChannelText(self.config.decoding.prompt_max_chars) for _ in range(spec.channels)
        ]
        self._on_result = on_result
        # Each channel's latest speculative final and its job (event loop only).
        self._speculations: dict[int, tuple[DecodeRequest, ThreadFuture[DecodeResult | None]]] = {}
        self._speculations_decoded = 0  # inference thread only (SpeculationCounts)
        self._speculations_adopted = 0
        # The channels are fed on the front-end thread and told partials' texts on the event loop.
        self._channels_lock = threading.Lock()
        self._finished = False
        self._closed = False

    @property
    def channels(self) -> int:
        return len(self._channels)

    def speculation_counts(self) -> SpeculationCounts:
        """The call's speculative finals so far (made under the channels' lock, decoded and adopted on
        the inference thread, one job of the call at a time: read once the call is closed, the counts
        agree)."""
        with self._channels_lock:
            made = sum(c.speculations for c in self._channels)
            ended = sum(c.speculative_ends for c in self._channels)
            committed = sum(c.commits for c in self._channels)
        decoded, adopted = self._speculations_decoded, self._speculations_adopted
        return SpeculationCounts(made, decoded, adopted, ended, committed)

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
            request, future = item
            result = await asyncio.wrap_future(future)
            if not request.is_final:
                self._note(request, result)
            if result is None:  # a partial replaced by a newer one
                continue
            if self._on_result is not None:
                self._on_result(result)  # every result, rejected ones included (metrics, tests)
            if request.probe and not self.config.partials:
                continue
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
        with self._channels_lock:
            return self._front_locked(data, channel, timestamp_ms)

    def _front_locked(
        self, data: bytes, channel: int | None, timestamp_ms: int | None
    ) -> list[DecodeRequest]:
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
        with self._channels_lock:
            return self._flush_locked()

    def _flush_locked(self) -> list[DecodeRequest]:
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

    def _note(self, request: DecodeRequest, result: DecodeResult | None) -> None:
        """A partial's text back to its channel; submits the final of an early end it decides.

        On the event loop, so that such a final is queued before ``finish`` queues the end of the
        events; the lock is held by the front end for one chunk at most (a few ms). Without the early
        end (its default) a partial's text decides nothing: no lock is taken."""
        if not self.config.early_end_ms:
            return
        text = None if result is None else result.accepted_text
        with self._channels_lock:
            requests = self._channels[request.channel].note_partial(request, text)
        self._submit(requests)

    def _speculation_done(
        self,
        loop: asyncio.AbstractEventLoop,
        request: DecodeRequest,
        job: ThreadFuture[DecodeResult | None],
    ) -> None:
        """A speculative final's decode is done (on the inference thread): its text to the event loop."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the call is gone
            loop.call_soon_threadsafe(self._note_speculation, request, job)

    def _note_speculation(self, request: DecodeRequest, job: ThreadFuture[DecodeResult | None]) -> None:
        """A speculation's result back to its channel (a commit at a pause); submits the final of a
        speculative end it decides (on the event loop, as ``_note`` does and for the same reason)."""
        if self._closed or job.cancelled() or job.exception() is not None:
            return
        with self._channels_lock:
            requests = self._channels[request.channel].note_speculation(request, job.result())
        self._submit(requests)

    def _submit(self, requests: Sequence[DecodeRequest]) -> None:
        for request in requests:
            key = ("channel", request.channel)
            if request.speculative:  # no event of its own (see the module docstring)
                job = self._stream.submit(
                    functools.partial(self._speculate, request), partial_key=key, urgent=True
                )
                self._speculations[request.channel] = (request, job)
                if self.config.speculative_end_ms or self.config.commit_at_pauses:
                    loop = asyncio.get_running_loop()
                    job.add_done_callback(functools.partial(self._speculation_done, loop, request))
                continue
            if request.is_final:
                held = self._speculations.pop(request.channel, None)
                fn: Callable[[], DecodeResult] = functools.partial(self._final, request, held)
            else:
                fn = functools.partial(self._decode, request)
            batch = None
            if not request.is_final:  # the same key in every call of the process: one model, one filter
                run = functools.partial(run_partial_batch, self._recognizer, filter_config=self.config.filter)
                batch = Batch(("partial", id(self._recognizer), self.config.filter), request, run)
            future = self._stream.submit(
                fn,
                partial_key=None if request.is_final else key,
                final_key=key if request.is_final else None,
                batch=batch,
            )
            self._queue.put_nowait((request, future))

    # ---------------------------------------------------------------- jobs (inference thread)

    def _decode(self, request: DecodeRequest) -> DecodeResult:
        c = self.config
        return run_decode(
            self._recognizer, request, c.filter, c.decoding, self._channel_texts[request.channel]
        )

    def _speculate(self, request: DecodeRequest) -> DecodeResult | None:
        """A speculative final's decode, unless the channel threw it away while it waited (the one
        attribute read races only with that: at worst one decode for nothing, or one made again)."""
        if self._channels[request.channel].speculation is not request:
            return None
        self._speculations_decoded += 1
        return self._decode(request)

    def _final(
        self, request: DecodeRequest, held: tuple[DecodeRequest, ThreadFuture[DecodeResult | None]] | None
    ) -> DecodeResult:
        """A final: the result of the channel's speculation if it was decoded alike, else decoded now.
        The speculation's job was queued before this one in the call's stream, whose jobs run one at a
        time and in order, so it is done by now: run, skipped, or replaced while it waited (then None)."""
        if held is not None:
            speculative, job = held
            if job.done() and not job.cancelled() and job.exception() is None:
                result = job.result()
                if result is not None and same_decode(speculative, request):
                    self._speculations_adopted += 1
                    return adopt(result, request, self._channel_texts[request.channel])
        return self._decode(request)


def pcm16_spec(sample_rate_hz: int = SAMPLE_RATE, channels: int = 1) -> AudioSpec:
    """The layout of plain 16-bit PCM (tests and tools)."""
    return AudioSpec(Encoding.PCM16, sample_rate_hz, channels)
