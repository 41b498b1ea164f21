"""Decoding a call's audio bytes into 16 kHz float32 mono per channel, chunk by chunk.

What comes in (``audio.proto``): PCM16 little-endian, G.711 mu-law or A-law, at 8-48 kHz, one or more
channels interleaved sample by sample, cut into chunks of any size. A chunk may end in the middle of a
sample or of a frame (a PCM16 chunk of odd length, a stereo chunk that stops between the left and the
right sample): the decoder keeps those bytes and prepends them to the next chunk, so cutting never
shifts or corrupts samples.

What goes out: one float32 array per channel in [-1, 1) at 16 kHz, what the VAD and Whisper expect.
Resampling is streaming and stateful: a windowed-sinc polyphase filter whose output for a chunk is
exactly what one pass over the whole signal would give, with no delay (the filter is centred; it waits
for a few input samples of look-ahead, which ``flush`` supplies as zeros at the end of the call).

G.711 is implemented here with numpy tables because ``audioop`` is deprecated (and gone in 3.13).
Nothing here knows protobuf: ``Encoding`` mirrors the proto enum by value.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

TARGET_RATE_HZ = 16_000
MIN_RATE_HZ = 8_000
MAX_RATE_HZ = 48_000
MAX_CHANNELS = 8

FloatArray = npt.NDArray[np.float32]


class Encoding(enum.IntEnum):
    """Sample encodings; the values are those of ``callsense.v1.AudioEncoding``."""

    UNSPECIFIED = 0
    PCM16 = 1
    MULAW = 2
    ALAW = 3


@dataclass(frozen=True)
class AudioSpec:
    """The sample layout of a call's audio, fixed for the whole call."""

    encoding: Encoding
    sample_rate_hz: int
    channels: int

    def validate(self) -> None:
        """Raise ValueError, saying what to fix, when the layout cannot be decoded."""
        if self.encoding not in (Encoding.PCM16, Encoding.MULAW, Encoding.ALAW):
            raise ValueError(
                f"audio encoding {int(self.encoding)} is not supported; use PCM16 (1), MULAW (2) or ALAW (3)"
            )
        if not MIN_RATE_HZ <= self.sample_rate_hz <= MAX_RATE_HZ:
            raise ValueError(
                f"sample rate {self.sample_rate_hz} Hz is outside {MIN_RATE_HZ}..{MAX_RATE_HZ} Hz "
                "(typical: 8000 for telephony, 16000, 44100, 48000)"
            )
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ValueError(f"channel count {self.channels} is outside 1..{MAX_CHANNELS}")

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == Encoding.PCM16 else 1

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample of every channel (one interleaved frame)."""
        return self.bytes_per_sample * self.channels

    def __str__(self) -> str:
        return f"{self.encoding.name} {self.sample_rate_hz} Hz x{self.channels}"

    def bytes_for(self, seconds: float) -> int:
        """How many bytes ``seconds`` of audio take in this layout."""
        return int(seconds * self.sample_rate_hz) * self.frame_bytes


# ------------------------------------------------------------------------------------------- G.711


def _mulaw_table() -> npt.NDArray[np.int16]:
    # ITU-T G.711 mu-law expansion: bits are stored inverted; magnitude = ((mantissa << 3) + 0x84) << exp.
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> npt.NDArray[np.int16]:
    # ITU-T G.711 A-law expansion: even bits are inverted (XOR 0x55); sign bit set means positive.
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)


MULAW_TO_PCM16 = _mulaw_table()
"""The 16-bit linear value of each mu-law byte (0xFF -> 0, 0x80 -> 32124, 0x00 -> -32124)."""
ALAW_TO_PCM16 = _alaw_table()
"""The 16-bit linear value of each A-law byte (0xD5 -> 8, 0xAA -> 32256, 0x2A -> -32256)."""


_MULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def mulaw_encode(pcm: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Compress 16-bit linear samples to mu-law bytes, bit-exact with the ITU reference (g711.c)."""
    # The reference works on 14 bits: shift first (rounding toward minus infinity), then take the sign.
    x = np.asarray(pcm, dtype=np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x), 8159) + 0x21
    segment = np.searchsorted(_MULAW_SEGMENT_ENDS, magnitude)
    code = np.where(
        segment >= 8,
        0x7F,
        (np.minimum(segment, 7) << 4) | ((magnitude >> np.minimum(segment + 1, 31)) & 0x0F),
    )
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def alaw_encode(pcm: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Compress 16-bit linear samples to A-law bytes, bit-exact with the ITU reference (g711.c)."""
    x = np.asarray(pcm, dtype=np.int32) >> 3  # the reference works on 13 bits
    mask = np.where(x >= 0, 0xD5, 0x55)
    magnitude = np.where(x >= 0, x, -x - 1)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, magnitude)
    shift = np.where(segment < 2, 1, segment)
    code = np.where(
        segment >= 8, 0x7F, (np.minimum(segment, 7) << 4) | ((magnitude >> np.minimum(shift, 31)) & 0x0F)
    )
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def to_float(pcm: npt.NDArray[np.int16]) -> FloatArray:
    """16-bit linear samples as float32 in [-1, 1)."""
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def decode_samples(data: bytes, encoding: Encoding) -> npt.NDArray[np.int16]:
    """Whole samples of ``data`` as 16-bit linear (``data`` must hold a whole number of samples)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if encoding == Encoding.PCM16:
        if len(data) % 2:
            raise ValueError(f"PCM16 data of {len(data)} bytes is not a whole number of 2-byte samples")
        return np.frombuffer(data, dtype="<i2").astype(np.int16)
    if encoding == Encoding.MULAW:
        return MULAW_TO_PCM16[raw]
    if encoding == Encoding.ALAW:
        return ALAW_TO_PCM16[raw]
    raise ValueError(f"audio encoding {int(encoding)} is not supported")


# -------------------------------------------------------------------------------------- resampling


@dataclass(frozen=True)
class _Polyphase:
    """A windowed-sinc low-pass split into ``up`` phases: ``taps[p, i]`` weighs input ``centre - k[i]``."""

    up: int
    down: int
    taps: npt.NDArray[np.float64]  # (up, K)
    offsets: npt.NDArray[np.int64]  # (K,) values of k, from -lookahead to +history
    lookahead: int
    history: int


def _design(rate_in: int, rate_out: int, zero_crossings: int, rolloff: float, beta: float) -> _Polyphase:
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    # Cut-off below the lower of the two Nyquist rates, in cycles per sample of the up-sampled signal.
    cutoff = rolloff * 0.5 / max(up, down)
    half = math.ceil(zero_crossings / (2.0 * cutoff))  # support of the kernel, up-sampled samples
    k_min = -((half + up - 1) // up) - 1
    k_max = half // up + 1
    offsets = np.arange(k_min, k_max + 1, dtype=np.int64)
    phases = np.arange(up, dtype=np.int64)
    t = (phases[:, None] + offsets[None, :] * up).astype(np.float64)  # distance, up-sampled samples
    inside = np.abs(t) <= half
    window = np.where(inside, _kaiser(t / half, beta), 0.0)
    # Gain ``up`` makes up for the zeros that up-sampling inserts between input samples.
    taps = up * 2.0 * cutoff * np.sinc(2.0 * cutoff * t) * window
    return _Polyphase(up, down, taps, offsets, lookahead=-k_min, history=k_max)


def _kaiser(x: npt.NDArray[np.float64], beta: float) -> npt.NDArray[np.float64]:
    """Kaiser window evaluated at ``x`` in [-1, 1] (np.kaiser only gives it on an even grid)."""
    inner = np.sqrt(np.clip(1.0 - x * x, 0.0, 1.0))
    return np.asarray(np.i0(beta * inner) / np.i0(beta), dtype=np.float64)


class Resampler:
    """Streaming sample-rate conversion of one channel; chunked output equals one-shot output.

    Output sample ``n`` is the band-limited value of the input at time ``n / rate_out``: no delay, so
    timestamps computed from sample counts stay right. ``flush`` emits the last few samples, which need
    look-ahead past the end of the input.
    """

    def __init__(
        self,
        rate_in: int,
        rate_out: int = TARGET_RATE_HZ,
        *,
        zero_crossings: int = 16,
        rolloff: float = 0.94,
        beta: float = 8.6,
    ) -> None:
        self.rate_in = rate_in
        self.rate_out = rate_out
        self._identity = rate_in == rate_out
        self._poly = _design(rate_in, rate_out, zero_crossings, rolloff, beta)
        # Input history with the global index of its first sample; zeros stand for the time before 0.
        self._buf = np.zeros(self._poly.history, dtype=np.float64)
        self._buf_start = -self._poly.history
        self._n_in = 0
        self._n_out = 0
        self._flushed = False

    def process(self, samples: npt.ArrayLike) -> FloatArray:
        """Resample the next input samples; returns what can be computed so far."""
        x = np.asarray(samples, dtype=np.float32)
        if self._flushed:
            raise ValueError("resampler already flushed")
        if self._identity:
            return x.astype(np.float32, copy=True)
        self._buf = np.concatenate([self._buf, x.astype(np.float64)])
        self._n_in += len(x)
        return self._emit(available=self._n_in, limit=None)

    def flush(self) -> FloatArray:
        """The remaining output: the input is taken to be followed by silence."""
        if self._flushed:
            return np.zeros(0, dtype=np.float32)
        self._flushed = True
        if self._identity:
            return np.zeros(0, dtype=np.float32)
        p = self._poly
        self._buf = np.concatenate([self._buf, np.zeros(p.lookahead + 1)])
        total = -(-self._n_in * p.up // p.down)  # ceil: outputs that fall within the input's duration
        return self._emit(available=self._n_in + p.lookahead + 1, limit=total)

    def _emit(self, available: int, limit: int | None) -> FloatArray:
        p = self._poly
        # The last output n whose look-ahead is available: floor(n * down / up) + lookahead < available.
        last = ((available - p.lookahead) * p.up - 1) // p.down
        if limit is not None:
            last = min(last, limit - 1)
        if last < self._n_out:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(self._n_out, last + 1, dtype=np.int64)
        position = n * p.down
        centre, phase = position // p.up, position % p.up
        index = centre[:, None] - p.offsets[None, :] - self._buf_start
        y = np.einsum("ij,ij->i", p.taps[phase], self._buf[index])
        self._n_out = last + 1
        # Keep only the history the next output needs.
        keep_from = (self._n_out * p.down) // p.up - p.history
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from
        resampled: npt.NDArray[np.float32] = y.astype(np.float32)
        return resampled


def resample(samples: npt.ArrayLike, rate_in: int, rate_out: int = TARGET_RATE_HZ) -> FloatArray:
    """One-shot resampling of a whole signal (same filter as the streaming ``Resampler``)."""
    r = Resampler(rate_in, rate_out)
    return np.concatenate([r.process(samples), r.flush()])


# --------------------------------------------------------------------------------------- decoder


class AudioDecoder:
    """Streaming decoder of one audio source: bytes in, 16 kHz float32 per channel out.

    Keeps the bytes of an incomplete frame between chunks. Raises ValueError for a layout it cannot
    decode (at construction) and for data after ``flush``.
    """

    def __init__(self, spec: AudioSpec) -> None:
        spec.validate()
        self.spec = spec
        self._carry = b""
        self._resamplers = [Resampler(spec.sample_rate_hz) for _ in range(spec.channels)]
        self._closed = False
        self.bytes_in = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes held back because they do not complete a frame yet."""
        return len(self._carry)

    def decode(self, data: bytes) -> list[FloatArray]:
        """The 16 kHz samples of each channel that ``data`` (after earlier chunks) completes."""
        if self._closed:
            raise ValueError("audio arrived after the end of the stream")
        self.bytes_in += len(data)
        buf = self._carry + data if self._carry else data
        usable = len(buf) - len(buf) % self.spec.frame_bytes
        self._carry = buf[usable:]
        pcm = decode_samples(buf[:usable], self.spec.encoding)
        frames = to_float(pcm).reshape(-1, self.spec.channels)
        return [r.process(frames[:, c]) for c, r in enumerate(self._resamplers)]

    def flush(self) -> list[FloatArray]:
        """The resamplers' tails; an incomplete last frame is dropped (it is not a whole sample)."""
        self._closed = True
        self._carry = b""
        return [r.flush() for r in self._resamplers]
