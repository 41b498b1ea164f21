"""The fusion head: the text model's probabilities and the voice's deviations in, three probabilities out.

    fused logits = ln p_text + gate(z) * (g(e(z)) - g(e(0)))

``z`` are the deviations of ``features`` from the speaker's baseline (fusion/features.py), ``e`` their
expansion (``linear``: z; ``quadratic``: z and z^2, so that both a very quiet and a very loud voice can
point to "negative"), ``g`` a small network (one linear layer: a multinomial logistic regression; two: a
tiny MLP with tanh), all in NumPy. Why this shape:

- the text's log-probabilities enter with weight 1 (a fixed offset), so a voice at its speaker's baseline
  (z = 0, which ``- g(e(0))`` makes exact) leaves the text's probabilities exactly as they were, and a
  voice that departs from it moves them by learnt amounts. The head has no weight tied to one text model:
  its training clips say the same neutral sentences in every emotion, so nothing there could teach how far
  to trust text. It therefore keeps working, with the same meaning, when the model registry serves another
  text model;
- ``gate`` (fusion/gate.py) lets the voice move a score only once its pitch or level departs from the
  speaker's own: the MFCC summaries move with the words too;
- the head is a JSON file with its own version (``fusion.json``), read once at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scorer_service.fusion.features import FEATURE_NAMES, BaselinePrior, FloatArray
from scorer_service.fusion.gate import Gate

FORMAT = "callsense-tone-fusion/1"
SHIPPED_HEAD = Path(__file__).parent / "fusion.json"
EXPANSIONS = ("linear", "quadratic")
_MIN_PROBABILITY = 1e-6  # ln p_text of a probability rounded to 0 must stay finite


class InvalidHead(ValueError):
    """A fusion file that cannot be used; the message says what is wrong with it."""


@dataclass(frozen=True)
class Layer:
    weights: FloatArray
    """(inputs, outputs)."""
    bias: FloatArray
    activation: str
    """``tanh`` or ``linear``."""

    def to_json(self) -> dict[str, Any]:
        return {"weights": self.weights.tolist(), "bias": self.bias.tolist(), "activation": self.activation}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layer:
        return cls(
            np.asarray(data["weights"], dtype=np.float64),
            np.asarray(data["bias"], dtype=np.float64),
            str(data["activation"]),
        )


@dataclass(frozen=True)
class FusionHead:
    version: str
    features: tuple[str, ...]
    """Which of FEATURE_NAMES the head reads, in its input order."""
    expansion: str
    layers: tuple[Layer, ...]
    prior: BaselinePrior
    card: Mapping[str, Any]
    """Everything else the file says (training data, split, metrics): for the model card and the CLI."""
    gate: Gate | None = None
    """Scales the shift by how far pitch and level depart from the speaker's (fusion/gate.py); None: always
    the whole shift."""
    _columns: npt.NDArray[np.intp] = field(init=False, repr=False, compare=False)
    _at_baseline: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.features) - set(FEATURE_NAMES))
        if unknown or not self.features:
            raise InvalidHead(f"fusion {self.version}: unknown or no features {unknown}")
        if self.expansion not in EXPANSIONS:
            raise InvalidHead(
                f"fusion {self.version}: expansion {self.expansion!r} is not one of {EXPANSIONS}"
            )
        width = len(self.features) * (2 if self.expansion == "quadratic" else 1)
        for layer in self.layers:
            if layer.weights.shape != (width, len(layer.bias)) or layer.activation not in ("tanh", "linear"):
                raise InvalidHead(f"fusion {self.version}: a layer does not fit its inputs or activation")
            width = len(layer.bias)
        if width != 3 or not self.layers or self.layers[-1].activation != "linear":
            raise InvalidHead(f"fusion {self.version}: the last layer must be linear with 3 outputs")
        if self.gate is not None and not set(self.gate.features) <= set(self.features):
            raise InvalidHead(f"fusion {self.version}: the gate reads features the head does not")
        object.__setattr__(self, "_columns", np.array([FEATURE_NAMES.index(f) for f in self.features]))
        object.__setattr__(self, "_at_baseline", self._g(np.zeros((1, len(self.features))))[0])

    # ------------------------------------------------------------------------------------------ serving

    def select(self, z: FloatArray) -> FloatArray:
        """The head's inputs out of deviations of all FEATURE_NAMES (last axis)."""
        return np.asarray(np.asarray(z)[..., self._columns], dtype=np.float64)

    def shift(self, z: FloatArray) -> FloatArray:
        """Logit shift of deviations ``z`` (head inputs, shape (n, features) or (features,)); 0 at z = 0."""
        batch = np.atleast_2d(np.asarray(z, dtype=np.float64))
        out = self._g(batch) - self._at_baseline
        if self.gate is not None:
            out = out * self.gate.openness(batch, self.features)[:, None]
        return out if np.ndim(z) > 1 else out[0]

    def fuse(self, text_probabilities: Sequence[float] | FloatArray, z: FloatArray) -> FloatArray:
        """The fused (negative, neutral, positive) probabilities (a row per row of ``z`` when batched)."""
        p = np.clip(np.asarray(text_probabilities, dtype=np.float64), _MIN_PROBABILITY, 1.0)
        logits = np.log(p) + self.shift(z)
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float64)

    def _g(self, z: FloatArray) -> FloatArray:
        h = np.concatenate([z, z * z], axis=1) if self.expansion == "quadratic" else z
        for layer in self.layers:
            h = h @ layer.weights + layer.bias
            if layer.activation == "tanh":
                h = np.tanh(h)
        return h

    # ------------------------------------------------------------------------------------------- files

    def to_json(self) -> dict[str, Any]:
        return {
            **self.card,
            "format": FORMAT,
            "version": self.version,
            "labels": ["negative", "neutral", "positive"],
            "features": list(self.features),
            "expansion": self.expansion,
            "baseline": {
                "prior_spread": dict(zip(FEATURE_NAMES, self.prior.spread, strict=True)),
                "prior_weight": self.prior.weight,
                "clip": self.prior.clip,
                "floor": self.prior.floor,
            },
            "layers": [layer.to_json() for layer in self.layers],
            "gate": self.gate.to_json() if self.gate is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FusionHead:
        """InvalidHead, saying what is wrong, for anything that is not a usable head."""
        try:
            if data.get("format") != FORMAT:
                raise InvalidHead(f"format {data.get('format')!r}, expected {FORMAT!r}")
            baseline = data["baseline"]
            spread = baseline["prior_spread"]
            layers = tuple(Layer.from_json(layer) for layer in data["layers"])
            known = {"format", "version", "labels", "features", "expansion", "baseline", "layers", "gate"}
            gate = data.get("gate")
            return cls(
                version=str(data["version"]),
                features=tuple(str(f) for f in data["features"]),
                expansion=str(data["expansion"]),
                layers=layers,
                prior=BaselinePrior(
                    tuple(float(spread[name]) for name in FEATURE_NAMES),
                    float(baseline["prior_weight"]),
                    float(baseline["clip"]),
                    float(baseline.get("floor", 0.0)),
                ),
                card={k: v for k, v in data.items() if k not in known},
                gate=Gate.from_json(gate) if gate is not None else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidHead):
                raise
            raise InvalidHead(f"not a fusion head: {type(exc).__name__}: {exc}") from None

    @classmethod
    def load(cls, path: Path = SHIPPED_HEAD) -> FusionHead:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidHead(f"{path}: {exc}") from None
        try:
            return cls.from_json(data)
        except InvalidHead as exc:
            raise InvalidHead(f"{path}: {exc}") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
