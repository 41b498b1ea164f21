"""A segment's prosody as the fusion's numbers, and one speaker's running baseline of them.

What a voice carries about feeling is how it departs from its usual self: a deep voice is not a calm one,
a loud line is not an angry one. So every number here is read against the same speaker's earlier
utterances in the same call (``SpeakerBaseline``): the deviation of feature k is

    z_k = (x_k - mean_k) / spread_k,   spread_k^2 = (n var_k + w s_k^2) / (n + w)

over the speaker's n earlier utterances, where s_k is a typical within-speaker spread (learnt with the
fusion head) and w its weight in utterances: after one utterance the spread is mostly the prior's, after
twenty mostly the speaker's own, but never below ``floor * s_k``: a voice steadier than people's (a
synthetic one, a monotonous one) is not read at a finer grain than people's, where the words alone would
move it by "many spreads". A feature the speaker has no earlier value of (the first utterance; the
first voiced one, for pitch) deviates by 0: no baseline, no evidence. Deviations are clipped to
``[-clip, clip]`` so that one odd segment (a cough, a clipped shout) cannot swing a score alone.

Raw features (``FEATURE_NAMES``, from the Prosody message the ASR fills, asr_service/prosody.py):

- ``log_pitch``: ln of the mean F0 (a ratio scale: +0.1 is about 10 % higher whatever the speaker);
- ``pitch_spread``: F0 standard deviation over its mean (intonation range, relative);
- ``energy_db``: RMS level in dBFS (a channel's gain is fixed within a call, so its deviation is effort);
- ``rate_wps``: words per second;
- ``voiced_fraction``: voiced frames over all frames;
- ``mfcc_mean_1..12``, ``mfcc_std_0..12``: the spectral envelope (vocal effort tilts it) and its motion.

Absent values are NaN: F0 features of a segment with nothing voiced, a rate of 0, a level at the -100 dB
floor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from callsense.v1 import prosody_pb2

FloatArray = npt.NDArray[np.float64]

N_MFCC = 13
CORE_FEATURES = ("log_pitch", "pitch_spread", "energy_db", "rate_wps", "voiced_fraction")
MFCC_FEATURES = (*(f"mfcc_mean_{i}" for i in range(1, N_MFCC)), *(f"mfcc_std_{i}" for i in range(N_MFCC)))
FEATURE_NAMES: tuple[str, ...] = (*CORE_FEATURES, *MFCC_FEATURES)
_FLOOR_DB = -99.0  # asr_service.prosody floors silence at -100 dBFS: such a level says nothing


def raw_features(prosody: prosody_pb2.Prosody) -> FloatArray:
    """The segment's numbers in ``FEATURE_NAMES`` order; NaN where the segment has no such value."""
    x = np.full(len(FEATURE_NAMES), np.nan)
    if prosody.pitch_mean_hz > 0:
        x[0] = math.log(prosody.pitch_mean_hz)
        x[1] = prosody.pitch_std_hz / prosody.pitch_mean_hz
    if prosody.rms_dbfs > _FLOOR_DB:
        x[2] = prosody.rms_dbfs
    if prosody.speaking_rate_wps > 0:
        x[3] = prosody.speaking_rate_wps
    x[4] = prosody.voiced_fraction
    if len(prosody.mfcc_mean) == N_MFCC and len(prosody.mfcc_std) == N_MFCC:
        start = len(CORE_FEATURES)
        x[start : start + N_MFCC - 1] = list(prosody.mfcc_mean)[1:]
        x[start + N_MFCC - 1 :] = list(prosody.mfcc_std)
    return x


@dataclass(frozen=True)
class BaselinePrior:
    """How deviations are measured: the prior spreads ``s_k`` (FEATURE_NAMES order), their weight ``w`` in
    utterances, the clip, and the floor: a spread is never taken below ``floor * s_k``."""

    spread: tuple[float, ...]
    weight: float = 3.0
    clip: float = 4.0
    floor: float = 0.0

    def __post_init__(self) -> None:
        if len(self.spread) != len(FEATURE_NAMES) or min(self.spread) <= 0:
            raise ValueError(f"a prior spread needs {len(FEATURE_NAMES)} positive values")
        if self.weight <= 0 or self.clip <= 0 or not 0 <= self.floor <= 1:
            raise ValueError("the prior's weight and clip must be positive, its floor in [0, 1]")


@dataclass
class SpeakerBaseline:
    """One speaker's running mean and spread of every feature within a call (Welford's update, per feature:
    a feature absent from a segment leaves its statistics alone)."""

    count: FloatArray = field(default_factory=lambda: np.zeros(len(FEATURE_NAMES)))
    mean: FloatArray = field(default_factory=lambda: np.zeros(len(FEATURE_NAMES)))
    m2: FloatArray = field(default_factory=lambda: np.zeros(len(FEATURE_NAMES)))

    @property
    def utterances(self) -> int:
        """Segments seen (the level is present in every real one)."""
        return int(self.count.max())

    def deviation(self, x: FloatArray, prior: BaselinePrior) -> FloatArray:
        """``x`` against this baseline, in prior-shrunk spreads, clipped; 0 where either side is absent."""
        n = self.count
        spread0 = np.asarray(prior.spread)
        variance = np.where(n > 0, self.m2 / np.maximum(n, 1.0), 0.0)
        spread = np.sqrt((n * variance + prior.weight * spread0**2) / (n + prior.weight))
        spread = np.maximum(spread, prior.floor * spread0)
        z = (x - self.mean) / spread
        known = (n > 0) & np.isfinite(x)
        return np.where(known, np.clip(z, -prior.clip, prior.clip), 0.0)

    def add(self, x: FloatArray) -> None:
        present = np.isfinite(x)
        self.count = self.count + present
        delta = np.where(present, x - self.mean, 0.0)
        self.mean = self.mean + np.where(present, delta / np.maximum(self.count, 1.0), 0.0)
        self.m2 = self.m2 + np.where(present, delta * (np.where(present, x, 0.0) - self.mean), 0.0)


def deviations(
    voices: Sequence[FloatArray], prior: BaselinePrior, baseline: SpeakerBaseline | None = None
) -> list[FloatArray]:
    """Each of one speaker's segments, in order, against the segments before it (and ``baseline``'s,
    which this updates when given): what the scorer computes one utterance at a time."""
    state = baseline if baseline is not None else SpeakerBaseline()
    out = []
    for x in voices:
        out.append(state.deviation(x, prior))
        state.add(x)
    return out
