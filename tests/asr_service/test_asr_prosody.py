"""Prosody of a segment: level, pitch (YIN), voicing, speaking rate and MFCC summary, on known signals."""

from __future__ import annotations

import numpy as np
import pytest

from asr_service.prosody import N_MFCC, analyze, mfcc, pitch_track, rms_dbfs
from tests.support.audio import SENTENCE_A, silence, speak, tone, white_noise


@pytest.mark.parametrize("freq", [80.0, 120.0, 200.0, 310.0])
def test_pitch_of_a_tone(freq: float) -> None:
    p = analyze(tone(freq, 1.0, 0.5), n_words=0)
    assert p.pitch_mean_hz == pytest.approx(freq, rel=0.005)
    assert p.pitch_std_hz < 0.5
    assert p.voiced_fraction > 0.95


def test_pitch_follows_a_glide() -> None:
    t = np.arange(16000) / 16000
    f = 150.0 + 100.0 * t  # 150 -> 250 Hz over one second
    x = 0.5 * np.sin(2 * np.pi * np.cumsum(f) / 16000)
    track = pitch_track(x)
    voiced = track[track > 0]
    assert 148.0 < voiced[0] < 158.0 and 235.0 < voiced.max() < 252.0
    assert np.all(np.diff(voiced) > -1.0)  # rises steadily, no octave jumps
    assert analyze(x, n_words=0).pitch_std_hz > 20.0


def test_rms_level() -> None:
    assert rms_dbfs(tone(200.0, 1.0, 0.5)) == pytest.approx(-9.03, abs=0.01)  # 0.5 / sqrt(2)
    assert rms_dbfs(np.ones(100)) == 0.0
    assert rms_dbfs(silence(1.0)) == -100.0


def test_silence_and_noise_are_unvoiced() -> None:
    quiet = analyze(silence(1.0), n_words=0)
    assert (quiet.pitch_mean_hz, quiet.pitch_std_hz, quiet.voiced_fraction) == (0.0, 0.0, 0.0)
    assert analyze(white_noise(1.0, level=0.1), n_words=0).voiced_fraction < 0.05


def test_mfcc_summary_has_13_finite_coefficients() -> None:
    p = analyze(white_noise(0.5), n_words=2)
    assert len(p.mfcc_mean) == len(p.mfcc_std) == N_MFCC
    assert all(np.isfinite(p.mfcc_mean)) and all(s >= 0 for s in p.mfcc_std)
    assert mfcc(np.zeros(10)).shape == (1, N_MFCC)  # shorter than a frame still gives one frame


def test_mfcc_tell_a_low_tone_from_a_high_one() -> None:
    low, high = mfcc(tone(200.0, 0.5)).mean(axis=0), mfcc(tone(3000.0, 0.5)).mean(axis=0)
    assert np.linalg.norm(low[1:] - high[1:]) > 10.0


def test_speaking_rate_uses_the_words_span_when_known() -> None:
    x = tone(150.0, 4.0)
    assert analyze(x, n_words=8).speaking_rate_wps == pytest.approx(2.0)
    assert analyze(x, n_words=8, speech_span_s=3.2).speaking_rate_wps == pytest.approx(2.5)


def test_speech_values_are_plausible() -> None:
    p = analyze(speak(SENTENCE_A), n_words=17)
    assert 60.0 < p.pitch_mean_hz < 200.0  # espeak's en-us voice is low
    assert 0.1 < p.voiced_fraction < 0.9
    assert -40.0 < p.rms_dbfs < -5.0
    assert 2.0 < p.speaking_rate_wps < 4.5
