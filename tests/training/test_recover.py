"""Recovering fp32 weights from an exported model: exact from a fp32 graph, within a quantisation step
from an INT8 one, the folded calibration taken back out, and a refusal when the template does not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.checkpoints import save_tiny_bert
from training.export import INT8_WEIGHTS, export_all, quantisable_blocks, quantise
from training.recover import RecoveryError, recover_checkpoint, recover_weights


def _original(checkpoint: Path) -> dict[str, np.ndarray]:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    return {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def test_a_fp32_graph_gives_back_every_weight_exactly(trained_like: Path, tmp_path: Path) -> None:
    files, _ = export_all(trained_like, tmp_path)
    recovered = recover_weights(files.fused)
    original = _original(trained_like)
    assert set(original) <= set(recovered)
    for name, weight in original.items():
        np.testing.assert_allclose(recovered[name], weight, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("weights", INT8_WEIGHTS)
def test_an_int8_model_comes_back_within_a_quantisation_step_and_scores_alike(
    trained_like: Path, tmp_path: Path, weights: str
) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForSequenceClassification

    temperature, class_bias = 0.6, [0.3, 0.0, -0.2]
    files, _ = export_all(trained_like, tmp_path / "onnx", temperature, class_bias)
    served = tmp_path / "served"
    served.mkdir()
    # Layer 1's attention and layer 0's feed-forward output kept fp32, the rest INT8: mixed graphs as
    # served (the model of 2026-12-05 06:37 keeps feed-forward outputs in fp32).
    blocks = quantisable_blocks(files.fused)
    quantise(
        files.fused,
        served / "model.int8.onnx",
        keep_fp32=blocks["layer1.attention"] + blocks["layer0.ffn_out"],
        weights=weights,
    )
    card = {"calibration": {"temperature": temperature, "class_bias": class_bias}, "uses_context": True}
    (served / "model_card.json").write_text(json.dumps(card))
    out = recover_checkpoint(served, trained_like, tmp_path / "recovered")

    original, recovered = _original(trained_like), _original(out.output)
    for name, weight in original.items():
        # INT8 matrices: a quantisation step is about 1/127 of a column's range.
        if weight.ndim == 2 and "embeddings" not in name:
            error = np.abs(recovered[name] - weight).max()
            assert error <= np.abs(weight).max() / 100, f"{name}: off by {error}"
        elif "embeddings" not in name:  # biases and layer norms stay fp32 (the classifier's bias unfolded)
            np.testing.assert_allclose(recovered[name], weight, atol=1e-5, err_msg=name)
        else:  # embeddings and their layer norm: 8 bits over the whole tensor's range
            step = (max(weight.max(), 0.0) - min(weight.min(), 0.0)) / 255
            error = np.abs(recovered[name] - weight).max()
            assert error <= step, f"{name}: off by {error}, a step is {step}"
    np.testing.assert_allclose(  # the fp32-kept attention block: exact
        recovered["bert.encoder.layer.1.attention.self.query.weight"],
        original["bert.encoder.layer.1.attention.self.query.weight"],
        atol=1e-6,
    )
    assert json.loads((out.output / "training.json").read_text())["config"]["context"] is True

    ids = torch.tensor([[101, 2023, 3976, 2003, 2092, 2058, 2256, 5166, 102]])
    with torch.no_grad():
        before = AutoModelForSequenceClassification.from_pretrained(trained_like)(input_ids=ids).logits
        after = AutoModelForSequenceClassification.from_pretrained(out.output)(input_ids=ids).logits
    np.testing.assert_allclose(after.numpy(), before.numpy(), atol=0.05)


def test_a_template_of_another_shape_is_refused(trained_like: Path, tmp_path: Path) -> None:
    files, _ = export_all(trained_like, tmp_path / "onnx")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(files.int8, served / "model.int8.onnx")
    (served / "model_card.json").write_text("{}")
    template = save_tiny_bert(tmp_path / "wider", hidden_size=96)
    with pytest.raises(RecoveryError, match="in the template"):
        recover_checkpoint(served, template, tmp_path / "out")
    # A template with fewer layers would cut the model short.
    shallower = save_tiny_bert(tmp_path / "shallower", layers=1)
    with pytest.raises(RecoveryError, match="not in the template: bert.encoder.layer.1"):
        recover_checkpoint(served, shallower, tmp_path / "out")
