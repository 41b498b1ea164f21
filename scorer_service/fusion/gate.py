"""When the voice may move a score at all: only once it departs from its speaker's usual pitch or level.

The head's richest inputs, the MFCC summaries, move with the words as much as with the voice: a flat
synthetic voice reading sales lines deviates there by as much as an actor acting anger (training showed
it: such a head cost espeak-ng's sales lines a third of their macro-F1). Pitch and level move far less
with the words. So the head's shift is scaled by how far the voice departs in those:

    openness = clip((max_k |z_k| - threshold) / width, 0, 1),  k over ``features``

0 (the text's probabilities, exactly) while pitch and level stay within ``threshold`` spreads of the
speaker's baseline, 1 past ``threshold + width``, linear between (no jump in the score). The threshold is
chosen in training (training/fusion_train.py); a head without a gate always applies its shift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scorer_service.fusion.features import FloatArray

GATE_FEATURES = ("log_pitch", "energy_db")
DEFAULT_WIDTH = 0.5


@dataclass(frozen=True)
class Gate:
    features: tuple[str, ...]
    threshold: float
    width: float = DEFAULT_WIDTH

    def __post_init__(self) -> None:
        if not self.features or self.threshold < 0 or self.width <= 0:
            raise ValueError("a gate needs features, a threshold >= 0 and a width > 0")

    def openness(self, z: FloatArray, names: Sequence[str]) -> FloatArray:
        """Per row of ``z`` (head inputs named ``names``), how far the gate is open, in [0, 1]."""
        columns = [names.index(f) for f in self.features]
        departure = np.abs(np.atleast_2d(z)[:, columns]).max(axis=1)
        return np.asarray(np.clip((departure - self.threshold) / self.width, 0.0, 1.0), dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"features": list(self.features), "threshold": self.threshold, "width": self.width}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Gate:
        return cls(tuple(str(f) for f in data["features"]), float(data["threshold"]), float(data["width"]))
