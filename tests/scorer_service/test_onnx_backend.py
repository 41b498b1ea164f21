"""The CPU backend serves the shipped model's weights in the form this CPU's fastest INT8 kernel reads."""

from __future__ import annotations

import numpy as np
import pytest

from callsense.int8_weights import cpu_has_vnni
from callsense.tokenization import SHIPPED_MODEL_DIR, SentimentTokenizer, pad_batch
from scorer_service.backends.onnx import OnnxBackend

SHIPPED_MODEL = SHIPPED_MODEL_DIR / "model.int8.onnx"


def test_the_backend_signs_the_weights_only_where_asked_or_vnni_is_found() -> None:
    assert OnnxBackend(SHIPPED_MODEL, vnni=False).signed_tensors == 0
    assert OnnxBackend(SHIPPED_MODEL, vnni=True).signed_tensors > 0
    expected = OnnxBackend(SHIPPED_MODEL, vnni=True).signed_tensors if cpu_has_vnni() else 0
    assert OnnxBackend(SHIPPED_MODEL).signed_tensors == expected


@pytest.mark.skipif(
    not cpu_has_vnni(), reason="signed weights are served only on VNNI CPUs, where they are exact"
)
def test_served_signed_on_vnni_the_scores_do_not_move() -> None:
    tokenizer = SentimentTokenizer(SHIPPED_MODEL_DIR / "tokenizer.json")
    feed = pad_batch(
        [tokenizer.encode("Honestly, that's a lot more than we budgeted.", "It's five thousand a month.")]
    )
    np.testing.assert_array_equal(
        OnnxBackend(SHIPPED_MODEL).predict(feed), OnnxBackend(SHIPPED_MODEL, vnni=False).predict(feed)
    )
