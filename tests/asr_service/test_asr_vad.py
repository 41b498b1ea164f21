"""The streaming VAD: Silero on 16 kHz windows with start/end hysteresis, fed in chunks of any size."""

from __future__ import annotations

import numpy as np
import pytest

from asr_service.vad import SpeechEnd, SpeechStart, StreamingVad, VadConfig, VadEvent
from tests.support.audio import (
    SENTENCE_A,
    SENTENCE_B,
    silence,
    speak,
    tone,
    tone_sequence,
    white_noise,
)


def run(x: np.ndarray, config: VadConfig | None = None, chunk: int = 320) -> list[VadEvent]:
    vad = StreamingVad(config=config)
    events: list[VadEvent] = []
    for i in range(0, len(x), chunk):
        events += vad.feed(x[i : i + chunk])
    return events + vad.flush()


def spans(events: list[VadEvent]) -> list[tuple[int, int]]:
    """(start, end) pairs; asserts that events alternate start, end."""
    assert all(isinstance(e, SpeechStart) for e in events[::2]), events
    assert all(isinstance(e, SpeechEnd) for e in events[1::2]), events
    return [(s.sample, e.sample) for s, e in zip(events[::2], events[1::2], strict=True)]


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    return speak(SENTENCE_A)


def test_finds_one_segment_around_a_sentence(sentence: np.ndarray) -> None:
    x = np.concatenate([silence(1.0), sentence, silence(1.0)])
    ((start, end),) = spans(run(x))
    # espeak starts voicing a few tens of ms in; the pre-roll (200 ms) reaches back before that.
    assert 0.7 * 16000 < start < 1.0 * 16000
    speech_end = 1.0 * 16000 + len(sentence)
    assert speech_end - 0.6 * 16000 < end <= speech_end + 0.3 * 16000


def test_chunk_size_does_not_change_the_segments(sentence: np.ndarray) -> None:
    x = np.concatenate([silence(0.7), sentence, silence(0.9)])
    expected = run(x, chunk=len(x))
    for chunk in (1, 160, 333, 512, 4000):
        assert run(x, chunk=chunk) == expected


@pytest.mark.parametrize(
    "signal",
    [
        silence(30.0),
        white_noise(30.0),
        white_noise(10.0, level=0.3, seed=1),
        tone_sequence(30.0),
        tone(200, 5.0),
    ],
    ids=["silence", "white-noise", "loud-noise", "tone-sequence", "tone"],
)
def test_no_speech_in_silence_noise_or_tones(signal: np.ndarray) -> None:
    assert run(signal, chunk=1600) == []


def test_pauses_shorter_than_min_silence_stay_inside_the_segment(sentence: np.ndarray) -> None:
    # Two sentences back to back: the pause between them (and at the comma) is under 500 ms.
    x = np.concatenate([silence(1.0), sentence, speak(SENTENCE_B), silence(1.0)])
    assert len(spans(run(x))) == 1
    assert len(spans(run(x, VadConfig(min_silence_ms=100, pad_ms=50)))) > 2


def test_a_long_silence_ends_the_segment(sentence: np.ndarray) -> None:
    x = np.concatenate([silence(1.0), sentence, silence(1.5), speak(SENTENCE_B), silence(1.0)])
    (_, end_a), (start_b, _) = spans(run(x))
    assert end_a <= start_b  # the pre-roll never reaches back into the previous segment


def test_bursts_shorter_than_min_speech_open_nothing(sentence: np.ndarray) -> None:
    burst = sentence[int(1.0 * 16000) : int(1.2 * 16000)]  # 200 ms of voice
    x = np.concatenate([silence(1.0), burst, silence(1.0)])
    assert run(x) == []
    assert len(spans(run(x, VadConfig(min_speech_ms=32)))) == 1


def test_over_long_segments_are_cut(sentence: np.ndarray) -> None:
    x = np.concatenate([silence(0.5), sentence, silence(1.0)])
    cut = spans(run(x, VadConfig(max_speech_s=2.0)))
    assert len(cut) >= 3
    assert all(end - start <= 2.0 * 16000 for start, end in cut)
    assert all(a[1] == b[0] for a, b in zip(cut, cut[1:], strict=False))  # contiguous: no audio lost


def test_lost_audio_ends_an_open_segment_and_moves_the_clock(sentence: np.ndarray) -> None:
    vad = StreamingVad()
    events = vad.feed(np.concatenate([silence(0.5), sentence[: 2 * 16000]]))
    assert vad.in_speech and isinstance(events[-1], SpeechStart)
    (end,) = vad.skip(16000 * 10)
    assert isinstance(end, SpeechEnd) and end.sample <= 2.5 * 16000
    assert not vad.in_speech and vad.position == int(2.5 * 16000) + 16000 * 10
    (start, *_) = vad.feed(sentence) + vad.flush()
    assert isinstance(start, SpeechStart) and start.sample >= vad.position - len(sentence)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="pad_ms"):
        VadConfig(pad_ms=600, min_silence_ms=500).validate()
    with pytest.raises(ValueError, match="thresholds"):
        VadConfig(threshold=0.3, neg_threshold=0.5).validate()
