"""TensorRT on NVIDIA GPUs: the same interface as the ONNX Runtime backend (``name``, ``predict``).

Kept small and isolated. ``tensorrt`` and the CUDA runtime bindings (``cuda-python``) are imported only
inside the functions that talk to the GPU, so this module imports, and its pure logic is tested, on
machines without either. The pure parts, all plain functions: precision validation, optimisation profile
shapes, per-call binding shapes (with chunking past the profile's batch limit), the engine cache key and
path, the choice of the ONNX file TensorRT can parse, and the backend choice.

Which ONNX file: the shipped ``model.int8.onnx`` is ONNX Runtime's own dialect: fused ``com.microsoft``
operators (Attention, SkipLayerNormalization, ...) and dynamic INT8 (``MatMulInteger``,
``DynamicQuantizeLinear``). TensorRT's ONNX parser takes neither, so the engine is built from the plain
fp32 export next to it (``model.fp32.onnx``, or ``model.onnx``); ``tensorrt_onnx_for`` finds it or says
what to ship. TensorRT then does its own fusions and lowers precision itself:

- ``fp16`` (the default): no calibration needed; on tensor cores the usual choice for a small encoder.
- ``int8``: either the ONNX already holds QuantizeLinear/DequantizeLinear pairs (explicit quantisation),
  or calibration batches must be given (implicit INT8 with an entropy calibrator; TensorRT 10 still
  supports it but deprecates it in favour of explicit quantisation). FP16 stays on for the layers INT8
  does not cover.

Engines are specific to the GPU model, compute capability, TensorRT version, precision and profile, and
building one takes tens of seconds, so they are cached under ``~/.cache/callsense/trt/`` (or
``$CALLSENSE_TRT_CACHE``, or ``$XDG_CACHE_HOME/callsense/trt``) keyed by all of those plus the ONNX file's
sha256; a new model or a driver/TensorRT upgrade builds a new engine instead of loading a stale one.

Environment knobs read by ``from_onnx`` (``select_backend`` passes only the path):
``CALLSENSE_TRT_PRECISION`` (fp16 | int8) and ``CALLSENSE_TRT_MAX_BATCH`` (default 32, the batcher's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from callsense.tokenization import MAX_TOKENS

log = logging.getLogger(__name__)

Precision = Literal["fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp16", "int8")
INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"
DEFAULT_MAX_BATCH = 32
WORKSPACE_BYTES = 1 << 30
PRECISION_ENV = "CALLSENSE_TRT_PRECISION"
MAX_BATCH_ENV = "CALLSENSE_TRT_MAX_BATCH"
CACHE_ENV = "CALLSENSE_TRT_CACHE"

# Operators TensorRT's ONNX parser does not take: ONNX Runtime's dynamic INT8 and its contrib domain.
_ORT_ONLY_OPS = frozenset({"MatMulInteger", "DynamicQuantizeLinear", "ConvInteger", "QLinearMatMul"})
_ORT_DOMAINS = frozenset({"com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental"})
_TENSORRT_ONNX_NAMES = ("model.fp32.onnx", "model.onnx")


class TensorRtError(RuntimeError):
    """TensorRT could not be used for this model; the message says why and what to do."""


# ------------------------------------------------------------------------------------- pure logic


def validate_precision(precision: str) -> Precision:
    """``fp16`` or ``int8`` (case-insensitive); anything else is a ValueError naming the choices."""
    value = precision.strip().lower()
    if value == "fp16":
        return "fp16"
    if value == "int8":
        return "int8"
    raise ValueError(f"unknown TensorRT precision {precision!r}: use one of {', '.join(PRECISIONS)}")


def choose_backend(preference: str, tensorrt_available: bool) -> Literal["onnx", "tensorrt"]:
    """The backend to use: ``auto`` takes TensorRT where it is available, else ONNX Runtime.

    ``tensorrt`` asked for where it is not available is an error (a GPU deployment that silently ran on
    the CPU would miss its latency target without saying why).
    """
    if preference not in ("auto", "onnx", "tensorrt"):
        raise ValueError(f"unknown backend {preference!r}: use auto, onnx or tensorrt")
    if preference == "onnx":
        return "onnx"
    if tensorrt_available:
        return "tensorrt"
    if preference == "tensorrt":
        raise RuntimeError(
            "backend tensorrt asked for, but it is not available here: it needs an NVIDIA GPU, the "
            "tensorrt package and cuda-python; use --backend onnx (or auto) on CPU machines"
        )
    return "onnx"


@dataclass(frozen=True)
class ProfileShapes:
    """One optimisation profile, the same (batch, tokens) range for each of the three inputs."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    @property
    def max_batch(self) -> int:
        return self.max[0]

    @property
    def max_tokens(self) -> int:
        return self.max[1]


def profile_shapes(
    max_batch: int = DEFAULT_MAX_BATCH,
    max_tokens: int = MAX_TOKENS,
    opt_batch: int | None = None,
    opt_tokens: int | None = None,
) -> ProfileShapes:
    """Shapes from (1, 1) to (max_batch, max_tokens); TensorRT tunes its kernels for ``opt``.

    Defaults for ``opt``: half the largest batch (what a busy scorer's micro-batches look like) and 48
    tokens (a typical spoken utterance is 10-40 tokens; the batcher groups by length).
    """
    if max_batch < 1 or max_tokens < 1:
        raise ValueError(f"max_batch and max_tokens must be >= 1, got {max_batch} and {max_tokens}")
    if max_tokens > MAX_TOKENS:
        raise ValueError(f"max_tokens {max_tokens} exceeds the model's {MAX_TOKENS}")
    ob = max(1, max_batch // 2) if opt_batch is None else opt_batch
    ot = min(48, max_tokens) if opt_tokens is None else opt_tokens
    if not (1 <= ob <= max_batch and 1 <= ot <= max_tokens):
        raise ValueError(f"opt shape ({ob}, {ot}) is outside (1, 1)..({max_batch}, {max_tokens})")
    return ProfileShapes(min=(1, 1), opt=(ob, ot), max=(max_batch, max_tokens))


def binding_shapes(
    inputs: Mapping[str, np.ndarray], profile: ProfileShapes, names: Sequence[str] = INPUT_NAMES
) -> list[tuple[slice, dict[str, tuple[int, int]]]]:
    """The input shapes to set for each execution: a batch over the profile's limit runs in chunks.

    Returns (rows of the batch, {input name: (batch, tokens)}) per execution. Raises ValueError when an
    input is missing, not 2-D, the inputs disagree in shape, or the sequence is outside the profile.
    """
    missing = [name for name in names if name not in inputs]
    if missing:
        raise ValueError(f"missing model inputs: {', '.join(missing)}")
    shapes = {name: tuple(inputs[name].shape) for name in names}
    first = shapes[names[0]]
    if len(first) != 2 or any(shape != first for shape in shapes.values()):
        raise ValueError(f"inputs must share one (batch, tokens) shape, got {shapes}")
    batch, tokens = int(first[0]), int(first[1])
    if batch < 1:
        raise ValueError("empty batch")
    if not profile.min[1] <= tokens <= profile.max_tokens:
        raise ValueError(
            f"sequence of {tokens} tokens is outside the engine's range "
            f"{profile.min[1]}..{profile.max_tokens}"
        )
    plan = []
    for start in range(0, batch, profile.max_batch):
        rows = min(profile.max_batch, batch - start)
        plan.append((slice(start, start + rows), {name: (rows, tokens) for name in names}))
    return plan


def pad_to_shape(inputs: Mapping[str, np.ndarray], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Zero-pad (or cut) each input to ``shape``; a zero attention mask makes padding inert.

    Implicit INT8 calibration with dynamic shapes feeds batches of the calibration profile's opt shape.
    """
    out = {}
    for name, array in inputs.items():
        padded = np.zeros(shape, dtype=array.dtype)
        rows, cols = min(shape[0], array.shape[0]), min(shape[1], array.shape[1])
        padded[:rows, :cols] = array[:rows, :cols]
        out[name] = padded
    return out


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine depends on; its hash is the cache key."""

    onnx_sha256: str
    precision: Precision
    gpu_name: str
    compute_capability: str  # "9.0"
    tensorrt_version: str
    profile: ProfileShapes
    calibration_sha256: str = ""  # int8 with a calibrator: the calibration data

    def key(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "key": self.key()}, indent=2, sort_keys=True)


def file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def calibration_sha256(batches: Sequence[Mapping[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for batch in batches:
        for name in sorted(batch):
            array = np.ascontiguousarray(batch[name])
            digest.update(f"{name}{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "callsense" / "trt"


def engine_cache_path(spec: EngineSpec, cache_dir: Path) -> Path:
    return cache_dir / f"sentiment-{spec.precision}-{spec.key()[:32]}.engine"


def incompatible_ops(ops: Iterable[tuple[str, str]]) -> list[str]:
    """The (domain, op_type) pairs of a graph that TensorRT's ONNX parser does not take, as names."""
    bad = {
        f"{domain}.{op}" if domain else op
        for domain, op in ops
        if domain in _ORT_DOMAINS or op in _ORT_ONLY_OPS
    }
    return sorted(bad)


def has_qdq(ops: Iterable[tuple[str, str]]) -> bool:
    """Whether the graph is explicitly quantised (QuantizeLinear/DequantizeLinear in the default domain)."""
    return any(not domain and op in ("QuantizeLinear", "DequantizeLinear") for domain, op in ops)


def onnx_ops(path: Path) -> list[tuple[str, str]] | None:
    """(domain, op_type) of every node, or None when the ``onnx`` package is absent."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    return [(node.domain, node.op_type) for node in model.graph.node]


def tensorrt_onnx_for(model_path: Path) -> Path:
    """The ONNX file to build an engine from, given the model path the scorer was asked to serve.

    Prefers the plain fp32 export beside the model; accepts the model itself when its graph is standard
    ONNX. Raises TensorRtError saying what to ship otherwise.
    """
    for name in _TENSORRT_ONNX_NAMES:
        candidate = model_path.parent / name
        if candidate.is_file():
            return candidate
    ops = onnx_ops(model_path) if model_path.is_file() else None
    if ops is not None and not incompatible_ops(ops):
        return model_path
    found = ", ".join(incompatible_ops(ops)) if ops else "ONNX Runtime operators (fused / dynamic INT8)"
    raise TensorRtError(
        f"{model_path} cannot be parsed by TensorRT ({found}), and no {' or '.join(_TENSORRT_ONNX_NAMES)} "
        f"is next to it: ship the unfused fp32 export (training.export.export_onnx) as "
        f"{_TENSORRT_ONNX_NAMES[0]} beside the model, or use --backend onnx"
    )


def max_batch_from_env(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(MAX_BATCH_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BATCH
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_BATCH_ENV}={raw!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"{MAX_BATCH_ENV} must be >= 1, got {value}")
    return value


# ------------------------------------------------------------------------------ GPU (lazy imports)


def _cudart() -> Any:
    try:  # cuda-python >= 12.6 layout
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # older cuda-python
    return runtime


def _cuda_call(result: Any) -> Any:
    """cuda-python calls return (error, *values); raise on error, return the value(s)."""
    cudart = _cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise TensorRtError(f"CUDA error {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def available() -> bool:
    """True when tensorrt and the CUDA runtime bindings import and a CUDA GPU is present. Never raises."""
    try:
        import tensorrt  # noqa: F401

        return int(_cuda_call(_cudart().cudaGetDeviceCount())) > 0
    except Exception:  # ImportError, a stub package, no driver, no device: all mean "not here"
        return False


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str


def gpu_info(device: int = 0) -> GpuInfo:
    props = _cuda_call(_cudart().cudaGetDeviceProperties(device))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name=name.strip("\x00 "), compute_capability=f"{props.major}.{props.minor}")


def _logger() -> Any:
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def build_engine(
    onnx_path: Path,
    precision: Precision,
    profile: ProfileShapes,
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine for ``profile`` at ``precision``."""
    import tensorrt as trt

    logger = _logger()
    builder = trt.Builder(logger)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRtError(f"TensorRT cannot parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    trt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        trt_profile.set_shape(name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)

    config.set_flag(trt.BuilderFlag.FP16)  # also for int8: layers without INT8 kernels fall back to FP16
    calibrator = None
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        ops = onnx_ops(onnx_path)
        if not (ops and has_qdq(ops)):
            if not calibration:
                raise TensorRtError(
                    f"int8 needs calibration batches (or an ONNX with QuantizeLinear/DequantizeLinear "
                    f"nodes); {onnx_path} has neither: pass calibration= or use fp16"
                )
            calibrator = _entropy_calibrator(calibration, profile)
            config.int8_calibrator = calibrator
            config.set_calibration_profile(trt_profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRtError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    return bytes(serialized)


def _entropy_calibrator(batches: Sequence[Mapping[str, np.ndarray]], profile: ProfileShapes) -> Any:
    """An IInt8EntropyCalibrator2 feeding ``batches`` padded to the profile's opt shape."""
    import tensorrt as trt

    cudart = _cudart()
    shape = profile.opt
    padded = [pad_to_shape(batch, shape) for batch in batches]

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._next = 0
            self._buffers: dict[str, int] = {}

        def get_batch_size(self) -> int:
            return shape[0]

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._next >= len(padded):
                return None
            batch = padded[self._next]
            self._next += 1
            pointers = []
            for name in names:
                host = np.ascontiguousarray(batch[name], dtype=np.int64)
                if name not in self._buffers:
                    self._buffers[name] = int(_cuda_call(cudart.cudaMalloc(host.nbytes)))
                kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
                _cuda_call(cudart.cudaMemcpy(self._buffers[name], host.ctypes.data, host.nbytes, kind))
                pointers.append(self._buffers[name])
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            return None  # the engine cache makes a calibration cache unnecessary

        def write_calibration_cache(self, cache: bytes) -> None:
            return None

    return _Calibrator()


def load_or_build_engine(
    onnx_path: Path,
    precision: Precision,
    profile: ProfileShapes,
    cache_dir: Path | None = None,
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> bytes:
    """The serialized engine from the cache, or built now and cached (written atomically)."""
    import tensorrt as trt

    gpu = gpu_info()
    spec = EngineSpec(
        onnx_sha256=file_sha256(onnx_path),
        precision=precision,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        tensorrt_version=str(trt.__version__),
        profile=profile,
        calibration_sha256=calibration_sha256(calibration) if calibration and precision == "int8" else "",
    )
    directory = cache_dir or default_cache_dir()
    path = engine_cache_path(spec, directory)
    if path.is_file():
        log.info("TensorRT engine from cache %s", path)
        return path.read_bytes()
    log.info(
        "building TensorRT %s engine for %s on %s (one-off, cached in %s)",
        precision,
        onnx_path,
        gpu.name,
        path,
    )
    data = build_engine(onnx_path, precision, profile, calibration)
    directory.mkdir(parents=True, exist_ok=True)
    # Another replica on the same host may build the same engine at the same time: write, then rename.
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".partial", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)
    path.with_suffix(".json").write_text(spec.to_json())
    return data


# ---------------------------------------------------------------------------------------- backend


class TensorRtBackend:
    """One engine and execution context on GPU 0, with device buffers sized for the profile's maximum.

    Not thread-safe (one execution context, one stream): the scorer calls it from its inference thread.
    """

    def __init__(self, engine_data: bytes, profile: ProfileShapes, precision: Precision) -> None:
        import tensorrt as trt

        self.precision = precision
        self.profile = profile
        self.name = f"tensorrt-{precision}"
        # Static shapes per pass and calibrated (not per-pass) INT8 scales: a batch-mate changes nothing
        # but float rounding, and a GPU needs batches to be fast.
        self.batches_exactly = True
        self._cudart = _cudart()
        self._runtime = trt.Runtime(_logger())
        self._engine = self._runtime.deserialize_cuda_engine(engine_data)
        if self._engine is None:
            raise TensorRtError("TensorRT could not deserialize the engine (built by another version?)")
        self._context = self._engine.create_execution_context()
        self._stream = _cuda_call(self._cudart.cudaStreamCreate())
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.input_names = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if OUTPUT_NAME not in names:
            raise TensorRtError(f"engine has no {OUTPUT_NAME!r} output (tensors: {names})")
        # The parser may have narrowed int64 inputs to int32: feed whatever the engine declares.
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._buffers: dict[str, int] = {}
        rows, cols = profile.max
        for name in names:
            elements = rows * (3 if name == OUTPUT_NAME else cols)
            pointer = int(_cuda_call(self._cudart.cudaMalloc(elements * self._dtypes[name].itemsize)))
            self._buffers[name] = pointer
            self._context.set_tensor_address(name, pointer)

    @classmethod
    def from_onnx(
        cls,
        model_path: Path,
        precision: str | None = None,
        max_batch: int | None = None,
        cache_dir: Path | None = None,
        calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
    ) -> TensorRtBackend:
        """Engine for the model at ``model_path`` (its TensorRT-parsable sibling), cached per GPU."""
        chosen = validate_precision(precision or os.environ.get(PRECISION_ENV, "fp16"))
        profile = profile_shapes(max_batch or max_batch_from_env())
        onnx_path = tensorrt_onnx_for(model_path)
        data = load_or_build_engine(onnx_path, chosen, profile, cache_dir, calibration)
        return cls(data, profile, chosen)

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        cudart = self._cudart
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        results = []
        for rows, shapes in binding_shapes(inputs, self.profile, self.input_names):
            hosts = []  # keep the host arrays alive until the stream is synchronised
            for name in self.input_names:
                host = np.ascontiguousarray(inputs[name][rows], dtype=self._dtypes[name])
                hosts.append(host)
                self._context.set_input_shape(name, shapes[name])
                _cuda_call(
                    cudart.cudaMemcpyAsync(
                        self._buffers[name], host.ctypes.data, host.nbytes, to_device, self._stream
                    )
                )
            out = np.empty(
                tuple(self._context.get_tensor_shape(OUTPUT_NAME)), dtype=self._dtypes[OUTPUT_NAME]
            )
            if not self._context.execute_async_v3(int(self._stream)):
                raise TensorRtError("TensorRT execution failed")
            _cuda_call(
                cudart.cudaMemcpyAsync(
                    out.ctypes.data, self._buffers[OUTPUT_NAME], out.nbytes, to_host, self._stream
                )
            )
            _cuda_call(cudart.cudaStreamSynchronize(self._stream))
            results.append(out.astype(np.float32, copy=False))
        return np.concatenate(results) if len(results) > 1 else results[0]

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the backend is collected)."""
        buffers, self._buffers = getattr(self, "_buffers", {}), {}
        for pointer in buffers.values():
            self._cudart.cudaFree(pointer)
        stream = getattr(self, "_stream", None)
        if stream is not None:
            self._cudart.cudaStreamDestroy(stream)
            self._stream = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn CUDA down already
            self.close()
