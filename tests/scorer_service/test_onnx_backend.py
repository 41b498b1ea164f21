"""The CPU backend serves the shipped model in the form ONNX Runtime's CPU kernels run fastest: plain layer
norms, and the INT8 weights as this CPU's fastest kernel reads them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from callsense.int8_weights import cpu_has_vnni
from callsense.tokenization import SHIPPED_MODEL_DIR, SentimentTokenizer, pad_batch
from scorer_service.backends.layer_norm import DISABLE_OPTIMIZERS, FUSION, unfuse_skip_layer_norm
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


def skip_layer_norm_graph(with_beta: bool, with_bias: bool) -> onnx.ModelProto:
    """One SkipLayerNormalization (ONNX Runtime's contrib operator) over random weights."""
    rng = np.random.default_rng(7)
    hidden = 16
    weights = {
        "gamma": rng.normal(1.0, 0.1, hidden),
        "beta": rng.normal(0.0, 0.1, hidden),
        "bias": rng.normal(0.0, 0.5, hidden),
    }
    inputs = ["x", "skip", "gamma", "beta" if with_beta else "", "bias" if with_bias else ""]
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node(
        "SkipLayerNormalization", inputs, ["y"], domain="com.microsoft", epsilon=1e-5, name="sln"
    )
    graph = helper.make_graph(
        [node],
        "sln",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, "n", hidden]) for name in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", hidden])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items() if k in inputs],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry(DISABLE_OPTIMIZERS, FUSION)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(session(model).run(["y"], feed)[0])


@pytest.mark.parametrize(("with_beta", "with_bias"), [(True, True), (True, False), (False, True)])
def test_plain_layer_norms_compute_what_the_fused_node_does(with_beta: bool, with_bias: bool) -> None:
    fused = skip_layer_norm_graph(with_beta, with_bias)
    plain = onnx.ModelProto()
    plain.CopyFrom(fused)
    rng = np.random.default_rng(11)
    feed = {name: rng.normal(0, 2, (1, 5, 16)).astype(np.float32) for name in ("x", "skip")}

    assert unfuse_skip_layer_norm(plain) == 1
    assert [n.op_type for n in plain.graph.node] == ["Add"] * (1 + with_bias) + ["LayerNormalization"]
    np.testing.assert_allclose(run(plain, feed), run(fused, feed), atol=1e-5)


def test_onnx_runtime_runs_the_shipped_model_with_plain_layer_norms(tmp_path: Path) -> None:
    OnnxBackend(SHIPPED_MODEL, optimized_model_path=tmp_path / "served.onnx")
    OnnxBackend(SHIPPED_MODEL, unfuse_layer_norm=False, optimized_model_path=tmp_path / "stored.onnx")

    def ops(path: Path) -> Counter[str]:
        return Counter(node.op_type for node in onnx.load(str(path)).graph.node)

    served, stored = ops(tmp_path / "served.onnx"), ops(tmp_path / "stored.onnx")
    # What ONNX Runtime runs after its own fusions, not just what it was handed.
    assert served["SkipLayerNormalization"] == 0 and served["LayerNormalization"] == 12
    assert stored["SkipLayerNormalization"] == 12 and stored["LayerNormalization"] == 0


def test_a_graph_before_opset_17_is_left_as_it_is() -> None:
    model = skip_layer_norm_graph(True, True)
    model.opset_import[0].version = 16
    assert unfuse_skip_layer_norm(model) == 0
    assert [n.op_type for n in model.graph.node] == ["SkipLayerNormalization"]


def test_the_shipped_model_served_with_plain_layer_norms_keeps_each_label_within_0_06() -> None:
    served = OnnxBackend(SHIPPED_MODEL)
    as_stored = OnnxBackend(SHIPPED_MODEL, unfuse_layer_norm=False)
    assert served.unfused_layer_norms == 12
    assert as_stored.unfused_layer_norms == 0
    tokenizer = SentimentTokenizer(SHIPPED_MODEL_DIR / "tokenizer.json")
    pairs = [
        ("It comes to forty dollars per seat per month.", "Honestly that's well over what we budgeted."),
        ("We can start the pilot next week.", "That works for us, the team is keen to get going."),
        ("Who else would sign off on this?", "I'd have to take it to our CFO before we go any further."),
        ("", "We're already locked in with another vendor until spring."),
    ]
    for previous, line in pairs:
        feed = pad_batch([tokenizer.encode(line, previous)])
        served_p = softmax(served.predict(feed))
        stored_p = softmax(as_stored.predict(feed))
        # Rounding in the last bits, through the next dynamic quantisation (see layer_norm's docs).
        assert np.abs(served_p - stored_p).max() < 0.06, line
        assert served_p.argmax() == stored_p.argmax(), line


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
