"""Backend v0: AutoSP IR -> one readable Python module per rank (like Inductor's output code).

Ordinary ops become `torch.ops.aten.*` calls, attention and the fused loss call the runtime's
kernels (Triton or reference, runtime/kernels.py), collectives
call the runtime's collectives. Each intermediate is deleted right after its last use, so the
program holds only what is live. How each op is emitted lives in `EMITTERS`, one entry per op
class (looked up along the class hierarchy), registered with `@emits`.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable

from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    FloatAttr,
    IndexType,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    NameLoc,
    StringAttr,
    SymbolRefAttr,
    UnitAttr,
)
from xdsl.ir import Attribute, Operation, SSAValue

from autosp.ir.aten import OPT_TENSOR, TENSOR, TENSOR_LIST, AtenCallOp, AtenOp
from autosp.ir.autosp import FusedOp, TiledOp, YieldOp
from autosp.ir.interfaces import RuntimeCallInterface
from autosp.ir.dtypes import torch_dtype
from autosp.ir.program import train_step_of
from autosp.passes.memory_plan import host_pool_bytes, liveness
from autosp.common.errors import AutoSPError
from autosp.common.rules import registrar
from autosp.triton_codegen import kernel_source

Emitter = Callable[[Operation, "Names"], str]
EMITTERS: dict[type[Operation], Emitter] = {}


emits = registrar(EMITTERS)  # keyed by op class


class Names:
    """Python identifiers for SSA values, from their name hints; and the module-level code the
    calls need (generated kernels, each body written once whatever number of ops use it)."""

    def __init__(self):
        self.of: dict[SSAValue, str] = {}
        self.taken: set[str] = set()
        self.next_suffix: dict[str, int] = {}  # base name -> the first suffix that may be free
        self.definitions: list[str] = []
        self.kernels: dict[str, str] = {}  # kernel code (named KERNEL) -> its name
        self.kernel_names: dict[str, int] = {}  # base name -> how many kernels have it

    def define(self, value: SSAValue) -> str:
        base = re.sub(r"\W", "_", value.name_hint or "v")
        if not base or base[0].isdigit() or keyword.iskeyword(base):
            base = "v_" + base
        name, i = base, self.next_suffix.get(base, 0)
        if i or name in self.taken:
            i = max(i, 1)
            while f"{base}_{i}" in self.taken:
                i += 1
            name = f"{base}_{i}"
        self.next_suffix[base] = i + 1 if i else 1
        self.taken.add(name)
        self.of[value] = name
        return name

    def __getitem__(self, value: SSAValue) -> str:
        return self.of[value]

    def kernel(self, code: str, base: str) -> str:
        """The name of the generated kernel `code` (written with KERNEL for its name): new code is
        defined under `base`_N; code seen before is the kernel already defined."""
        if code not in self.kernels:
            count = self.kernel_names.get(base, 0)
            while f"{base}_{count}" in self.taken:  # a global must not be shadowed by a value's name
                count += 1
            name = f"{base}_{count}"
            self.kernel_names[base] = count + 1
            self.taken.update({name, f"{name}_kernel", f"{name}_reference"})
            self.kernels[code] = name
            self.definitions.append(re.sub(r"\bKERNEL", name, code))
        return self.kernels[code]


# --- constants --------------------------------------------------------------------------


def literal(attr: Attribute) -> str:
    """A Python expression for a property value."""
    if isinstance(attr, IntegerAttr):
        if attr.type == IntegerType(1):
            return repr(bool(attr.value.data))
        return repr(attr.value.data)
    if isinstance(attr, FloatAttr):
        value = attr.value.data
        return f"float({str(value)!r})" if value != value or value in (float("inf"), float("-inf")) else repr(value)
    if isinstance(attr, DenseArrayBase):
        values = attr.get_values()
        if attr.elt_type == IntegerType(1):
            values = tuple(bool(v) for v in values)
        return repr(list(values))
    if isinstance(attr, StringAttr):
        if attr.data.endswith("_format"):  # a torch.memory_format
            return f"torch.{attr.data}"
        return repr(attr.data)
    if isinstance(attr, UnitAttr):
        return "None"
    if isinstance(attr, SymbolRefAttr):  # a dist.group: the runtime's process group
        return f"GROUPS[{attr.string_value()!r}]"
    try:
        return f"torch.{str(torch_dtype(attr)).removeprefix('torch.')}"
    except ValueError:
        raise AutoSPError(f"codegen: cannot express property {attr} in Python") from None


# --- emitters ---------------------------------------------------------------------------


@emits(AtenOp)
def emit_aten(op: AtenOp, names: Names) -> str:
    args: list[str] = []
    by_name = False  # after a skipped argument, later ones must be passed by name
    for spec in op.ARGS:
        if spec.kind == TENSOR:
            text = names[getattr(op, spec.field)]
        elif spec.kind == OPT_TENSOR:
            value = getattr(op, spec.field)
            text = "None" if value is None else names[value]
        elif spec.kind == TENSOR_LIST:
            text = "[" + ", ".join(names[v] for v in getattr(op, spec.field)) + "]"
        elif spec.kind == "dropped" and spec.name == "device":
            text = "DEVICE"  # factory ops allocate where the program runs
        elif spec.kind != "dropped" and spec.name in op.properties:
            text = literal(op.properties[spec.name])
        else:
            by_name = True
            continue
        by_name = by_name or spec.kwarg_only
        args.append(f"{spec.name}={text}" if by_name else text)
    return f"torch.ops.{op.name}({', '.join(args)})"


@emits(AtenCallOp)
def emit_call(op: AtenCallOp, names: Names) -> str:
    def decode(arg: Attribute) -> str:
        if isinstance(arg, IntegerAttr) and isinstance(arg.type, IndexType):
            return names[op.inputs[arg.value.data]]
        if isinstance(arg, ArrayAttr):
            return "[" + ", ".join(decode(a) for a in arg.data) + "]"
        return literal(arg)

    overload = op.overload
    callee = f"torch.ops.{overload.namespace}.{overload._opname}.{overload._overloadname}"
    return f"{callee}({', '.join(decode(a) for a in op.args.data)})"


@emits(RuntimeCallInterface)
def emit_runtime_call(op: Operation, names: Names) -> str:
    """AutoSP's own ops: the runtime call the op names (`RuntimeCallInterface`)."""
    call = op.runtime_call()  # type: ignore[attr-defined]

    def text(value) -> str:
        if isinstance(value, SSAValue):
            return names[value]
        return literal(value) if isinstance(value, Attribute) else repr(value)

    args = [text(v) for v in call.args] + [f"{k}={text(v)}" for k, v in call.kwargs.items()]
    return f"{call.callee}({', '.join(args)})"


# Ops that only carry values: not part of a kernel's name.
UNNAMED_OPS = {"to_copy", "view", "expand", "clone", "alias", "full", "slice", "cat", "slice_scatter"}


def kernel_base_name(op: FusedOp) -> str:
    """What a fused group computes, from its ops: `fused_pow_mean_add_rsqrt` for an RMSNorm (the
    prefix keeps kernels apart from values, which are named after single ops)."""
    words: list[str] = []
    for inner_op in op.block.ops:
        word = inner_op.name.split(".")[1].strip("_") if inner_op.name.startswith("aten.") else ""
        if word and word not in UNNAMED_OPS and word not in words:
            words.append(word)
    return "_".join(["fused", *words[:4]])


def region_function(block, name: str, always_tuple: bool) -> str:
    """A region as a Python function of its block arguments (`x0`, `x1`, ...; values `t<op>`):
    position-based names, so the same region in every layer is the same code."""
    inner = Names()
    for i, arg in enumerate(block.args):
        inner.of[arg] = f"x{i}"
    lines = [f"def {name}({', '.join(inner.of[a] for a in block.args)}):"]
    for j, inner_op in enumerate(block.ops):
        if isinstance(inner_op, YieldOp):
            values = [inner[v] for v in inner_op.operands]
            returned = f"({''.join(v + ', ' for v in values)})" if always_tuple or len(values) > 1 else values[0]
            lines.append(f"    return {returned}")
            continue
        call = emitter_for(inner_op)(inner_op, inner)
        targets = [f"t{j}_{k}" if len(inner_op.results) > 1 else f"t{j}" for k in range(len(inner_op.results))]
        for result, target in zip(inner_op.results, targets):
            inner.of[result] = target
        lines.append(f"    {', '.join(targets)} = {call}")
    return "\n".join(lines)


@emits(FusedOp)
def emit_fused(op: FusedOp, names: Names) -> str:
    """A generated Triton kernel, its reference (the region's ATen calls) and a wrapper that picks
    one (runtime/kernels.use_triton); the call site calls the wrapper. All three are written with
    position-based names, so the same group in every layer is one kernel, compiled once."""
    kernel, launch = kernel_source(op, "KERNEL")
    reference = region_function(op.block, "KERNEL_reference", always_tuple=False)
    shape = list(op.shape.get_values())
    inputs = [f"in{i}" for i in range(len(op.inputs))]
    outputs = [f"out{i}" for i in range(len(op.outputs))]
    wrapper = [
        f"def KERNEL({', '.join(inputs)}):",
        "    if not kernels.use_triton(in0):",
        f"        return KERNEL_reference({', '.join(inputs)})",
    ]
    for out, result in zip(outputs, op.outputs):
        wrapper.append(
            f"    {out} = torch.empty({list(result.type.get_shape())}, dtype={literal(result.type.element_type)}, device=in0.device)"
        )
    strides = ", ".join(f"*kernels.broadcast_strides({x}, {shape})" for x in inputs)
    wrapper.append(
        f"    KERNEL_kernel[{launch['grid']}]({', '.join(inputs + outputs)}, {strides}, "
        f"ROWS={launch['rows']}, BLOCK={launch['block']}, num_warps={launch['warps']})"
    )
    wrapper.append(f"    return {', '.join(outputs)}")
    code = "\n\n\n".join([kernel, reference, "\n".join(wrapper)])
    name = names.kernel(code, kernel_base_name(op))
    return f"{name}({', '.join(names[v] for v in op.inputs)})"


@emits(TiledOp)
def emit_tiled(op: TiledOp, names: Names) -> str:
    """The region as a function of one chunk (its ATen calls, position-named, so the same region
    in every layer is one function), run by the runtime once per chunk of rows."""
    name = names.kernel(region_function(op.block, "KERNEL", always_tuple=True), "tiled")
    dtypes = "[" + ", ".join(literal(r.type.element_type) for r in op.outputs) + "]"
    inputs = "".join(f", {names[v]}" for v in op.inputs)
    return (
        f"tiles.run({name}{inputs}, slices={list(op.slices.get_values())}, combines={list(op.combines.get_values())}, "
        f"dtypes={dtypes}, rows={op.rows.value.data}, chunk={op.chunk.value.data})"
    )


def emitter_for(op: Operation) -> Emitter:
    for cls in type(op).__mro__:
        if cls in EMITTERS:
            return EMITTERS[cls]
    raise AutoSPError(f"codegen: no emitter for op {op.name}")


# --- the module ---------------------------------------------------------------------------

HEADER = '''\
# Generated by AutoSP from the IR of @train_step. Do not edit: recompile instead.
import torch
import triton
import triton.language as tl

from autosp.runtime import kernels
from autosp.runtime import collectives
from autosp.runtime import offload
from autosp.runtime import tiles

DEVICE = None  # set by the runtime before the first call
GROUPS = {}  # process-group symbol -> torch.distributed group, set by the runtime
HOST = None  # the host memory of offloaded values (runtime/offload.HostPool), set by the runtime
'''
MEASURED_HEADER = '''TRACK = None  # the runtime's memory tracker, set by TrainStep.measure_memory
'''


NO_INDEX_CHECKS = "def index_inputs(*inputs):\n    return []\n"


def source_of(op: Operation) -> str | None:
    """The model module `op` came from (its location, frontends/source.py), for a comment above
    each block of the program: a fused kernel's first located op's; a recomputation says so."""
    for located in [op, *(op.block.ops if isinstance(op, FusedOp) else ())]:
        if isinstance(located.location, NameLoc):
            prefix = "recomputed: " if "autosp.recompute" in op.attributes else ""
            return prefix + located.location.desc.data
    return None


def generate(module: ModuleOp, index_inputs: str = NO_INDEX_CHECKS) -> str:
    """The Python source of the per-rank program for `module`, with `index_inputs` (the index
    checks of compiler/input_checks.py, made before partitioning) beside `train_step`."""
    return generate_programs(module, index_inputs)[0]


def generate_programs(module: ModuleOp, index_inputs: str = NO_INDEX_CHECKS) -> tuple[str, str]:
    """(the program that trains, its measured variant), from one walk of the IR. The measured
    variant hands every value it makes to TRACK (runtime/memory.py) for
    `TrainStep.measure_memory`; the program that trains has no such lines."""
    block = train_step_of(module).body.block
    lv = liveness(module, workspace=False)  # each value is deleted right after its last use

    names = Names()
    params = [names.define(arg) for arg in block.args]
    lines = [f"def train_step({', '.join(params)}):"]
    tracked: dict[int, str] = {}  # line index -> the values it makes, for the measured variant
    last_source = None
    for index, op in enumerate(lv.ops):
        if isinstance(op, func.ReturnOp):
            lines.append(f"    return ({''.join(names[v] + ', ' for v in op.operands)})")
            break
        source = source_of(op)
        if source is not None and source != last_source:
            lines.append(f"    # {source}")
            last_source = source
        call = emitter_for(op)(op, names)
        targets = [names.define(r) for r in op.results]
        if len(targets) == 1:
            lines.append(f"    {targets[0]} = {call}")
        elif targets:
            lines.append(f"    {', '.join(targets)} = {call}")
        else:
            lines.append(f"    {call}")
        if targets:
            tracked[len(lines) - 1] = ", ".join(targets)
        freed = [names[v] for v in lv.dead_after.get(index, [])]
        if freed:
            lines.append(f"    del {', '.join(freed)}")
    measured_lines = []
    for i, line in enumerate(lines):
        measured_lines.append(line)
        if i in tracked:
            measured_lines.append(f"    TRACK({tracked[i]})")
    definitions = "".join(f"\n\n{d}\n" for d in names.definitions)
    pool = f"HOST_POOL_BYTES = {host_pool_bytes(module)}  # offsets + sizes of the values offloaded\n"
    body = pool + definitions + "\n\n" + index_inputs + "\n\n"
    return (
        HEADER + body + "\n".join(lines) + "\n",
        HEADER + MEASURED_HEADER + body + "\n".join(measured_lines) + "\n",
    )
