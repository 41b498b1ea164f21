"""What every inference backend offers: padded token batches in, class probabilities out."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    """An inference engine for the exported sentiment model.

    `predict` takes the three padded inputs (int64, shape (batch, tokens)) and returns logits of
    shape (batch, 3) as float32. Implementations are not thread-safe unless they say so: the scorer
    calls one backend from one inference thread.
    """

    name: str
    batches_exactly: bool
    """Whether items scored together in one padded pass get the scores they would get alone. False
    sends every item through a pass of its own (see ``SentimentModel.predict_encoded``)."""

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]
