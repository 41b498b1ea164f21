"""`callsense evaluate` and the model card: how good a model is, on which data, from which files.

Evaluation runs the exported ONNX model through the same `SentimentModel` the scorer serves, so the
figures in the card are the figures of what ships.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from callsense.tokenization import SentimentTokenizer, TextRejected
from scorer_service.backends.onnx import OnnxBackend
from scorer_service.inference import LABELS, ModelInfo, RolePriors, SentimentInput, SentimentModel
from training.data import LabelledUtterance, load_source
from training.metrics import classification_report


def onnx_model(
    path: Path,
    tokenizer: Path,
    uses_context: bool,
    threads: int = 2,
    role_priors: RolePriors | None = None,
    *,
    uses_roles: bool = False,
) -> SentimentModel:
    return SentimentModel(
        OnnxBackend(path, threads=threads),
        SentimentTokenizer(tokenizer),
        ModelInfo("eval", uses_context, role_priors or {}, uses_roles),
    )


def predict_examples(model: SentimentModel, examples: list[LabelledUtterance]) -> np.ndarray:
    """Class probabilities, one row per example, with the model's role prior where the example's speaker
    is known (as the scorer serves it). Over-long texts are scored on their first 128 tokens' worth of
    words, as the chopper would have cut them."""
    inputs = [SentimentInput(_fit(model, e.text), e.previous_text, e.role) for e in examples]
    results = model.predict(inputs, max_batch=64)
    probs = np.zeros((len(examples), len(LABELS)))
    for row, result in enumerate(results):
        if isinstance(result, TextRejected):
            raise result
        probs[row] = (result.p_negative, result.p_neutral, result.p_positive)
    return probs


def evaluate_examples(model: SentimentModel, examples: list[LabelledUtterance]) -> dict[str, Any]:
    """The classification report of `model` on `examples`."""
    return classification_report([e.label for e in examples], predict_examples(model, examples))


def _fit(model: SentimentModel, text: str) -> str:
    words = text.split()
    while len(words) > 1 and model.tokenizer.count(" ".join(words)) > model.tokenizer.max_tokens:
        words = words[: int(len(words) * 0.9)]
    return " ".join(words)


def evaluate_sets(model: SentimentModel, sets: list[str]) -> dict[str, dict[str, Any]]:
    reports = {}
    for spec in sets:
        loaded = load_source(spec)
        reports[spec] = evaluate_examples(model, loaded.examples)
    return reports


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_model_card(destination: Path, card: dict[str, Any]) -> None:
    """model_card.json (for machines) and MODEL_CARD.md (for people) side by side. A tone-fusion section
    already in MODEL_CARD.md (written by `callsense train-fusion`, with what follows it) is kept."""
    from training.fusion_card import BEGIN

    markdown = destination / "MODEL_CARD.md"
    kept = ""
    if markdown.is_file() and BEGIN in (old := markdown.read_text()):
        kept = BEGIN + old.split(BEGIN, 1)[1]
    (destination / "model_card.json").write_text(json.dumps(card, indent=1, sort_keys=True))
    markdown.write_text(render_markdown(card) + (f"\n{kept}" if kept else ""))


ROLE_PRIORS_TEXT = (
    "Added to the model's log-probabilities where the utterance's speaker is known (the scorer reads the "
    "channel: agent or customer), then renormalised; text without a role (a mixed channel, a text with no "
    "speaker) is scored by its words alone. The metrics above are with them: the sales sets know who "
    "speaks, the general ones do not."
)


def render_markdown(card: dict[str, Any]) -> str:
    lines = [
        f"# callsense sentiment model {card['version']}",
        "",
        card.get("description", ""),
        "",
        "## Files",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
    ]
    for name, info in sorted(card["files"].items()):
        lines.append(f"| {name} | {info['bytes']} | `{info['sha256']}` |")
    lines += ["", "## Training", "", "```json", json.dumps(card.get("training", {}), indent=1), "```", ""]
    lines += ["## Metrics", ""]
    for spec, report in card["metrics"].items():
        lines += [
            f"### {spec} (n={report['n']})",
            "",
            f"accuracy {report['accuracy']:.4f} · macro-F1 {report['macro_f1']:.4f} · "
            f"weighted-F1 {report['weighted_f1']:.4f} · ECE {report['ece']:.4f}",
            "",
            "| class | precision | recall | F1 | support | ROC-AUC (one vs rest) |",
            "|---|---|---|---|---|---|",
        ]
        for name in LABELS:
            pc = report["per_class"][name]
            auc = report["roc_auc_ovr"].get(name)
            auc_text = f"{auc:.4f}" if auc is not None else "n/a"
            lines.append(
                f"| {name} | {pc['precision']:.4f} | {pc['recall']:.4f} | {pc['f1']:.4f} "
                f"| {pc['support']} | {auc_text} |"
            )
        lines += ["", "Confusion matrix (rows: truth, columns: predicted; negative, neutral, positive):", ""]
        lines += ["    " + " ".join(f"{v:5d}" for v in row) for row in report["confusion_matrix"]]
        lines.append("")
    if "quantisation" in card:
        lines += ["## Quantisation", "", "```json", json.dumps(card["quantisation"], indent=1), "```", ""]
    if card.get("role_priors"):
        lines += [
            "## Role priors",
            "",
            ROLE_PRIORS_TEXT,
            "",
            "| role | lines | negative | neutral | positive |",
        ]
        lines.append("|---|---|---|---|---|")
        priors = card["role_priors"]
        for role, shift in sorted(priors["shift"].items()):
            lines.append(
                f"| {role} | {priors['lines'][role]} | " + " | ".join(f"{v:+.3f}" for v in shift) + " |"
            )
        lines += ["", f"Fitted on {priors['fitted_on']} (`callsense fit-role-priors`).", ""]
    if "serving" in card:  # how the scorer serves the file, where that differs from the file (re-measured)
        lines += ["## Serving", "", card["serving"], ""]
    if "notes" in card:
        lines += ["## Notes", "", card["notes"], ""]
    return "\n".join(lines)


def file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def version_stamp() -> str:
    return time.strftime("%Y.%m.%d-%H%M", time.gmtime())
