"""What the scorer does with an utterance's prosody: read it against the speaker's baseline, fuse.

Two steps, because they run at different moments: ``observe`` when the request is read (in the stream's
order, so each speaker's baseline grows utterance by utterance as the call went), ``fuse`` once the text
model's probabilities are back from the batcher.

Which utterances are fused: those with prosody, on an AGENT or CUSTOMER channel (one speaker each), whose
speaker has spoken before in the call. A MIXED channel holds both speakers: against a baseline of two
voices, pitch would tell who talks, not how, so it stays text-only, as do text inputs (no prosody) and a
speaker's first utterance (nothing to compare with). For those ``observe`` returns None and the score is
the text model's, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from callsense.v1 import audio_pb2, chopper_pb2
from scorer_service.fusion.calls import CallBaselines
from scorer_service.fusion.features import FloatArray, raw_features
from scorer_service.fusion.head import FusionHead
from scorer_service.inference import Prediction

FUSED_CHANNELS = frozenset({audio_pb2.CUSTOMER, audio_pb2.AGENT})


@dataclass(frozen=True)
class Fused:
    """An utterance's text-only and fused probabilities."""

    text: Prediction
    fused: Prediction
    version: str


class ToneFuser:
    """A fusion head and the baselines of the calls it has seen (use it from one thread or loop)."""

    def __init__(self, head: FusionHead, baselines: CallBaselines | None = None) -> None:
        self.head = head
        self.baselines = baselines if baselines is not None else CallBaselines(head.prior)

    def fresh(self) -> ToneFuser:
        """The same head with no call state (a batch of whole calls, read on its own)."""
        return ToneFuser(self.head)

    def observe(self, call_id: str, utterance: chopper_pb2.Utterance, now: float) -> FloatArray | None:
        """The head's inputs for ``utterance`` (and its speaker's baseline updated), or None when it is
        to be scored on text alone."""
        if not utterance.HasField("prosody") or utterance.channel not in FUSED_CHANNELS:
            return None
        x = raw_features(utterance.prosody)
        z = self.baselines.observe(call_id, utterance.channel, utterance.utterance_id, x, now)
        selected = self.head.select(z)
        return selected if np.any(selected) else None

    def fuse(self, text: Prediction, z: FloatArray) -> Fused:
        p = self.head.fuse((text.p_negative, text.p_neutral, text.p_positive), z)
        return Fused(text, Prediction(float(p[0]), float(p[1]), float(p[2])), self.head.version)

    def release(self, call_ids: set[str]) -> None:
        self.baselines.release(call_ids)
