"""`callsense export`: a fine-tuned checkpoint to the ONNX files the scorer serves.

fp32 ONNX (dynamic batch and sequence axes) -> ONNX Runtime's transformer fusions (attention,
layer norm, GELU fused into single kernels) -> dynamic INT8 quantisation. The INT8 model is refused
when it loses more than `max_f1_drop` macro-F1 points against the fp32 one on the dev set, so a
quantisation that damages the model never reaches the package.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]


class QuantisationRejected(RuntimeError):
    """The quantised model lost too much quality against the full-precision one."""


@dataclass(frozen=True)
class ExportedFiles:
    fp32: Path
    fused: Path
    int8: Path


def fit_temperature(log_probs: Any, labels: Sequence[int]) -> float:
    """The temperature T that makes softmax(logits / T) best calibrated (lowest NLL) on a dev set.

    Post-hoc calibration (Guo et al., 2017): it never changes a prediction, only how sure it is.
    Weight-averaged and class-weighted models come out under-confident (T < 1 sharpens them), and the
    live badge reads probabilities, not just labels. Log-probabilities serve as logits here: softmax
    ignores a per-row constant.
    """
    import numpy as np

    logits = np.asarray(log_probs, dtype=np.float64)
    truth = np.asarray(labels, dtype=np.int64)

    def nll(temperature: float) -> float:
        scaled = logits / temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        log_softmax = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        return float(-log_softmax[np.arange(len(truth)), truth].mean())

    grid = np.arange(0.25, 3.001, 0.01)
    return float(grid[int(np.argmin([nll(t) for t in grid]))])


def fit_temperature_and_bias(log_probs: Any, labels: Sequence[int]) -> tuple[float, list[float]]:
    """T and a per-class offset b (the neutral one held at 0) that make softmax(logits / T + b) best
    calibrated (lowest NLL) on a dev set: temperature scaling plus a prior shift.

    A temperature alone keeps every prediction. A model trained mostly on TV dialogue and tweets and
    shipped for sales calls also meets another class balance and another way of saying "no": polite
    buyer negativity comes out with its negative probability too low for the badge's red line. The
    offsets, fitted on the in-domain dev split (the sales corpus), move that line back where it belongs.
    """
    import numpy as np
    from scipy.optimize import minimize

    logits = np.asarray(log_probs, dtype=np.float64)
    truth = np.asarray(labels, dtype=np.int64)

    def nll(params: Any) -> float:
        temperature, bias_negative, bias_positive = params
        scaled = logits / max(float(temperature), 1e-3) + np.array([bias_negative, 0.0, bias_positive])
        scaled -= scaled.max(axis=1, keepdims=True)
        log_softmax = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        return float(-log_softmax[np.arange(len(truth)), truth].mean())

    start = np.array([fit_temperature(logits, labels), 0.0, 0.0])
    fitted = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-7})
    temperature, bias_negative, bias_positive = (float(v) for v in fitted.x)
    return temperature, [bias_negative, 0.0, bias_positive]


def fold_temperature(model: Any, temperature: float, bias: Sequence[float] | None = None) -> None:
    """Divide the classifier's output layer by `temperature` (and add the per-class `bias`), so the
    exported logits come calibrated."""
    import torch

    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]  # the layer giving the logits
    if head.out_features != model.config.num_labels:
        raise ValueError(
            f"the last linear layer has {head.out_features} outputs, not {model.config.num_labels}"
        )
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)
            if bias is not None:
                head.bias.add_(torch.tensor(list(bias), dtype=head.bias.dtype))
        elif bias is not None:
            raise ValueError("the classifier has no bias to shift")


def export_onnx(
    checkpoint: Path,
    out: Path,
    opset: int = 17,
    temperature: float = 1.0,
    bias: Sequence[float] | None = None,
) -> Path:
    """Trace the checkpoint to ONNX with dynamic batch and sequence axes (logits divided by
    `temperature`, plus `bias`)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, attn_implementation="eager")
    model.eval()
    if temperature != 1.0 or bias is not None:
        fold_temperature(model, temperature, bias)
    model.config.return_dict = False
    sample = {
        "input_ids": torch.tensor([[101, 7592, 2088, 102]], dtype=torch.long),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
        "token_type_ids": torch.zeros(1, 4, dtype=torch.long),
    }
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    dynamic["logits"] = {0: "batch"}
    out.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter on purpose (dynamo=False): the new one needs onnxscript, and ONNX Runtime's
    # BERT fusion expects this graph. torch warns about that choice on every export; it is made.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
        torch.onnx.export(
            model,
            (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
            str(out),
            input_names=INPUT_NAMES,
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,  # the dynamo exporter needs onnxscript; the tracer does the job
        )
    return out


def fuse(onnx_path: Path, out: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """ONNX Runtime's BERT fusions; returns how many of each fused operator the graph now has."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimised = optimize_model(
        str(onnx_path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=1
    )
    optimised.save_model_to_file(str(out))
    stats: dict[str, int] = optimised.get_fused_operator_statistics()
    return stats


INT8_WEIGHTS = ("s8-reduced", "u8")
"""How the weights are stored: signed with 7 bits of range ("s8-reduced", what ONNX Runtime advises on CPUs
without VNNI, where full-range signed weights can saturate), or unsigned with all 8 ("u8"). Per channel
either way. The MELD-only model lost less as s8-reduced; a model trained with the previous utterance as
context lost 16 points of sales dev macro-F1 that way and 1.8 as u8 (README, The model)."""


def quantise(onnx_path: Path, out: Path, keep_fp32: Sequence[str] = (), weights: str = "s8-reduced") -> Path:
    """Dynamic INT8, per channel, the weights stored as `weights` says (INT8_WEIGHTS).

    Nodes named in `keep_fp32` stay in full precision.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weights not in INT8_WEIGHTS:
        raise ValueError(f"unknown INT8 weight storage {weights!r}: one of {', '.join(INT8_WEIGHTS)}")
    quantize_dynamic(
        str(onnx_path),
        str(out),
        weight_type=QuantType.QUInt8 if weights == "u8" else QuantType.QInt8,
        per_channel=True,
        reduce_range=weights == "s8-reduced",
        nodes_to_exclude=list(keep_fp32),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused graphs lack some type info
    )
    return out


def quantisable_blocks(onnx_path: Path) -> dict[str, list[str]]:
    """The quantisable nodes of a fused graph, grouped in blocks: for each encoder layer i,
    "layer{i}.attention" (the fused QKV projection and attention), "layer{i}.attention_output",
    "layer{i}.ffn_in" and "layer{i}.ffn_out" (the feed-forward matrices: into the wide GELU layer, and
    back; the second reads the GELU's outliers, which one dynamic INT8 scale per tensor serves worst).

    Unfused nodes carry their layer in their name ("/bert/encoder/layer.3/..."); fused Attention
    nodes do not, but the fuser emits them in graph order, one per layer, so the k-th is layer k's.
    """
    import re

    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    blocks: dict[str, list[str]] = {}
    attention_seen = 0
    for node in graph.node:
        if node.op_type == "Attention":
            blocks.setdefault(f"layer{attention_seen}.attention", []).append(node.name)
            attention_seen += 1
        elif node.op_type in ("MatMul", "Gemm") and (match := re.search(r"layer\.(\d+)/", node.name)):
            if "/attention/" in node.name:
                part = "attention_output"
            else:
                part = "ffn_in" if "/intermediate/" in node.name else "ffn_out"
            blocks.setdefault(f"layer{match.group(1)}.{part}", []).append(node.name)
    return blocks


def most_sensitive_blocks(
    fused: Path, workdir: Path, score: Callable[[Path], float], count: int, weights: str = "s8-reduced"
) -> tuple[list[str], dict[str, float]]:
    """The `count` blocks whose quantisation costs the most: each block in turn is kept in fp32 with
    everything else quantised, and `score` (higher is better, e.g. dev macro-F1) ranks the results."""
    scores: dict[str, float] = {}
    for block, nodes in quantisable_blocks(fused).items():
        scores[block] = score(quantise(fused, workdir / f"model.int8.fp32-{block}.onnx", nodes, weights))
    ranked = sorted(scores, key=lambda block: scores[block], reverse=True)
    return ranked[:count], scores


def export_all(
    checkpoint: Path,
    workdir: Path,
    temperature: float = 1.0,
    bias: Sequence[float] | None = None,
    weights: str = "s8-reduced",
) -> tuple[ExportedFiles, dict[str, int]]:
    import json

    config = json.loads((checkpoint / "config.json").read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(checkpoint, workdir / "model.fp32.onnx", temperature=temperature, bias=bias)
    fused_path = workdir / "model.fused.onnx"
    stats = fuse(fp32, fused_path, config["num_attention_heads"], config["hidden_size"])
    int8 = quantise(fused_path, workdir / "model.int8.onnx", weights=weights)
    return ExportedFiles(fp32, fused_path, int8), stats


def macro_f1_drop_points(fp32_report: dict[str, Any], int8_report: dict[str, Any]) -> float:
    """What INT8 loses against fp32 on one set, in macro-F1 points (negative: INT8 scores higher)."""
    return float((fp32_report["macro_f1"] - int8_report["macro_f1"]) * 100)


def quantisation_gate(fp32_report: dict[str, Any], int8_report: dict[str, Any], max_f1_drop: float) -> float:
    """The drop in macro-F1 points; raises QuantisationRejected past `max_f1_drop` points."""
    drop = macro_f1_drop_points(fp32_report, int8_report)
    if drop > max_f1_drop:
        raise QuantisationRejected(
            f"INT8 model loses {drop:.2f} macro-F1 points on the dev set against fp32 "
            f"({fp32_report['macro_f1']:.4f} -> {int8_report['macro_f1']:.4f}); the limit is {max_f1_drop}. "
            "Try per-channel quantisation, leave the classifier in fp32, or ship fp32."
        )
    return float(drop)


def copy_tokenizer(checkpoint: Path, destination: Path) -> None:
    """The scorer reads tokenizer.json alone (the `tokenizers` library, no transformers)."""
    shutil.copy2(checkpoint / "tokenizer.json", destination / "tokenizer.json")
