"""INT8 weights stored for every CPU, served in the form this CPU's fastest kernel reads.

The sentiment model ships with its INT8 weights unsigned (u8, a zero point per output channel): on a CPU
without VNNI, ONNX Runtime multiplies u8 activations by u8 weights without saturating, where signed weights
at full range can overflow its 16-bit pairwise sums (what its docs warn about, and why `training/export.py`
offers 7-bit signed weights, which cost a context model 16 points of sales dev macro-F1).

A CPU with VNNI (AVX-512 VNNI or AVX-VNNI) has an exact u8 x s8 instruction, and ONNX Runtime's u8 x s8
kernel there is about a third faster than its u8 x u8 one (callsense's model: 6.5 -> 4.7 ms for a 31-token
pair, one thread). Shifting every stored weight and its zero point down by 128 gives signed weights that
dequantise to exactly the same numbers (scale * (w - z) is unchanged), so on such a CPU the scorer and the
objection tagger's stance encoder serve the shifted copy: the same scores, bit for bit, sooner.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

CPUINFO = Path("/proc/cpuinfo")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
"""Linux's names for the two VNNI extensions (AVX-512 VNNI on Cascade Lake / Zen 4 and later, AVX-VNNI on
Alder Lake and later): either gives ONNX Runtime an exact u8 x s8 dot product."""

# The operators whose weights dynamic quantisation stores, and where: (weight input, weight zero point).
_WEIGHT_INPUTS = {
    "MatMulInteger": (1, 3),
    "DynamicQuantizeMatMul": (1, 3),
    "QAttention": (1, 7),
}


def cpu_has_vnni(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU has VNNI, from the kernel's flags; False where they cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return not VNNI_FLAGS.isdisjoint(line.partition(":")[2].split())
    return False


def sign_weights(model: onnx.ModelProto) -> int:
    """Rewrites the model's unsigned INT8 weights (and their zero points) as signed ones that dequantise
    to the same values, in place; returns how many tensors changed (0 for a model stored signed).

    A weight is shifted only with its zero point: both must be u8 initialisers, or the node is left as
    it is (an activation-by-activation product, or a symmetric weight without a zero point).
    """
    import numpy as np
    from onnx import TensorProto, numpy_helper

    initialisers = {tensor.name: tensor for tensor in model.graph.initializer}
    shifted: set[str] = set()
    for node in model.graph.node:
        inputs = _WEIGHT_INPUTS.get(node.op_type)
        if inputs is None or max(inputs) >= len(node.input):
            continue
        names = [node.input[i] for i in inputs]
        tensors = [initialisers.get(name) for name in names]
        if any(tensor is None or tensor.data_type != TensorProto.UINT8 for tensor in tensors):
            continue
        for name, tensor in zip(names, tensors, strict=True):
            if name in shifted or tensor is None:
                continue
            values = numpy_helper.to_array(tensor).astype(np.int16) - 128
            tensor.CopyFrom(numpy_helper.from_array(values.astype(np.int8), name))
            shifted.add(name)
    return len(shifted)


def load_for_this_cpu(model_path: Path, vnni: bool | None = None) -> tuple[onnx.ModelProto, int]:
    """The ONNX model at `model_path`, its INT8 weights signed where this CPU has VNNI (`vnni` overrides
    the detection: a bench compares both forms); with how many tensors were rewritten."""
    import onnx

    model = onnx.load(str(model_path))
    if cpu_has_vnni() if vnni is None else vnni:
        return model, sign_weights(model)
    return model, 0
