"""memory-plan: predict the per-rank peak memory of the generated program, before it runs.

The model follows what the generated program does: every op result is a new storage of
shape x dtype bytes, except views (ATen overloads whose schema says the result aliases an input,
e.g. view, permute, expand, slice), which share their input's storage for free. A storage lives
from the op that makes it until the last use of any of its views (the program deletes each value
after its last use). Arguments (parameters, buffers, inputs) are held by the caller for the
whole step; returned values (the loss and gradients) live to the end. Kernels add their
workspace while they run (`workspace_rule_of`: their `CostInterface`).

The pass records `autosp.peak_bytes` and `autosp.peak_op` on the module; `plan_memory` returns
the whole plan for reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr
from xdsl.ir import Block, Operation, OpResult, SSAValue
from xdsl.passes import ModulePass

from autosp.ir.program import train_step_of, zero_of
from autosp.ir.aten import AtenOp, overload_of
from autosp.ir.dtypes import tensor_bytes, torch_dtype
from autosp.ir.host import OffloadStartOp, on_host
from autosp.ir.autosp import YieldOp
from autosp.ir.interfaces import CostInterface
from autosp.common.errors import AutoSPError

aten = torch.ops.aten

# Views whose schema carries no alias annotation.
EXTRA_VIEWS = {aten._unsafe_view.default}


def human_bytes(n: float, digits: int = 1) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.{digits}f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    raise AssertionError


def is_view(op: Operation) -> bool:
    """Its result shares its first operand's storage: ATen views (by schema) and AutoSP ops that
    say so (`IS_VIEW`, e.g. host.prefetch_wait)."""
    if not isinstance(op, AtenOp):
        return getattr(op, "IS_VIEW", False)
    returns = op.OVERLOAD._schema.returns
    return overload_of(op) in EXTRA_VIEWS or bool(returns) and returns[0].alias_info is not None


def workspace_rule_of(op: Operation) -> Callable[[Operation], int] | None:
    """AutoSP's own ops declare their scratch (`CostInterface.workspace_bytes`); an ATen op
    allocates only its results (its internal scratch, e.g. a matmul library's workspace, is not
    planned). None: an op that is neither (tests/unit/test_rule_coverage.py fails on it)."""
    if isinstance(op, CostInterface):
        return lambda op: op.workspace_bytes()
    if overload_of(op) is not None:
        return lambda op: 0
    return None


def workspace_bytes(op: Operation) -> int:
    """Transient memory inside a kernel while it runs, as the GPU (Triton) kernels use it; the
    CPU reference kernels use more, which CPU runs do not measure."""
    rule = workspace_rule_of(op)
    return rule(op) if rule else 0


@dataclass
class MemoryPlan:
    held_bytes: int  # arguments (parameters, buffers, inputs) and the optimizer's state
    peak_bytes: int  # everything the rank holds at the worst moment, held_bytes included
    peak_op: str  # the op (and its result name) where the peak happens
    peak_index: int
    returned_bytes: int  # the loss and the gradients
    saved_bytes: int  # forward results held for the backward (at the end of the forward)
    host_bytes: int = 0  # the host pool of the offloaded values


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
    """Lifetimes of the program's values and storages, in op indices: the one liveness analysis
    that the memory plan, remat, fusion and codegen (where it deletes values) all read."""

    ops: list[Operation]
    root: dict[SSAValue, SSAValue]  # value -> the value owning its storage (itself unless a view)
    last_use: dict[SSAValue, int]  # storage -> last op index that references it
    returned: set[SSAValue]  # storages the step returns (alive to the end)
    held_bytes: int
    live: list[int]  # bytes held while op i runs (its results, and its workspace, included)
    # op index -> the values (not arguments, not returned) last read by op i or made dead by it
    dead_after: dict[int, list[SSAValue]]


def liveness(module: ModuleOp | None, *, workspace: bool = True, optimizer_state: bool = True, fn: func.FuncOp | None = None,
             block: Block | None = None) -> Liveness:
    """Lifetimes in @train_step (or in `fn`, or in a region's `block`, whose arguments are views
    of its op's inputs: held by nobody). The bytes held count the optimizer's state
    (`#autosp.zero`: it is on the device for the whole step) unless `optimizer_state` is False."""
    region = block is not None
    block = block if region else (fn or train_step_of(module)).body.block
    ops = list(block.ops)
    root: dict[SSAValue, SSAValue] = {arg: arg for arg in block.args}
    for op in ops:
        for result in op.results:
            root[result] = root[op.operands[0]] if is_view(op) and op.operands else result

    value_last_use: dict[SSAValue, int] = {}
    for index, op in enumerate(ops):
        for result in op.results:
            value_last_use[result] = index  # a dead result dies at its birth
        for operand in op.operands:
            value_last_use[operand] = index
    last_use: dict[SSAValue, int] = {}  # a storage lives as long as any value on it
    for value, index in value_last_use.items():
        last_use[root[value]] = max(index, last_use.get(root[value], -1))
    returned_values = set(ops[-1].operands) if isinstance(ops[-1], (func.ReturnOp, YieldOp)) else set()
    returned = {root[v] for v in returned_values}
    args = set(block.args)
    dead_after: dict[int, list[SSAValue]] = {}
    for value, index in value_last_use.items():
        if value not in returned_values and value not in args:
            dead_after.setdefault(index, []).append(value)
    held = 0 if region else sum(tensor_bytes(arg) for arg in block.args) + (optimizer_state_bytes(module) if optimizer_state else 0)
    frees: dict[int, list[SSAValue]] = {}
    for storage, index in last_use.items():
        if storage not in returned and storage not in args:
            frees.setdefault(index, []).append(storage)

    live, profile = held, []
    for index, op in enumerate(ops):
        live += sum(device_bytes(r) for r in op.results if root[r] is r)
        profile.append(live + (workspace_bytes(op) if workspace else 0))
        live -= sum(device_bytes(s) for s in frees.get(index, []))
    return Liveness(ops, root, last_use, returned, held, profile, dead_after)


def region_peak(block: Block) -> int:
    """The most a region's run holds at once (its results included, its arguments not)."""
    return max(liveness(None, block=block).live, default=0)


def device_bytes(value: SSAValue) -> int:
    """What a value holds in device memory: nothing if it lives in the host's (host dialect)."""
    return 0 if on_host(value) else tensor_bytes(value)


def host_pool_bytes(module: ModuleOp) -> int:
    """The host memory the step's offloads use: its pool, up to the furthest offset + bytes."""
    return max(
        (op.offset.value.data + tensor_bytes(op.value) for op in train_step_of(module).body.block.ops
         if isinstance(op, OffloadStartOp)),
        default=0,
    )


def optimizer_state_bytes(module: ModuleOp) -> int:
    """What the user's optimizer holds on this rank between steps, as the zero pass recorded it."""
    zero = zero_of(module)
    return zero.state_bytes.data if zero is not None else 0


def _held_at_peak(module: ModuleOp) -> tuple[Liveness, int, list[tuple[SSAValue, int]]]:
    """(liveness, the peak op's index, (storage, birth) of each storage alive there; birth -1:
    an argument)."""
    lv = liveness(module)
    at = max(range(len(lv.live)), key=lv.live.__getitem__)
    born = {arg: -1 for arg in train_step_of(module).body.block.args}
    for index, op in enumerate(lv.ops):
        for result in op.results:
            born.setdefault(lv.root[result], index)
    alive = []
    for storage, birth in born.items():
        dies = len(lv.ops) if storage in lv.returned or birth < 0 else lv.last_use.get(storage, birth)
        if birth <= at <= dies:
            alive.append((storage, birth))
    return lv, at, alive


def peak_breakdown(module: ModuleOp, seq: int | None = None) -> list[tuple[str, int]]:
    """What is held at the peak, largest first: the arguments (parameters, inputs), then the
    other storages by type (dims equal to `seq` written S) and whether they were recomputed,
    then the optimizer's state and the running kernel's workspace."""
    lv, at, alive = _held_at_peak(module)
    kinds: dict[str, int] = {}
    for storage, birth in alive:
        if birth < 0:
            kind = "arguments (parameters, inputs)"
        else:
            dims = ["S" if d == seq else str(d) for d in storage.type.get_shape()]
            recomputed = "autosp.recompute" in storage.owner.attributes
            kind = f"[{', '.join(dims)}] {torch_dtype(storage.type.element_type)}".replace("torch.", "")
            kind += " (recomputed)" if recomputed else ""
        kinds[kind] = kinds.get(kind, 0) + device_bytes(storage)
    if optimizer_state_bytes(module):
        kinds["optimizer state"] = optimizer_state_bytes(module)
    if workspace_bytes(lv.ops[at]):
        kinds[f"workspace of {lv.ops[at].name}"] = workspace_bytes(lv.ops[at])
    return sorted(kinds.items(), key=lambda item: -item[1])


STATE_KINDS = ("parameters", "gradients", "optimizer state", "gathered parameters", "activations", "buffers and inputs",
               "kernel workspace")


def state_breakdown(module: ModuleOp) -> dict[str, int]:
    """The peak by what it holds (STATE_KINDS): this rank's parameters (its shards when
    sharded), gradients (returned, or whole ones not yet reduced), the optimizer's state, whole
    parameters gathered for a window of the step, activations (everything else the step makes),
    buffers and inputs, and the running kernel's workspace."""
    from autosp.ir.dist import AllReduceOp, GatherStartOp, GatherWaitOp, ReduceScatterGradsOp

    lv, at, alive = _held_at_peak(module)
    fn = train_step_of(module)
    kinds = [attrs.data["autosp.kind"].data for attrs in fn.arg_attrs.data] if fn.arg_attrs else []
    params = {arg for arg, kind in zip(fn.body.block.args, kinds) if kind == "parameter"}
    grads = {lv.root[v] for v in lv.ops[-1].operands[1:]} if isinstance(lv.ops[-1], func.ReturnOp) else set()
    for op in lv.ops:  # whole gradients before their reduction
        if isinstance(op, ReduceScatterGradsOp) or isinstance(op, AllReduceOp) and lv.root[op.results[0]] in grads:
            grads.update(lv.root[v] for v in op.operands)
    held = dict.fromkeys(STATE_KINDS, 0)
    for storage, birth in alive:
        if birth < 0:
            kind = "parameters" if storage in params else "buffers and inputs"
        elif storage in grads:
            kind = "gradients"
        elif isinstance(storage.owner, (GatherStartOp, GatherWaitOp)):  # in flight, or whole
            kind = "gathered parameters"
        else:
            kind = "activations"
        held[kind] += device_bytes(storage)
    held["optimizer state"] = optimizer_state_bytes(module)
    held["kernel workspace"] = workspace_bytes(lv.ops[at])
    return held


def plan_memory(module: ModuleOp, *, workspace: bool = True, optimizer_state: bool = True) -> MemoryPlan:
    """The peak and what makes it. Without `workspace` and `optimizer_state`: what the program
    itself holds (what TrainStep.measure_memory measures)."""
    lv = liveness(module, workspace=workspace, optimizer_state=optimizer_state)
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
        device_bytes(s) for s in read_by_backward
        if isinstance(s, OpResult) and s.owner in forward and s not in lv.returned
    )
    return MemoryPlan(
        held_bytes=lv.held_bytes,
        peak_bytes=peak,
        peak_op=where,
        peak_index=peak_index,
        returned_bytes=sum(tensor_bytes(s) for s in lv.returned if s not in args),
        saved_bytes=saved,
        host_bytes=host_pool_bytes(module),
    )


@dataclass(frozen=True)
class MemoryPlanPass(ModulePass):
    name = "memory-plan"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        plan = plan_memory(op)
        op.attributes["autosp.peak_bytes"] = IntegerAttr(plan.peak_bytes, 64)
        op.attributes["autosp.peak_op"] = StringAttr(plan.peak_op)
