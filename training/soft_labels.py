"""Soft labels: a teacher's logits for every training text, written once, read by the student's run.

Distilling online (teacher and student in one batch) needs both to share a tokenizer and costs a teacher
forward pass per student step and epoch. A large teacher (MPNet-base, its own tokenizer) is run once over
all the text instead; its logits go to a JSON Lines file keyed by the text (and the previous utterance when
the teacher read one), and `callsense train --soft-labels FILE` trains the student on them.

The teacher may also be a served model (a directory holding ``model_card.json`` and an ``.onnx`` file, such
as scorer_service/model): its log-probabilities stand for logits (the same softmax). That is how a new
student keeps what the served one knows of a corpus (its own soft labels on the general text) while it
learns a domain from a larger teacher (that teacher's on the sales text): files written for different
sets are concatenated into one, the later file's line winning for a text both hold.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.data import LabelledUtterance

if TYPE_CHECKING:
    from callsense.tokenization import SentimentTokenizer


def soft_key(example: LabelledUtterance, context: bool) -> str:
    """What a soft label is looked up by: the text, and the utterance before it when context is used."""
    return f"{example.previous_text}\u241e{example.text}" if context else example.text


def write_soft_labels(
    teacher: str, examples: Sequence[LabelledUtterance], out: Path, *, context: bool = False, threads: int = 2
) -> int:
    """Run the teacher (a training checkpoint or a served model) over `examples` (each distinct key once)
    and write its logits."""
    unique: dict[str, LabelledUtterance] = {}
    for example in examples:
        unique.setdefault(soft_key(example, context), example)
    keys = list(unique)
    if _is_served_model(Path(teacher)):
        logits = _served_logits(Path(teacher), [unique[k] for k in keys], threads)
    else:
        import torch

        from training.train import load_model, predict_logits

        torch.set_num_threads(threads)
        model, tokenizer = load_model(teacher)
        logits = predict_logits(model, tokenizer, [unique[k] for k in keys], context)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for key, row in zip(keys, logits, strict=True):
            handle.write(json.dumps({"key": key, "logits": [round(float(v), 5) for v in row]}) + "\n")
    return len(keys)


def _is_served_model(path: Path) -> bool:
    return path.is_dir() and (path / "model_card.json").is_file() and any(path.glob("*.onnx"))


def _served_logits(model_dir: Path, examples: Sequence[LabelledUtterance], threads: int) -> np.ndarray:
    """Log-probabilities of a served model (scorer_service's runtime: what the scorer answers). A text
    over the model's length is cut to its first words that fit, as training truncates it."""
    from callsense.tokenization import TextRejected
    from scorer_service.inference import SentimentInput, SentimentModel

    (onnx,) = sorted(model_dir.glob("*.onnx"))[:1]
    model = SentimentModel.load(onnx, threads=threads)
    # No role: a student learns what the words say; the role prior is fitted on it after, at export.
    inputs = [SentimentInput(_fitting(model.tokenizer, e.text), e.previous_text) for e in examples]
    rows = []
    for example, prediction in zip(examples, model.predict(inputs), strict=True):
        if isinstance(prediction, TextRejected):
            raise ValueError(f"the served model refuses {example.text[:80]!r}: {prediction}")
        rows.append([prediction.p_negative, prediction.p_neutral, prediction.p_positive])
    return np.log(np.clip(np.asarray(rows, dtype=np.float64), 1e-7, 1.0))


def _fitting(tokenizer: SentimentTokenizer, text: str) -> str:
    words = text.split()
    while len(words) > 1 and tokenizer.count(" ".join(words)) > tokenizer.max_tokens:
        words = words[: max(1, len(words) * 9 // 10)]
    return " ".join(words) if len(words) < len(text.split()) else text


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
