"""Tone fusion test helpers: a Prosody message made to order, and a small hand-made fusion head whose
rule is easy to predict (a louder, faster, higher voice than the speaker's own points to negative)."""

from __future__ import annotations

import numpy as np

from callsense.v1 import audio_pb2, chopper_pb2, prosody_pb2
from scorer_service.fusion.features import FEATURE_NAMES, BaselinePrior
from scorer_service.fusion.head import FusionHead, Layer

TOY_FEATURES = ("log_pitch", "energy_db", "rate_wps")


def prosody(pitch_hz: float = 120.0, level_db: float = -25.0, rate_wps: float = 2.5) -> prosody_pb2.Prosody:
    return prosody_pb2.Prosody(
        rms_dbfs=level_db,
        pitch_mean_hz=pitch_hz,
        pitch_std_hz=pitch_hz * 0.1,
        speaking_rate_wps=rate_wps,
        mfcc_mean=[0.0] * 13,
        mfcc_std=[1.0] * 13,
        voiced_fraction=0.6,
    )


def toy_head(version: str = "tone-test-1") -> FusionHead:
    """Each deviation (in prior spreads) of pitch, level and rate adds 0.8 to the negative logit and takes
    0.4 from the neutral and positive ones."""
    weights = np.array([[0.8, -0.4, -0.4]] * len(TOY_FEATURES))
    spread = {name: 1.0 for name in FEATURE_NAMES}
    spread.update(log_pitch=0.1, energy_db=3.0, rate_wps=0.5)
    return FusionHead(
        version=version,
        features=TOY_FEATURES,
        expansion="linear",
        layers=(Layer(weights, np.zeros(3), "linear"),),
        prior=BaselinePrior(tuple(spread[n] for n in FEATURE_NAMES), weight=3.0, clip=4.0),
        card={},
    )


def utterance(
    call_id: str,
    utterance_id: int,
    text: str,
    voice: prosody_pb2.Prosody | None = None,
    channel: int = audio_pb2.CUSTOMER,
) -> chopper_pb2.Utterance:
    u = chopper_pb2.Utterance(
        call_id=call_id,
        utterance_id=utterance_id,
        text=text,
        channel=channel,  # type: ignore[arg-type]  # an int of the ChannelRole enum
        start_ms=utterance_id * 3000,
        end_ms=utterance_id * 3000 + 2500,
    )
    if voice is not None:
        u.prosody.CopyFrom(voice)
    return u
