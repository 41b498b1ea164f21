"""Role priors: per speaker role, a shift of the model's log-probabilities fitted on labelled calls.

The text model reads words. On a sales call the same words mean different things by who says them: a
rep's "wonderful, I'll send the agreement over" is the rep doing the job (neutral in the rubric,
docs/labelling.md), a buyer's is a step toward the deal; a rep is almost never negative, a buyer far more
often than the TV dialogue and tweets the model also learnt from. The scorer knows each utterance's
channel (agent or customer), so the model card carries, per role, three offsets added to the model's
log-probabilities (the neutral one held at 0): a prior shift (label-shift adaptation) fitted for lowest
negative log-likelihood on the sales dev split, the same kind of fit as the export's class bias.
Text without a role (a mixed channel, a text call with no speaker) keeps the words' own scores, so the
general corpora's figures do not move.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scorer_service.inference import ROLES, SentimentModel
from training.data import LabelledUtterance, load_source
from training.evaluate import evaluate_sets, onnx_model, predict_examples, write_model_card

MIN_LINES = 100
"""A role with fewer labelled lines than this on the fitting set gets no prior (too few to fit three
classes' balance)."""


def fit_shift(probs: np.ndarray, labels: Sequence[int]) -> list[float]:
    """Offsets b (neutral held at 0) that make softmax(log p + b) best calibrated (lowest NLL)."""
    from scipy.optimize import minimize

    log_probs = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    truth = np.asarray(labels, dtype=np.int64)

    def nll(params: Any) -> float:
        shifted = log_probs + np.array([params[0], 0.0, params[1]])
        shifted -= shifted.max(axis=1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-log_softmax[np.arange(len(truth)), truth].mean())

    fitted = minimize(nll, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7})
    return [float(fitted.x[0]), 0.0, float(fitted.x[1])]


def fit_role_priors(
    model: SentimentModel, examples: Sequence[LabelledUtterance], fitted_on: str
) -> dict[str, Any]:
    """The card's ``role_priors`` section for ``model`` (scored without priors) on ``examples``."""
    if model.info.role_priors:
        raise ValueError("fit role priors on the model's own scores: load it without its role priors")
    probs = predict_examples(model, list(examples))
    roles = np.array([e.role for e in examples])
    labels = np.array([e.label for e in examples])
    shift, lines = {}, {}
    for role in ROLES:
        mask = roles == role
        lines[role] = int(mask.sum())
        if lines[role] >= MIN_LINES:
            shift[role] = fit_shift(probs[mask], labels[mask])
    if not shift:
        raise ValueError(
            f"{fitted_on} has fewer than {MIN_LINES} lines of any role ({lines}): role priors need a set "
            "whose lines say who speaks (the sales corpus: sales:dev)"
        )
    return {"fitted_on": fitted_on, "shift": shift, "lines": lines}


def refit_card(model_dir: Path, fitted_on: str = "sales:dev", threads: int = 2) -> dict[str, Any]:
    """Fit the role priors of the model in ``model_dir`` on ``fitted_on``, then re-measure every set its
    card reports with them (sets without roles score as before) and rewrite the card. Returns the card."""
    import json

    from scorer_service.inference import parse_role_priors

    card: dict[str, Any] = json.loads((model_dir / "model_card.json").read_text())
    onnx_path = model_dir / "model.int8.onnx"
    tokenizer = model_dir / "tokenizer.json"
    uses_context = bool(card.get("uses_context", False))
    uses_roles = bool(card.get("uses_roles", False))
    words_only = onnx_model(onnx_path, tokenizer, uses_context, threads, uses_roles=uses_roles)
    card["role_priors"] = fit_role_priors(words_only, load_source(fitted_on).examples, fitted_on)
    with_priors = onnx_model(
        onnx_path,
        tokenizer,
        uses_context,
        threads,
        parse_role_priors(card["role_priors"]["shift"]),
        uses_roles=uses_roles,
    )
    card["metrics"] = evaluate_sets(with_priors, list(card.get("metrics") or [fitted_on]))
    write_model_card(model_dir, card)
    return card
