"""Commits at pauses: a speculative final decoded in a pause that reads as a finished sentence becomes its
segment's committed prefix when the speaker goes on; the partials after it decode only the audio after
it, while the final still decodes the whole segment.

The channel logic runs on the real VAD and espeak-ng speech with made-up decode results; the call-level
test decodes with Whisper. The lines are a buyer's, as buyers say them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from asr_service.channel import ChannelDecoder
from asr_service.decoding import DecodeRequest, DecodeResult, join, same_decode
from asr_service.recognizer import Recognition, WhisperRecognizer
from asr_service.streaming import Transcript
from asr_service.vad import StreamingVad
from tests.asr_service.test_asr_speculative import (
    FRAME,
    ON,
    Call,
    end_of,
    play,
    play_answering,
    voiced,
    with_call,
)
from tests.support.audio import silence, word_error_rate
from tests.support.decodes import result_reading

FIRST, SECOND = "That is well over what we budgeted.", "We would need a real discount to move forward."
PAUSE_S = 0.3  # under the VAD's 500 ms: one segment


@pytest.fixture(scope="module")
def first() -> np.ndarray:
    return voiced(FIRST)


@pytest.fixture(scope="module")
def two_sentences(first: np.ndarray) -> np.ndarray:
    """Two sentences 300 ms apart, then a long silence: one segment for the VAD."""
    return np.concatenate([silence(0.5), first, silence(PAUSE_S), voiced(SECOND), silence(1.0)])


def resumed(first: np.ndarray) -> int:
    """A position 300 ms into the second sentence: the speaker has gone on."""
    return int(0.5 * 16000) + len(first) + int((PAUSE_S + 0.3) * 16000)


def reading(*texts: str) -> Callable[[DecodeRequest], str]:
    """Answers for the speculations in the order they are made: the first reads ``texts[0]``, and so on."""
    left = list(texts)
    return lambda request: left.pop(0) if left else texts[-1]


def test_a_finished_sentence_decoded_in_the_pause_is_committed_when_the_speaker_goes_on(
    two_sentences: np.ndarray,
) -> None:
    decoder = ChannelDecoder(0, StreamingVad(), ON)
    made = play_answering(decoder, two_sentences, reading(FIRST, f"{FIRST} {SECOND}"))
    in_pause, at_end = [r for _, r in made if r.speculative]
    (final,) = [r for _, r in made if r.is_final and not r.speculative]
    assert decoder.commits == 1
    # Partials after the pause decode only the new speech, the prefix (the pause's result) carried along.
    later = [r for at, r in made if not r.is_final and at > end_of(in_pause)]
    assert later and all(r.start_sample == end_of(in_pause) for r in later)
    assert all(r.committed is not None and r.committed.request is in_pause for r in later)
    # The final (and the speculation it takes) still decodes the whole segment.
    assert final.committed is None and at_end.committed is None
    assert final.start_sample == in_pause.start_sample and end_of(final) > end_of(in_pause)
    assert same_decode(at_end, final) and decoder.speculations_matched == 1


@pytest.mark.parametrize(
    ("answer", "commit_at_pauses"),
    [
        ("That is well over what we", True),  # no finished sentence: the speaker may be mid-thought
        ("", True),  # the filter rejected it
        (None, True),  # skipped: never decoded
        (FIRST, False),  # off
    ],
    ids=["unfinished", "rejected", "skipped", "off"],
)
def test_no_commit_without_a_finished_sentence_or_when_off(
    two_sentences: np.ndarray, answer: str | None, commit_at_pauses: bool
) -> None:
    decoder = ChannelDecoder(0, StreamingVad(), replace(ON, commit_at_pauses=commit_at_pauses))
    made = play_answering(decoder, two_sentences, lambda r: answer if r.committed is None else SECOND)
    (final,) = [r for _, r in made if r.is_final and not r.speculative]
    partials = [r for _, r in made if not r.is_final]
    assert decoder.commits == 0 and len(partials) > 2
    assert all(r.committed is None and r.start_sample == final.start_sample for r in partials)


def test_an_answer_that_comes_after_the_speaker_went_on_is_committed(
    two_sentences: np.ndarray, first: np.ndarray
) -> None:
    decoder = ChannelDecoder(0, StreamingVad(), ON)
    over = resumed(first)
    (held,) = [r for _, r in play(decoder, two_sentences[:over], flush=False) if r.speculative]
    assert decoder.speculation is None  # thrown away: the speaker went on
    assert decoder.note_speculation(held, result_reading(held, FIRST)) == []
    assert decoder.commits == 1
    partials = [r for _, r in play(decoder, two_sentences[over:]) if not r.is_final]
    assert partials and all(r.start_sample == end_of(held) and r.committed is not None for r in partials)


def test_an_answer_after_its_segment_ended_commits_nothing(
    two_sentences: np.ndarray, first: np.ndarray
) -> None:
    decoder = ChannelDecoder(0, StreamingVad(), replace(ON, partials=False))
    over = resumed(first)
    (held,) = [r for _, r in play(decoder, two_sentences[:over], flush=False) if r.speculative]
    play(decoder, two_sentences[over:])
    assert decoder.note_speculation(held, result_reading(held, FIRST)) == []
    assert decoder.commits == 0


THIRD = "Can you do anything on the price?"


def test_a_late_answer_for_an_earlier_pause_does_not_undo_a_later_commit(first: np.ndarray) -> None:
    second = voiced(SECOND)
    x = np.concatenate(
        [silence(0.5), first, silence(PAUSE_S), second, silence(PAUSE_S), voiced(THIRD), silence(1.0)]
    )
    decoder = ChannelDecoder(0, StreamingVad(), ON)
    over_first = resumed(first)
    (pause_one,) = [r for _, r in play(decoder, x[:over_first], flush=False) if r.speculative]
    # Its answer is late; the second pause's speculation is answered while its silence holds.
    in_second_pause = over_first + len(second) - int(0.3 * 16000) + int(PAUSE_S * 16000) - FRAME
    (pause_two,) = [r for _, r in play(decoder, x[over_first:in_second_pause], flush=False) if r.speculative]
    assert decoder.speculation is pause_two and end_of(pause_two) > end_of(pause_one)
    assert decoder.note_speculation(pause_two, result_reading(pause_two, f"{FIRST} {SECOND}")) == []
    assert decoder.commits == 0  # the speaker has not gone on yet
    later = play(decoder, x[in_second_pause : in_second_pause + int(0.9 * 16000)], flush=False)
    assert decoder.commits == 1
    assert decoder.note_speculation(pause_one, result_reading(pause_one, FIRST)) == []
    assert decoder.commits == 1  # the first pause's answer came after the second pause was committed
    rest = later + play(decoder, x[in_second_pause + int(0.9 * 16000) :])
    partials = [r for _, r in rest if not r.is_final]
    assert partials and all(r.start_sample == end_of(pause_two) for r in partials)


def test_no_commit_without_partials(two_sentences: np.ndarray) -> None:
    decoder = ChannelDecoder(0, StreamingVad(), replace(ON, partials=False))
    play_answering(decoder, two_sentences, reading(FIRST, f"{FIRST} {SECOND}"))
    assert decoder.commits == 0  # a prefix would serve nothing


# ------------------------------------------------------------------------------- joining


def _result(request: DecodeRequest, text: str, rejected: str | None = None) -> DecodeResult:
    recognition = Recognition(text, (), 0.05, -0.3, 1.1, request.duration_s)
    return DecodeResult(request, recognition, rejected, (), None, 12.0)


def _audio(start_s: float, seconds: float) -> npt.NDArray[np.float32]:
    return np.full(int(seconds * 16000), start_s, dtype=np.float32)


def test_join_makes_a_partial_of_the_whole_segment() -> None:
    pause = DecodeRequest(
        0, 3, True, 16000, _audio(1.0, 2.0), np.zeros(8000, np.float32), 4000, speculative=True
    )
    prefix = _result(pause, FIRST)
    partial = DecodeRequest(0, 3, False, 48000, _audio(3.0, 1.5), committed=prefix)
    joined = join(prefix, _result(partial, "We would need"))
    whole = joined.request
    assert (whole.start_sample, len(whole.audio), whole.committed, whole.is_final) == (
        16000,
        56000,
        None,
        False,
    )
    np.testing.assert_array_equal(whole.audio[:32000], pause.audio)
    np.testing.assert_array_equal(whole.audio[32000:], partial.audio)
    assert joined.recognition.text == f"{FIRST} We would need" and joined.rejected is None
    assert joined.recognition.audio_s == pytest.approx(3.5) and joined.words == ()
    # Nothing heard after the pause yet (or the filter dropped it): rejected, as any such partial, not shown.
    dropped = join(prefix, _result(partial, "you", rejected="no speech"))
    assert dropped.rejected == "no speech" and dropped.accepted_text == ""
    assert same_decode(dropped.request, whole) and not dropped.request.is_final
    with pytest.raises(ValueError, match="only partials"):
        join(prefix, _result(replace(partial, is_final=True, committed=None), SECOND))


# ------------------------------------------------------------------------------- the call, with Whisper


async def test_with_whisper_partials_after_the_pause_decode_only_the_new_sentence(
    recognizer: WhisperRecognizer, two_sentences: np.ndarray, first: np.ndarray
) -> None:
    pause_end = int(0.5 * 16000) + len(first) + int(PAUSE_S * 16000) - FRAME
    original = recognizer.recognize
    finals: dict[bool, Transcript] = {}
    partial_texts: list[str] = []

    for commit in (True, False):
        greedy_heard: list[int] = []  # samples each partial's decode heard after the pause

        def recording(
            audio: npt.ArrayLike, greedy_heard: list[int] = greedy_heard, **kwargs: object
        ) -> Recognition:
            if kwargs.get("beam_size", 1) == 1 and not kwargs.get("word_timestamps", True):
                greedy_heard.append(len(np.asarray(audio)))
            return original(audio, **kwargs)  # type: ignore[arg-type]

        async def body(c: Call, commit: bool = commit, greedy_heard: list[int] = greedy_heard) -> None:
            await c.feed(two_sentences[:pause_end])
            await c.drain()  # the speculation in the pause has been decoded, as live with the thread free
            greedy_heard.clear()
            into_second = pause_end + int(1.5 * 16000)
            await c.feed(two_sentences[pause_end:into_second])
            await c.drain()  # a partial of the second sentence has been decoded (not replaced by a newer one)
            await c.feed(two_sentences[into_second:])
            await asyncio.wait_for(c.final, timeout=60)
            counts = c.call.speculation_counts()
            assert (counts.committed, counts.outcomes["committed"]) == ((1, 1) if commit else (0, 0)), counts

        recognizer.recognize = recording  # type: ignore[method-assign]
        try:
            events = await with_call(recognizer, replace(ON, commit_at_pauses=commit), body)
        finally:
            del recognizer.recognize
        (finals[commit],) = [e for e in events if e.is_final]
        if commit:
            partial_texts = [e.text for e in events if not e.is_final]
            assert greedy_heard and max(greedy_heard) < len(voiced(SECOND)) + 8000, (greedy_heard, len(first))
        else:
            assert greedy_heard and max(greedy_heard) > len(first)  # from the segment's start
    # The final is decoded as without commits; the partials after the pause read the first sentence as the
    # speculation did, then the new words.
    assert finals[True] == finals[False]
    assert word_error_rate(f"{FIRST} {SECOND}", finals[True].text) <= 0.25, finals[True].text
    head, _, tail = partial_texts[-1].partition(". ")
    said = SECOND.split()[: len(tail.split())]
    assert word_error_rate(FIRST, head) <= 0.4 and tail and word_error_rate(" ".join(said), tail) <= 0.5, (
        partial_texts
    )
