"""The learning-rate range test (Smith, 2015): raise the rate exponentially over a short run and
pick one a decade below where the loss is lowest, before it blows up.

It trains on a copy of the weights it was given and puts them back afterwards, so the real run
starts from the same point whatever the finder did.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

Batch = TypeVar("Batch")


@dataclass(frozen=True)
class LrFinderResult:
    learning_rates: list[float]
    losses: list[float]  # smoothed
    suggested: float


def find_learning_rate(
    model: torch.nn.Module,
    make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    batches: Iterator[Batch],
    loss_of: Callable[[torch.nn.Module, Batch], torch.Tensor],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 1e-2,
    steps: int = 100,
    smoothing: float = 0.9,
    divergence: float = 4.0,
    min_lr: float = 1e-6,
    max_lr: float = 1e-3,
) -> LrFinderResult:
    """Run the range test and return the rates tried, the smoothed losses, and the suggestion.

    The suggestion is the rate of the lowest smoothed loss divided by ten, clamped to
    [min_lr, max_lr]: at the minimum the rate is already too high to train stably.
    """
    saved_state = copy.deepcopy(model.state_dict())
    was_training = model.training
    model.train()
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
    factor = (end_lr / start_lr) ** (1.0 / max(steps - 1, 1))
    rates: list[float] = []
    losses: list[float] = []
    average = 0.0
    best = math.inf
    try:
        for step in range(steps):
            rate = start_lr * factor**step
            for group in optimizer.param_groups:
                group["lr"] = rate
            try:
                batch = next(batches)
            except StopIteration:
                break
            optimizer.zero_grad()
            loss = loss_of(model, batch)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                break
            average = smoothing * average + (1 - smoothing) * value
            smoothed = average / (1 - smoothing ** (step + 1))
            rates.append(rate)
            losses.append(smoothed)
            best = min(best, smoothed)
            if step > 5 and smoothed > divergence * best:
                break
    finally:
        model.load_state_dict(saved_state)
        model.train(was_training)
    if not losses:
        raise RuntimeError("learning-rate finder saw no finite loss: check the data and the model")
    at_minimum = rates[losses.index(min(losses))]
    suggested = min(max(at_minimum / 10.0, min_lr), max_lr)
    return LrFinderResult(rates, losses, suggested)
