"""Unsigned INT8 weights served signed on VNNI CPUs: the rewrite must not change a single score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from callsense.int8_weights import cpu_has_vnni, load_for_this_cpu, sign_weights
from callsense.tokenization import SHIPPED_MODEL_DIR, SentimentTokenizer, pad_batch

SHIPPED_MODEL = SHIPPED_MODEL_DIR / "model.int8.onnx"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16", True),
        ("fpu sse2 avx2 avx_vnni", True),
        ("fpu sse2 avx2 fma avx512f avx512bw", False),  # AVX-512 without VNNI saturates u8 x s8
        ("fpu sse2 avx2 avx512vnni_fake", False),
    ],
)
def test_vnni_is_read_from_the_kernels_flags(tmp_path: Path, flags: str, expected: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cpu_has_vnni(cpuinfo) is expected


def test_without_vnni_the_file_is_served_as_it_is() -> None:
    assert load_for_this_cpu(SHIPPED_MODEL, vnni=False) == (None, 0)


def test_no_cpuinfo_means_no_vnni(tmp_path: Path) -> None:
    assert cpu_has_vnni(tmp_path / "absent") is False
    (tmp_path / "no-flags").write_text("processor\t: 0\n")
    assert cpu_has_vnni(tmp_path / "no-flags") is False


def _matmul_integer_graph(
    weights: np.ndarray, zero_points: np.ndarray, *, weight_also_cast: bool = False
) -> onnx.ModelProto:
    """x (fp32) -> DynamicQuantizeLinear -> MatMulInteger with stored u8 weights -> int32; optionally
    the weight table is also read by a Cast (as a quantised embedding table would be by a lookup)."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.INT32, [2, weights.shape[1]])]
    if weight_also_cast:
        nodes.append(helper.make_node("Cast", ["w"], ["w_float"], to=TensorProto.FLOAT))
        outputs.append(helper.make_tensor_value_info("w_float", TensorProto.FLOAT, list(weights.shape)))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, weights.shape[0]])],
        outputs,
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(zero_points, "wz")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, {"x": x})]


def _small_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    # Weights near 128 keep |u8 x s8| pair sums far from int16's limit, so the products are exact on
    # every CPU, VNNI or not: these tests run everywhere.
    weights = rng.integers(100, 157, size=(16, 8)).astype(np.uint8)
    zero_points = rng.integers(110, 147, size=(8,)).astype(np.uint8)
    return weights, zero_points, rng.normal(size=(2, 16)).astype(np.float32)


def test_signed_weights_compute_the_same_products() -> None:
    weights, zero_points, x = _small_weights()
    stored = _matmul_integer_graph(weights, zero_points)
    signed = _matmul_integer_graph(weights, zero_points)

    assert sign_weights(signed) == 2
    by_name = {t.name: numpy_helper.to_array(t) for t in signed.graph.initializer}
    assert by_name["w"].dtype == np.int8 and by_name["wz"].dtype == np.int8
    np.testing.assert_array_equal(
        by_name["w"].astype(np.int32) - by_name["wz"].astype(np.int32),
        weights.astype(np.int32) - zero_points.astype(np.int32),
    )
    np.testing.assert_array_equal(_run(signed, x)[0], _run(stored, x)[0])
    assert sign_weights(signed) == 0  # already signed: nothing left to shift


def test_a_weight_read_by_another_operator_keeps_its_type_and_so_does_its_zero_point() -> None:
    weights, zero_points, x = _small_weights()
    model = _matmul_integer_graph(weights, zero_points, weight_also_cast=True)
    assert sign_weights(model) == 0
    assert {t.name: t.data_type for t in model.graph.initializer} == {
        "w": TensorProto.UINT8,
        "wz": TensorProto.UINT8,
    }
    product, as_float = _run(model, x)  # still a valid graph, the Cast still reads the stored values
    np.testing.assert_array_equal(as_float, weights.astype(np.float32))


def test_the_shipped_models_weights_and_zero_points_shift_together() -> None:
    stored = onnx.load(str(SHIPPED_MODEL))
    signed = onnx.load(str(SHIPPED_MODEL))
    count = sign_weights(signed)
    assert count > 0, "the shipped model's INT8 weights are unsigned: the rewrite has work to do"
    before = {t.name: numpy_helper.to_array(t) for t in stored.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in signed.graph.initializer}
    changed = [name for name in after if after[name].dtype != before[name].dtype]
    assert len(changed) == count
    assert all(after[name].dtype == np.int8 and before[name].dtype == np.uint8 for name in changed)
    for name in changed:
        np.testing.assert_array_equal(after[name].astype(np.int16) + 128, before[name].astype(np.int16))
    for node in signed.graph.node:  # every node reads its weight and zero point in one form
        slots = {"MatMulInteger": (1, 3), "QAttention": (1, 7)}.get(node.op_type)
        if slots:
            assert after[node.input[slots[0]]].dtype == after[node.input[slots[1]]].dtype, node.name
    weight_inputs = [n.input[1] for n in signed.graph.node if n.op_type in ("MatMulInteger", "QAttention")]
    assert weight_inputs and all(after[name].dtype == np.int8 for name in weight_inputs if name in after)


@pytest.mark.skipif(
    not cpu_has_vnni(), reason="signed weights are served only on VNNI CPUs, where they are exact"
)
def test_on_a_vnni_cpu_the_shipped_model_scores_bit_for_bit_the_same() -> None:
    tokenizer = SentimentTokenizer(SHIPPED_MODEL_DIR / "tokenizer.json")
    served, count = load_for_this_cpu(SHIPPED_MODEL)
    assert served is not None and count > 0
    signed = ort.InferenceSession(served.SerializeToString(), providers=["CPUExecutionProvider"])
    stored = ort.InferenceSession(str(SHIPPED_MODEL), providers=["CPUExecutionProvider"])
    lines = [
        ("That's well over what we budgeted for this quarter.", "The premium plan is five thousand a month."),
        ("Sure, we have about twenty minutes.", ""),
        ("The dashboards in the demo looked really useful.", "Let me show you the reporting."),
    ]
    for text, previous in lines:
        feed = pad_batch([tokenizer.encode(text, previous)])
        np.testing.assert_array_equal(signed.run(None, feed)[0], stored.run(None, feed)[0])
