"""Average the weights of several fine-tuned runs of the same base model (a "model soup").

Runs fine-tuned from the same pre-trained weights with different seeds land in one basin of the loss;
their average is often better than any one of them and costs nothing at inference (Wortsman et al.,
2022). The greedy variant adds a run only if the soup's dev macro-F1 does not drop.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def average_state_dicts(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """The weighted mean of each floating-point tensor (equal weights unless given; they are normalised to
    sum to 1); integer buffers are taken from the first state."""
    keys = states[0].keys()
    for state in states[1:]:
        if state.keys() != keys:
            raise ValueError(
                "checkpoints differ in their parameters: only runs of one architecture can be averaged"
            )
    share = _shares(len(states), weights)
    averaged = {}
    for key in keys:
        tensors = [state[key] for state in states]
        if tensors[0].is_floating_point():
            mixed = sum(w * t.float() for w, t in zip(share, tensors, strict=True))
            averaged[key] = torch.as_tensor(mixed).to(tensors[0].dtype)
        else:
            averaged[key] = tensors[0].clone()
    return averaged


def _shares(count: int, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} weights for {count} checkpoints")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    total = float(sum(weights))
    return [w / total for w in weights]


def weighted_average(checkpoints: Sequence[Path], weights: Sequence[float], output: Path) -> None:
    """A fixed weighted average of runs of one base model (no dev scoring): e.g. 0.45 of a run that learnt
    a new domain and 0.55 of the model it started from, which keeps more of what that model knew."""
    from transformers import AutoModelForSequenceClassification

    _shares(len(checkpoints), weights)  # refuse weights that do not fit before loading anything
    models = [
        AutoModelForSequenceClassification.from_pretrained(p, attn_implementation="eager")
        for p in checkpoints
    ]
    soup = models[0]
    soup.load_state_dict(average_state_dicts([m.state_dict() for m in models], weights))
    _save(
        soup,
        checkpoints[0],
        output,
        {"members": [str(p) for p in checkpoints], "weights": _shares(len(checkpoints), weights)},
    )


def _save(soup: Any, first: Path, output: Path, recipe: dict[str, Any], dev: float | None = None) -> None:
    """The soup with the first run's tokenizer files and training.json (recording how it was made)."""
    output.mkdir(parents=True, exist_ok=True)
    soup.save_pretrained(output)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (first / name).exists():
            shutil.copy2(first / name, output / name)
    training = json.loads((first / "training.json").read_text())
    training["soup"] = recipe
    if dev is not None:
        training["dev"] = {"macro_f1": dev}
    (output / "training.json").write_text(json.dumps(training, indent=1))


def greedy_soup(
    checkpoints: Sequence[Path], output: Path, score: Callable[[Any], float]
) -> tuple[list[Path], float]:
    """Greedy soup: order runs by their own dev score, add each one that does not lower the soup's."""
    from transformers import AutoModelForSequenceClassification

    def load(path: Path) -> Any:
        return AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager")

    models = {path: load(path) for path in checkpoints}
    alone = {path: score(model) for path, model in models.items()}
    ranked = sorted(checkpoints, key=lambda p: alone[p], reverse=True)
    chosen = [ranked[0]]
    best = alone[ranked[0]]
    soup = load(ranked[0])
    for candidate in ranked[1:]:
        trial = average_state_dicts([models[p].state_dict() for p in [*chosen, candidate]])
        soup.load_state_dict(trial)
        value = score(soup)
        print(f"soup of {len(chosen) + 1}: dev macro-F1 {value:.4f} (best so far {best:.4f})")
        if value >= best:
            chosen.append(candidate)
            best = value
    soup.load_state_dict(average_state_dicts([models[p].state_dict() for p in chosen]))
    recipe = {"members": [str(p) for p in chosen], "alone": {str(p): alone[p] for p in checkpoints}}
    _save(soup, ranked[0], output, recipe, dev=best)
    return chosen, best
