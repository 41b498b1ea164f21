"""SmoothQuant (Xiao et al., 2023) for the feed-forward output projections, so that they can be INT8 too.

Dynamic INT8 gives each activation tensor one scale per pass. The feed-forward output projection reads the
GELU's output, where a few channels run tens of times larger than the rest: one scale sized for them
leaves the others a handful of levels, which is why those projections were kept in fp32 (README, INT8
that loses less), at a quarter of the scorer's time. SmoothQuant moves the outliers into the weights:

    x @ W  =  (x / s) @ (s * W),   s_j = max|x_j| ** alpha / max|W_j.| ** (1 - alpha)

per input channel j, with max|x_j| measured on calibration text. The division is a ``Mul`` by the
constant 1/s before the projection (named ``<projection>/Smooth``: the GELU before it cannot absorb a
scale, unlike a layer norm), and ``s * W`` replaces the weights. In fp32 the graph computes what it did
(to rounding); ``training/recover.py`` folds 1/s back into the weights it recovers.

The weights are quantised per output column, so a row scaled up sets its columns' scales: moving too much
costs the weights what it saves the activations. Here alpha is chosen by measurement (README, The model:
0.95 kept the fp32 blocks' fidelity; the paper's 0.5 was worse than no smoothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from onnx import GraphProto

SMOOTH_SUFFIX = "/Smooth"
"""A smoothing ``Mul`` is named after the projection it feeds, plus this."""


def input_ranges(
    fused: Path, projections: Sequence[str], feeds: Iterable[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Per named MatMul of the fp32 graph ``fused``, the largest magnitude of each channel of its input
    over ``feeds`` (the model's inputs, one pass each)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(fused))
    nodes = {node.name: node for node in model.graph.node}
    missing = [name for name in projections if name not in nodes]
    if missing:
        raise ValueError(f"{fused} has no node {', '.join(missing)}")
    activations = [nodes[name].input[0] for name in projections]
    for activation in activations:  # read the inputs out of the graph, beside its logits
        model.graph.output.append(helper.make_tensor_value_info(activation, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep them all
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    largest: list[np.ndarray | None] = [None] * len(activations)
    passes = 0
    for feed in feeds:
        passes += 1
        mask = np.asarray(feed["attention_mask"], dtype=bool).reshape(-1)
        for k, values in enumerate(session.run(activations, dict(feed))):
            rows = np.abs(np.asarray(values)).reshape(-1, values.shape[-1])[mask]  # padding says nothing
            seen = rows.max(axis=0)
            current = largest[k]
            largest[k] = seen if current is None else np.maximum(current, seen)
    if not passes:
        raise ValueError("no calibration inputs: SmoothQuant needs text to measure the activations on")
    return {name: np.asarray(values, np.float32) for name, values in zip(projections, largest, strict=True)}


def smooth(fused: Path, out: Path, ranges: Mapping[str, np.ndarray], alpha: float) -> Path:
    """Write ``fused`` with each projection in ``ranges`` smoothed (module docstring); returns ``out``.

    ``alpha`` moves the difficulty: 0 leaves the activations as they are, 1 moves all of it to the weights.
    """
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.transformers.onnx_model import OnnxModel

    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha {alpha}: SmoothQuant's migration strength lies between 0 and 1")
    model = onnx.load(str(fused))
    initializers = {init.name: init for init in model.graph.initializer}
    nodes = {node.name: node for node in model.graph.node}
    for name, activation_max in ranges.items():
        node = nodes[name]
        if f"{name}{SMOOTH_SUFFIX}" in nodes:
            raise ValueError(f"{name} is smoothed already: smooth the unsmoothed export")
        weight = numpy_helper.to_array(initializers[node.input[1]])  # [in, out]: the graph computes x @ W
        if weight.shape[0] != activation_max.shape[0]:
            raise ValueError(f"{name}: {activation_max.shape[0]} input channels measured, {weight.shape[0]}")
        weight_max = np.abs(weight).max(axis=1)
        # A channel never seen active (or a zero row) keeps its scale: nothing to move.
        scale = np.where(
            (activation_max > 0) & (weight_max > 0),
            np.clip(activation_max, 1e-5, None) ** alpha / np.clip(weight_max, 1e-5, None) ** (1 - alpha),
            1.0,
        ).astype(np.float32)
        initializers[node.input[1]].CopyFrom(
            numpy_helper.from_array((weight * scale[:, None]).astype(np.float32), node.input[1])
        )
        inverse = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{name}{SMOOTH_SUFFIX}_inverse")
        model.graph.initializer.append(inverse)
        smoothed = f"{name}{SMOOTH_SUFFIX}_output"
        model.graph.node.append(
            helper.make_node("Mul", [node.input[0], inverse.name], [smoothed], name=f"{name}{SMOOTH_SUFFIX}")
        )
        node.input[0] = smoothed
    sorted_model = OnnxModel(model)
    sorted_model.topological_sort()  # the Mul was appended; it must run before its projection
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(sorted_model.model, str(out))
    return out


def smoothing_scales(graph: GraphProto) -> dict[str, np.ndarray]:
    """For an ONNX graph: projection name -> s, where its stored weights are s * W (``recover`` divides)."""
    from onnx import numpy_helper

    arrays = {init.name: init for init in graph.initializer}
    scales: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type == "Mul" and node.name.endswith(SMOOTH_SUFFIX) and node.input[1] in arrays:
            inverse = numpy_helper.to_array(arrays[node.input[1]]).astype(np.float32)
            scales[node.name.removesuffix(SMOOTH_SUFFIX)] = 1.0 / inverse
    return scales
