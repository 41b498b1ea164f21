"""Inference backends behind one interface: ONNX Runtime on CPUs, TensorRT on NVIDIA GPUs."""

from __future__ import annotations

from pathlib import Path

from scorer_service.backends.base import Backend


def select_backend(model_path: Path, threads: int = 1, preference: str = "auto") -> Backend:
    """`onnx`, `tensorrt`, or `auto` (TensorRT where a GPU and the tensorrt package are present)."""
    if preference not in ("auto", "onnx", "tensorrt"):
        raise ValueError(f"unknown backend {preference!r}: use auto, onnx or tensorrt")
    if preference in ("auto", "tensorrt"):
        try:
            from scorer_service.backends import tensorrt as trt_backend

            if trt_backend.available():
                return trt_backend.TensorRtBackend.from_onnx(model_path)
        except ImportError:
            pass
        if preference == "tensorrt":
            raise RuntimeError("backend tensorrt asked for, but no GPU with the tensorrt package is present")
    from scorer_service.backends.onnx import OnnxBackend

    return OnnxBackend(model_path, threads=threads)
