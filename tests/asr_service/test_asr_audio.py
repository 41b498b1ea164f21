"""Audio decoding for the ASR: G.711 tables, streaming resampling, byte carry across chunks, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from asr_service.audio import (
    ALAW_TO_PCM16,
    MULAW_TO_PCM16,
    AudioDecoder,
    AudioSpec,
    Encoding,
    Resampler,
    alaw_encode,
    decode_samples,
    mulaw_encode,
    resample,
)
from tests.support.audio import tone

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 8 * len(x)))
    return float(np.argmax(spectrum) * rate / (8 * len(x)))


# ------------------------------------------------------------------------------------------- G.711


def test_mulaw_known_values() -> None:
    assert MULAW_TO_PCM16[0xFF] == 0 and MULAW_TO_PCM16[0x7F] == 0  # the two zeros
    assert MULAW_TO_PCM16[0x80] == 32124 and MULAW_TO_PCM16[0x00] == -32124  # full scale
    assert MULAW_TO_PCM16[0xFE] == 8 and MULAW_TO_PCM16[0x7E] == -8
    assert MULAW_TO_PCM16[0xEF] == 132  # first step of segment 1
    assert list(mulaw_encode([0, 8, -8, 32767, -32768])) == [0xFF, 0xFE, 0x7E, 0x80, 0x00]


def test_alaw_known_values() -> None:
    assert ALAW_TO_PCM16[0xD5] == 8 and ALAW_TO_PCM16[0x55] == -8
    assert ALAW_TO_PCM16[0xAA] == 32256 and ALAW_TO_PCM16[0x2A] == -32256
    assert ALAW_TO_PCM16[0xC5] == 264  # first step of segment 1
    assert list(alaw_encode([0, 8, -8, 32767, -32768])) == [0xD5, 0xD5, 0x55, 0xAA, 0x2A]


@pytest.mark.parametrize(
    ("table", "encode", "zero_aliases"),
    [(MULAW_TO_PCM16, mulaw_encode, {0x7F: 0xFF}), (ALAW_TO_PCM16, alaw_encode, {})],
    ids=["mulaw", "alaw"],
)
def test_every_code_round_trips(table, encode, zero_aliases) -> None:  # type: ignore[no-untyped-def]
    codes = np.arange(256)
    again = encode(table[codes])
    expected = [zero_aliases.get(int(c), int(c)) for c in codes]
    assert list(again) == expected


def test_encoders_are_bit_exact_with_the_reference_where_audioop_exists() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # the ITU g711.c behaviour; gone in Python 3.13
    data = ALL_PCM.astype("<i2").tobytes()
    assert np.array_equal(np.frombuffer(audioop.lin2ulaw(data, 2), np.uint8), mulaw_encode(ALL_PCM))
    assert np.array_equal(np.frombuffer(audioop.lin2alaw(data, 2), np.uint8), alaw_encode(ALL_PCM))
    codes = bytes(range(256))
    assert np.array_equal(np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2"), MULAW_TO_PCM16)
    assert np.array_equal(np.frombuffer(audioop.alaw2lin(codes, 2), "<i2"), ALAW_TO_PCM16)


@pytest.mark.parametrize("encode,table", [(mulaw_encode, MULAW_TO_PCM16), (alaw_encode, ALAW_TO_PCM16)])
def test_companding_keeps_a_tone_clean(encode, table) -> None:  # type: ignore[no-untyped-def]
    x = np.round(tone(440, 0.5, 0.5, rate_hz=8000) * 32767).astype(np.int16)
    y = table[encode(x)].astype(np.float64)
    snr_db = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((y - x) ** 2))
    assert snr_db > 30.0  # G.711 gives about 38 dB on a loud tone


# -------------------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 44100, 48000])
def test_resampling_keeps_a_tone_frequency_and_level(rate: int) -> None:
    x = tone(440.0, 1.0, 0.5, rate_hz=rate)
    y = resample(x, rate)
    assert len(y) == 16000
    assert dominant_frequency(y, 16000) == pytest.approx(440.0, abs=1.0)
    expected = tone(440.0, 1.0, 0.5)
    assert np.max(np.abs(y - expected)[100:-100]) < 2e-3  # no delay, no gain change


def test_downsampling_removes_what_16_khz_cannot_hold() -> None:
    x = tone(12_000.0, 0.5, 0.5, rate_hz=48000)  # above 8 kHz: must not alias down to 4 kHz
    y = resample(x, 48000)
    assert np.sqrt(np.mean(y[200:-200] ** 2)) < 1e-3


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_chunked_resampling_equals_one_shot(rate: int) -> None:
    x = np.random.default_rng(3).standard_normal(rate // 2).astype(np.float32) * 0.1
    whole = resample(x, rate)
    r = Resampler(rate)
    sizes = np.random.default_rng(4).integers(1, 700, size=len(x))
    parts, i = [], 0
    for n in sizes:
        if i >= len(x):
            break
        parts.append(r.process(x[i : i + n]))
        i += int(n)
    parts.append(r.flush())
    assert np.allclose(np.concatenate(parts), whole, atol=1e-6)


# ----------------------------------------------------------------------------------------- decoder


def stereo_pcm16(rate: int, seconds: float) -> tuple[bytes, np.ndarray, np.ndarray]:
    left, right = tone(300.0, seconds, 0.4, rate_hz=rate), tone(700.0, seconds, 0.2, rate_hz=rate)
    interleaved = np.round(np.stack([left, right], axis=1) * 32767).astype("<i2")
    return interleaved.tobytes(), left, right


@pytest.mark.parametrize("rate", [16000, 48000])
def test_odd_chunks_split_channels_and_decode_like_one_chunk(rate: int) -> None:
    data, left, right = stereo_pcm16(rate, 0.5)
    spec = AudioSpec(Encoding.PCM16, rate, 2)
    whole = AudioDecoder(spec)
    expected = [np.concatenate(p) for p in zip(whole.decode(data), whole.flush(), strict=True)]
    decoder = AudioDecoder(spec)
    got: list[list[np.ndarray]] = [[], []]
    i = 0
    for n in [1, 3, 2, 5, 7, 333, 1001, 2, 1] * 200:  # odd sizes cut samples and frames in half
        if i >= len(data):
            break
        for channel, samples in enumerate(decoder.decode(data[i : i + n])):
            got[channel].append(samples)
        i += n
    if i < len(data):
        for channel, samples in enumerate(decoder.decode(data[i:])):
            got[channel].append(samples)
    assert decoder.pending_bytes == 0
    for channel, samples in enumerate(decoder.flush()):
        got[channel].append(samples)
    out = [np.concatenate(g) for g in got]
    assert np.array_equal(out[0], expected[0]) and np.array_equal(out[1], expected[1])
    assert len(out[0]) == 8000
    assert dominant_frequency(out[0], 16000) == pytest.approx(300.0, abs=1.0)
    assert dominant_frequency(out[1], 16000) == pytest.approx(700.0, abs=1.0)
    assert np.sqrt(np.mean(out[0] ** 2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.02)


def test_mulaw_8khz_decodes_to_16khz() -> None:
    x = np.round(tone(1000.0, 0.25, 0.5, rate_hz=8000) * 32767).astype(np.int16)
    decoder = AudioDecoder(AudioSpec(Encoding.MULAW, 8000, 1))
    (y,) = (
        np.concatenate(p)
        for p in zip(decoder.decode(mulaw_encode(x).tobytes()), decoder.flush(), strict=True)
    )
    assert len(y) == 4000
    assert dominant_frequency(y, 16000) == pytest.approx(1000.0, abs=2.0)


def test_a_dangling_half_sample_is_held_then_dropped_at_the_end() -> None:
    decoder = AudioDecoder(AudioSpec(Encoding.PCM16, 16000, 1))
    assert [len(c) for c in decoder.decode(b"\x01\x00\x02")] == [1]
    assert decoder.pending_bytes == 1
    assert [len(c) for c in decoder.decode(b"\x00")] == [1]
    decoder.decode(b"\x05")
    assert [len(c) for c in decoder.flush()] == [0]
    with pytest.raises(ValueError, match="after the end"):
        decoder.decode(b"\x00\x00")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (AudioSpec(Encoding.UNSPECIFIED, 16000, 1), "encoding 0 is not supported"),
        (AudioSpec(Encoding.PCM16, 4000, 1), "4000 Hz is outside 8000..48000"),
        (AudioSpec(Encoding.PCM16, 96000, 1), "96000 Hz is outside"),
        (AudioSpec(Encoding.MULAW, 8000, 0), "channel count 0 is outside"),
        (AudioSpec(Encoding.ALAW, 8000, 9), "channel count 9 is outside"),
    ],
)
def test_bad_formats_are_refused_with_a_reason(spec: AudioSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AudioDecoder(spec)


def test_decode_samples_refuses_half_pcm_samples() -> None:
    with pytest.raises(ValueError, match="not a whole number of 2-byte samples"):
        decode_samples(b"\x00\x00\x00", Encoding.PCM16)
