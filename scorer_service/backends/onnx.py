"""ONNX Runtime on the CPU: the default backend."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from callsense.int8_weights import load_for_this_cpu
from scorer_service.backends.layer_norm import DISABLE_OPTIMIZERS, FUSION, unfuse_skip_layer_norm

log = logging.getLogger(__name__)


class OnnxBackend:
    """One ONNX Runtime session; `threads` intra-op threads (1 is best when processes share cores).

    The model is served in the form ONNX Runtime's CPU kernels run fastest: its fused layer norms as plain
    ones (`layer_norm`; `unfuse_layer_norm=False` keeps the file's form), and on a CPU with VNNI its
    unsigned INT8 weights signed (`callsense.int8_weights`: the same scores, a faster kernel; `vnni`
    overrides the detection). The bench times each form against the served one.
    """

    name = "onnxruntime-cpu"
    # Dynamic INT8 quantises activations with one scale per pass, taken over every item and its padding:
    # the same utterance scored beside others moved by up to 0.13 (18 of 600 MELD dev labels flipped).
    # And one item per pass was not slower on this CPU (mixed lengths: 500/s alone, 400/s in buckets).
    batches_exactly = False

    def __init__(
        self,
        model_path: Path,
        threads: int = 1,
        vnni: bool | None = None,
        unfuse_layer_norm: bool = True,
        optimized_model_path: Path | None = None,
    ) -> None:
        """``optimized_model_path``: where ONNX Runtime writes the graph it runs after its own fusions
        (for inspection: tests check what is really served)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimized_model_path is not None:
            options.optimized_model_filepath = str(optimized_model_path)
        model, self.signed_tensors = load_for_this_cpu(model_path, vnni)
        if self.signed_tensors:
            log.info(
                "%s: %d INT8 weight tensors served signed for this CPU's VNNI",
                model_path,
                self.signed_tensors,
            )
        self.unfused_layer_norms = 0
        if unfuse_layer_norm:
            if model is None:
                import onnx  # here, not at the top: the TensorRT backend's process never needs it

                model = onnx.load(str(model_path))
            self.unfused_layer_norms = unfuse_skip_layer_norm(model)
        if self.unfused_layer_norms:
            # ONNX Runtime 1.32 does not fuse these back (tested), but its SkipLayerNormFusion exists to
            # do just that; naming it here keeps a later version from undoing the rewrite.
            options.add_session_config_entry(DISABLE_OPTIMIZERS, FUSION)
        rewritten = self.signed_tensors or self.unfused_layer_norms
        source = model.SerializeToString() if model is not None and rewritten else str(model_path)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.model_path = model_path

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: inputs[name] for name in self.input_names}
        (logits,) = self.session.run(["logits"], feed)
        return np.asarray(logits, dtype=np.float32)
