"""Average the weights of several fine-tuned runs of the same base model (a "model soup").

Runs fine-tuned from the same pre-trained weights with different seeds land in one basin of the loss;
their average is often better than any one of them and costs nothing at inference (Wortsman et al.,
2022). The greedy variant adds a run only if the soup's dev macro-F1 does not drop.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    keys = states[0].keys()
    for state in states[1:]:
        if state.keys() != keys:
            raise ValueError(
                "checkpoints differ in their parameters: only runs of one architecture can be averaged"
            )
    averaged = {}
    for key in keys:
        tensors = [state[key] for state in states]
        if tensors[0].is_floating_point():
            averaged[key] = torch.stack([t.float() for t in tensors]).mean(dim=0).to(tensors[0].dtype)
        else:
            averaged[key] = tensors[0].clone()
    return averaged


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
    output.mkdir(parents=True, exist_ok=True)
    soup.save_pretrained(output)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (ranked[0] / name).exists():
            shutil.copy2(ranked[0] / name, output / name)
    training = json.loads((ranked[0] / "training.json").read_text())
    training["soup"] = {"members": [str(p) for p in chosen], "alone": {str(p): alone[p] for p in checkpoints}}
    training["dev"] = {"macro_f1": best}
    (output / "training.json").write_text(json.dumps(training, indent=1))
    return chosen, best
