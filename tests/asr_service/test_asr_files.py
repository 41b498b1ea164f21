"""``callsense transcribe FILE``: files through the streaming ASR path, and clear errors for bad files.

The speech is espeak-ng's (written to wav and flac by sox); no shared data is needed. Whisper runs for
real (tiny.en, int8), in a subprocess, as a user would run it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asr_service.audio import AudioSpec, Encoding
from asr_service.transcribe_file import channel_roles, load_audio, transcribe_bytes, transcribe_file
from tests.support.audio import (
    SENTENCE_A,
    require_speech_tools,
    silence,
    speak_pcm16,
    to_pcm16_bytes,
    tone_sequence,
    white_noise,
    word_error_rate,
)


def callsense(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "transcribe", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_wav(path: Path, pcm: bytes, rate: int, channels: int = 1) -> Path:
    """A WAV written by sox from raw 16-bit samples (not by the code under test)."""
    require_speech_tools()
    raw = path.with_suffix(".raw")
    raw.write_bytes(pcm)
    subprocess.run(
        [
            "sox",
            "-t",
            "raw",
            "-r",
            str(rate),
            "-c",
            str(channels),
            "-b",
            "16",
            "-e",
            "signed",
            str(raw),
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path


@pytest.fixture(scope="module")
def speech_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_speech_tools()
    folder = tmp_path_factory.mktemp("speech")
    pcm = np.concatenate(
        [np.zeros(8000, np.int16), speak_pcm16(SENTENCE_A, rate_hz=22050), np.zeros(11025, np.int16)]
    )
    wav = write_wav(folder / "sentence.wav", pcm.astype("<i2").tobytes(), 22050)
    flac = folder / "sentence.flac"
    subprocess.run(["sox", str(wav), "-r", "44100", str(flac)], check=True, timeout=60)
    return {"wav": wav, "flac": flac}


@pytest.mark.parametrize("kind", ["wav", "flac"])
def test_spoken_file_is_transcribed_through_the_cli(speech_files: dict[str, Path], kind: str) -> None:
    done = callsense(str(speech_files[kind]))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"text", "segments"}
    assert out["segments"], out
    for segment in out["segments"]:
        assert set(segment) == {"start_ms", "end_ms", "text", "channel"}
        assert segment["channel"] == "mixed"
        assert 0 <= segment["start_ms"] < segment["end_ms"] <= 6000 + 1000 * len(SENTENCE_A.split())
    assert word_error_rate(SENTENCE_A, out["text"]) <= 0.25, out["text"]
    for word in ("price", "discount", "forward"):
        assert word in out["text"].lower(), out["text"]


def test_stereo_channels_get_their_roles(tmp_path: Path) -> None:
    left = np.concatenate([speak_pcm16(SENTENCE_A), np.zeros(16000, np.int16)])
    right = np.zeros_like(left)
    stereo = np.stack([left, right], axis=1).astype("<i2").tobytes()
    path = write_wav(tmp_path / "stereo.wav", stereo, 16000, channels=2)
    default = transcribe_file(path)
    assert {s.channel for s in default.segments} == {"agent"}, default
    assert word_error_rate(SENTENCE_A, default.channel_text("agent")) <= 0.25, default.text
    assert all(s.words for s in default.segments)
    swapped = transcribe_file(path, channels=["customer", "agent"])
    assert {s.channel for s in swapped.segments} == {"customer"}
    assert load_audio(path).channels == 2


def test_channel_roles_are_checked() -> None:
    assert channel_roles(1) == ("mixed",)
    assert channel_roles(2) == ("agent", "customer")
    assert channel_roles(2, ["Customer", "agent"]) == ("customer", "agent")
    assert channel_roles(2, ["mixed"]) == ("mixed",)
    for bad, match in [
        (["agent"], "one role per channel"),
        (["agent", "agent"], "repeat"),
        (["boss", "agent"], "not one of"),
    ]:
        with pytest.raises(ValueError, match=match):
            channel_roles(2, bad)


def test_truncated_wav_exits_2_with_a_clear_message(speech_files: dict[str, Path], tmp_path: Path) -> None:
    data = speech_files["wav"].read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 3])
    done = callsense(str(cut))
    assert done.returncode == 2, done
    assert "truncated" in done.stderr and str(cut) in done.stderr, done.stderr
    assert not done.stdout
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(data[:30])
    done = callsense(str(header_only))
    assert done.returncode == 2 and "truncated" in done.stderr, done.stderr


def test_text_file_named_wav_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    fake = tmp_path / "notes.wav"
    fake.write_text("Meeting notes: call the customer back on Tuesday.\n" * 20)
    done = callsense(str(fake))
    assert done.returncode == 2, done
    assert "not a readable audio file" in done.stderr and "wav, flac, mp3 or ogg" in done.stderr, done.stderr
    missing = callsense(str(tmp_path / "nowhere.wav"))
    assert missing.returncode == 2 and "no such file" in missing.stderr, missing.stderr
    with pytest.raises(ValueError, match="no such file"):
        load_audio(tmp_path / "nowhere.wav")


def test_thirty_seconds_of_silence_gives_no_segments(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "silence.wav", to_pcm16_bytes(silence(30.0, rate_hz=8000)), 8000)
    done = callsense(str(path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"text": "", "segments": []}


@pytest.mark.parametrize(
    "signal",
    [white_noise(30.0), white_noise(30.0, level=0.3, seed=2), tone_sequence(30.0)],
    ids=["white-noise", "loud-noise", "music-like-tones"],
)
def test_thirty_seconds_of_noise_or_music_give_no_text_at_all(signal: np.ndarray) -> None:
    # The whole streaming path (VAD, Whisper, hallucination filter) gives no final: nothing to score.
    result = transcribe_bytes(to_pcm16_bytes(signal), AudioSpec(Encoding.PCM16, 16_000, 1))
    assert result.segments == () and result.text == "", result
