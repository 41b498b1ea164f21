"""The incremental decoder: Whisper on VAD segments, partials then finals, and no text for non-speech.

Whisper runs for real (tiny.en, int8, one thread); the speech is espeak-ng's robotic voice, which tiny.en
finds harder than people, so word error rates are held to a realistic bound, not to zero.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from asr_service.audio import AudioDecoder, AudioSpec, Encoding, mulaw_encode, resample
from asr_service.channel import ChannelDecoder, ends_sentence
from asr_service.decoding import DecodeRequest, DecodeResult, run_decode
from asr_service.hallucination import judge, normalise
from asr_service.recognizer import (
    Recognition,
    RecognizedWord,
    WhisperRecognizer,
    compression_ratio,
    loop_start,
)
from asr_service.scheduler import InferenceScheduler, StreamLimitError
from asr_service.streaming import (
    CallTranscriber,
    SegmentNumbering,
    StreamingConfig,
    Transcript,
    pcm16_spec,
)
from asr_service.vad import StreamingVad, shared_model
from tests.support.audio import (
    SENTENCE_A,
    SENTENCE_B,
    silence,
    speak,
    speak_pcm16,
    to_pcm16_bytes,
    tone_sequence,
    white_noise,
    word_error_rate,
)


def push_all(decoder: ChannelDecoder, x: np.ndarray, chunk: int = 320) -> list[DecodeRequest]:
    """Every request but the speculative finals (test_asr_speculative.py): the finals they stand for
    come at the end as ever."""
    requests: list[DecodeRequest] = []
    for i in range(0, len(x), chunk):
        requests += decoder.push(x[i : i + chunk])
    return [r for r in requests + decoder.flush() if not r.speculative]


def transcripts(recognizer: WhisperRecognizer, requests: list[DecodeRequest]) -> list[Transcript]:
    numbering = SegmentNumbering()
    events = [numbering.event(run_decode(recognizer, r)) for r in requests]
    return [e for e in events if e is not None]


# ------------------------------------------------------------------------------------ real speech


def test_a_spoken_sentence_gives_partials_then_a_matching_final(recognizer: WhisperRecognizer) -> None:
    x = np.concatenate([silence(1.0), speak(SENTENCE_A), silence(1.0)])
    requests = push_all(ChannelDecoder(0, StreamingVad()), x)
    kinds = [r.is_final for r in requests]
    assert kinds[-1] is True and kinds.count(True) == 1 and kinds.count(False) >= 3
    # Partials while speaking, at most about a second apart; the final once the speech has ended.
    ends = [r.start_sample + len(r.audio) for r in requests]
    assert all(0 < b - a <= 1.1 * 16000 for a, b in zip(ends[:-1], ends[1:], strict=False))

    events = transcripts(recognizer, requests)
    final = events[-1]
    assert final.is_final and [e.is_final for e in events[:-1]] == [False] * (len(events) - 1)
    assert len(events) >= 3
    assert {e.segment_id for e in events} == {0}
    assert word_error_rate(SENTENCE_A, final.text) <= 0.15, final.text

    # Word times are milliseconds from the start of the call (the speech starts after 1 s of silence).
    assert final.words and 700 <= final.words[0].start_ms <= 1300
    assert all(final.start_ms <= w.start_ms <= w.end_ms <= final.end_ms for w in final.words)
    assert [w.start_ms for w in final.words] == sorted(w.start_ms for w in final.words)
    assert 0.0 <= final.no_speech_prob < 0.5 and -1.0 < final.avg_logprob <= 0.0
    assert final.prosody is not None and 60 < final.prosody.pitch_mean_hz < 200
    assert 2.0 < final.prosody.speaking_rate_wps < 4.5


def test_two_sentences_apart_are_two_segments(recognizer: WhisperRecognizer) -> None:
    x = np.concatenate([silence(0.5), speak(SENTENCE_A), silence(1.2), speak(SENTENCE_B), silence(0.8)])
    decoder = ChannelDecoder(0, StreamingVad(), StreamingConfig(partials=False))
    finals = [e for e in transcripts(recognizer, push_all(decoder, x, chunk=1600)) if e.is_final]
    assert [e.segment_id for e in finals] == [0, 1]
    assert word_error_rate(SENTENCE_A, finals[0].text) <= 0.15, finals[0].text
    assert word_error_rate(SENTENCE_B, finals[1].text) <= 0.25, finals[1].text
    assert finals[0].end_ms <= finals[1].start_ms


def test_lost_audio_closes_the_segment_and_keeps_the_call_clock() -> None:
    sentence = speak(SENTENCE_A)
    decoder = ChannelDecoder(0, StreamingVad(), StreamingConfig(partials=False))
    before = push_all_open(decoder, np.concatenate([silence(0.5), sentence[: 3 * 16000]]))
    assert before == []
    (cut,) = decoder.skip(16000 * 60)  # a minute of audio lost
    assert cut.is_final and cut.start_ms < 500 and cut.end_ms <= 3500
    (after,) = push_all(decoder, np.concatenate([sentence, silence(1.0)]))
    assert after.is_final and after.segment == 1 and after.start_ms >= 63_500 - 250


def push_all_open(decoder: ChannelDecoder, x: np.ndarray, chunk: int = 320) -> list[DecodeRequest]:
    """Like push_all, without the end-of-call flush."""
    requests: list[DecodeRequest] = []
    for i in range(0, len(x), chunk):
        requests += decoder.push(x[i : i + chunk])
    return [r for r in requests if not r.speculative]


# ------------------------------------------------------------------------------------ context


def test_finals_hear_the_pause_and_the_end_of_the_previous_segment() -> None:
    x = np.concatenate([silence(0.5), speak(SENTENCE_A), silence(1.2), speak(SENTENCE_B), silence(0.8)])
    requests = push_all(ChannelDecoder(0, StreamingVad()), x)
    assert all(len(r.context) == 0 for r in requests if not r.is_final)  # partials: the segment alone
    first, second = [r for r in requests if r.is_final]
    # The first final hears the start of the call before it, which no segment covered.
    assert first.heard_start_sample == 0 and len(first.context) == first.start_sample
    assert first.context_transcribed == 0
    # The second hears 2 s before it: the end of the first segment (transcribed), then the pause.
    assert len(second.context) == 2 * 16000
    assert second.heard_start_sample + second.context_transcribed == first.start_sample + len(first.audio)
    np.testing.assert_array_equal(second.context, x[second.heard_start_sample : second.start_sample])

    alone = push_all(ChannelDecoder(0, StreamingVad(), StreamingConfig(context_s=0.0)), x)
    assert [len(r.context) for r in alone if r.is_final] == [0, 0]


def test_the_context_is_heard_but_its_words_are_not_returned(recognizer: WhisperRecognizer) -> None:
    a = speak(SENTENCE_A)
    x = np.concatenate([a, silence(0.7), speak(SENTENCE_B)])
    context_s = len(a) / 16000 + 0.2  # where the segment of SENTENCE_A ended
    heard = recognizer.recognize(x, context_s=context_s)
    assert word_error_rate(SENTENCE_B, heard.text) <= 0.25, heard.text
    assert heard.words and all((w.start_s + w.end_s) / 2 >= context_s for w in heard.words)
    assert heard.context_s == pytest.approx(context_s)
    assert heard.audio_s == pytest.approx(len(x) / 16000 - context_s)


@pytest.mark.parametrize(
    "signal",
    [silence(3.0), white_noise(3.0), white_noise(3.0, level=0.3, seed=2), tone_sequence(3.0)],
    ids=["silence", "white-noise", "loud-noise", "tone-sequence"],
)
def test_non_speech_after_speech_is_rejected_on_both_tries(
    recognizer: WhisperRecognizer, signal: np.ndarray
) -> None:
    # Heard with the pause before it, then (rejected) with the previous speech as well: neither try
    # may turn non-speech into text.
    before = np.concatenate([speak(SENTENCE_A), silence(0.7)])[-2 * 16000 :]
    transcribed = len(before) - int(0.5 * 16000)  # the previous segment ended 200 ms after its speech
    request = DecodeRequest(0, 1, True, 60 * 16000, signal, before, transcribed)
    result = run_decode(recognizer, request)
    assert result.rejected is not None, result.recognition


# ------------------------------------------------------------------------------------ non-speech


@pytest.mark.parametrize(
    "signal",
    [silence(30.0), white_noise(30.0), white_noise(30.0, level=0.3, seed=2), tone_sequence(30.0)],
    ids=["silence", "white-noise", "loud-noise", "tone-sequence"],
)
def test_thirty_seconds_of_non_speech_give_no_final(signal: np.ndarray) -> None:
    # The fast path: the VAD finds no speech, so Whisper is never asked (and cannot invent any).
    decoder = ChannelDecoder(0, StreamingVad())
    assert push_all(decoder, signal, chunk=800) == []
    assert decoder.position == len(signal)


async def call_transcripts(recognizer: WhisperRecognizer, data: bytes, spec: AudioSpec) -> list[Transcript]:
    """Every event of a call fed ``data`` (in 20 ms chunks) through ``CallTranscriber``, partials on."""
    scheduler = InferenceScheduler(max_streams=1)
    call = CallTranscriber(
        recognizer=recognizer, stream=scheduler.open_stream(), spec=spec, vad_model=shared_model()
    )
    try:
        events: list[Transcript] = []

        async def collect() -> None:
            async for event in call.events():
                events.append(event)

        collector = asyncio.create_task(collect())
        step = spec.bytes_for(0.02)
        for i in range(0, len(data), step):
            await call.feed(data[i : i + step])
        await call.finish()
        await asyncio.wait_for(collector, timeout=60)
    finally:
        call.close()
        scheduler.shutdown()
    return events


@pytest.mark.parametrize(
    "signal", [silence(30.0), white_noise(30.0), tone_sequence(30.0)], ids=["silence", "white-noise", "tones"]
)
@pytest.mark.parametrize("line", ["pcm16-16khz", "mulaw-8khz"])
async def test_thirty_seconds_of_non_speech_give_no_text_on_either_line(
    recognizer: WhisperRecognizer, signal: np.ndarray, line: str
) -> None:
    if line == "mulaw-8khz":
        pcm = np.round(np.clip(resample(signal, 16000, 8000), -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
        data, spec = mulaw_encode(pcm).tobytes(), AudioSpec(Encoding.MULAW, 8000, 1)
    else:
        data, spec = to_pcm16_bytes(signal), pcm16_spec()
    events = await call_transcripts(recognizer, data, spec)
    assert [e.text for e in events] == []


@pytest.mark.parametrize(
    "signal",
    [silence(3.0), white_noise(3.0), white_noise(3.0, level=0.3, seed=2), tone_sequence(3.0)],
    ids=["silence", "white-noise", "loud-noise", "tone-sequence"],
)
def test_what_whisper_hears_in_non_speech_is_rejected(
    recognizer: WhisperRecognizer, signal: np.ndarray
) -> None:
    # The second line of defence: should the VAD let non-speech through, the filter drops the text.
    # Three seconds the VAD took for speech are not dropped silently: an empty final says why.
    request = DecodeRequest(0, 0, True, 0, signal)
    result = run_decode(recognizer, request)
    assert result.rejected is not None, result.recognition
    event = SegmentNumbering().event(result)
    assert event is not None and event.is_final
    assert (event.text, event.words, event.unheard_reason) == ("", (), result.rejected)
    # Shorter than a second, it is dropped (a cough, a click).
    short = run_decode(recognizer, DecodeRequest(0, 0, True, 0, signal[: len(signal) // 4]))
    assert short.rejected is not None and SegmentNumbering().event(short) is None


def test_mulaw_telephone_speech_is_transcribed(recognizer: WhisperRecognizer) -> None:
    # Narrow-band robotic speech is hard for tiny.en (sox's own 8 -> 16 kHz gives the same errors).
    pcm = np.concatenate(
        [np.zeros(4000, np.int16), speak_pcm16(SENTENCE_A, rate_hz=8000), np.zeros(8000, np.int16)]
    )
    audio = AudioDecoder(AudioSpec(Encoding.MULAW, 8000, 1))
    x = np.concatenate([audio.decode(mulaw_encode(pcm).tobytes())[0], audio.flush()[0]])
    decoder = ChannelDecoder(0, StreamingVad(), StreamingConfig(partials=False))
    (final,) = transcripts(recognizer, push_all(decoder, x, chunk=1600))
    assert word_error_rate(SENTENCE_A, final.text) <= 0.3, final.text


# ------------------------------------------------------------------------------- the filter


def recognition(text: str, *, nsp: float = 0.05, logprob: float = -0.3, word_p: float = 0.9) -> Recognition:
    words = tuple(
        RecognizedWord(f" {w}", i * 0.3, i * 0.3 + 0.25, word_p) for i, w in enumerate(text.split())
    )
    return Recognition(text, words, nsp, logprob, compression_ratio(text), audio_s=max(1.0, len(words) * 0.3))


@pytest.mark.parametrize(
    "text",
    [
        "Thanks for watching!",
        "Thank you for watching.",
        "Please subscribe to my channel.",
        "Subtitles by the Amara.org community",
        "[Music]",
        "(upbeat music)",
        "♪ ♪",
        "...",
        "",
    ],
)
def test_video_captions_and_empty_texts_are_always_rejected(text: str) -> None:
    assert judge(recognition(text)) is not None


@pytest.mark.parametrize("text", ["Thank you.", "you", "Bye.", "Okay."])
def test_stock_phrases_need_confidence(text: str) -> None:
    assert judge(recognition(text, nsp=0.5, logprob=-0.8)) is not None
    assert judge(recognition(text, word_p=0.4)) is not None
    assert judge(recognition(text, nsp=0.05, logprob=-0.2, word_p=0.9)) is None  # a real "thank you"


def test_silence_rule_confidence_and_repetition() -> None:
    assert judge(recognition("I'm going to go.", nsp=0.93, logprob=-2.0)) is not None
    assert judge(recognition("We can do that next week.", logprob=-1.7)) is not None
    assert judge(recognition("We can do that next week.", word_p=0.2)) is not None
    looping = "the price the price the price the price the price the price the price the price"
    assert judge(recognition(looping)) is not None
    assert judge(recognition("We can do that next week.", nsp=0.4, logprob=-0.5)) is None
    # Whisper's silence rule with word confidence: sure of no speech, unsure of the words.
    assert judge(recognition("Ooh, oh.", nsp=0.8, logprob=-0.25, word_p=0.36)) is not None
    assert judge(recognition("Call me later.", nsp=0.66, logprob=-0.3, word_p=0.66)) is None
    assert normalise("Thank  you!") == "thank you"


def test_loop_detection_on_tokens() -> None:
    assert loop_start([1, 2, 3, 1, 2, 3, 1, 2, 3]) == 3
    assert loop_start([5, 9, 9, 9, 9, 9]) == 2
    assert loop_start([7, 7, 7]) is None  # "no, no, no" is speech
    assert loop_start([1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6]) == 6  # a long phrase twice is a loop
    assert loop_start(list(range(40))) is None


# ------------------------------------------------------------------------------- segment ids


def result(
    segment: int, *, final: bool, text: str, rejected: str | None = None, channel: int = 0
) -> DecodeResult:
    request = DecodeRequest(channel, segment, final, 16000 * segment, np.zeros(16000, np.float32))
    rec = Recognition(text, (), 0.1, -0.2, 1.0, 1.0)
    return DecodeResult(request, rec, rejected, (), None, 1.0)


def test_segment_ids_skip_segments_without_text_and_retract_shown_partials() -> None:
    n = SegmentNumbering()
    assert n.event(result(0, final=True, text="you", rejected="stock phrase")) is None  # never shown
    partial = n.event(result(1, final=False, text="I think"))
    assert partial is not None and partial.segment_id == 0 and not partial.is_final
    assert n.event(result(1, final=False, text="I think")) is None  # unchanged: not sent again
    final = n.event(result(1, final=True, text="I think so."))
    assert final is not None and final.is_final and final.segment_id == 0 and final.text == "I think so."
    n.event(result(2, final=False, text="Thanks for"))
    withdrawn = n.event(result(2, final=True, text="Thanks for watching", rejected="known hallucination"))
    assert withdrawn is not None and withdrawn.is_final and withdrawn.segment_id == 1
    assert withdrawn.text == "" and withdrawn.words == () and withdrawn.prosody is None
    other = n.event(result(0, final=True, text="Hello.", channel=1))
    assert other is not None and other.segment_id == 0  # ids count per channel
    nxt = n.event(result(3, final=True, text="Next."))
    assert nxt is not None and nxt.segment_id == 2


# ------------------------------------------------------------------------------- scheduler


def test_scheduler_is_round_robin_across_streams() -> None:
    scheduler = InferenceScheduler(max_streams=3)
    gate = threading.Event()
    order: list[str] = []
    try:
        a, b = scheduler.open_stream(), scheduler.open_stream()
        blocker = a.submit(gate.wait)  # holds the thread while the queues fill
        futures = [a.submit(functools.partial(order.append, f"a{i}")) for i in range(3)]
        futures += [b.submit(functools.partial(order.append, f"b{i}")) for i in range(3)]
        gate.set()
        for f in [blocker, *futures]:
            f.result(timeout=5)
        assert order == ["b0", "a0", "b1", "a1", "b2", "a2"]
    finally:
        scheduler.shutdown()


def test_scheduler_replaces_queued_partials_and_caps_streams() -> None:
    scheduler = InferenceScheduler(max_streams=1)
    gate = threading.Event()
    try:
        stream = scheduler.open_stream()
        with pytest.raises(StreamLimitError, match="1 streams are open"):
            scheduler.open_stream()
        stream.submit(gate.wait)
        old = stream.submit(lambda: "old partial", partial_key="ch0")
        new = stream.submit(lambda: "new partial", partial_key="ch0")
        other = stream.submit(lambda: "other channel", partial_key="ch1")
        newest = stream.submit(lambda: "newest partial", partial_key="ch0")
        final = stream.submit(lambda: "final", final_key="ch0")
        gate.set()
        assert old.result(timeout=5) is None and new.result(timeout=5) is None
        assert newest.result(timeout=5) is None  # a final drops the partials queued before it
        assert other.result(timeout=5) == "other channel" and final.result(timeout=5) == "final"
        stream.close()
        deadline = time.monotonic() + 5
        while scheduler.open_streams and time.monotonic() < deadline:
            time.sleep(0.01)
        scheduler.open_stream().close(cancel=True)  # the slot is free again
    finally:
        scheduler.shutdown()


# ------------------------------------------------------------------------------- async call


async def test_call_transcriber_streams_two_channels(recognizer: WhisperRecognizer) -> None:
    left = np.concatenate([silence(0.5), speak(SENTENCE_A), silence(1.5)])
    right = np.concatenate([silence(3.0), speak(SENTENCE_B), silence(0.6)])
    n = max(len(left), len(right))
    stereo = np.stack([np.pad(left, (0, n - len(left))), np.pad(right, (0, n - len(right)))], axis=1)
    data = to_pcm16_bytes(stereo.reshape(-1))
    scheduler = InferenceScheduler(max_streams=2)
    seen: list[DecodeResult] = []
    call = CallTranscriber(
        recognizer=recognizer,
        stream=scheduler.open_stream(),
        spec=pcm16_spec(channels=2),
        vad_model=shared_model(),
        on_result=seen.append,
    )
    try:
        events: list[Transcript] = []

        async def collect() -> None:
            async for event in call.events():
                events.append(event)

        collector = asyncio.create_task(collect())
        for i in range(0, len(data), 3201):  # odd: cuts samples and frames
            await call.feed(data[i : i + 3201])
        await call.finish()
        await asyncio.wait_for(collector, timeout=60)
    finally:
        call.close()
        scheduler.shutdown()
    finals = {e.channel: e for e in events if e.is_final}
    assert set(finals) == {0, 1}
    assert word_error_rate(SENTENCE_A, finals[0].text) <= 0.15, finals[0].text
    assert word_error_rate(SENTENCE_B, finals[1].text) <= 0.25, finals[1].text
    assert finals[1].start_ms >= 2500  # channel clocks are the call's clock
    for channel, final in finals.items():
        before = [e for e in events[: events.index(final)] if e.channel == channel]
        assert all(not e.is_final and e.segment_id == final.segment_id for e in before)
    assert sum(r.request.is_final for r in seen) == 2


@pytest.mark.parametrize(
    ("said", "kept"),
    [
        (" by a similar process, by a similar process.", "by a similar process."),
        (" And so my fellow Americans. and so my fellow Americans.", "And so my fellow Americans."),
        (" It is very very good.", "It is very very good."),  # a single repeated word is speech
        (" ask what you can do for your country.", "ask what you can do for your country."),
    ],
)
def test_a_repeated_tail_is_cut_once(recognizer: WhisperRecognizer, said: str, kept: str) -> None:
    tokenizer = recognizer._tokenizer
    out, cut = recognizer._strip_repeated_tail(tokenizer.encode(said))
    assert tokenizer.decode(out).strip() == kept
    assert cut == (said.strip() != kept)


# ------------------------------------------------------------------------------- early end


STABLE = "We would need a discount to move forward."
EARLY = StreamingConfig(early_end_ms=200)  # off by default (bench/endpointing.py)


def play_live(
    decoder: ChannelDecoder, x: np.ndarray, answer: Callable[[DecodeRequest], str], chunk: int = 320
) -> list[tuple[int, DecodeRequest]]:
    """Feed ``x`` frame by frame, each partial answered at once with ``answer`` (a decode that takes no
    time); every request with the channel position at which it was made."""
    made: list[tuple[int, DecodeRequest]] = []

    def take(requests: list[DecodeRequest]) -> None:
        for request in requests:
            made.append((decoder.position, request))
            if not request.is_final:
                take(decoder.note_partial(request, answer(request)))

    for i in range(0, len(x), chunk):
        take(decoder.push(x[i : i + chunk]))
    take(decoder.flush())
    return made


def finals_of(made: list[tuple[int, DecodeRequest]]) -> list[tuple[int, DecodeRequest]]:
    return [(at, r) for at, r in made if r.is_final and not r.speculative]


def finished_within(start_s: float, end_s: float) -> Callable[[DecodeRequest], str]:
    """Decodes that end a sentence once their audio reaches ``start_s`` (the speech has ended) and
    before ``end_s``; before that the sentence is going on (SENTENCE_A pauses at its comma)."""

    def answer(request: DecodeRequest) -> str:
        end = request.start_sample + len(request.audio)
        return STABLE if start_s * 16000 <= end < end_s * 16000 else "We would need a,"

    return answer


def a_end_s() -> float:
    """Where SENTENCE_A's voice ends after 0.5 s of silence (espeak-ng ends on 0.4 s of silence)."""
    return 0.5 + float(np.nonzero(np.abs(speak(SENTENCE_A)) > 1e-3)[0][-1]) / 16000


@pytest.fixture(scope="module")
def sentence_then_silence() -> np.ndarray:
    return np.concatenate([silence(0.5), speak(SENTENCE_A), silence(1.2)])


def test_early_end_ends_a_stable_finished_sentence_with_the_same_final(
    sentence_then_silence: np.ndarray,
) -> None:
    x = sentence_then_silence
    early = ChannelDecoder(0, StreamingVad(), StreamingConfig(early_end_ms=200))
    ((early_at, early_final),) = finals_of(play_live(early, x, finished_within(a_end_s(), 99)))
    late = ChannelDecoder(0, StreamingVad(), StreamingConfig(early_end_ms=0))
    ((late_at, late_final),) = finals_of(play_live(late, x, finished_within(a_end_s(), 99)))
    assert early.early_ends == 1 and late.early_ends == 0
    # The final hears exactly what it would have after the long silence.
    assert early_final.start_sample == late_final.start_sample
    np.testing.assert_array_equal(early_final.audio, late_final.audio)
    np.testing.assert_array_equal(early_final.context, late_final.context)
    # Made 200 ms into the silence (and a frame or a VAD window), not 500 ms.
    speech_end = early_final.start_sample + len(early_final.audio) - 200 * 16
    assert 200 * 16 <= early_at - speech_end <= 260 * 16
    assert late_at - speech_end >= 500 * 16


@pytest.mark.parametrize(
    ("config", "answer"),
    [
        (StreamingConfig(early_end_ms=0), finished_within(a_end_s(), 99)),
        # The silence added words: each decode says more than the one before.
        (StreamingConfig(early_end_ms=200), lambda r: " ".join(["word"] * (1 + len(r.audio) // 320)) + "."),
        (StreamingConfig(early_end_ms=200), lambda r: "We would need a discount to move"),
        (StreamingConfig(early_end_ms=200), lambda r: "We would need a discount to move,"),
        (StreamingConfig(early_end_ms=200), lambda r: "We would need a discount to..."),
        (StreamingConfig(early_end_ms=200), lambda r: ""),  # rejected by the filter
    ],
    ids=["off", "unstable", "no-punctuation", "comma", "ellipsis", "rejected"],
)
def test_no_early_end_without_a_stable_finished_sentence(
    sentence_then_silence: np.ndarray, config: StreamingConfig, answer: Callable[[DecodeRequest], str]
) -> None:
    decoder = ChannelDecoder(0, StreamingVad(), config)
    ((at, final),) = finals_of(play_live(decoder, sentence_then_silence, answer))
    assert decoder.early_ends == 0
    assert at - (final.start_sample + len(final.audio) - 200 * 16) >= 500 * 16


def test_a_probe_answered_after_the_speaker_went_on_ends_nothing() -> None:
    a, b = speak(SENTENCE_A), speak(SENTENCE_B)
    decoder = ChannelDecoder(0, StreamingVad(), StreamingConfig(partials=False, early_end_ms=200))
    held = [r for r in push_all_open(decoder, np.concatenate([silence(0.5), a, silence(0.3)])) if r.probe]
    assert held and not any(r.is_final for r in held)
    for r in held[:-1]:
        assert decoder.note_partial(r, "We would need a,") == []
    assert push_all_open(decoder, b[: 16000 // 2]) == []  # the speaker goes on within the 500 ms
    assert decoder.note_partial(held[-1], STABLE) == []  # the silence it was taken in is over
    assert decoder.early_ends == 0 and decoder.vad.in_speech


def test_speech_after_an_early_end_opens_a_new_segment() -> None:
    # A 300 ms pause: one segment for the VAD; two when the first part ends early.
    a = speak(SENTENCE_A)[: int((a_end_s() - 0.5) * 16000)]
    x = np.concatenate([silence(0.5), a, silence(0.3), speak(SENTENCE_B), silence(1.0)])
    joined = finals_of(play_live(ChannelDecoder(0, StreamingVad(), EARLY), x, lambda r: "go on,"))
    assert len(joined) == 1
    decoder = ChannelDecoder(0, StreamingVad(), EARLY)
    made = play_live(decoder, x, finished_within(a_end_s(), a_end_s() + 0.3))
    (_, first), (_, second) = finals_of(made)
    assert decoder.early_ends == 1
    assert (first.segment, second.segment) == (0, 1)
    first_end = first.start_sample + len(first.audio)
    assert first_end <= second.start_sample <= first_end + int(0.3 * 16000)  # pre-roll, not the silence
    assert second.context_transcribed > 0  # the second final hears the end of the first, as usual


def test_partials_off_sends_no_probe_events_but_still_ends_early() -> None:
    decoder = ChannelDecoder(0, StreamingVad(), StreamingConfig(partials=False, early_end_ms=200))
    x = np.concatenate([silence(0.5), speak(SENTENCE_A), silence(1.0)])
    made = play_live(decoder, x, finished_within(a_end_s(), 99))
    assert all(r.probe for _, r in made if not r.is_final) and decoder.early_ends == 1


def test_early_end_settings_and_sentence_ends() -> None:
    for bad in (100, 500):  # below the VAD's pad (the final would hear less), or not early at all
        with pytest.raises(ValueError, match="early_end_ms"):
            StreamingConfig(early_end_ms=bad).validate()
    StreamingConfig(early_end_ms=0).validate()
    assert [ends_sentence(t) for t in ("Okay.", ' He said "no!"', "Really?", "So...", "well,", "")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def live_finals(
    recognizer: WhisperRecognizer, x: np.ndarray, config: StreamingConfig
) -> list[tuple[int, DecodeRequest, str]]:
    """Like play_live with Whisper answering (at once): each final, where it was made, and its text."""
    made = play_live(
        ChannelDecoder(0, StreamingVad(), config),
        x,
        lambda r: (lambda d: d.recognition.text if d.rejected is None else "")(run_decode(recognizer, r)),
    )
    return [(at, r, run_decode(recognizer, r).recognition.text) for at, r in finals_of(made)]


def test_early_end_with_whisper_gives_the_same_final_sooner(
    recognizer: WhisperRecognizer, sentence_then_silence: np.ndarray
) -> None:
    ((early_at, early, early_text),) = live_finals(recognizer, sentence_then_silence, EARLY)
    ((late_at, late, late_text),) = live_finals(
        recognizer, sentence_then_silence, StreamingConfig(early_end_ms=0)
    )
    assert early_text == late_text and word_error_rate(SENTENCE_A, early_text) <= 0.15, early_text
    speech_end = early.start_sample + len(early.audio) - 200 * 16
    assert late_at - early_at >= 200 * 16, (early_at - speech_end, late_at - speech_end)


async def test_call_transcriber_sends_an_early_final_before_the_long_silence(
    recognizer: WhisperRecognizer, sentence_then_silence: np.ndarray
) -> None:
    # The speech and 0.4 s of silence only, no end of call: the VAD alone would never end the segment.
    speech = sentence_then_silence[: len(sentence_then_silence) - int(0.8 * 16000)]
    scheduler = InferenceScheduler(max_streams=1)
    stream = scheduler.open_stream()
    call = CallTranscriber(
        recognizer=recognizer, stream=stream, spec=pcm16_spec(), vad_model=shared_model(), config=EARLY
    )
    final = asyncio.get_running_loop().create_future()

    async def collect() -> None:
        async for event in call.events():
            if event.is_final and not final.done():
                final.set_result(event)

    collector = asyncio.create_task(collect())
    try:
        data = to_pcm16_bytes(speech)
        settled = len(data) - 2 * int(0.3 * 16000)  # 100 ms into the silence: the settling partial is due
        for i in range(0, settled, 640):
            await call.feed(data[i : min(i + 640, settled)])
        # Let it be decoded before the probe comes, as it would be live (a queued partial is replaced).
        await asyncio.wrap_future(stream.submit(lambda: None))
        for i in range(settled, len(data), 640):
            await call.feed(data[i : i + 640])
        event = await asyncio.wait_for(final, timeout=60)
        assert word_error_rate(SENTENCE_A, event.text) <= 0.15, event.text
    finally:
        collector.cancel()
        call.close()
        scheduler.shutdown()
