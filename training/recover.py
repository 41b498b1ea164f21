"""Recover fp32 weights from a served INT8 model: a checkpoint to fine-tune from when the original is gone.

The export keeps only the ONNX file (training/export.py); the fp32 checkpoint it came from (for the model
of 2026-11-26, a soup of two runs) lives in a run folder that does not travel. Dynamic INT8 keeps each
weight matrix as integers with a scale and zero point per output column, so the fp32 weights come back
as ``(q - zero_point) * scale``: within half a quantisation step of the originals, close enough that the
recovered model scores as the served one does (measured on MELD dev: 0.6726 recovered in fp32 against
0.6677 served in INT8), and a fine-tuning run can start from what is shipped rather than from scratch.

Reads the graph that the export writes for a BERT encoder (the fused ``Attention`` / ``QAttention``,
``MatMulInteger`` or fp32 ``MatMul`` per dense layer, ``(Q)EmbedLayerNormalization``) and the card's
temperature, which the export folds into the classifier (``fold_temperature``) and this unfolds, and
the SmoothQuant scales of projections the export smoothed (``training/smooth_quant.py``), which it divides
back out. The architecture and tokenizer come from a template checkpoint of the same shape (e.g. any
`train` output from the same base model); every parameter must be found in the graph, else it refuses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_LAYER_PATH = re.compile(r"^/(bert/encoder/layer\.\d+/[\w/]+?/dense)/(?:Gemm_)?MatMul(?:_quant)?$")
_HEADS = {"/bert/pooler/dense/Gemm_MatMul": "bert.pooler.dense", "/classifier/Gemm_MatMul": "classifier"}
_EMBEDDINGS = (
    "word_embeddings.weight",
    "position_embeddings.weight",
    "token_type_embeddings.weight",
    "LayerNorm.weight",
    "LayerNorm.bias",
)


class RecoveryError(ValueError):
    """The ONNX graph does not hold every parameter of the template's architecture."""


class _Initializers(dict[str, np.ndarray]):
    def __init__(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        super().__init__(arrays)
        self.path = path

    def __missing__(self, name: str) -> np.ndarray:
        raise RecoveryError(f"{self.path}: a node reads {name}, which the graph does not store")


@dataclass(frozen=True)
class Recovered:
    output: Path
    parameters: int
    temperature: float


def recover_weights(
    onnx_path: Path, temperature: float = 1.0, class_bias: list[float] | None = None
) -> dict[str, np.ndarray]:
    """The fp32 parameters of an exported BERT classifier, under Hugging Face's names, with the folded
    calibration (``fold_temperature``: weights and bias divided by the temperature, then the class bias
    added) taken back out.

    Parameters are placed by the node that reads them, not by initializer names: the exporter merges
    initializers that hold the same values (every LayerNorm of an untrained model) under one name."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    from training.smooth_quant import smoothing_scales

    try:
        graph = onnx.load(str(onnx_path)).graph
    except (OSError, DecodeError) as exc:
        raise RecoveryError(f"{onnx_path}: no ONNX graph to read ({exc})") from exc
    arrays = _Initializers({i.name: numpy_helper.to_array(i) for i in graph.initializer}, onnx_path)

    def value(name: str) -> np.ndarray:
        """An initializer, dequantised when it is stored as integers (name_quantized, _scale, _zero_point)."""
        stem = name.removesuffix("_quantized")
        if stem == name:
            return arrays[name]
        q = arrays[name].astype(np.float32)
        result: np.ndarray = (q - arrays[f"{stem}_zero_point"].astype(np.float32)) * arrays[f"{stem}_scale"]
        return result

    smoothed = smoothing_scales(graph)  # projections stored as s * W (training/smooth_quant.py)
    state: dict[str, np.ndarray] = {}
    # The fuser emits these in graph order: per layer one attention, two skip-layer-norms (after the
    # attention and after the feed-forward) and one BiasGelu (as training/export.py's quantisable_blocks
    # reads the attentions).
    counts = {"attention": 0, "skip_norm": 0, "gelu": 0}

    def next_index(kind: str) -> int:
        counts[kind] += 1
        return counts[kind] - 1

    for node in graph.node:
        inputs = list(node.input)
        if node.op_type in ("MatMulInteger", "MatMul") and inputs[1] in arrays:
            name = node.name.removesuffix("_quant")
            match = _LAYER_PATH.match(name)
            module = match.group(1).replace("/", ".") if match else _HEADS.get(name)
            if module is None:
                raise RecoveryError(f"a weight of unknown place in the graph: {node.name}")
            weight = value(inputs[1])
            if name in smoothed:  # the Mul before it divides the input by s: W = (s * W) / s
                weight = weight / smoothed[name][:, None]
            state[f"{module}.weight"] = weight.T  # ONNX computes x @ W; torch keeps W transposed
        elif node.op_type == "Add" and node.name.removesuffix("_Add") + "_MatMul" in _HEADS:
            module = _HEADS[node.name.removesuffix("_Add") + "_MatMul"]
            state[f"{module}.bias"] = next(arrays[i] for i in inputs if i in arrays)
        elif node.op_type == "Gemm":  # an unquantised pooler or classifier: weight kept [out, in] (transB)
            module = _HEADS[node.name + "_MatMul"]
            state[f"{module}.weight"], state[f"{module}.bias"] = arrays[inputs[1]], arrays[inputs[2]]
        elif node.op_type in ("Attention", "QAttention"):
            layer = next_index("attention")
            qkv, bias = value(inputs[1]), arrays[inputs[2]]
            width = qkv.shape[1] // 3
            for index, part in enumerate(("query", "key", "value")):
                columns = slice(index * width, (index + 1) * width)
                state[f"bert.encoder.layer.{layer}.attention.self.{part}.weight"] = qkv[:, columns].T
                state[f"bert.encoder.layer.{layer}.attention.self.{part}.bias"] = bias[columns]
        elif node.op_type == "SkipLayerNormalization":  # input, skip, gamma, beta, the dense layer's bias
            index = next_index("skip_norm")
            module = f"bert.encoder.layer.{index // 2}.{'attention.output' if index % 2 == 0 else 'output'}"
            state[f"{module}.LayerNorm.weight"] = arrays[inputs[2]]
            state[f"{module}.LayerNorm.bias"] = arrays[inputs[3]]
            state[f"{module}.dense.bias"] = arrays[inputs[4]]
        elif node.op_type == "BiasGelu":
            state[f"bert.encoder.layer.{next_index('gelu')}.intermediate.dense.bias"] = arrays[inputs[1]]
        elif node.op_type == "EmbedLayerNormalization":  # ids, segment ids, the five below, mask
            for part, name in zip(_EMBEDDINGS, inputs[2:7], strict=True):
                state[f"bert.embeddings.{part}"] = arrays[name]
        elif node.op_type == "QEmbedLayerNormalization":  # the same five quantised, their scales, zero points
            for i, part in enumerate(_EMBEDDINGS):
                q, scale, zero = (arrays[inputs[first + i]] for first in (2, 8, 13))
                state[f"bert.embeddings.{part}"] = (q.astype(np.float32) - zero.astype(np.float32)) * scale
    if not {"classifier.weight", "classifier.bias"} <= state.keys():
        raise RecoveryError(f"{onnx_path} has no classifier this reads")
    shift = np.asarray(class_bias or 0.0, np.float32)
    state["classifier.bias"] = (state["classifier.bias"] - shift) * temperature
    state["classifier.weight"] = state["classifier.weight"] * temperature
    return state


def recover_checkpoint(model_dir: Path, template: Path, output: Path) -> Recovered:
    """Write a checkpoint of `template`'s architecture and tokenizer holding the weights of the served
    model in `model_dir` (model.int8.onnx and its model_card.json)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    card = json.loads((model_dir / "model_card.json").read_text(encoding="utf-8"))
    calibration = card.get("calibration", {})
    temperature = float(calibration.get("temperature", 1.0))
    weights = recover_weights(model_dir / "model.int8.onnx", temperature, calibration.get("class_bias"))
    labels = card.get("labels") or ["negative", "neutral", "positive"]
    # num_labels: a base encoder without a classifier gets one of the right shape to fill
    model: Any = AutoModelForSequenceClassification.from_pretrained(template, num_labels=len(labels))
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise RecoveryError(f"not found in the graph: {', '.join(missing[:5])} ({len(missing)} in all)")
    unused = sorted(set(weights) - set(expected))
    if unused:  # e.g. a template with fewer layers: the recovered model would be cut short
        raise RecoveryError(f"not in the template: {', '.join(unused[:5])} ({len(unused)} in all)")
    tensors = {}
    for name, reference in expected.items():
        tensor = torch.from_numpy(np.array(weights[name], dtype=np.float32))
        if tensor.shape != reference.shape:
            raise RecoveryError(
                f"{name}: {tuple(tensor.shape)} in the graph, {tuple(reference.shape)} in the template"
            )
        tensors[name] = tensor
    model.load_state_dict(tensors, strict=False)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(template).save_pretrained(output)
    provenance = {
        "config": {"context": bool(card.get("uses_context", False)), "base_model": str(template)},
        "recovered_from": {
            "model": str(model_dir),
            "version": card.get("version"),
            "temperature": temperature,
        },
    }
    (output / "training.json").write_text(json.dumps(provenance, indent=1), encoding="utf-8")
    return Recovered(output, len(tensors), temperature)
