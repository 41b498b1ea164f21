"""ONNX Runtime on the CPU: the default backend."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from callsense.int8_weights import load_for_this_cpu

log = logging.getLogger(__name__)


class OnnxBackend:
    """One ONNX Runtime session; `threads` intra-op threads (1 is best when processes share cores).

    On a CPU with VNNI the model's unsigned INT8 weights are served signed (`callsense.int8_weights`: the
    same scores, a faster kernel); `vnni` overrides the detection (the bench times both forms).
    """

    name = "onnxruntime-cpu"
    # Dynamic INT8 quantises activations with one scale per pass, taken over every item and its padding:
    # the same utterance scored beside others moved by up to 0.13 (18 of 600 MELD dev labels flipped).
    # And one item per pass was not slower on this CPU (mixed lengths: 500/s alone, 400/s in buckets).
    batches_exactly = False

    def __init__(self, model_path: Path, threads: int = 1, vnni: bool | None = None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        model, self.signed_tensors = load_for_this_cpu(model_path, vnni)
        if self.signed_tensors:
            log.info(
                "%s: %d INT8 weight tensors served signed for this CPU's VNNI",
                model_path,
                self.signed_tensors,
            )
        source = model.SerializeToString() if model is not None and self.signed_tensors else str(model_path)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.model_path = model_path

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: inputs[name] for name in self.input_names}
        (logits,) = self.session.run(["logits"], feed)
        return np.asarray(logits, dtype=np.float32)
