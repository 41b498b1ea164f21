"""How something was said: loudness, pitch, voicing, speaking rate and an MFCC summary of a segment.

Computed for each final segment from its 16 kHz audio (numpy only, a few ms for a 5 s segment):

- ``rms_dbfs``: RMS level relative to a full-scale square wave (1.0), in dB, floored at -100 (a
  full-scale sine reads -3 dBFS);
- pitch: YIN (de Cheveigné and Kawahara, 2002) on 25 ms analysis windows every 10 ms, lags for
  60-400 Hz, cumulative-mean-normalised difference below 0.15, parabolic refinement. A frame is voiced
  when YIN finds a period and the frame is loud enough (within 35 dB of the loudest frame and above
  -55 dBFS), which keeps breath and line noise out of the pitch statistics;
- ``voiced_fraction``: voiced frames over all frames;
- ``speaking_rate_wps``: words over the time from the first word's start to the last word's end when
  the recogniser gave word times (pauses around the speech excluded), else over the audio duration;
- MFCC: 25 ms Hamming frames every 10 ms after 0.97 pre-emphasis, 512-point power spectrum, 26 HTK
  mel bands from 20 Hz to 8 kHz, log, orthonormal DCT-II, coefficients c0..c12; their per-coefficient
  means and standard deviations over the frames.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms
PITCH_WINDOW = 400  # 25 ms of difference function
MIN_F0_HZ = 60.0
MAX_F0_HZ = 400.0
YIN_THRESHOLD = 0.15
N_MFCC = 13
N_MELS = 26
N_FFT = 512
MFCC_FRAME = 400  # 25 ms
FLOOR_DB = -100.0

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ProsodyFeatures:
    rms_dbfs: float
    pitch_mean_hz: float
    """0 when no frame was voiced."""
    pitch_std_hz: float
    voiced_fraction: float
    speaking_rate_wps: float
    mfcc_mean: tuple[float, ...]
    mfcc_std: tuple[float, ...]


def analyze(
    audio: npt.ArrayLike,
    *,
    n_words: int,
    speech_span_s: float | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> ProsodyFeatures:
    """Prosody of one segment; ``speech_span_s`` is first word start to last word end, when known."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    duration_s = len(x) / sample_rate
    f0 = pitch_track(x, sample_rate)
    voiced = f0[f0 > 0]
    coefficients = mfcc(x, sample_rate)
    span = speech_span_s if speech_span_s and speech_span_s >= 0.2 else duration_s
    return ProsodyFeatures(
        rms_dbfs=rms_dbfs(x),
        pitch_mean_hz=float(voiced.mean()) if len(voiced) else 0.0,
        pitch_std_hz=float(voiced.std()) if len(voiced) else 0.0,
        voiced_fraction=float(len(voiced) / len(f0)) if len(f0) else 0.0,
        speaking_rate_wps=float(n_words / span) if span > 0 else 0.0,
        mfcc_mean=tuple(float(v) for v in coefficients.mean(axis=0)),
        mfcc_std=tuple(float(v) for v in coefficients.std(axis=0)),
    )


def rms_dbfs(x: npt.ArrayLike) -> float:
    """RMS level in dB relative to 1.0, in [FLOOR_DB, 0]."""
    a = np.asarray(x, dtype=np.float64)
    if not len(a):
        return FLOOR_DB
    rms = float(np.sqrt(np.mean(a * a)))
    return float(np.clip(20.0 * np.log10(max(rms, 1e-12)), FLOOR_DB, 0.0))


def _frames(x: FloatArray, length: int, hop: int) -> FloatArray:
    """Frames of ``length`` every ``hop`` (the last one zero-padded); at least one frame."""
    n = max(1, 1 + (len(x) - length + hop - 1) // hop) if len(x) > length else 1
    padded = np.zeros((n - 1) * hop + length)
    padded[: len(x)] = x[: len(padded)]
    return np.lib.stride_tricks.sliding_window_view(padded, length)[::hop][:n].copy()


def pitch_track(x: npt.ArrayLike, sample_rate: int = SAMPLE_RATE) -> FloatArray:
    """F0 in Hz per 10 ms frame (YIN); 0 for unvoiced frames."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    min_lag = int(sample_rate / MAX_F0_HZ)
    max_lag = int(np.ceil(sample_rate / MIN_F0_HZ))
    window = int(PITCH_WINDOW * sample_rate / SAMPLE_RATE)
    frames = _frames(a, window + max_lag + 1, HOP * sample_rate // SAMPLE_RATE)
    d = _difference(frames, window, max_lag)
    # Cumulative mean normalised difference: d'(tau) = d(tau) * tau / sum_{j<=tau} d(j), d'(0) = 1.
    lags = np.arange(1, max_lag + 1)
    cumulative = np.cumsum(d[:, 1:], axis=1)
    cmnd = np.ones_like(d)
    cmnd[:, 1:] = d[:, 1:] * lags / np.maximum(cumulative, 1e-12)
    f0 = np.zeros(len(frames))
    search = cmnd[:, min_lag : max_lag + 1]
    # The first dip below the threshold, taken at its local minimum (YIN step 4).
    local_min = np.zeros_like(search, dtype=bool)
    local_min[:, 1:-1] = (search[:, 1:-1] <= search[:, :-2]) & (search[:, 1:-1] <= search[:, 2:])
    candidates = local_min & (search < YIN_THRESHOLD)
    has = candidates.any(axis=1)
    first = np.argmax(candidates, axis=1)
    loudness = 10.0 * np.log10(np.maximum(np.mean(frames[:, :window] ** 2, axis=1), 1e-20))
    loud = (loudness > -55.0) & (loudness > loudness.max() - 35.0)
    for i in np.nonzero(has & loud)[0]:
        tau = first[i] + min_lag
        f0[i] = sample_rate / _refine(cmnd[i], tau)
    return f0


def _difference(frames: FloatArray, window: int, max_lag: int) -> FloatArray:
    """YIN difference d(tau) = sum_{j<W} (x_j - x_{j+tau})^2 for tau in 0..max_lag, per frame."""
    n_fft = 1 << int(np.ceil(np.log2(frames.shape[1] + window)))
    head = frames[:, :window]
    # Cross-correlation of the first W samples with the frame, r(tau) = sum_j x_j x_{j+tau}.
    spectrum = np.fft.rfft(frames, n_fft) * np.conj(np.fft.rfft(head, n_fft))
    r = np.fft.irfft(spectrum, n_fft)[:, : max_lag + 1]
    squares = np.cumsum(np.pad(frames**2, ((0, 0), (1, 0))), axis=1)
    energy_0 = squares[:, window][:, None]
    taus = np.arange(max_lag + 1)
    energy_tau = squares[:, taus + window] - squares[:, taus]
    return np.asarray(np.maximum(energy_0 + energy_tau - 2.0 * r, 0.0), dtype=np.float64)


def _refine(cmnd: FloatArray, tau: int) -> float:
    """Parabolic interpolation of the minimum around ``tau`` (sub-sample period)."""
    if 0 < tau < len(cmnd) - 1:
        a, b, c = cmnd[tau - 1], cmnd[tau], cmnd[tau + 1]
        denominator = a - 2.0 * b + c
        if denominator > 0:
            return float(tau + 0.5 * (a - c) / denominator)
    return float(tau)


@functools.lru_cache(maxsize=4)
def _mel_filterbank(sample_rate: int, n_fft: int = N_FFT, n_mels: int = N_MELS) -> FloatArray:
    """Triangular HTK-mel filters, (n_mels, n_fft // 2 + 1)."""

    def mel(f: FloatArray | float) -> FloatArray:
        return np.asarray(2595.0 * np.log10(1.0 + np.asarray(f) / 700.0))

    def hz(m: FloatArray) -> FloatArray:
        return np.asarray(700.0 * (10.0 ** (m / 2595.0) - 1.0))

    edges = hz(np.linspace(mel(20.0), mel(min(8000.0, sample_rate / 2)), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.asarray(np.maximum(0.0, np.minimum(rising, falling)), dtype=np.float64)


@functools.lru_cache(maxsize=2)
def _dct_matrix(n_in: int = N_MELS, n_out: int = N_MFCC) -> FloatArray:
    """Orthonormal DCT-II, (n_out, n_in)."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    m = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    m[0] /= np.sqrt(2.0)
    return np.asarray(m, dtype=np.float64)


def mfcc(x: npt.ArrayLike, sample_rate: int = SAMPLE_RATE) -> FloatArray:
    """MFCCs c0..c12 per 10 ms frame, (frames, 13)."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    emphasised = np.append(a[:1], a[1:] - 0.97 * a[:-1])
    frame = int(MFCC_FRAME * sample_rate / SAMPLE_RATE)
    frames = _frames(emphasised, frame, HOP * sample_rate // SAMPLE_RATE) * np.hamming(frame)
    power = np.abs(np.fft.rfft(frames, N_FFT)) ** 2 / N_FFT
    energies = power @ _mel_filterbank(sample_rate).T
    return np.log(np.maximum(energies, 1e-10)) @ _dct_matrix().T
