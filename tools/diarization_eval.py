"""Mono calls split by speaker, measured: `callsense evaluate-diarization` (issue 14).

Every test call is built as a stereo call, the agent on the left and the customer on the right, so that
each speaker's own channel gives the truth; the diarisation gets the two channels summed into one, as a
mono recorder writes them. Three groups:

- ``stereo``: ../shared/data/speech/stereo/stereo_diarization.wav (5 s; the two speakers talk over each
  other for two seconds; the left one starts first, so it is the agent);
- ``scripted``: the six scripted calls of tools/scripted_calls.py spoken by espeak-ng in two voices
  (``tools.demo.synthesize_call``: a male and a female variant), 64-86 s each;
- ``real``: calls made of real speech: the customer's turns are LJSpeech clips (asr_dev: one woman), the
  agent's are RAVDESS actors saying their two sentences (two clips a turn), each turn brought to the
  same loudness (so that level tells nobody apart): against a man (actors 01, 05), a woman (actor 02:
  two women), two men (actors 07 and 09, no LJSpeech), and a man with a 12 s hold in the middle (no
  window sees both sides of it, so the two halves are tied by voice alone).

The truth: each channel's speech by Silero VAD (threshold 0.5, 100 ms minimum speech, 200 ms minimum
silence, no padding), on 10 ms frames. Measures:

- DER, on 10 ms frames: (missed + false alarm + confusion) over reference speech, frames within 0.25 s
  of a reference boundary left out (the usual collar of NIST's md-eval), overlapped speech scored.
  ``der``: speakers mapped to the reference the best way; ``role error``: as the roles were assigned
  (the opener rule's mistakes included, which is what the scores inherit);
- word attribution: the mono call through the recording path (``asr_service.recording``: Whisper's
  offline decoder on the one channel, each word given to a role): the share of words whose role talks at
  the word's time in the reference (either, where both do);
- CPU: the diarisation's process time per minute of audio, and Whisper's for comparison.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from asr_service.diarization import DiarizationConfig, SegmentationModel, diarize
from asr_service.recording import OfflineOptions, Recording, transcribe_recording, with_speakers
from asr_service.speakers import SpeakerTimeline
from asr_service.transcribe_file import load_audio
from asr_service.vad import SpeechStart, StreamingVad, VadConfig, shared_model

GROUPS = ("stereo", "scripted", "real")
RATE = 16_000
FRAME_S = 0.01
COLLAR_S = 0.25
LEVEL_DBFS = -23.0
"""Every real clip is brought to this RMS level."""
REFERENCE_VAD = VadConfig(threshold=0.5, neg_threshold=0.35, min_speech_ms=100, min_silence_ms=200, pad_ms=0)

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


class CallsAbsent(LookupError):
    """The data a group of calls is made from is not here."""


@dataclass(frozen=True)
class EvalCall:
    name: str
    group: str
    stereo: Int16Array
    """(samples, 2) at 16 kHz: the agent's channel, then the customer's."""
    opener: str = "agent"

    @property
    def mono(self) -> FloatArray:
        mixed = self.stereo.astype(np.float32).sum(axis=1) / np.float32(32768.0)
        clipped: FloatArray = np.clip(mixed, -1.0, 32767 / 32768).astype(np.float32)
        return clipped

    @property
    def duration_s(self) -> float:
        return len(self.stereo) / RATE


@dataclass(frozen=True)
class Errors:
    """Seconds of each kind of error over the scored reference speech."""

    speech_s: float
    missed_s: float
    false_alarm_s: float
    confusion_s: float

    @property
    def rate(self) -> float:
        return (self.missed_s + self.false_alarm_s + self.confusion_s) / max(self.speech_s, 1e-9)


@dataclass(frozen=True)
class CallResult:
    call: EvalCall
    der: Errors
    role: Errors
    roles_found: bool
    """False: one voice only, the call was left mixed."""
    components: int
    diarization_cpu_s: float
    words: int = 0
    words_right: int = 0
    whisper_cpu_s: float = 0.0

    @property
    def word_accuracy(self) -> float:
        return self.words_right / self.words if self.words else float("nan")


# ------------------------------------------------------------------------------------------ calls


def stereo_fixture(shared_data: Path) -> list[EvalCall]:
    path = shared_data / "speech" / "stereo" / "stereo_diarization.wav"
    if not path.is_file():
        raise CallsAbsent(f"{path} not found")
    audio = load_audio(path, sample_rate_hz=RATE)
    return [EvalCall("stereo-fixture", "stereo", np.ascontiguousarray(audio.samples[:, :2]))]


def scripted_calls() -> list[EvalCall]:
    """The six scripted calls, as `callsense demo` speaks them (needs espeak-ng)."""
    from tools.demo import DemoError, synthesize_call
    from tools.scripted_calls import SCRIPTS

    try:
        return [
            EvalCall(f"scripted-{name}", "scripted", synthesize_call(call.turns).samples)
            for name, call in SCRIPTS.items()
        ]
    except DemoError as exc:
        raise CallsAbsent(str(exc)) from exc


def real_calls(shared_data: Path) -> list[EvalCall]:
    """Calls of LJSpeech and RAVDESS turns (the module docstring)."""
    speech = shared_data / "speech"
    lj = sorted((speech / "asr_dev").glob("*.flac"))
    ravdess = speech / "emotion" / "ravdess"
    if len(lj) < 24 or not ravdess.is_dir():
        raise CallsAbsent(f"LJSpeech clips in {speech / 'asr_dev'} or RAVDESS in {ravdess} not found")
    ljs = [_levelled(load_audio(p, sample_rate_hz=RATE).samples[:, 0]) for p in lj]

    def actor(number: int) -> list[FloatArray]:
        files = sorted(ravdess.glob(f"*-{number:02d}.flac"))
        if not files:
            raise CallsAbsent(f"no RAVDESS clips of actor {number:02d} in {ravdess}")
        return [_levelled(load_audio(p, sample_rate_hz=RATE).samples[:, 0]) for p in files]

    def pairs(clips: list[FloatArray], seed: int) -> list[FloatArray]:
        rng = random.Random(seed)
        chosen = rng.sample(clips, 16)
        pause = np.zeros(int(0.3 * RATE), dtype=np.float32)
        return [np.concatenate([chosen[i], pause, chosen[i + 1]]) for i in range(0, 16, 2)]

    return [
        EvalCall("real-man-01", "real", _alternate(pairs(actor(1), 1), ljs[0:8], seed=1)),
        EvalCall("real-man-05", "real", _alternate(pairs(actor(5), 5), ljs[8:16], seed=5)),
        EvalCall("real-woman-02", "real", _alternate(pairs(actor(2), 2), ljs[16:24], seed=2)),
        EvalCall("real-two-men-07-09", "real", _alternate(pairs(actor(7), 7), pairs(actor(9), 9), seed=7)),
        EvalCall("real-hold-man-03", "real", _alternate(pairs(actor(3), 3), ljs[4:12], seed=3, hold_s=12.0)),
    ]


def _levelled(samples: Int16Array) -> FloatArray:
    """A clip trimmed to its speech (10 ms frames within 30 dB of its loudest) at ``LEVEL_DBFS``."""
    x = samples.astype(np.float32) / 32768.0
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    energy = 10 * np.log10(np.maximum((frames**2).mean(axis=1), 1e-12))
    loud = np.nonzero(energy > energy.max() - 30.0)[0]
    x = x[loud[0] * 160 : (loud[-1] + 1) * 160]
    rms = float(np.sqrt(np.mean(x**2)))
    return (x * (10 ** (LEVEL_DBFS / 20) / max(rms, 1e-6))).astype(np.float32)


def _alternate(
    agent: Sequence[FloatArray], customer: Sequence[FloatArray], *, seed: int, hold_s: float = 0.0
) -> Int16Array:
    """Agent and customer turns in turn, the agent first, pauses of 0.4-1.0 s (and ``hold_s`` of
    silence halfway), on two channels."""
    rng = random.Random(seed)
    turns = [t for pair in zip(agent, customer, strict=False) for t in pair]
    cursor = int(0.5 * RATE)
    placed: list[tuple[int, int, FloatArray]] = []
    for index, turn in enumerate(turns):
        placed.append((cursor, index % 2, turn))
        cursor += len(turn) + int(rng.uniform(0.4, 1.0) * RATE)
        if hold_s and index == len(turns) // 2 - 1:
            cursor += int(hold_s * RATE)
    stereo = np.zeros((cursor + RATE, 2), dtype=np.float32)
    for start, channel, turn in placed:
        stereo[start : start + len(turn), channel] = turn
    return np.clip(np.round(stereo * 32768.0), -32768, 32767).astype(np.int16)


def load_calls(groups: Sequence[str], shared_data: Path) -> list[EvalCall]:
    makers: dict[str, Callable[[], list[EvalCall]]] = {
        "stereo": lambda: stereo_fixture(shared_data),
        "scripted": scripted_calls,
        "real": lambda: real_calls(shared_data),
    }
    calls: list[EvalCall] = []
    for group in groups:
        if group not in makers:
            raise ValueError(f"unknown group {group!r}: one of {', '.join(GROUPS)}")
        calls += makers[group]()
    return calls


# ------------------------------------------------------------------------------------------ truth


def reference(call: EvalCall) -> BoolArray:
    """(frames, 2) on 10 ms frames: each channel's speech by Silero VAD."""
    frames = int(np.ceil(call.duration_s / FRAME_S))
    truth = np.zeros((frames, 2), dtype=bool)
    for channel in range(2):
        vad = StreamingVad(shared_model(), REFERENCE_VAD)
        events = vad.feed(call.stereo[:, channel].astype(np.float32) / 32768.0) + vad.flush()
        start: int | None = None
        for event in events:
            if isinstance(event, SpeechStart):
                start = event.sample
            elif start is not None:
                truth[int(start / RATE / FRAME_S) : int(np.ceil(event.sample / RATE / FRAME_S)), channel] = (
                    True
                )
                start = None
    return truth


def hypothesis(speakers: SpeakerTimeline, frames: int) -> BoolArray:
    """(frames, 2): the agent's and the customer's turns (one voice only: all in column 0)."""
    out = np.zeros((frames, 2), dtype=bool)
    for turn in speakers.turns:
        column = 0 if speakers.roles is None else ("agent", "customer").index(speakers.roles[turn.speaker])
        out[int(turn.start_s / FRAME_S) : int(np.ceil(turn.end_s / FRAME_S)), column] = True
    return out


def errors(truth: BoolArray, guess: BoolArray, *, best_mapping: bool, collar_s: float = COLLAR_S) -> Errors:
    """Frame-wise missed, false alarm and confusion seconds, outside the collar (module docstring)."""
    scored = np.ones(len(truth), dtype=bool)
    collar = int(round(collar_s / FRAME_S))
    for channel in range(truth.shape[1]):
        edges = np.nonzero(np.diff(truth[:, channel].astype(np.int8), prepend=0, append=0))[0]
        for edge in edges:
            scored[max(0, edge - collar) : edge + collar] = False
    ref, hyp = truth[scored], guess[scored]
    mappings = [hyp, hyp[:, ::-1]] if best_mapping else [hyp]
    best: Errors | None = None
    for mapped in mappings:
        n_ref, n_hyp = ref.sum(axis=1), mapped.sum(axis=1)
        right = (ref & mapped).sum(axis=1)
        result = Errors(
            speech_s=float(n_ref.sum()) * FRAME_S,
            missed_s=float(np.maximum(n_ref - n_hyp, 0).sum()) * FRAME_S,
            false_alarm_s=float(np.maximum(n_hyp - n_ref, 0).sum()) * FRAME_S,
            confusion_s=float((np.minimum(n_ref, n_hyp) - right).sum()) * FRAME_S,
        )
        if best is None or result.rate < best.rate:
            best = result
    assert best is not None
    return best


def true_roles(truth: BoolArray, start_ms: int, end_ms: int) -> set[str]:
    """Who talks over [start_ms, end_ms] in the reference; the nearest talker for a span of silence."""
    roles = ("agent", "customer")
    first = min(int(start_ms / 1000 / FRAME_S), len(truth) - 1)
    last = max(first + 1, int(np.ceil(end_ms / 1000 / FRAME_S)))
    talking = truth[first:last].sum(axis=0)
    if talking.any():
        return {roles[c] for c in range(2) if talking[c] >= 0.5 * talking.max()}
    frames = np.nonzero(truth.any(axis=1))[0]
    if not len(frames):
        return set(roles)
    nearest = frames[np.argmin(np.abs(frames - (first + last) / 2))]
    return {roles[c] for c in range(2) if truth[nearest, c]}


# ------------------------------------------------------------------------------------------ running


def evaluate(
    call: EvalCall,
    *,
    segmentation: SegmentationModel,
    whisper: Any = None,
    config: DiarizationConfig | None = None,
) -> CallResult:
    """One call's diarisation errors, and with ``whisper`` its word attribution (module docstring)."""
    mono = call.mono
    started = time.process_time()
    speakers = diarize(mono, opener=call.opener, model=segmentation, config=config)
    diarization_cpu_s = time.process_time() - started
    truth = reference(call)
    guess = hypothesis(speakers, len(truth))
    result = CallResult(
        call=call,
        der=errors(truth, guess, best_mapping=True),
        role=errors(truth, guess, best_mapping=False),
        roles_found=speakers.roles is not None,
        components=speakers.components,
        diarization_cpu_s=diarization_cpu_s,
    )
    if whisper is None:
        return result
    pcm = np.round(mono * 32768.0).clip(-32768, 32767).astype(np.int16)[:, None]
    recording = with_speakers(Recording(("mixed",), pcm, opener=call.opener), speakers)
    started = time.process_time()
    transcripts = transcribe_recording(whisper, recording, OfflineOptions())
    whisper_cpu_s = time.process_time() - started
    words = right = 0
    for transcript in transcripts:
        role = recording.roles[transcript.channel]
        for word in transcript.words:
            words += 1
            right += role in true_roles(truth, word.start_ms, word.end_ms)
    return CallResult(
        **{**result.__dict__, "words": words, "words_right": right, "whisper_cpu_s": whisper_cpu_s}
    )


def table(results: Sequence[CallResult]) -> str:
    """A Markdown table: one row per call, then one per group and one for everything."""
    lines = [
        "| call | audio s | DER % | missed % | false alarm % | confusion % | role error % | links | "
        "words right % | diarisation CPU s/min | Whisper CPU s/min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups = [(r.call.name, [r]) for r in results]
    for group in GROUPS:
        members = [r for r in results if r.call.group == group]
        if len(members) > 1:
            groups.append((f"**{group}** ({len(members)} calls)", members))
    if len({r.call.group for r in results}) > 1:
        groups.append(("**all**", list(results)))
    for name, members in groups:
        lines.append(_row(name, members))
    return "\n".join(lines)


def _row(name: str, members: Sequence[CallResult]) -> str:
    def total(kind: str, attribute: str) -> float:
        return float(sum(getattr(getattr(r, kind), attribute) for r in members))

    speech = max(total("der", "speech_s"), 1e-9)
    der = sum(total("der", a) for a in ("missed_s", "false_alarm_s", "confusion_s")) / speech
    role = sum(total("role", a) for a in ("missed_s", "false_alarm_s", "confusion_s")) / speech
    audio_min = sum(r.call.duration_s for r in members) / 60
    words = sum(r.words for r in members)
    right = sum(r.words_right for r in members)
    links = (
        ", ".join("mixed" if not r.roles_found else str(r.components) for r in members)
        if len(members) == 1
        else f"{sum(r.components == 1 for r in members)}/{len(members)} whole"
    )
    return (
        f"| {name} | {audio_min * 60:.0f} | {100 * der:.1f} | "
        f"{100 * total('der', 'missed_s') / speech:.1f} | "
        f"{100 * total('der', 'false_alarm_s') / speech:.1f} | "
        f"{100 * total('der', 'confusion_s') / speech:.1f} | "
        f"{100 * role:.1f} | {links} | "
        f"{(100 * right / words) if words else float('nan'):.1f} | "
        f"{sum(r.diarization_cpu_s for r in members) / audio_min:.2f} | "
        f"{sum(r.whisper_cpu_s for r in members) / audio_min:.1f} |"
    )
