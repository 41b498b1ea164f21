"""The model's fused SkipLayerNormalization nodes served as Add + LayerNormalization on the CPU.

ONNX Runtime's transformer optimiser (training/export.py's `fuse`) folds each residual add, the dense
layer's bias and the layer norm after it into one SkipLayerNormalization node; the shipped file keeps that
form (training/recover.py reads the weights back from it). On the CPU, ONNX Runtime's kernel for the fused
node is slower than its two plain operators. The shipped model on the 2-core AVX-512 VNNI box (2026-12-06,
one thread, its 12 nodes rewritten): `bench/scorer.py` as served with context (34 tokens, tokenising
included) 4.10 / 4.36 ms p50 / p95 against 4.92 / 5.59 ms fused, a sixth less time. So the scorer
rewrites the nodes when it loads the model, and tells ONNX Runtime not to fuse them back.

Not bit for bit: the plain layer norm rounds differently in the last bits, and the next layer's dynamic
INT8 quantisation can turn that into a different step. On the shipped model the probabilities moved by
0.001 on average (at most 0.056) and 1-3 predictions per evaluation set changed. Macro-F1, fused -> plain
(the model card's Serving section): sales test 0.6186 either way, sales ASR test 0.6123 -> 0.6144, sales
dev 0.6461 -> 0.6474, MELD dev 0.6558 -> 0.6557, TweetEval validation 0.5882 -> 0.5870, DailyDialog valid
0.6763 -> 0.6721 (2 of its 475 predictions, the largest move: a small set). Evaluation
(training/evaluate.py) loads models through the same backend, so the card's figures are of the served form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

FUSION = "SkipLayerNormFusion"
"""ONNX Runtime's graph transformer that would fuse the rewritten nodes back."""
DISABLE_OPTIMIZERS = "optimization.disable_specified_optimizers"
"""The session config key (onnxruntime_session_options_config_keys.h) that names transformers to skip."""

# SkipLayerNormalization's inputs: input, skip, gamma, beta (optional), bias (optional).
_INPUT, _SKIP, _GAMMA, _BETA, _BIAS = range(5)


def unfuse_skip_layer_norm(model: onnx.ModelProto) -> int:
    """Rewrites every SkipLayerNormalization of `model` as Add (+ Add for the bias) + LayerNormalization,
    in place; returns how many nodes were rewritten. A node that also writes its optional outputs (the
    mean, the inverse deviation, the sum before the norm) is kept: nothing in an inference graph reads
    them, and a graph that does is not one this rewrite understands."""
    from onnx import helper

    if _default_opset(model) < 17:  # LayerNormalization entered the standard operators at opset 17
        return 0
    rewritten = 0
    nodes = []
    for node in model.graph.node:
        if node.op_type != "SkipLayerNormalization" or node.domain != "com.microsoft" or any(node.output[1:]):
            nodes.append(node)
            continue
        rewritten += 1
        inputs = list(node.input) + [""] * (5 - len(node.input))
        # The contrib operator's default when the attribute is absent (ONNX Runtime's contrib_defs.cc).
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        stem = node.name or f"skip_layer_norm_{rewritten}"
        summed = f"{stem}/sum"
        nodes.append(helper.make_node("Add", [inputs[_INPUT], inputs[_SKIP]], [summed], name=f"{stem}/add"))
        if inputs[_BIAS]:
            biased = f"{stem}/sum_bias"
            nodes.append(helper.make_node("Add", [summed, inputs[_BIAS]], [biased], name=f"{stem}/add_bias"))
            summed = biased
        norm_inputs = [summed, inputs[_GAMMA]] + ([inputs[_BETA]] if inputs[_BETA] else [])
        nodes.append(
            helper.make_node(
                "LayerNormalization",
                norm_inputs,
                [node.output[0]],
                name=f"{stem}/norm",
                axis=-1,
                epsilon=epsilon,
            )
        )
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return rewritten


def _default_opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
