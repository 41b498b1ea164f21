"""Inference backends behind one interface: ONNX Runtime on CPUs, TensorRT on NVIDIA GPUs."""

from __future__ import annotations

import logging
from pathlib import Path

from scorer_service.backends.base import Backend

log = logging.getLogger(__name__)


def select_backend(model_path: Path, threads: int = 1, preference: str = "auto") -> Backend:
    """`onnx`, `tensorrt`, or `auto` (TensorRT where a GPU and the tensorrt package are present).

    The choice itself is `tensorrt.choose_backend` (pure logic, tested without a GPU); this only acts
    on it. The tensorrt module imports nothing heavy at load, so importing it here is cheap.
    """
    from scorer_service.backends import tensorrt as trt_backend

    if trt_backend.choose_backend(preference, trt_backend.available()) == "tensorrt":
        try:
            return trt_backend.TensorRtBackend.from_onnx(model_path)
        except Exception:
            if preference == "tensorrt":
                raise  # asked for explicitly: a silent CPU fallback would hide why latency is off
            # auto: a GPU whose engine build fails (driver, memory, an op TensorRT lacks) still serves.
            log.exception("TensorRT engine build failed; serving with ONNX Runtime on the CPU instead")
    from scorer_service.backends.onnx import OnnxBackend

    return OnnxBackend(model_path, threads=threads)
