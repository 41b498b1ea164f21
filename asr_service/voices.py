"""How the two speakers of a call sound: the diarisation's check on what its windows cannot settle alone.

The segmentation model (``speakers.py``) is good at telling apart two voices it hears within one 10 s
window and says nothing about voices it hears in windows that share no speech. What links those, and
what catches the model's occasional slip inside a window (two turns of different people given one local
speaker), is a crude voice print: the mean of a stretch's MFCCs c1..c12 (``prosody.mfcc``; c0 is
loudness, not voice), each coefficient z-scored over all of the recording's speech (``VoiceSpace``), so
that what is common to the whole recording (the line, the codec, the room) cancels and what differs
between the two people (vocal tract, microphone, the far end's phone) stays. On turns of a second or
more of LJSpeech against RAVDESS voices it told the reference speakers apart every time
(leave-one-out nearest centroid, callsense evaluate-diarization's calls); median pitch did worse
(acted emotion moves it more than the speaker does) and is left out. No speaker-embedding model: none
ships in a PyPI package this project may use without torch.

- ``orient``: components (stretches the overlap rule linked) after the largest are flipped or not so
  that their voices fall nearest the voices already placed;
- ``refine``: a turn of at least ``min_turn_s`` whose voice is clearly nearer the other speaker's
  centroid (its distance under ``ratio`` times the distance to its own) is given to the other speaker;
  twice, centroids recomputed in between; only when both speakers have such turns and their centroids
  are clearly apart (``min_separation``): one voice stays one voice, and voices the prints cannot tell
  apart leave the model's word standing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from asr_service.prosody import HOP, mfcc

Vector = npt.NDArray[np.float64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class VoiceConfig:
    min_turn_s: float = 1.0
    """Shorter stretches give too few frames for a voice print."""
    ratio: float = 0.75
    """A turn moves to the other speaker when nearer their centroid than this times its own's."""
    passes: int = 2
    min_separation: float = 1.5
    """Turns are moved only when the two centroids lie this many times further apart than a turn lies
    from its own centroid on average (1.6 to 2.3 on the LJSpeech-against-RAVDESS calls, 0.5 for two
    RAVDESS men)."""


class VoiceSpace:
    """The MFCCs of a recording's speech on the model's frame grid, z-scored over all of that speech."""

    def __init__(
        self, audio: FloatArray, speech: npt.NDArray[np.bool_], frame_step: int, frame_span: int
    ) -> None:
        self._frame_step = frame_step
        coefficients: list[Vector] = []
        frames: list[npt.NDArray[np.int64]] = []
        for start, end in _runs(speech):
            first = start * frame_step
            piece = audio[first : end * frame_step + frame_span].astype(np.float64)
            if len(piece) < 400:
                continue
            c = mfcc(piece)[:, 1:]
            coefficients.append(c)
            # Each 10 ms MFCC frame belongs to the model frame its centre falls in.
            centres = first + np.arange(len(c)) * HOP + 200
            frames.append(np.minimum(centres // frame_step, end - 1).astype(np.int64))
        self._coefficients = np.concatenate(coefficients) if coefficients else np.zeros((0, 12))
        self._frames = np.concatenate(frames) if frames else np.zeros(0, dtype=np.int64)
        if len(self._coefficients):
            mean, std = self._coefficients.mean(axis=0), self._coefficients.std(axis=0)
            self._coefficients = (self._coefficients - mean) / np.maximum(std, 1e-6)

    def vector(self, mask: npt.NDArray[np.bool_]) -> Vector | None:
        """The mean voice over the model frames where ``mask`` is True; None without any."""
        chosen = (
            mask[np.minimum(self._frames, len(mask) - 1)] if len(self._frames) else np.zeros(0, dtype=bool)
        )
        if not chosen.any():
            return None
        return np.asarray(self._coefficients[chosen].mean(axis=0))


def orient(
    activities: Mapping[int, FloatArray], space: VoiceSpace, *, threshold: float, min_frames: int
) -> dict[int, int]:
    """Per component (its (frames, 2) activity), 1 to swap its labels, 0 to keep them: the largest
    first, then each so that its voices are nearest those placed before it."""
    amount = {c: float((a >= threshold).sum()) for c, a in activities.items()}
    placed: list[list[tuple[Vector, float]]] = [[], []]
    flips: dict[int, int] = {}
    for c in sorted(activities, key=lambda c: -amount[c]):
        talking = activities[c] >= threshold
        voices: list[tuple[Vector, float] | None] = []
        for label in (0, 1):
            solo = talking[:, label] & ~talking[:, 1 - label]
            vector = space.vector(solo) if solo.sum() >= min_frames else None
            voices.append(None if vector is None else (vector, float(solo.sum())))
        flip = _best_flip(voices, placed)
        flips[c] = flip
        for label, voice in enumerate(voices):
            if voice is not None:
                placed[label ^ flip].append(voice)
    return flips


def _best_flip(voices: list[tuple[Vector, float] | None], placed: list[list[tuple[Vector, float]]]) -> int:
    centroids = [_centroid(p) for p in placed]
    costs = []
    for flip in (0, 1):
        cost = 0.0
        for label, voice in enumerate(voices):
            if voice is None:
                continue
            target, other = centroids[label ^ flip], centroids[1 - (label ^ flip)]
            if target is not None:
                cost += float(np.linalg.norm(voice[0] - target))
            elif other is not None:  # only the other voice is known so far: be unlike it
                cost -= float(np.linalg.norm(voice[0] - other))
        costs.append(cost)
    return int(costs[1] < costs[0])


def _centroid(voices: list[tuple[Vector, float]]) -> Vector | None:
    if not voices:
        return None
    weights = np.array([w for _, w in voices])
    return np.asarray(np.average(np.stack([v for v, _ in voices]), axis=0, weights=weights))


def refine(
    activity: FloatArray,
    space: VoiceSpace,
    *,
    threshold: float,
    min_gap_frames: int,
    min_frames: int,
    config: VoiceConfig | None = None,
) -> FloatArray:
    """``activity`` with the turns whose voice is clearly the other speaker's given to them (the module
    docstring)."""
    config = config or VoiceConfig()
    out = activity.copy()
    for _ in range(config.passes):
        turns = []
        for speaker in (0, 1):
            for start, end in _closed_runs(out[:, speaker] >= threshold, min_gap_frames):
                if end - start >= min_frames:
                    mask = np.zeros(len(out), dtype=bool)
                    mask[start:end] = True
                    vector = space.vector(mask & (out[:, 1 - speaker] < threshold))
                    if vector is not None:
                        turns.append((start, end, speaker, vector))
        first, second = (
            _centroid([(v, float(e - s)) for s, e, k, v in turns if k == speaker]) for speaker in (0, 1)
        )
        if first is None or second is None:
            return out
        centroids = (first, second)
        # Voices that sit closer together than turns of one voice scatter tell nobody apart (two men of
        # one corpus, in the calls measured): then the prints must not overrule the model.
        spread = sum(float(np.linalg.norm(v - centroids[k])) * (e - s) for s, e, k, v in turns)
        spread /= max(sum(e - s for s, e, _, _ in turns), 1)
        if float(np.linalg.norm(centroids[0] - centroids[1])) < config.min_separation * spread:
            return out
        moved = False
        for start, end, speaker, vector in turns:
            own = float(np.linalg.norm(vector - centroids[speaker]))
            other = float(np.linalg.norm(vector - centroids[1 - speaker]))
            if other < config.ratio * own:
                span = out[start:end]
                span[:, 1 - speaker] = np.maximum(span[:, 1 - speaker], span[:, speaker])
                span[:, speaker] = 0.0
                moved = True
        if not moved:
            break
    return out


def _closed_runs(mask: npt.NDArray[np.bool_], min_gap: int) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in _runs(mask):
        if merged and start - merged[-1][1] < min_gap:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.diff(padded)
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist(), strict=True))
