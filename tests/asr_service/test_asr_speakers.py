"""The two-speaker diarisation's array logic (asr_service/speakers.py) on synthetic activity: powerset
decoding, linking windows whose local speakers are shuffled, chain breaks settled by voice, turns and
roles; and the attribution of words to roles (asr_service/attribution.py). No model, no Whisper."""

from __future__ import annotations

import numpy as np
import pytest

from asr_service.attribution import split_transcript, word_runs
from asr_service.decoding import Word
from asr_service.diarization import WINDOW_SAMPLES, window_starts
from asr_service.recording import split_opener
from asr_service.speakers import (
    FRAME_S,
    FRAME_STEP,
    SAMPLE_RATE,
    SpeakerConfig,
    SpeakerTimeline,
    SpeakerTurn,
    WindowActivity,
    aggregate,
    assign_roles,
    frames_of,
    link,
    orient,
    powerset_activity,
    timeline,
    turns_of,
)
from asr_service.streaming import Transcript

WINDOW_FRAMES = 589
STEP_FRAMES = 148  # 2.5 s


def frames(seconds: float) -> int:
    return int(round(seconds / FRAME_S))


def truth_of(turns: list[tuple[float, float, int]], total_s: float) -> np.ndarray:
    """(frames, 2) activity of two speakers from (start_s, end_s, speaker) turns."""
    out = np.zeros((frames(total_s), 2), dtype=np.float32)
    for start, end, speaker in turns:
        out[frames(start) : frames(end), speaker] = 1.0
    return out


def windows_of(truth: np.ndarray, seed: int = 0, step: int = STEP_FRAMES) -> list[WindowActivity]:
    """The model's view of ``truth``: 10 s windows every ``step`` frames, each with the two speakers
    on two of three local slots chosen at random (a local speaker's number means nothing)."""
    rng = np.random.default_rng(seed)
    out = []
    start = 0
    while True:
        piece = truth[start : start + WINDOW_FRAMES]
        local = np.zeros((WINDOW_FRAMES, 3), dtype=np.float32)
        slots = rng.permutation(3)[:2]
        local[: len(piece), slots[0]] = piece[:, 0]
        local[: len(piece), slots[1]] = piece[:, 1]
        out.append(WindowActivity(start, local))
        if start + WINDOW_FRAMES >= len(truth):
            return out
        start += step


def same_up_to_swap(a: np.ndarray, b: np.ndarray) -> float:
    """Share of frames where ``a`` and ``b`` (thresholded) agree, under the better labelling."""
    a, b = a >= 0.5, b >= 0.5
    return max(float(np.mean(np.all(a == b, axis=1))), float(np.mean(np.all(a == b[:, ::-1], axis=1))))


A_CALL = [(0.5, 4.7, 0), (5.4, 10.2, 1), (10.9, 13.9, 0), (14.8, 20.8, 1), (21.4, 26.0, 0), (26.8, 29.2, 1),
          (29.9, 39.7, 0), (40.3, 46.3, 1), (47.1, 50.5, 0), (51.1, 58.8, 1)]  # fmt: skip


# ------------------------------------------------------------------------------------------ decoding


def test_powerset_classes_become_each_local_speakers_marginal_activity() -> None:
    probs = np.eye(7, dtype=np.float32)  # one frame of each class, certain
    activity = powerset_activity(np.log(np.maximum(probs, 1e-12)))
    assert activity.round(3).tolist() == [
        [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1],
    ]  # fmt: skip
    half = np.log(np.array([[0.5, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0]], dtype=np.float32) + 1e-12)
    assert powerset_activity(half)[0].round(3).tolist() == [0.5, 0.5, 0.0]


def test_windows_reach_the_end_on_the_frame_grid() -> None:
    assert window_starts(WINDOW_SAMPLES - 1, 2.5) == [0]
    starts = window_starts(60 * SAMPLE_RATE, 2.5)
    assert all(s % FRAME_STEP == 0 for s in starts)
    assert starts[-1] + WINDOW_SAMPLES >= 60 * SAMPLE_RATE > starts[-2] + WINDOW_SAMPLES
    assert frames_of(FRAME_STEP * 10 + 1) == 11


# ------------------------------------------------------------------------------------------- linking


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_local_speakers_are_linked_into_the_calls_two(seed: int) -> None:
    truth = truth_of(A_CALL, 60.0)
    linked = link(windows_of(truth, seed))
    assert {item.component for item in linked} == {0}  # every window tied to the previous one
    activity = aggregate(linked, {0: 0}, len(truth))
    assert same_up_to_swap(truth, activity) > 0.99


def test_a_speaker_the_overlap_never_saw_is_the_other_one() -> None:
    # The agent talks alone for 10 s: the window after it sees the agent in the shared part and the
    # customer only in its new part; the customer must not be merged into the agent.
    truth = truth_of([(0.5, 20.0, 0), (20.3, 24.0, 1), (24.5, 30.0, 0)], 32.0)
    linked = link(windows_of(truth, seed=3))
    activity = aggregate(linked, {c: 0 for c in {i.component for i in linked}}, len(truth))
    assert same_up_to_swap(truth, activity) > 0.99


def test_a_silence_longer_than_the_overlap_breaks_the_chain() -> None:
    truth = truth_of([(0.5, 4.0, 0), (4.5, 8.0, 1), (20.0, 23.0, 1), (23.5, 27.0, 0)], 30.0)
    linked = link(windows_of(truth, seed=1))
    assert len({item.component for item in linked}) == 2


def voice(f0_hz: float, brightness: float, seconds: float, seed: int) -> np.ndarray:
    """A buzzy vowel-like sound: harmonics of ``f0_hz`` falling off by ``brightness`` per harmonic."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wobble = f0_hz * (1 + 0.03 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(wobble) / SAMPLE_RATE
    x = np.sum([brightness**k * np.sin(k * phase) for k in range(1, 30)], axis=0)
    out: np.ndarray = (0.1 * x / np.max(np.abs(x)) + 0.001 * rng.standard_normal(len(t))).astype(np.float32)
    return out


def test_components_the_overlap_cannot_tie_are_oriented_by_voice() -> None:
    turns = [(0.5, 4.0, 0), (4.5, 8.0, 1), (20.0, 23.0, 1), (23.5, 27.0, 0), (27.5, 30.0, 1)]
    truth = truth_of(turns, 32.0)
    audio = np.zeros(32 * SAMPLE_RATE, dtype=np.float32)
    for index, (start, end, speaker) in enumerate(turns):
        sound = (
            voice(110.0, 0.8, end - start, index) if speaker == 0 else voice(230.0, 0.5, end - start, index)
        )
        audio[int(start * SAMPLE_RATE) : int(start * SAMPLE_RATE) + len(sound)] = sound
    for seed in range(4):  # whatever labels each component happened to start with
        linked = link(windows_of(truth, seed))
        flips = orient(linked, audio)
        activity = aggregate(linked, flips, frames_of(len(audio)))[: len(truth)]
        assert same_up_to_swap(truth, activity) > 0.98, seed


# ----------------------------------------------------------------------------------- turns and roles


def test_turns_close_short_gaps_and_drop_specks() -> None:
    activity = np.zeros((frames(10.0), 2), dtype=np.float32)
    activity[frames(1.0) : frames(2.0), 0] = 1
    activity[frames(2.1) : frames(3.0), 0] = 1  # a 0.1 s pause: the same turn
    activity[frames(5.0) : frames(5.05), 1] = 1  # a 50 ms speck
    activity[frames(6.0) : frames(8.0), 1] = 1
    turns = turns_of(activity)
    assert [(t.speaker, round(t.start_s, 1), round(t.end_s, 1)) for t in turns] == [
        (0, 1.0, 3.0),
        (1, 6.0, 8.0),
    ]


def test_the_opener_is_the_agent_unless_the_customer_opens() -> None:
    turns = [SpeakerTurn(0.1, 0.15, 0), SpeakerTurn(0.5, 3.0, 1), SpeakerTurn(3.5, 6.0, 0)]  # a click first
    assert assign_roles(turns) == ("customer", "agent")
    assert assign_roles(turns, "customer") == ("agent", "customer")
    assert assign_roles([SpeakerTurn(0.5, 3.0, 1), SpeakerTurn(3.5, 4.0, 0)]) is None  # one voice
    with pytest.raises(ValueError, match="opener"):
        assign_roles(turns, "mixed")


def test_whole_timeline_from_windows() -> None:
    truth = truth_of(A_CALL, 60.0)
    audio = np.zeros(60 * SAMPLE_RATE, dtype=np.float32)
    speakers = timeline(windows_of(truth, seed=2), audio)
    assert speakers.components == 1
    first = speakers.turns[0]
    assert speakers.roles is not None and speakers.roles[first.speaker] == "agent"
    assert abs(first.start_s - 0.5) < 0.05 and abs(first.end_s - 4.7) < 0.05
    assert speakers.role_of(6.0, 7.0) == "customer" and speakers.role_of(31.0, 31.5) == "agent"
    assert speakers.role_of(47.0, 47.05) == "agent"  # in the pause before the agent's turn: nearest
    alone = timeline(windows_of(truth_of([(0.5, 9.0, 0)], 10.0)), np.zeros(10 * SAMPLE_RATE, np.float32))
    assert alone.roles is None and alone.role_of(1.0, 2.0) == "mixed"


# ---------------------------------------------------------------------------------------- attribution


def call_timeline() -> SpeakerTimeline:
    truth = truth_of([(0.0, 2.0, 0), (2.2, 4.0, 1)], 5.0)
    turns = tuple(turns_of(truth))
    return SpeakerTimeline(truth, turns, assign_roles(turns))


def test_a_segment_whose_words_change_speaker_is_cut_there() -> None:
    words = (
        Word(" Thanks", 100, 500, 0.9),
        Word(" for", 500, 800, 0.9),
        Word(" calling.", 800, 1900, 0.9),
        Word(" Hi,", 2300, 2700, 0.9),
        Word(" I'm", 2800, 3100, 0.9),
        Word(" Dana.", 3100, 3900, 0.9),
    )
    assert [(role, len(run)) for role, run in word_runs(words, call_timeline())] == [
        ("agent", 3),
        ("customer", 3),
    ]
    transcript = Transcript(
        channel=0, segment_id=0, is_final=True, text="Thanks for calling. Hi, I'm Dana.", words=words,
        start_ms=0, end_ms=4000, no_speech_prob=0.1, avg_logprob=-0.3, compression_ratio=1.2, prosody=None,
    )  # fmt: skip
    audio = np.zeros(5 * SAMPLE_RATE, dtype=np.float32)
    ids: dict[int, int] = {1: 4}
    pieces = split_transcript(transcript, call_timeline(), audio, ("agent", "customer"), ids)
    assert [(p.channel, p.segment_id, p.text, p.start_ms, p.end_ms) for p in pieces] == [
        (0, 0, "Thanks for calling.", 0, 1900),
        (1, 4, "Hi, I'm Dana.", 2300, 4000),
    ]
    assert ids == {0: 1, 1: 5}
    assert all(p.prosody is not None and p.avg_logprob == -0.3 for p in pieces)


def test_which_recordings_are_split_and_who_opens() -> None:
    assert split_opener("auto", 1, ("mixed",)) == "agent"
    assert split_opener("customer-first", 1, ("mixed",)) == "customer"
    assert split_opener("none", 1, ("mixed",)) is None
    assert split_opener("auto", 2, ("agent", "customer")) is None
    assert split_opener("auto", 2, ("mixed",), explicit_roles=True) is None  # a downmix asked for
    assert split_opener("agent-first", 2, ("mixed",), explicit_roles=True) == "agent"
    assert split_opener("auto", 1, ("customer",), explicit_roles=True) is None
    with pytest.raises(ValueError, match="mixed' to downmix"):
        split_opener("agent-first", 2, ("agent", "customer"))
    with pytest.raises(ValueError, match="role customer"):
        split_opener("agent-first", 1, ("customer",), explicit_roles=True)
    with pytest.raises(ValueError, match="not one of"):
        split_opener("both", 1, ("mixed",))


def test_config_defaults_are_sane() -> None:
    config = SpeakerConfig()
    assert 0 < config.min_turn_s < config.min_speaker_s and config.threshold == 0.5
