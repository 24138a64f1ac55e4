"""fuse-elementwise: runs of consecutive elementwise ops (and last-dim row reductions with
keepdim, as in RMSNorm) over one shape become one `autosp.fused` op, which the backend turns
into one generated Triton kernel. Only the values used after the run are materialized.

A run is a maximal stretch of consecutive ops of the program that the backend can express
(compiler/triton_codegen: TRITON_EXPRS, and COLUMN_EXPRS for slices and concatenations along the
last dim) over shapes that differ at most in the last dim: the kernel iterates over the widest,
each value lives on its own columns, and [..., 1] values (reduction results and what is computed
from them) are one per row. A row reduction must read the widest value. Runs of consecutive ops cannot
create a cycle, whatever their dataflow, so independent neighbours (RoPE's two products, a
residual add next to a cast) fuse too. Runs of one op stay as they are.

A kernel allocates all its outputs at once and frees its inputs only when it ends, so fusing can
raise the memory held at that point. A run (or the longest prefixes it splits into) is fused
only where that point stays within the program's peak: fusion never raises the peak, so it runs
after remat (which decides per ATen op) without breaking its budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType, UnitAttr
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from autosp.ir.autosp import FusedOp, YieldOp
from autosp.ir.dtypes import tensor_bytes
from autosp.passes.memory_plan import liveness, workspace_bytes
from autosp.passes.remat import RECOMPUTE
from autosp.passes.kernel_exprs import MAX_ROW, ROW_REDUCTIONS, expressible
from autosp.ir.aten import overload_of


def _shape(value: SSAValue) -> tuple[int, ...]:
    assert isinstance(value.type, TensorType)
    return tuple(value.type.get_shape())


def iteration_shape(op: Operation) -> tuple[int, ...] | None:
    """The shape `op` iterates over if it can join a kernel (a reduction: its input's)."""
    if not expressible(op):
        return None
    shape = _shape(op.operands[0]) if overload_of(op) in ROW_REDUCTIONS else _shape(op.results[0])
    if overload_of(op) in ROW_REDUCTIONS and shape and shape[-1] > MAX_ROW:
        return None  # a row must fit one tile
    return shape if shape and all(shape) else None


@dataclass
class Run:
    lead: tuple[int, ...]  # the dims every value of the run shares (all but the last)
    width: int = 0  # the widest last dim: the kernel's columns
    reduced: int | None = None  # the row width its reductions read: nothing may be wider
    rows: bool = False  # whole rows in one tile (a reduction, or values one per row)
    ops: list[Operation] = field(default_factory=list)

    def grown(self, shape: tuple[int, ...], is_reduction: bool) -> tuple[int, int | None, bool] | None:
        """(width, reduced, rows) of the run with an op over `shape` added; None: it cannot join."""
        if shape[:-1] != self.lead:
            return None
        width, reduced = max(self.width, shape[-1]), self.reduced
        if is_reduction:
            if shape[-1] != width or reduced not in (None, shape[-1]):
                return None
            reduced = shape[-1]
        if reduced is not None and width > reduced:
            return None
        rows = self.rows or is_reduction or (width > 1 and 1 in (shape[-1], self.width))
        return None if rows and width > MAX_ROW else (width, reduced, rows)

    def add(self, op: Operation, grown: tuple[int, int | None, bool]) -> None:
        self.width, self.reduced, self.rows = grown
        self.ops.append(op)


def _outputs(ops: list[Operation]) -> list[SSAValue]:
    """Results of `ops` read after them (by other ops or the return), in program order."""
    members = set(ops)
    return [r for op in ops for r in op.results if any(use.operation not in members for use in r.uses)]


class MemoryBound:
    """Whether a fused kernel standing for some consecutive ops keeps within the program's peak."""

    def __init__(self, module: ModuleOp, fn: func.FuncOp):
        plain = liveness(module, workspace=False, fn=fn)
        self.peak = max((live + workspace_bytes(op) for live, op in zip(plain.live, plain.ops)), default=0)
        self.index = {op: i for i, op in enumerate(plain.ops)}
        self.live = plain.live
        self.root = plain.root

    def fits(self, ops: list[Operation]) -> bool:
        first = ops[0]
        made_by_first = sum(tensor_bytes(r) for r in first.results if self.root[r] is r)
        before = self.live[self.index[first]] - made_by_first
        return before + sum(tensor_bytes(v) for v in _outputs(ops)) <= self.peak

    def split(self, ops: list[Operation]) -> list[list[Operation]]:
        """The run as the longest fitting pieces, left to right."""
        pieces, start = [], 0
        while start < len(ops):
            stop = start + 1
            while stop < len(ops) and self.fits(ops[start : stop + 1]):
                stop += 1
            pieces.append(ops[start:stop])
            start = stop
        return pieces


def _reads_a_tensor(ops: list[Operation]) -> bool:
    """A kernel launches on its first input's device: a run of constants only stays as it is."""
    inside = {r for op in ops for r in op.results}
    return any(v not in inside for op in ops for v in op.operands)


def fuse(ops: list[Operation]) -> None:
    inside = {r for op in ops for r in op.results}
    inputs: list[SSAValue] = []
    for op in ops:
        for value in op.operands:
            if value not in inside and value not in inputs:
                inputs.append(value)
    outputs = _outputs(ops)
    body = Block(arg_types=[v.type for v in inputs])
    mapping = dict(zip(inputs, body.args))
    for value, arg in mapping.items():
        arg.name_hint = value.name_hint
    for op in ops:
        clone = op.clone(value_mapper=mapping)
        body.add_op(clone)
        for old, new in zip(op.results, clone.results):
            mapping[old] = new
            new.name_hint = old.name_hint
    body.add_op(YieldOp(*(mapping[v] for v in outputs)))
    shape = max((iteration_shape(op) for op in ops), key=lambda s: s[-1])
    fused = FusedOp(inputs, [v.type for v in outputs], shape, Region(body))
    if all(RECOMPUTE in op.attributes for op in ops):  # a kernel that only recomputes
        fused.attributes[RECOMPUTE] = UnitAttr()
    Rewriter.insert_op(fused, InsertPoint.before(ops[0]))
    for old, new in zip(outputs, fused.results):
        new.name_hint = old.name_hint
        old.replace_all_uses_with(new)
    for op in reversed(ops):
        op.detach()
        op.erase()


@dataclass(frozen=True)
class FuseElementwise(ModulePass):
    name = "fuse-elementwise"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for fn in [f for f in op.ops if isinstance(f, func.FuncOp)]:
            self.fuse_function(op, fn)

    def fuse_function(self, module: ModuleOp, fn: func.FuncOp) -> None:
        block = fn.body.block
        runs: list[Run] = []
        current: Run | None = None
        for inner in list(block.ops):
            shape = iteration_shape(inner)
            if shape is None:
                current = None
                continue
            reduction = overload_of(inner) in ROW_REDUCTIONS
            grown = current.grown(shape, reduction) if current is not None else None
            if grown is None:  # start a new run here, if this op can be in one at all
                current = Run(shape[:-1])
                grown = current.grown(shape, reduction)
                if grown is None:
                    current = None
                    continue
                runs.append(current)
            current.add(inner, grown)
        bound = MemoryBound(module, fn)
        for run in runs:
            for piece in bound.split(run.ops):
                if len(piece) > 1 and _reads_a_tensor(piece):
                    fuse(piece)
