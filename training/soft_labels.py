"""Soft labels: a teacher's logits for every training text, written once, read by the student's run.

Distilling online (teacher and student in one batch) needs both to share a tokenizer and costs a teacher
forward pass per student step and epoch. A large teacher (MPNet-base, its own tokenizer) is run once over
all the text instead; its logits go to a JSON Lines file keyed by the text (and the previous utterance when
the teacher read one), and `callsense train --soft-labels FILE` trains the student on them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.data import LabelledUtterance


def soft_key(example: LabelledUtterance, context: bool) -> str:
    """What a soft label is looked up by: the text, and the utterance before it when context is used."""
    return f"{example.previous_text}\u241e{example.text}" if context else example.text


def write_soft_labels(
    teacher: str, examples: Sequence[LabelledUtterance], out: Path, *, context: bool = False, threads: int = 2
) -> int:
    """Run the teacher checkpoint over `examples` (each distinct key once) and write its logits."""
    import torch

    from training.train import load_model, predict_logits

    torch.set_num_threads(threads)
    model, tokenizer = load_model(teacher)
    unique: dict[str, LabelledUtterance] = {}
    for example in examples:
        unique.setdefault(soft_key(example, context), example)
    keys = list(unique)
    logits = predict_logits(model, tokenizer, [unique[k] for k in keys], context)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for key, row in zip(keys, logits, strict=True):
            handle.write(json.dumps({"key": key, "logits": [round(float(v), 5) for v in row]}) + "\n")
    return len(keys)


def read_soft_labels(path: Path) -> dict[str, np.ndarray]:
    """The teacher's logits by key, as written by `write_soft_labels`."""
    table: dict[str, np.ndarray] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(raw)
        logits = np.asarray(row["logits"], dtype=np.float32)
        if logits.shape != (3,):
            raise ValueError(f"{path}:{number}: expected three logits, got {row['logits']!r}")
        table[row["key"]] = logits
    return table
