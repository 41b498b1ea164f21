"""The TensorRT backend's pure logic, without a GPU; and backend selection on this (GPU-less) machine.

Building and running an engine needs an NVIDIA GPU with tensorrt and cuda-python; nothing here does.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from scorer_service.backends import select_backend
from scorer_service.backends import tensorrt as trt_backend
from scorer_service.backends.tensorrt import (
    EngineSpec,
    ProfileShapes,
    TensorRtError,
    binding_shapes,
    calibration_sha256,
    choose_backend,
    default_cache_dir,
    engine_cache_path,
    file_sha256,
    has_qdq,
    incompatible_ops,
    max_batch_from_env,
    pad_to_shape,
    profile_shapes,
    tensorrt_onnx_for,
    validate_precision,
)


def tiny_onnx(path: Path, ort_only: bool = False) -> Path:
    """A 3-input model with the scorer's input and output names: logits = sum(input_ids) * [1, 2, 3].

    ``ort_only`` adds a com.microsoft node, as ONNX Runtime's fused graphs have.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["ids_f", "axes"], ["summed"], keepdims=1),
        helper.make_node("Mul", ["summed", "weights"], ["logits"]),
    ]
    if ort_only:
        nodes.append(helper.make_node("FastGelu", ["summed"], ["unused"], domain="com.microsoft"))
    graph = helper.make_graph(
        nodes,
        "tiny",
        inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("weights", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0]),
        ],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if ort_only else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def batch(rows: int, tokens: int) -> dict[str, np.ndarray]:
    ids = np.arange(rows * tokens, dtype=np.int64).reshape(rows, tokens)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


# ------------------------------------------------------------------------------------ precision


def test_validate_precision() -> None:
    assert validate_precision("fp16") == "fp16"
    assert validate_precision(" INT8 ") == "int8"
    for bad in ("fp32", "bf16", ""):
        with pytest.raises(ValueError, match="use one of fp16, int8"):
            validate_precision(bad)


# -------------------------------------------------------------------------------------- profiles


def test_profile_shapes_cover_batch_and_sequence_range() -> None:
    profile = profile_shapes(max_batch=32)
    assert profile == ProfileShapes(min=(1, 1), opt=(16, 48), max=(32, 128))
    assert (profile.max_batch, profile.max_tokens) == (32, 128)
    assert profile_shapes(max_batch=1).opt == (1, 48)
    assert profile_shapes(8, 64, opt_batch=8, opt_tokens=64).opt == (8, 64)
    with pytest.raises(ValueError, match="exceeds the model's 128"):
        profile_shapes(max_tokens=256)
    with pytest.raises(ValueError, match="outside"):
        profile_shapes(8, opt_batch=9)
    with pytest.raises(ValueError, match=">= 1"):
        profile_shapes(0)


def test_binding_shapes_per_call_and_chunks_past_max_batch() -> None:
    profile = profile_shapes(max_batch=4)
    plan = binding_shapes(batch(3, 17), profile)
    assert plan == [(slice(0, 3), {n: (3, 17) for n in ("input_ids", "attention_mask", "token_type_ids")})]
    plan = binding_shapes(batch(10, 5), profile)
    assert [rows for rows, _ in plan] == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert [shapes["attention_mask"] for _, shapes in plan] == [(4, 5), (4, 5), (2, 5)]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input_ids": np.zeros((1, 4), np.int64)}, "missing model inputs: attention_mask, token_type_ids"),
        ({**batch(2, 4), "attention_mask": np.ones((2, 5), np.int64)}, "share one"),
        ({k: v[0] for k, v in batch(1, 4).items()}, "share one"),
        (batch(2, 129), "129 tokens is outside"),
        (batch(0, 4), "empty batch"),
    ],
    ids=["missing", "mismatch", "1-d", "too-long", "empty"],
)
def test_binding_shapes_rejects_bad_inputs(inputs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        binding_shapes(inputs, profile_shapes())


def test_pad_to_shape_for_calibration() -> None:
    padded = pad_to_shape(batch(2, 3), (4, 5))
    assert padded["input_ids"].shape == (4, 5) and padded["input_ids"].dtype == np.int64
    assert padded["attention_mask"][:2, :3].all() and not padded["attention_mask"][2:].any()
    assert not padded["attention_mask"][:, 3:].any()
    assert pad_to_shape(batch(6, 9), (4, 5))["input_ids"].shape == (4, 5)


# ------------------------------------------------------------------------------------ engine cache


def spec(**changes: object) -> EngineSpec:
    base: dict[str, object] = {
        "onnx_sha256": "a" * 64,
        "precision": "fp16",
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "tensorrt_version": "10.13.0",
        "profile": profile_shapes(32),
    }
    base.update(changes)
    return EngineSpec(**base)  # type: ignore[arg-type]


def test_cache_key_changes_with_everything_an_engine_depends_on() -> None:
    key = spec().key()
    assert key == spec().key() and len(key) == 64
    variants = [
        spec(onnx_sha256="b" * 64),
        spec(precision="int8"),
        spec(gpu_name="NVIDIA L4"),
        spec(compute_capability="8.9"),
        spec(tensorrt_version="10.14.1"),
        spec(profile=profile_shapes(16)),
        spec(profile=profile_shapes(32, opt_tokens=64)),
        spec(calibration_sha256="c" * 64),
    ]
    keys = {v.key() for v in variants}
    assert key not in keys and len(keys) == len(variants)
    assert '"key": "' + key + '"' in spec().to_json()


def test_cache_paths(tmp_path: Path) -> None:
    path = engine_cache_path(spec(), tmp_path)
    assert path.parent == tmp_path and path.suffix == ".engine" and "fp16" in path.name
    assert engine_cache_path(spec(precision="int8"), tmp_path) != path
    assert default_cache_dir({"CALLSENSE_TRT_CACHE": "/x/trt"}) == Path("/x/trt")
    assert default_cache_dir({"XDG_CACHE_HOME": "/cache"}) == Path("/cache/callsense/trt")
    assert default_cache_dir({}) == Path.home() / ".cache" / "callsense" / "trt"


def test_file_and_calibration_hashes(tmp_path: Path) -> None:
    one, two = tmp_path / "one.onnx", tmp_path / "two.onnx"
    one.write_bytes(b"x" * 3_000_000)
    two.write_bytes(b"x" * 2_999_999 + b"y")
    assert file_sha256(one) != file_sha256(two)
    assert file_sha256(one) == file_sha256(one, chunk_bytes=4096)
    assert calibration_sha256([batch(2, 3)]) == calibration_sha256([batch(2, 3)])
    assert calibration_sha256([batch(2, 3)]) != calibration_sha256([batch(3, 2)])


def test_max_batch_from_env() -> None:
    assert max_batch_from_env({}) == 32
    assert max_batch_from_env({"CALLSENSE_TRT_MAX_BATCH": "8"}) == 8
    for bad in ("0", "lots"):
        with pytest.raises(ValueError, match="CALLSENSE_TRT_MAX_BATCH"):
            max_batch_from_env({"CALLSENSE_TRT_MAX_BATCH": bad})


# ------------------------------------------------------------------------------ which ONNX file


def test_ort_only_operators_are_spotted() -> None:
    ops = [
        ("", "MatMul"),
        ("com.microsoft", "Attention"),
        ("", "DynamicQuantizeLinear"),
        ("", "MatMulInteger"),
    ]
    assert incompatible_ops(ops) == ["DynamicQuantizeLinear", "MatMulInteger", "com.microsoft.Attention"]
    assert incompatible_ops([("", "MatMul"), ("", "LayerNormalization")]) == []
    assert has_qdq([("", "QuantizeLinear"), ("", "MatMul")]) and not has_qdq([("", "MatMul")])


def test_tensorrt_onnx_for_prefers_the_plain_export(tmp_path: Path) -> None:
    shipped = tiny_onnx(tmp_path / "model.int8.onnx", ort_only=True)
    with pytest.raises(TensorRtError, match=r"com\.microsoft\.FastGelu.*model\.fp32\.onnx"):
        tensorrt_onnx_for(shipped)
    plain = tiny_onnx(tmp_path / "model.fp32.onnx")
    assert tensorrt_onnx_for(shipped) == plain
    (tmp_path / "other").mkdir()
    standard = tiny_onnx(tmp_path / "other" / "model.int8.onnx")  # standard ops only: usable as it is
    assert tensorrt_onnx_for(standard) == standard


# ---------------------------------------------------------------------------- backend selection


def test_choose_backend() -> None:
    assert choose_backend("auto", tensorrt_available=True) == "tensorrt"
    assert choose_backend("auto", tensorrt_available=False) == "onnx"
    assert choose_backend("onnx", tensorrt_available=True) == "onnx"
    assert choose_backend("tensorrt", tensorrt_available=True) == "tensorrt"
    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
        choose_backend("tensorrt", tensorrt_available=False)
    with pytest.raises(ValueError, match="use auto, onnx or tensorrt"):
        choose_backend("cuda", tensorrt_available=True)


def test_not_available_here_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    assert trt_backend.available() is False
    # Even with a (fake) tensorrt importable, no CUDA runtime or GPU means "not available", not an error.
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setitem(sys.modules, "cuda", None)
    assert trt_backend.available() is False


def test_select_backend_falls_back_to_onnx_here(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "model.int8.onnx")
    backend = select_backend(path, threads=1, preference="auto")
    assert backend.name == "onnxruntime-cpu"
    logits = backend.predict(batch(2, 3))
    np.testing.assert_allclose(logits, [[3, 6, 9], [12, 24, 36]])


def test_select_backend_tensorrt_raises_clearly_here(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "model.int8.onnx")
    with pytest.raises(RuntimeError, match="tensorrt"):
        select_backend(path, preference="tensorrt")
    with pytest.raises(ValueError, match="unknown backend"):
        select_backend(path, preference="gpu")


def test_auto_falls_back_when_the_engine_build_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A GPU machine whose engine build fails (no GPU here: availability and the build are forced).
    path = tiny_onnx(tmp_path / "model.int8.onnx")

    def failing_build(model_path: Path) -> None:
        raise RuntimeError("engine build failed: out of memory")

    monkeypatch.setattr(trt_backend, "available", lambda: True)
    monkeypatch.setattr(trt_backend.TensorRtBackend, "from_onnx", staticmethod(failing_build))
    assert select_backend(path, preference="auto").name == "onnxruntime-cpu"
    with pytest.raises(RuntimeError, match="engine build failed"):
        select_backend(path, preference="tensorrt")
