"""Test audio made on the spot: speech from espeak-ng (resampled by sox, not by the code under test),
and synthetic signals: silence, white noise, tones, a music-like tone sequence."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

import numpy as np
import numpy.typing as npt
import pytest

RATE = 16_000
FloatArray = npt.NDArray[np.float32]

SENTENCE_A = "I think the price is way too high for us, we would need a discount to move forward."
SENTENCE_B = "Hello, this is Sam from Acme. Do you have a minute to talk about your renewal?"


def require_speech_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"SPEECH TOOLS ABSENT: {', '.join(missing)} not installed (apt-get install espeak-ng sox)"
        )


@functools.lru_cache(maxsize=16)
def _speak(text: str, rate_hz: int, words_per_minute: int, pitch: int = 50, amplitude: int = 100) -> bytes:
    require_speech_tools()
    espeak = subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", str(words_per_minute), "-p", str(pitch), "-a", str(amplitude)]
        + ["--stdout", text],
        check=True,
        capture_output=True,
        timeout=60,
    )
    sox = subprocess.run(
        [
            "sox",
            "-t",
            "wav",
            "-",
            "-r",
            str(rate_hz),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed",
            "-t",
            "raw",
            "-",
        ],
        input=espeak.stdout,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return sox.stdout


def speak_pcm16(
    text: str, rate_hz: int = RATE, words_per_minute: int = 150, *, pitch: int = 50, amplitude: int = 100
) -> npt.NDArray[np.int16]:
    """``text`` spoken by espeak-ng (en-us), mono 16-bit at ``rate_hz``; ``pitch`` 0-99 (espeak's default
    50) and ``amplitude`` 0-200 (default 100) change the voice (tone fusion tests harden it)."""
    pcm = _speak(text, rate_hz, words_per_minute, pitch, amplitude)
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16)


def speak(text: str, rate_hz: int = RATE, words_per_minute: int = 150) -> FloatArray:
    """``text`` spoken by espeak-ng, mono float32 in [-1, 1) at ``rate_hz``."""
    return (speak_pcm16(text, rate_hz, words_per_minute).astype(np.float32) / 32768.0).astype(np.float32)


def silence(seconds: float, rate_hz: int = RATE) -> FloatArray:
    return np.zeros(int(seconds * rate_hz), dtype=np.float32)


def white_noise(seconds: float, level: float = 0.05, seed: int = 0, rate_hz: int = RATE) -> FloatArray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * rate_hz)) * level).astype(np.float32)


def tone(freq_hz: float, seconds: float, amplitude: float = 0.5, rate_hz: int = RATE) -> FloatArray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def tone_sequence(seconds: float, note_s: float = 0.25, seed: int = 0, rate_hz: int = RATE) -> FloatArray:
    """A melody of pure notes with harmonics and soft onsets, like hold music."""
    rng = np.random.default_rng(seed)
    scale = np.array([262, 294, 330, 349, 392, 440, 494, 523], dtype=np.float64)
    n = int(note_s * rate_hz)
    t = np.arange(n) / rate_hz
    envelope = np.minimum(1.0, np.minimum(t, note_s - t) / 0.02)
    notes = []
    for f in rng.choice(scale, int(np.ceil(seconds / note_s))):
        notes.append(envelope * (0.3 * np.sin(2 * np.pi * f * t) + 0.1 * np.sin(4 * np.pi * f * t)))
    return np.concatenate(notes)[: int(seconds * rate_hz)].astype(np.float32)


def to_pcm16_bytes(x: npt.ArrayLike) -> bytes:
    a = np.clip(np.asarray(x, dtype=np.float64), -1.0, 32767 / 32768)
    return (np.round(a * 32768.0)).astype("<i2").tobytes()


def normalise_words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference length (case and punctuation ignored)."""
    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / max(len(ref), 1)
