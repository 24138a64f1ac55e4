"""How long an op takes on a device: a roofline, max(FLOPs / peak FLOP/s, bytes / bandwidth, bytes
sent to other ranks / link bandwidth), plus a launch overhead. Used by `remat` to price
recomputation (a replayed collective is priced by what it sends) and by the report.

Long-context aware on purpose: an elementwise op moves ~8 bytes per FLOP, so it is priced by its
bytes (a FLOP-only model would call it free), while attention does O(S^2) FLOPs on O(S) bytes and
becomes the most expensive op to recompute as S grows. AutoSP's own ops count their FLOPs through
their `CostInterface` (ir/interfaces.py); ATen ops through a rule table keyed by OpOverload
(`@flop_rule`), where pointwise ops (by torch's tag) and views count one FLOP per element they
touch; `flop_rule_of` says which rule an op gets (None: none; such an op is then counted the
same way, and tests/unit/test_rule_coverage.py fails on it for every tested architecture).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch._ops import OpOverload
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Operation, SSAValue

from autosp.ir.aten import overload_of
from autosp.ir.interfaces import CostInterface
from autosp.ir.dtypes import BYTES, tensor_bytes, torch_dtype
from autosp.common.errors import AutoSPError
from autosp.common.rules import registrar

aten = torch.ops.aten

GiB = 2**30


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    matmul_flops: float  # dense matmul FLOP/s in 16-bit types (tensor cores)
    matmul_flops_fp32: float  # dense matmul FLOP/s in fp32
    vector_flops: float  # everything else, FLOP/s
    bandwidth: float  # memory bandwidth, bytes/s
    launch_s: float  # fixed cost per op
    memory_bytes: int  # device memory, for budget="auto"
    link_bandwidth: float  # what one device sends to its peers, bytes/s (NVLink, Infinity Fabric)
    host_bandwidth: float  # device <-> host memory, one way, bytes/s (PCIe): offload's copies
    target: str = "cuda:sm90"  # the device kind the kernels are chosen for (select-kernels)


def host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# Datasheet numbers (dense, no sparsity); links one way: NVLink 4 (18 links, 450 GB/s), MI300X's
# seven Infinity Fabric links (7 x 64 GB/s), gloo on one host for the CPU; host links one way:
# PCIe 5 x16 (64 GB/s; ~55 reached in practice: override host_bandwidth to calibrate).
PROFILES: dict[str, Callable[[], DeviceProfile]] = {
    "h100": lambda: DeviceProfile("h100", 989e12, 67e12, 67e12, 3.35e12, 4e-6, 80 * GiB, 450e9, 64e9),
    "h200": lambda: DeviceProfile("h200", 989e12, 67e12, 67e12, 4.8e12, 4e-6, 141 * 10**9, 450e9, 64e9),
    "mi300x": lambda: DeviceProfile("mi300x", 1307e12, 163e12, 163e12, 5.3e12, 4e-6, 192 * GiB, 448e9, 64e9, "rocm"),
    "cpu": lambda: DeviceProfile("cpu", 2e12, 1e12, 2e11, 1e11, 2e-6, host_memory(), 1e10, 1e10, "cpu"),
}


def copy_seconds(nbytes: float, profile: DeviceProfile) -> float:
    """One copy between the device and the host's memory."""
    return profile.launch_s + nbytes / profile.host_bandwidth


def device_profile(name: str, **overrides: float) -> DeviceProfile:
    """A preset by name, with any of its numbers overridden (e.g. bandwidth=2e12)."""
    if name not in PROFILES:
        raise AutoSPError(f"unknown cost model {name!r}; known: {', '.join(sorted(PROFILES))}")
    return replace(PROFILES[name](), **{k: v for k, v in overrides.items() if v is not None})


def numel(value: SSAValue) -> int:
    assert isinstance(value.type, TensorType)
    return math.prod(value.type.get_shape())


# --- FLOP rules -------------------------------------------------------------------------

FlopRule = Callable[[Operation], float]
FLOP_RULES: dict[OpOverload, FlopRule] = {}
MATMUL_OPS: set[OpOverload] = set()  # ATen ops that run on the matmul units


def flop_rule(*overloads: OpOverload, matmul: bool = False):
    if matmul:
        MATMUL_OPS.update(overloads)
    return registrar(FLOP_RULES)(*overloads)


def _shape(value: SSAValue) -> list[int]:
    assert isinstance(value.type, TensorType)
    return list(value.type.get_shape())


def _touched(op: Operation) -> float:
    """One FLOP per element of the op's largest tensor."""
    sizes = [numel(v) for v in (*op.operands, *op.results) if isinstance(v.type, TensorType)]
    return float(max(sizes, default=0))


# Copies, casts, fills, pads, gathers, normalizations and reductions: the elements they touch.
flop_rule(
    aten._to_copy.default, aten.clone.default, aten.cat.default, aten.constant_pad_nd.default,
    aten.embedding.default, aten.empty_permuted.default, aten.full.default, aten.full_like.default,
    aten.zeros_like.default, aten.arange.start_step, aten.scalar_tensor.default, aten.mean.dim,
    aten.sum.dim_IntList, aten.sum.default, aten.native_layer_norm.default, aten.slice_scatter.default,
    aten.index_put.default, aten.gather.default, aten.index_select.default,
)(_touched)


@flop_rule(aten.mm.default, aten.bmm.default, matmul=True)
def _matmul(op: Operation) -> float:
    a, b = _shape(op.operands[0]), _shape(op.operands[1])
    return 2.0 * math.prod(a) * b[-1]


@flop_rule(aten.addmm.default, aten.baddbmm.default, matmul=True)
def _matmul_bias(op: Operation) -> float:
    a, b = _shape(op.operands[1]), _shape(op.operands[2])
    return 2.0 * math.prod(a) * b[-1] + numel(op.results[0])


def flop_rule_of(op: Operation) -> FlopRule | None:
    if isinstance(op, CostInterface):
        return lambda op: op.flops(op_flops)
    overload = overload_of(op)
    rule = FLOP_RULES.get(overload)
    if rule is None and overload is not None:
        schema = overload._schema
        pointwise = torch.Tag.pointwise in overload.tags
        view = bool(schema.returns) and schema.returns[0].alias_info is not None
        rule = _touched if pointwise or view else None
    return rule


def on_matmul_units(op: Operation) -> bool:
    return op.ON_MATMUL_UNITS if isinstance(op, CostInterface) else overload_of(op) in MATMUL_OPS


def op_flops(op: Operation) -> float:
    return (flop_rule_of(op) or _touched)(op)


def op_bytes(op: Operation) -> float:
    return float(sum(tensor_bytes(v) for v in (*op.operands, *op.results) if isinstance(v.type, TensorType)))


def op_seconds(op: Operation, profile: DeviceProfile) -> float:
    flops = op_flops(op)
    if on_matmul_units(op):
        element = op.operands[0].type.element_type  # type: ignore[union-attr]
        rate = profile.matmul_flops_fp32 if BYTES[torch_dtype(element)] >= 4 else profile.matmul_flops
    else:
        rate = profile.vector_flops
    sent = op.sent_bytes() if isinstance(op, CostInterface) else 0.0
    return profile.launch_s + max(flops / rate, op_bytes(op) / profile.bandwidth, sent / profile.link_bandwidth)


def profile_for(device) -> DeviceProfile:
    """The preset for a torch device, with that device's real memory size."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return device_profile("cpu")
    props = torch.cuda.get_device_properties(device)
    name = "mi300x" if "MI3" in props.name.upper() else "h200" if "H200" in props.name.upper() else "h100"
    return replace(device_profile(name), memory_bytes=props.total_memory)
