"""Speculative finals: the final decoded once the silence has lasted the VAD's pad, used when the VAD
ends the segment there, thrown away when the speaker goes on.

The channel logic runs on the real VAD and espeak-ng speech; the call-level tests decode with a fake
recogniser (instant, counting its calls) unless they say Whisper.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from asr_service.channel import ChannelDecoder
from asr_service.decoding import DecodeRequest, same_decode
from asr_service.recognizer import Recognition, RecognizedWord, WhisperRecognizer
from asr_service.scheduler import InferenceScheduler, StreamHandle
from asr_service.streaming import (
    CallTranscriber,
    SpeculationCounts,
    StreamingConfig,
    Transcript,
    pcm16_spec,
)
from asr_service.vad import StreamingVad, VadConfig, shared_model
from tests.support.audio import SENTENCE_A, SENTENCE_B, silence, speak, to_pcm16_bytes, word_error_rate
from tests.support.decodes import result_reading

FRAME = 320  # 20 ms
PAD = 200 * 16  # the VAD's pad_ms, in samples
ON = StreamingConfig(speculative_final_ms=200)
OFF = StreamingConfig(speculative_final_ms=0)


def voice_end(x: np.ndarray) -> int:
    """The sample after the last audible one (espeak-ng ends its audio with silence)."""
    return int(np.nonzero(np.abs(x) > 1e-3)[0][-1]) + 1


def play(decoder: ChannelDecoder, x: np.ndarray, *, flush: bool = True) -> list[tuple[int, DecodeRequest]]:
    """Feed ``x`` in 20 ms frames; every request with the channel position at which it was made."""
    made: list[tuple[int, DecodeRequest]] = []
    for i in range(0, len(x), FRAME):
        made += [(decoder.position, r) for r in decoder.push(x[i : i + FRAME])]
    if flush:
        made += [(decoder.position, r) for r in decoder.flush()]
    return made


def end_of(request: DecodeRequest) -> int:
    return request.start_sample + len(request.audio)


CLAUSE_A, CLAUSE_B = "I think the price is way too high", "we would need a discount to move forward."


def voiced(text: str) -> np.ndarray:
    """``text`` spoken, without the silence espeak-ng ends it with."""
    x = speak(text)
    return x[: voice_end(x)]


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    """One clause, no pause inside it long enough to speculate in."""
    return voiced(CLAUSE_B)


@pytest.fixture(scope="module")
def paused() -> np.ndarray:
    """A 300 ms pause between two clauses: one segment for the VAD (it waits for 500 ms)."""
    return np.concatenate([silence(0.5), voiced(CLAUSE_A), silence(0.3), voiced(CLAUSE_B), silence(1.0)])


# ------------------------------------------------------------------------------- channel logic


def test_speculation_is_asked_for_at_the_pad_and_the_end_makes_the_same_final(sentence: np.ndarray) -> None:
    x = np.concatenate([silence(0.5), sentence, silence(1.2)])
    decoder = ChannelDecoder(0, StreamingVad(), ON)
    made = play(decoder, x)
    speculative = [(at, r) for at, r in made if r.speculative]
    finals = [(at, r) for at, r in made if r.is_final and not r.speculative]
    assert len(speculative) == 1 and len(finals) == 1, [(at, r.speculative, r.is_final) for at, r in made]
    (spec_at, spec), (final_at, final) = speculative[0], finals[0]
    assert spec.is_final and spec.segment == final.segment
    # The same decode: audio (ending at the last speech plus the pad), context, segment.
    assert same_decode(spec, final) and end_of(spec) == end_of(final)
    np.testing.assert_array_equal(spec.audio, final.audio)
    np.testing.assert_array_equal(spec.context, final.context)
    # Made 200 ms into the silence (and a frame or a VAD window more), the final 500 ms in.
    speech_end = end_of(final) - PAD
    assert 200 * 16 <= spec_at - speech_end <= 200 * 16 + 512 + FRAME, (spec_at - speech_end) / 16
    assert final_at - speech_end >= 500 * 16
    # No partial in between: the silence adds no words.
    assert not any(spec_at < at <= final_at and not r.is_final for at, r in made)
    assert (decoder.speculations, decoder.speculations_matched) == (1, 1)
    assert decoder.speculation is None  # the segment has ended: nothing left to throw away


def test_speculation_is_thrown_away_when_the_speaker_goes_on(paused: np.ndarray) -> None:
    decoder = ChannelDecoder(0, StreamingVad(), ON)
    made = play(decoder, paused)
    speculative = [r for _, r in made if r.speculative]
    (final,) = [r for _, r in made if r.is_final and not r.speculative]
    assert len(speculative) == 2, "one in the pause, one at the end"
    in_pause, at_end = speculative
    assert in_pause.segment == final.segment and end_of(in_pause) < end_of(final) - 16000
    assert not same_decode(in_pause, final) and same_decode(at_end, final)
    assert (decoder.speculations, decoder.speculations_matched) == (2, 1)


def test_the_channel_stops_naming_a_speculation_once_speech_resumes(paused: np.ndarray) -> None:
    decoder = ChannelDecoder(0, StreamingVad(), StreamingConfig(partials=False, speculative_final_ms=200))
    named: list[DecodeRequest | None] = []
    made: list[DecodeRequest] = []
    for i in range(0, len(paused), FRAME):
        made += decoder.push(paused[i : i + FRAME])
        named.append(decoder.speculation)
    first = next(r for r in made if r.speculative)
    held = [n is first for n in named]
    # Named from when it was asked for until the speech after the pause, then never again.
    start = held.index(True)
    stop = held.index(False, start)
    assert not any(held[stop:])
    assert stop * FRAME < end_of(first) + int(0.3 * 16000)  # within the 300 ms pause (and a window)
    # Partials off: the speculations and the final are all there is.
    assert all(r.is_final for r in made)


@pytest.mark.parametrize(
    "config",
    [OFF, StreamingConfig(vad=VadConfig(min_silence_ms=200, pad_ms=200))],
    ids=["zero", "pad-is-the-whole-silence"],
)
def test_no_speculation_when_off(sentence: np.ndarray, config: StreamingConfig) -> None:
    x = np.concatenate([silence(0.5), sentence, silence(1.2)])
    decoder = ChannelDecoder(0, StreamingVad(config=config.vad), config)
    made = play(decoder, x)
    assert not any(r.speculative for _, r in made) and decoder.speculations == 0
    assert sum(r.is_final for _, r in made) == 1


def test_speculation_settings() -> None:
    for bad in (100, 500):  # before the pad (the audio is not complete), or no sooner than the end
        with pytest.raises(ValueError, match="speculative_final_ms"):
            StreamingConfig(speculative_final_ms=bad).validate()
    assert StreamingConfig(speculative_final_ms=None).speculate_after_ms == 200  # at the VAD's pad
    assert StreamingConfig(vad=VadConfig(pad_ms=300), speculative_final_ms=None).speculate_after_ms == 300
    assert StreamingConfig(speculative_final_ms=350).speculate_after_ms == 350
    assert OFF.speculate_after_ms == 0


# ------------------------------------------------------------------------------- the call


@dataclass
class FakeRecognizer:
    """Answers at once with one word per 400 ms heard; records each call's (samples heard, beam)."""

    calls: list[tuple[int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def recognize(self, audio: npt.ArrayLike, *, beam_size: int = 1, **_: object) -> Recognition:
        n = len(np.asarray(audio))
        with self.lock:
            self.calls.append((n, beam_size))
        words = tuple(
            RecognizedWord(f" w{i}", i * 0.4, i * 0.4 + 0.3, 0.95) for i in range(max(1, n // 6400))
        )
        text = "".join(w.text for w in words).strip() + "."
        return Recognition(text, words, 0.02, -0.1, 1.2, n / 16000)

    def finals(self) -> int:
        with self.lock:
            return sum(beam > 1 for _, beam in self.calls)


@dataclass
class Call:
    call: CallTranscriber
    stream: StreamHandle
    events: list[Transcript]
    final: asyncio.Future[Transcript]

    async def feed(self, x: np.ndarray) -> None:
        data = to_pcm16_bytes(x)
        for i in range(0, len(data), 2 * FRAME):
            await self.call.feed(data[i : i + 2 * FRAME])

    async def drain(self) -> None:
        """Wait until every job queued so far has run (a stream's jobs run in order)."""
        await asyncio.wrap_future(self.stream.submit(lambda: None))


def open_call(
    recognizer: object,
    config: StreamingConfig,
    handle: Callable[[StreamHandle], StreamHandle] | None = None,
) -> tuple[InferenceScheduler, StreamHandle, CallTranscriber]:
    """A call of one channel (16 kHz PCM) on an inference thread of its own; the caller shuts both down.
    ``handle`` wraps the stream the call submits to (the stream returned is the plain one)."""
    scheduler = InferenceScheduler(max_streams=1)
    stream = scheduler.open_stream()
    call = CallTranscriber(
        recognizer=recognizer,  # type: ignore[arg-type]
        stream=handle(stream) if handle else stream,
        spec=pcm16_spec(),
        vad_model=shared_model(),
        config=config,
    )
    return scheduler, stream, call


async def with_call(
    recognizer: object, config: StreamingConfig, body: Callable[[Call], Awaitable[None]]
) -> list[Transcript]:
    """Run ``body`` against a call of one channel; the call's events once it has finished."""
    scheduler, stream, call = open_call(recognizer, config)
    events: list[Transcript] = []
    final: asyncio.Future[Transcript] = asyncio.get_running_loop().create_future()

    async def collect() -> None:
        async for event in call.events():
            events.append(event)
            if event.is_final and not final.done():
                final.set_result(event)

    collector = asyncio.create_task(collect())
    try:
        await body(Call(call, stream, events, final))
        await call.finish()
        await asyncio.wait_for(collector, timeout=60)
    finally:
        collector.cancel()
        call.close()
        scheduler.shutdown()
    return events


async def test_the_final_takes_the_speculative_decode(sentence: np.ndarray) -> None:
    x = np.concatenate([silence(0.5), sentence])
    finals_after_end: dict[str, int] = {}

    for name, config in (("on", ON), ("off", OFF)):
        fake = FakeRecognizer()

        async def body(c: Call, fake: FakeRecognizer = fake, name: str = name) -> None:
            await c.feed(np.concatenate([x, silence(0.3)]))  # the speculation is due at 200 ms
            await c.drain()
            before = fake.finals()
            await c.feed(silence(0.4))  # the VAD ends the segment
            await asyncio.wait_for(c.final, timeout=30)
            finals_after_end[name] = fake.finals() - before
            made = int(name == "on")
            assert c.call.speculation_counts() == SpeculationCounts(made, made, made, 0)

        events = await with_call(fake, config, body)
        finals = [e for e in events if e.is_final]
        assert len(finals) == 1 and finals[0].text.startswith("w0 w1"), finals
        assert fake.finals() == 1  # decoded once, speculation or not
    # With the speculation, nothing is left to decode once the VAD has ended the segment.
    assert finals_after_end == {"on": 0, "off": 1}


def test_speculation_outcomes_count_each_speculation_once() -> None:
    # 8 made: 6 decoded, of which 3 became finals, 1 a committed prefix (2 were pauses); 2 never decoded.
    counts = SpeculationCounts(made=8, decoded=6, adopted=3, ended=2, committed=1)
    assert counts.outcomes == {"used": 3, "committed": 1, "wasted": 2, "replaced": 2}


async def test_a_speculation_is_queued_urgent_replaceable_and_without_a_batch(sentence: np.ndarray) -> None:
    """So that the scheduler serves it before other calls' partials (``scheduler``: urgent)."""
    submitted: list[dict[str, object]] = []

    @dataclass(frozen=True)
    class RecordingHandle(StreamHandle):
        def submit(self, fn: Callable[[], Any], **options: Any) -> concurrent.futures.Future[Any]:
            submitted.append(options)
            return super().submit(fn, **options)

    scheduler, stream, call = open_call(FakeRecognizer(), ON, lambda s: RecordingHandle(s.scheduler, s.id))
    c = Call(call, stream, [], asyncio.get_running_loop().create_future())
    try:
        await c.feed(np.concatenate([silence(0.5), sentence, silence(0.3)]))
        await c.drain()
        assert call.speculation_counts().made == 1
    finally:
        call.close()
        scheduler.shutdown()
    urgent = [o for o in submitted if o.get("urgent")]
    assert urgent == [{"partial_key": ("channel", 0), "urgent": True}]
    assert len(submitted) > 1  # partials too, none of them urgent


@pytest.mark.parametrize("partials", [True, False], ids=["partials-on", "partials-off"])
async def test_a_thrown_away_speculation_is_never_decoded_nor_sent(
    paused: np.ndarray, partials: bool
) -> None:
    # Held up behind a job that waits, the pause's speculation is still queued when the speaker goes
    # on: a partial replaces it, or (partials off) it skips itself when its turn comes.
    config = StreamingConfig(partials=partials, speculative_final_ms=200)
    fake = FakeRecognizer()
    gate = threading.Event()
    # 1.2 s into the second clause: a partial is due by then (none is asked for while one speculates).
    pause_over = int(0.8 * 16000) + len(voiced(CLAUSE_A)) + int(1.2 * 16000)

    async def body(c: Call) -> None:
        c.stream.submit(gate.wait)
        await c.feed(paused[:pause_over])  # the pause, and speech again
        assert fake.calls == []
        gate.set()
        await c.drain()
        assert fake.finals() == 0  # the speculation was not decoded
        assert c.call.speculation_counts() == SpeculationCounts(made=1, decoded=0, adopted=0, ended=0)
        await c.feed(paused[pause_over:])

    events = await with_call(fake, config, body)
    finals = [e for e in events if e.is_final]
    assert len(finals) == 1 and fake.finals() == 1
    assert all(e.segment_id == 0 for e in events)
    assert [e.is_final for e in events][-1] is True
    assert len({e.text for e in events if not e.is_final}) == sum(not e.is_final for e in events)


# ------------------------------------------------------------------------------- with Whisper


async def test_with_whisper_the_final_reads_the_same_and_comes_sooner(recognizer: WhisperRecognizer) -> None:
    x = np.concatenate([silence(0.5), voiced(SENTENCE_A)])
    text: dict[str, str] = {}
    latency: dict[str, float] = {}
    decodes_after_end: dict[str, int] = {}
    calls = 0
    original = recognizer.recognize

    def counting(*args: object, **kwargs: object) -> Recognition:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    recognizer.recognize = counting  # type: ignore[method-assign]
    try:
        for name, config in (("on", ON), ("off", OFF)):

            async def body(c: Call, name: str = name) -> None:
                await c.feed(np.concatenate([x, silence(0.3)]))
                await c.drain()  # the speculation has been decoded, as it is live when the thread is free
                before, started = calls, time.perf_counter()
                await c.feed(silence(0.4))  # the VAD ends the segment: from here on, the final's latency
                final = await asyncio.wait_for(c.final, timeout=60)
                latency[name] = time.perf_counter() - started
                decodes_after_end[name] = calls - before
                text[name] = final.text

            await with_call(recognizer, config, body)
    finally:
        del recognizer.recognize  # the instance attribute: back to the method
    assert text["on"] == text["off"] and word_error_rate(SENTENCE_A, text["on"]) <= 0.15, text
    assert decodes_after_end["on"] == 0 and decodes_after_end["off"] >= 1, decodes_after_end
    assert latency["on"] < latency["off"], latency


def test_two_sentences_speculate_per_segment() -> None:
    # Each segment's speculation is its own: the second sentence's does not answer the first's final.
    x = np.concatenate([silence(0.5), speak(SENTENCE_A), silence(1.2), speak(SENTENCE_B), silence(1.0)])
    decoder = ChannelDecoder(0, StreamingVad(), ON)
    made = play(decoder, x)
    finals = [r for _, r in made if r.is_final and not r.speculative]
    assert len(finals) == 2
    for final in finals:
        matching = [r for _, r in made if r.speculative and same_decode(r, final)]
        assert len(matching) == 1 and matching[0].segment == final.segment


async def test_partials_may_join_a_batch_but_a_speculative_final_never(
    paused: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batched decode hears silence up to the batch's longest segment: a speculation decoded so would
    # not be the final decoded alone, which it stands for. So only partials (and probes) are offered.
    offered: list[tuple[str, bool]] = []
    submit = StreamHandle.submit

    def spy(self: StreamHandle, fn: Callable[[], object], **options: object) -> object:
        name = getattr(getattr(fn, "func", None), "__name__", "other")
        offered.append((name, options.get("batch") is not None))
        return submit(self, fn, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(StreamHandle, "submit", spy)

    async def body(c: Call) -> None:
        await c.feed(paused)

    await with_call(FakeRecognizer(), ON, body)
    kinds = {name: {batched for n, batched in offered if n == name} for name, _ in offered}
    assert kinds["_decode"] == {True}  # the partials
    assert kinds["_speculate"] == {False}
    assert kinds["_final"] == {False}


@dataclass
class BatchingFake(FakeRecognizer):
    """The fake recogniser with batches: each item answered as alone, each batch's size recorded."""

    batches: list[int] = field(default_factory=list)
    batched: threading.Event = field(default_factory=threading.Event)
    """Set once a batch has been decoded."""

    def recognize_batch(self, audios: list[npt.ArrayLike]) -> list[Recognition]:
        self.batches.append(len(audios))
        results = [self.recognize(a) for a in audios]
        self.batched.set()
        return results


async def test_two_calls_partials_waiting_together_are_decoded_as_one_batch(paused: np.ndarray) -> None:
    scheduler = InferenceScheduler(max_streams=3, max_batch=4)
    fake = BatchingFake()
    gate = threading.Event()
    calls = [
        CallTranscriber(
            recognizer=fake,  # type: ignore[arg-type]
            stream=scheduler.open_stream(),
            spec=pcm16_spec(),
            vad_model=shared_model(),
            config=ON,
        )
        for _ in range(2)
    ]
    events: list[list[Transcript]] = [[], []]

    async def collect(i: int) -> None:
        async for event in calls[i].events():
            events[i].append(event)

    collectors = [asyncio.create_task(collect(i)) for i in range(2)]
    open_segment = int(0.5 * 16000) + len(voiced(CLAUSE_A))  # the first clause: partials due, no final
    try:
        scheduler.open_stream().submit(gate.wait)  # holds the thread while both calls queue partials
        for call in calls:
            data = to_pcm16_bytes(paused[:open_segment])
            for i in range(0, len(data), 2 * FRAME):
                await call.feed(data[i : i + 2 * FRAME])
        assert fake.calls == []
        gate.set()
        # The rest of the audio only once the waiting partials have been taken: its pause would ask for a
        # speculative final, which replaces a call's partial still waiting (seen once in about 50 runs).
        assert await asyncio.to_thread(fake.batched.wait, 30)
        for call in calls:
            data = to_pcm16_bytes(paused[open_segment:])
            for i in range(0, len(data), 2 * FRAME):
                await call.feed(data[i : i + 2 * FRAME])
            await call.finish()
        await asyncio.wait_for(asyncio.gather(*collectors), timeout=60)
    finally:
        for task in collectors:
            task.cancel()
        for call in calls:
            call.close()
        scheduler.shutdown()
    assert fake.batches[0] == 2  # each call's latest partial, in one batch
    for call_events in events:  # each call still gets its partials, then its one final
        assert [e.is_final for e in call_events][-1] is True and sum(e.is_final for e in call_events) == 1
        assert call_events[0].text.startswith("w0") and not call_events[0].is_final


# ------------------------------------------------------------------------------- speculative end

SPECULATIVE_END = StreamingConfig(speculative_final_ms=200, speculative_end_ms=200)
"""Off by default (see bench/endpointing.py); on here."""


def play_answering(
    decoder: ChannelDecoder, x: np.ndarray, answer: Callable[[DecodeRequest], str | None]
) -> list[tuple[int, DecodeRequest]]:
    """Like ``play``, each speculation answered at once with ``answer`` (a decode that takes no time)."""
    made: list[tuple[int, DecodeRequest]] = []

    def take(requests: list[DecodeRequest]) -> None:
        for request in requests:
            made.append((decoder.position, request))
            if request.speculative:
                take(decoder.note_speculation(request, result_reading(request, answer(request))))

    for i in range(0, len(x), FRAME):
        take(decoder.push(x[i : i + FRAME]))
    take(decoder.flush())
    return made


def finals_made(made: list[tuple[int, DecodeRequest]]) -> list[tuple[int, DecodeRequest]]:
    return [(at, r) for at, r in made if r.is_final and not r.speculative]


def test_a_finished_sentence_ends_its_segment_at_the_speculation(sentence: np.ndarray) -> None:
    x = np.concatenate([silence(0.5), sentence, silence(1.2)])
    decoder = ChannelDecoder(0, StreamingVad(), SPECULATIVE_END)
    made = play_answering(decoder, x, lambda r: "We would need a discount to move forward.")
    (spec_at, spec), *rest = [(at, r) for at, r in made if r.speculative]
    ((final_at, final),) = finals_made(made)
    assert rest == [] and decoder.speculative_ends == 1
    assert final_at == spec_at  # ended as the answer came, not 300 ms of silence later
    assert same_decode(spec, final)  # so the call answers it with the speculation's decode
    # The final that the VAD would have made: the same audio, ending at the last speech plus the pad.
    ((_, late),) = finals_made(play(ChannelDecoder(0, StreamingVad(), ON), x))
    assert same_decode(late, final) and late.start_sample == final.start_sample
    np.testing.assert_array_equal(late.audio, final.audio)
    assert final_at - (end_of(final) - PAD) < 500 * 16


@pytest.mark.parametrize(
    "answer",
    [
        "We would need a discount to move",
        "We would need a discount to move,",
        "We would need a discount to...",
        "",  # rejected by the filter
        None,  # skipped
    ],
    ids=["no-punctuation", "comma", "ellipsis", "rejected", "skipped"],
)
def test_a_speculation_that_is_no_finished_sentence_leaves_the_end_to_the_vad(
    sentence: np.ndarray, answer: str | None
) -> None:
    x = np.concatenate([silence(0.5), sentence, silence(1.2)])
    decoder = ChannelDecoder(0, StreamingVad(), SPECULATIVE_END)
    ((at, final),) = finals_made(play_answering(decoder, x, lambda r: answer))
    assert decoder.speculative_ends == 0
    assert at - (end_of(final) - PAD) >= 500 * 16


def test_an_early_answer_waits_for_the_speculative_end_silence(sentence: np.ndarray) -> None:
    x = np.concatenate([silence(0.5), sentence, silence(1.2)])
    config = StreamingConfig(speculative_final_ms=200, speculative_end_ms=350)
    decoder = ChannelDecoder(0, StreamingVad(), config)
    made = play_answering(decoder, x, lambda r: "We would need a discount to move forward.")
    ((spec_at, spec),) = [(at, r) for at, r in made if r.speculative]
    ((final_at, final),) = finals_made(made)
    speech_end = end_of(final) - PAD
    assert decoder.speculative_ends == 1 and same_decode(spec, final)
    assert 350 * 16 <= final_at - speech_end < 500 * 16 and final_at > spec_at


def test_an_answer_that_comes_after_the_speaker_went_on_ends_nothing(paused: np.ndarray) -> None:
    decoder = ChannelDecoder(0, StreamingVad(), replace(SPECULATIVE_END, partials=False))
    pause_over = int(0.8 * 16000) + len(voiced(CLAUSE_A)) + int(0.5 * 16000)
    held = [r for _, r in play(decoder, paused[:pause_over], flush=False) if r.speculative]
    assert len(held) == 1  # asked for in the pause, not yet answered
    assert decoder.speculation is None  # the speaker went on: the channel no longer names it
    assert (
        decoder.note_speculation(held[0], result_reading(held[0], "I think the price is way too high.")) == []
    )
    rest = play(decoder, paused[pause_over:])
    assert decoder.speculative_ends == 0 and len(finals_made(rest)) == 1
    (final,) = [r for _, r in finals_made(rest)]
    assert end_of(final) - end_of(held[0]) > 16000  # one segment: both clauses


def test_a_finished_answer_waiting_for_its_silence_is_dropped_when_the_speaker_goes_on(
    paused: np.ndarray,
) -> None:
    # 400 ms: longer than the 300 ms pause. The pause's speculation reads as a finished sentence, but its
    # silence ends first; the turn's own speculation does not read as one: the VAD ends the turn.
    config = StreamingConfig(partials=False, speculative_final_ms=200, speculative_end_ms=400)
    decoder = ChannelDecoder(0, StreamingVad(), config)
    answered: list[DecodeRequest] = []

    def answer(request: DecodeRequest) -> str:
        answered.append(request)
        return "I think the price is way too high." if len(answered) == 1 else "we would need a discount to"

    made = play_answering(decoder, paused, answer)
    ((at, final),) = finals_made(made)
    assert len(answered) == 2 and decoder.speculative_ends == 0
    assert at - (end_of(final) - PAD) >= 500 * 16 and end_of(final) - end_of(answered[0]) > 16000


def test_a_sentence_said_in_a_pause_ends_its_own_segment(paused: np.ndarray) -> None:
    # The pause's speculation reads as a finished sentence: the clause after it opens a new segment,
    # whose final hears the first one's end as its context (as after any end).
    decoder = ChannelDecoder(0, StreamingVad(), SPECULATIVE_END)
    made = play_answering(decoder, paused, lambda r: "Honestly, that's more than we budgeted.")
    (_, first), (_, second) = finals_made(made)
    assert decoder.speculative_ends == 2 and (first.segment, second.segment) == (0, 1)
    assert second.context_transcribed > 0


def test_speculative_end_settings() -> None:
    for bad in (
        StreamingConfig(speculative_final_ms=0, speculative_end_ms=300),  # no speculation to end on
        StreamingConfig(speculative_final_ms=300, speculative_end_ms=250),  # before the speculation
        StreamingConfig(speculative_end_ms=500),  # no sooner than the VAD
        StreamingConfig(speculative_end_ms=300, early_end_ms=300),  # two ways to end early
    ):
        with pytest.raises(ValueError, match="speculative_end_ms"):
            bad.validate()
    StreamingConfig(speculative_end_ms=200).validate()
    StreamingConfig(speculative_final_ms=300, speculative_end_ms=300).validate()


async def test_the_call_sends_the_speculative_end_final_without_the_long_silence(
    sentence: np.ndarray,
) -> None:
    # Only 300 ms of silence and no end of call: without the speculative end the VAD never ends it.
    x = np.concatenate([silence(0.5), sentence, silence(0.3)])
    fake = FakeRecognizer()

    async def body(c: Call) -> None:
        await c.feed(x)
        final = await asyncio.wait_for(c.final, timeout=30)
        assert final.text.startswith("w0 w1") and final.text.endswith(".")
        assert fake.finals() == 1  # the speculation's decode, taken by the final

    events = await with_call(fake, SPECULATIVE_END, body)
    assert sum(e.is_final for e in events) == 1 and fake.finals() == 1


async def test_with_whisper_the_speculative_end_reads_as_the_vads_end(recognizer: WhisperRecognizer) -> None:
    x = np.concatenate([silence(0.5), voiced(SENTENCE_A)])
    text: dict[str, str] = {}

    async def ended_by_speculation(c: Call) -> None:
        await c.feed(np.concatenate([x, silence(0.3)]))  # the VAD alone would wait for 500 ms
        text["speculative end"] = (await asyncio.wait_for(c.final, timeout=60)).text

    async def ended_by_the_vad(c: Call) -> None:
        await c.feed(np.concatenate([x, silence(0.7)]))
        text["vad"] = (await asyncio.wait_for(c.final, timeout=60)).text

    await with_call(recognizer, SPECULATIVE_END, ended_by_speculation)
    await with_call(recognizer, ON, ended_by_the_vad)
    assert text["speculative end"] == text["vad"], text
    assert word_error_rate(SENTENCE_A, text["vad"]) <= 0.15, text


async def test_a_call_closed_while_its_speculation_waits_decodes_and_sends_nothing_more(
    sentence: np.ndarray,
) -> None:
    # The speculation's job is cancelled by close(): its done-callback still reaches the event loop, which
    # must neither decode nor submit anything for a call that is gone, nor fail.
    loop = asyncio.get_running_loop()
    failures: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: failures.append(context))
    fake = FakeRecognizer()
    scheduler, stream, call = open_call(fake, SPECULATIVE_END)  # not with_call: it closes mid-call
    gate = threading.Event()
    try:
        held = stream.submit(gate.wait)  # holds the thread: the speculation waits behind it
        data = to_pcm16_bytes(np.concatenate([silence(0.5), sentence, silence(0.3)]))
        for i in range(0, len(data), 2 * FRAME):
            await call.feed(data[i : i + 2 * FRAME])
        (speculated,) = [r for r in call._speculations.values()]
        assert speculated[0].speculative and not speculated[1].done()
        call.close()
        assert speculated[1].cancelled()
        gate.set()
        await asyncio.wrap_future(held)
        await asyncio.sleep(0)  # one turn of the loop: the callback scheduled by the cancel has run
    finally:
        gate.set()
        call.close()
        scheduler.shutdown()
        loop.set_exception_handler(None)
    assert fake.calls == [] and failures == []
