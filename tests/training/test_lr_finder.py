"""The learning-rate range test on a tiny synthetic problem."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

torch = pytest.importorskip("torch")

from training.lr_finder import find_learning_rate  # noqa: E402


def _problem() -> tuple[torch.nn.Module, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    x = torch.randn(4096, 8)
    y = (x @ torch.randn(8) > 0).long()
    model = torch.nn.Linear(8, 2)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for start in range(0, 4096, 64):
                yield x[start : start + 64], y[start : start + 64]

    return model, batches()


def _loss(model: torch.nn.Module, batch: object) -> torch.Tensor:
    xb, yb = batch  # type: ignore[misc]
    return torch.nn.functional.cross_entropy(model(xb), yb)


def test_suggests_a_rate_that_trains_and_restores_the_weights() -> None:
    model, batches = _problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = find_learning_rate(
        model,
        lambda p: torch.optim.SGD(p, lr=0.1),
        batches,
        _loss,
        start_lr=1e-5,
        end_lr=10.0,
        steps=120,
        min_lr=1e-6,
        max_lr=10.0,
    )
    # The finder must put the weights back.
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    # On this problem SGD diverges above a few units and crawls below 1e-3: the pick is in between.
    assert 1e-3 <= result.suggested <= 2.0
    assert len(result.learning_rates) == len(result.losses) >= 20
    # Training with the suggestion actually learns.
    optimizer = torch.optim.SGD(model.parameters(), lr=result.suggested)
    first = _loss(model, next(batches)).item()
    for _ in range(200):
        optimizer.zero_grad()
        loss = _loss(model, next(batches))
        loss.backward()
        optimizer.step()
    assert loss.item() < first * 0.6


def test_stops_when_the_loss_diverges() -> None:
    model, batches = _problem()
    result = find_learning_rate(
        model,
        lambda p: torch.optim.SGD(p, lr=0.1),
        batches,
        _loss,
        start_lr=1e-3,
        end_lr=1e6,
        steps=200,
        max_lr=1e6,
    )
    assert len(result.losses) < 200
