"""Tone fusion's parts: features against a speaker's baseline, the head, the per-call state, the fuser."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from callsense.v1 import audio_pb2, prosody_pb2
from scorer_service.fusion.calls import CallBaselines
from scorer_service.fusion.features import (
    FEATURE_NAMES,
    BaselinePrior,
    SpeakerBaseline,
    deviations,
    raw_features,
)
from scorer_service.fusion.gate import Gate
from scorer_service.fusion.head import SHIPPED_HEAD, FusionHead, InvalidHead, Layer
from scorer_service.fusion.tone import ToneFuser
from scorer_service.inference import Prediction
from tests.support.tone import prosody, toy_head, utterance

PRIOR = toy_head().prior
PITCH, LEVEL, RATE = (FEATURE_NAMES.index(n) for n in ("log_pitch", "energy_db", "rate_wps"))


def test_raw_features_mark_what_a_segment_lacks() -> None:
    x = raw_features(prosody(200.0, -20.0, 3.0))
    assert x[PITCH] == pytest.approx(np.log(200.0)) and x[LEVEL] == -20.0 and x[RATE] == 3.0
    assert x[FEATURE_NAMES.index("pitch_spread")] == pytest.approx(0.1)
    silent = raw_features(prosody_pb2.Prosody(rms_dbfs=-100.0))
    assert np.isnan(silent[[PITCH, LEVEL, RATE]]).all()  # nothing voiced, floor level, no words
    assert np.isnan(silent[len(FEATURE_NAMES) - 1])  # no MFCCs


def test_a_speakers_first_utterance_deviates_by_nothing_and_later_ones_by_their_distance() -> None:
    voices = [raw_features(prosody(120.0, -25.0, 2.5)) for _ in range(5)] + [
        raw_features(prosody(120.0, -19.0, 2.5))
    ]
    z = deviations(voices, PRIOR)
    assert not z[0].any()  # no baseline yet
    assert np.allclose(z[1:5], 0.0)  # the same voice again
    # Five identical utterances have no spread of their own: the prior's, weighted w / (n + w), is left.
    assert z[5][LEVEL] == pytest.approx(6.0 / (3.0 * np.sqrt(3.0 / 8.0)))
    assert z[5][PITCH] == 0.0 and z[5][RATE] == 0.0


def test_absolute_pitch_says_nothing_only_its_change_does() -> None:
    low = deviations([raw_features(prosody(100.0)), raw_features(prosody(110.0))], PRIOR)[1]
    high = deviations([raw_features(prosody(200.0)), raw_features(prosody(220.0))], PRIOR)[1]
    assert low[PITCH] == pytest.approx(high[PITCH])  # +10 % is +10 %, whoever speaks


def test_the_baseline_is_welfords_running_mean_and_variance() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(-25.0, 4.0, size=40)
    baseline = SpeakerBaseline()
    for v in values:
        baseline.add(raw_features(prosody(level_db=float(v))))
    assert baseline.mean[LEVEL] == pytest.approx(values.mean())
    assert baseline.m2[LEVEL] / baseline.count[LEVEL] == pytest.approx(values.var())
    assert baseline.utterances == 40


def test_deviations_are_clipped() -> None:
    z = deviations([raw_features(prosody(level_db=-40.0)), raw_features(prosody(level_db=-1.0))], PRIOR)[1]
    assert z[LEVEL] == PRIOR.clip


def test_the_head_leaves_text_alone_at_the_baseline_and_moves_it_away_from_it() -> None:
    head = toy_head()
    text = np.array([0.1, 0.7, 0.2])
    assert np.allclose(head.fuse(text, np.zeros(3)), text, atol=1e-12)
    louder = head.fuse(text, np.array([0.0, 2.0, 0.0]))
    assert louder[0] > 0.4 and louder.sum() == pytest.approx(1.0)
    batch = head.fuse(np.tile(text, (2, 1)), np.array([[0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
    assert np.allclose(batch, [text, louder])


def test_a_quadratic_mlp_head_is_zero_at_the_baseline_too() -> None:
    rng = np.random.default_rng(0)
    head = FusionHead(
        "tone-test-mlp",
        ("log_pitch", "energy_db"),
        "quadratic",
        (
            Layer(rng.normal(size=(4, 5)), rng.normal(size=5), "tanh"),
            Layer(rng.normal(size=(5, 3)), rng.normal(size=3), "linear"),
        ),
        PRIOR,
        {},
    )
    assert np.allclose(head.shift(np.zeros(2)), 0.0)
    assert not np.allclose(head.shift(np.array([1.0, -1.0])), 0.0)


def test_a_gated_head_lets_the_voice_in_only_past_a_departure_in_pitch_or_level(tmp_path: Path) -> None:
    gated = dataclasses.replace(toy_head(), gate=Gate(("log_pitch", "energy_db"), threshold=1.0, width=0.5))
    text = np.array([0.1, 0.7, 0.2])
    fast_only = np.array([0.5, 0.9, 3.0])  # pitch and level within a spread: rate alone moves nothing
    assert np.allclose(gated.fuse(text, fast_only), text, atol=1e-12)
    half = np.array([0.0, 1.25, 0.0])  # level half-way through the ramp
    assert np.allclose(gated.shift(half), 0.5 * toy_head().shift(half))
    assert np.allclose(gated.shift(np.array([0.0, -2.0, 1.0])), toy_head().shift(np.array([0.0, -2.0, 1.0])))
    gated.save(tmp_path / "fusion.json")
    assert FusionHead.load(tmp_path / "fusion.json").gate == gated.gate
    with pytest.raises(InvalidHead, match="gate"):
        dataclasses.replace(toy_head(), gate=Gate(("pitch_spread",), 1.0))


def test_a_head_survives_its_json_and_bad_files_say_what_is_wrong(tmp_path: Path) -> None:
    head = toy_head()
    path = tmp_path / "fusion.json"
    head.save(path)
    again = FusionHead.load(path)
    assert again.version == head.version and again.features == head.features and again.prior == head.prior
    z = np.array([0.5, 1.0, -0.5])
    assert np.allclose(again.shift(z), head.shift(z))
    data = json.loads(path.read_text())
    for broken, message in (
        ({**data, "format": "other"}, "format"),
        ({**data, "features": ["shoe_size"]}, "unknown"),
        ({**data, "layers": [{"weights": [[1.0, 2.0]], "bias": [0, 0], "activation": "linear"}]}, "layer"),
        ({k: v for k, v in data.items() if k != "baseline"}, "baseline"),
    ):
        path.write_text(json.dumps(broken))
        with pytest.raises(InvalidHead, match=message):
            FusionHead.load(path)
    with pytest.raises(InvalidHead):
        FusionHead.load(tmp_path / "absent.json")


def test_the_shipped_head_loads() -> None:
    if not SHIPPED_HEAD.is_file():
        pytest.skip(f"NO SHIPPED FUSION HEAD: {SHIPPED_HEAD}; callsense train-fusion writes it")
    head = FusionHead.load()
    assert head.version.startswith("tone-") and np.allclose(head.shift(np.zeros(len(head.features))), 0.0)


def test_call_state_is_bounded_evicted_when_idle_and_released() -> None:
    x = raw_features(prosody())
    calls = CallBaselines(PRIOR, max_calls=3, idle_s=60.0)
    for i in range(5):
        calls.observe(f"c{i}", audio_pb2.CUSTOMER, 0, x, now=float(i))
    assert len(calls) == 3 and "c0" not in calls and "c4" in calls  # least recently used went first
    calls.observe("c2", audio_pb2.CUSTOMER, 1, x, now=10.0)
    calls.observe("c5", audio_pb2.CUSTOMER, 0, x, now=10.0)
    assert "c2" in calls and "c3" not in calls  # c2 was used again, c3 was the oldest
    calls.observe("c6", audio_pb2.CUSTOMER, 0, x, now=65.0)
    assert set(map(str, ("c2", "c5", "c6"))) == {c for c in ("c2", "c4", "c5", "c6") if c in calls}  # c4 idle
    calls.release({"c2", "c5", "unknown"})
    assert len(calls) == 1 and "c6" in calls


def test_a_resent_utterance_gets_its_first_deviation_and_counts_once() -> None:
    calls = CallBaselines(PRIOR)
    calm, loud = raw_features(prosody(level_db=-25.0)), raw_features(prosody(level_db=-15.0))
    calls.observe("c", audio_pb2.CUSTOMER, 0, calm, 0.0)
    first = calls.observe("c", audio_pb2.CUSTOMER, 1, loud, 0.0)
    again = calls.observe("c", audio_pb2.CUSTOMER, 1, loud, 0.0)
    assert np.array_equal(first, again)
    after = calls.observe("c", audio_pb2.CUSTOMER, 2, calm, 0.0)
    # Two utterances in the baseline (not three): mean -20 dB.
    assert after[LEVEL] < 0 and calls.observe("c", audio_pb2.AGENT, 0, loud, 0.0)[LEVEL] == 0.0


def test_the_fuser_keeps_text_for_text_inputs_mixed_channels_and_first_turns() -> None:
    tone = ToneFuser(toy_head())
    assert tone.observe("c", utterance("c", 0, "hi"), 0.0) is None  # no prosody
    assert tone.observe("c", utterance("c", 1, "hi", prosody(), audio_pb2.MIXED), 0.0) is None
    assert tone.observe("c", utterance("c", 2, "hi", prosody()), 0.0) is None  # the customer's first
    assert tone.observe("c", utterance("c", 3, "hi", prosody()), 0.0) is None  # the same voice again
    z = tone.observe("c", utterance("c", 4, "hi", prosody(150.0, -15.0, 3.5)), 0.0)
    assert z is not None and (z > 0).all()
    text = Prediction(0.05, 0.8, 0.15)
    fused = tone.fuse(text, z)
    assert fused.text == text and fused.version == "tone-test-1"
    assert fused.fused.label == "negative" and fused.fused.p_negative > 0.5


def test_a_fresh_fuser_shares_the_head_not_the_calls() -> None:
    tone = ToneFuser(toy_head())
    tone.observe("c", utterance("c", 0, "hi", prosody()), 0.0)
    fresh = tone.fresh()
    assert fresh.head is tone.head and len(fresh.baselines) == 0 and len(tone.baselines) == 1


def test_a_prior_must_fit_the_features() -> None:
    with pytest.raises(ValueError):
        BaselinePrior((1.0,))
    with pytest.raises(ValueError):
        BaselinePrior(tuple([1.0] * len(FEATURE_NAMES)), weight=0.0)
