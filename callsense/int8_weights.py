"""INT8 weights stored for every CPU, served in the form this CPU's fastest kernel reads.

The sentiment model ships with its INT8 weights unsigned (u8, a zero point per output channel): on a CPU
without VNNI, ONNX Runtime multiplies u8 activations by u8 weights without saturating, where signed weights
at full range can overflow its 16-bit pairwise sums (what its docs warn about, and why `training/export.py`
offers 7-bit signed weights, which cost a context model 16 points of sales dev macro-F1).

A CPU with VNNI (AVX-512 VNNI or AVX-VNNI) has an exact u8 x s8 instruction, and ONNX Runtime's u8 x s8
kernel there is about a third faster than its u8 x u8 one (callsense's model: 6.5 -> 4.7 ms for a 31-token
pair, one thread). Shifting every stored weight and its zero point down by 128 gives signed weights that
dequantise to exactly the same numbers (scale * (w - z) is unchanged), so on such a CPU the scorer serves
the shifted copy: the same scores, bit for bit, sooner.
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

    A weight is shifted only together with its zero point (both u8 initialisers), and only when every
    node that reads either of them reads it as a weight or weight zero point of an operator listed above:
    a tensor also read elsewhere (a quantised embedding table, a shared zero point of another kind) keeps
    its type, and so does its partner.
    """
    import numpy as np
    from onnx import TensorProto, numpy_helper

    initialisers = {tensor.name: tensor for tensor in model.graph.initializer}
    readers: dict[str, set[tuple[str, int]]] = {}
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            readers.setdefault(name, set()).add((node.op_type, slot))
    allowed = {(op, slot) for op, slots in _WEIGHT_INPUTS.items() for slot in slots}
    declared = {value.name for value in (*model.graph.input, *model.graph.value_info)}

    def shiftable(name: str) -> bool:
        tensor = initialisers.get(name)
        return (
            tensor is not None
            and tensor.data_type == TensorProto.UINT8
            and name not in declared
            and readers.get(name, set()) <= allowed
        )

    pairs = [
        (node.input[weight], node.input[zero_point])
        for node in model.graph.node
        if node.op_type in _WEIGHT_INPUTS
        for weight, zero_point in [_WEIGHT_INPUTS[node.op_type]]
        if zero_point < len(node.input)
    ]
    shifted = {name for pair in pairs if all(map(shiftable, pair)) for name in pair}
    # A tensor shared by two nodes where only one pair can shift would leave a node with one u8 and one
    # s8 input: drop such pairs until every node's weight and zero point agree.
    while broken := {name for pair in pairs if not set(pair) <= shifted for name in pair} & shifted:
        shifted -= broken
    for name in shifted:
        tensor = initialisers[name]
        values = numpy_helper.to_array(tensor).astype(np.int16) - 128
        tensor.CopyFrom(numpy_helper.from_array(values.astype(np.int8), name))
    return len(shifted)


def load_for_this_cpu(model_path: Path, vnni: bool | None = None) -> tuple[onnx.ModelProto | None, int]:
    """The ONNX model at `model_path` with its INT8 weights signed, and how many tensors were rewritten,
    where this CPU has VNNI (`vnni` overrides the detection: a bench compares both forms); (None, 0)
    without VNNI, where the file serves as it is (not even parsed here)."""
    import onnx

    if not (cpu_has_vnni() if vnni is None else vnni):
        return None, 0
    model = onnx.load(str(model_path))
    return model, sign_weights(model)
