"""memory-plan: predict the per-rank peak memory of the generated program, before it runs.

The model follows what the generated program does: every op result is a new storage of
shape x dtype bytes, except views (ATen overloads whose schema says the result aliases an input,
e.g. view, permute, expand, slice), which share their input's storage for free. A storage lives
from the op that makes it until the last use of any of its views (the program deletes each value
after its last use). Arguments (parameters, buffers, inputs) are held by the caller for the
whole step; returned values (the loss and gradients) live to the end. Attention adds its kernel's
workspace (one fp32 score tile) while it runs.

The pass records `autosp.peak_bytes` and `autosp.peak_op` on the module; `plan_memory` returns
the whole plan for reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr
from xdsl.ir import Operation, OpResult, SSAValue
from xdsl.passes import ModulePass

from autosp.codegen import train_step_of
from autosp.ir.aten import AtenOp
from autosp.ir.autosp import AttentionGradOp, AttentionOp
from autosp.ir.dtypes import BYTES, tensor_bytes, torch_dtype
from autosp.runtime.attention import QUERY_BLOCK
from autosp.runtime.errors import AutoSPError

# Views whose schema carries no alias annotation.
EXTRA_VIEWS = {"aten._unsafe_view.default"}


def human_bytes(n: float, digits: int = 1) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.{digits}f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    raise AssertionError


def is_view(op: Operation) -> bool:
    if not isinstance(op, AtenOp):
        return False
    returns = op.OVERLOAD._schema.returns
    return op.name in EXTRA_VIEWS or bool(returns) and returns[0].alias_info is not None


def workspace_bytes(op: Operation) -> int:
    """Transient memory inside a kernel (runtime/attention.py): the forward holds one
    accumulation-dtype score tile [B, Hq, block, Sk], the backward two (probabilities and dS)
    plus the per-query-head partial dK/dV products [B, Hq, Sk, D] before they are summed over
    the group; K and V are converted to the accumulation dtype when they are not in it."""
    if not isinstance(op, (AttentionOp, AttentionGradOp)):
        return 0
    b, hq, sq, d = op.query.type.get_shape()
    hkv, sk = op.key.type.get_shape()[1], op.key.type.get_shape()[2]
    element = op.query.type.element_type
    acc_bytes = 8 if BYTES[torch_dtype(element)] == 8 else 4
    tile = b * hq * min(QUERY_BLOCK, sq) * sk * acc_bytes
    converted_kv = 0 if BYTES[torch_dtype(element)] == acc_bytes else 2 * b * hkv * sk * d * acc_bytes
    if isinstance(op, AttentionOp):
        return tile + converted_kv
    return 2 * tile + b * hq * sk * d * acc_bytes + converted_kv


@dataclass
class MemoryPlan:
    held_bytes: int  # arguments: parameters, buffers, inputs
    peak_bytes: int  # everything the rank holds at the worst moment, held_bytes included
    peak_op: str  # the op (and its result name) where the peak happens
    peak_index: int
    returned_bytes: int  # the loss and the gradients
    saved_bytes: int  # forward results held for the backward (at the end of the forward)


def forward_ops(ops: list[Operation]) -> set[Operation]:
    """The forward: every op the loss (the step's first result) depends on. Everything else is
    backward, wherever it sits (sp-partition may place the loss's all_reduce late)."""
    ret = ops[-1]
    if not isinstance(ret, func.ReturnOp) or not ret.operands:
        raise AutoSPError("@train_step must return the loss first")
    forward: set[Operation] = set()
    stack = [ret.operands[0]]
    while stack:
        value = stack.pop()
        if isinstance(value, OpResult) and value.owner not in forward:
            forward.add(value.owner)
            stack.extend(value.owner.operands)
    return forward


@dataclass
class Liveness:
    """Storage lifetimes of the program, in op indices."""

    ops: list[Operation]
    root: dict[SSAValue, SSAValue]  # value -> the value owning its storage (itself unless a view)
    last_use: dict[SSAValue, int]  # storage -> last op index that references it
    returned: set[SSAValue]  # storages the step returns (alive to the end)
    held_bytes: int
    live: list[int]  # bytes held while op i runs (its results, and its workspace, included)


def liveness(module: ModuleOp, *, workspace: bool = True) -> Liveness:
    block = train_step_of(module).body.block
    ops = list(block.ops)
    root: dict[SSAValue, SSAValue] = {arg: arg for arg in block.args}
    for op in ops:
        for result in op.results:
            root[result] = root[op.operands[0]] if is_view(op) and op.operands else result

    last_use: dict[SSAValue, int] = {}
    for index, op in enumerate(ops):
        for result in op.results:
            last_use.setdefault(root[result], index)  # a dead result dies at its birth
        for operand in op.operands:
            last_use[root[operand]] = index
    returned = {root[v] for v in ops[-1].operands} if isinstance(ops[-1], func.ReturnOp) else set()
    held = sum(tensor_bytes(arg) for arg in block.args)
    frees: dict[int, list[SSAValue]] = {}
    for storage, index in last_use.items():
        if storage not in returned and storage not in block.args:
            frees.setdefault(index, []).append(storage)

    live, profile = held, []
    for index, op in enumerate(ops):
        live += sum(tensor_bytes(r) for r in op.results if root[r] is r)
        profile.append(live + (workspace_bytes(op) if workspace else 0))
        live -= sum(tensor_bytes(s) for s in frees.get(index, []))
    return Liveness(ops, root, last_use, returned, held, profile)


def plan_memory(module: ModuleOp, *, workspace: bool = True) -> MemoryPlan:
    lv = liveness(module, workspace=workspace)
    peak, peak_index = lv.held_bytes, -1
    for index, now in enumerate(lv.live):
        if now > peak:
            peak, peak_index = now, index
    where = "arguments"
    if peak_index >= 0:
        op = lv.ops[peak_index]
        name = op.results[0].name_hint if op.results else ""
        where = f"{op.name} (%{name}, op {peak_index})"
    args = train_step_of(module).body.block.args
    returns = isinstance(lv.ops[-1], func.ReturnOp) and lv.ops[-1].operands
    forward = forward_ops(lv.ops) if returns else set(lv.ops)
    read_by_backward = {
        lv.root[o] for op in lv.ops if op not in forward and not isinstance(op, func.ReturnOp) for o in op.operands
    }
    saved = sum(
        tensor_bytes(s) for s in read_by_backward
        if isinstance(s, OpResult) and s.owner in forward and s not in lv.returned
    )
    return MemoryPlan(
        held_bytes=lv.held_bytes,
        peak_bytes=peak,
        peak_op=where,
        peak_index=peak_index,
        returned_bytes=sum(tensor_bytes(s) for s in lv.returned if s not in args),
        saved_bytes=saved,
    )


@dataclass(frozen=True)
class MemoryPlanPass(ModulePass):
    name = "memory-plan"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        plan = plan_memory(op)
        op.attributes["autosp.peak_bytes"] = IntegerAttr(plan.peak_bytes, 64)
        op.attributes["autosp.peak_op"] = StringAttr(plan.peak_op)
