"""Index inputs checked on the whole batch before the step, so a bad token id or label fails the
same way on every rank (and never as a device-side assert).

Eager PyTorch raises on an embedding index or a loss target outside its table; the compiled step
must too, but under SP each rank holds only its part of the sequence, so a check inside the step
would fire on one rank and leave the others in a collective. Instead, `index_checks(module)`
reads the imported (unpartitioned) IR: for every op that reads a tensor as indices (`INDEX_RULES`)
whose indices are computed from user inputs and constants alone (HF's shifted, padded labels;
`where(labels != -100, labels, 0)` in a decomposed cross-entropy), it writes those ops into
`index_inputs(*user inputs)`, a function of the generated program that recomputes exactly the
index tensor from the whole inputs. The runtime checks its values against the table size before
the step and agrees on the verdict with every rank. Index tensors that depend on weights (e.g.
routing) are checked only inside the step (the fused loss still checks its labels there).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._ops import OpOverload
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.ir import BlockArgument, Operation, OpResult, SSAValue

from autosp.codegen import Names, emitter_for
from autosp.ir.program import train_step_of
from autosp.ir.interfaces import IndexReaderInterface, IndexUse
from autosp.common.rules import registrar
from autosp.ir.aten import overload_of

aten = torch.ops.aten


INDEX_RULES: dict[OpOverload, Callable[[Operation], IndexUse]] = {}
index_rule = registrar(INDEX_RULES)


def index_rule_of(op: Operation) -> Callable[[Operation], IndexUse] | None:
    """AutoSP's own ops say what they read as indices (`IndexReaderInterface`); ATen ops by table."""
    if isinstance(op, IndexReaderInterface):
        return lambda op: op.index_use()
    return INDEX_RULES.get(overload_of(op))


def _dim(value: SSAValue, dim: int) -> int:
    return value.type.get_shape()[dim]  # type: ignore[attr-defined]


@index_rule(aten.embedding.default)
def _embedding(op: Operation) -> IndexUse:
    return IndexUse(op.operands[1], _dim(op.operands[0], 0), None, "the embedding table")


@index_rule(aten.nll_loss_forward.default, aten.nll_loss2d_forward.default)
def _nll_loss(op: Operation) -> IndexUse:
    logits = op.operands[0]
    classes = _dim(logits, 0 if len(logits.type.get_shape()) == 1 else 1)  # type: ignore[attr-defined]
    return IndexUse(op.operands[1], classes, op.properties["ignore_index"].value.data, "the loss's classes")  # type: ignore[attr-defined]


@index_rule(aten.gather.default, aten.index_select.default)
def _gather(op: Operation) -> IndexUse:
    source = op.operands[0]
    dim = op.properties["dim"].value.data  # type: ignore[attr-defined]
    return IndexUse(op.operands[1], _dim(source, dim % max(1, len(source.type.get_shape()))), None, f"dim {dim} of {op.name}")  # type: ignore[attr-defined]


# The computation of an index tensor is recomputed before the step only when it is small: made
# from user inputs and constants alone, in at most this many ops (token-sized integer work).
MAX_SLICE_OPS = 64


def _slice(value: SSAValue, inputs: dict[SSAValue, str]) -> tuple[list[str], set[Operation]] | None:
    """The user inputs `value` is computed from and the ops computing it, when it depends on
    nothing else (no parameter, buffer or op with regions)."""
    used: list[str] = []
    ops: set[Operation] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, BlockArgument):
            if v not in inputs:
                return None
            if inputs[v] not in used:
                used.append(inputs[v])
        elif isinstance(v, OpResult) and v.op not in ops:
            if v.op.regions or len(ops) >= MAX_SLICE_OPS:
                return None
            ops.add(v.op)
            stack.extend(v.op.operands)
    return (used, ops) if used else None


def index_checks(module: ModuleOp) -> str:
    """Python source of `index_inputs(*user inputs) -> [(index tensor, the inputs it comes from,
    size, ignore, reader)]` for the module's train_step (before partitioning)."""
    fn = train_step_of(module)
    attrs = fn.arg_attrs.data if fn.arg_attrs else []
    user_args = [arg for arg, a in zip(fn.body.block.args, attrs) if a.data["autosp.kind"] == StringAttr("input")]
    names = Names()
    params = [names.define(arg) for arg in user_args]
    inputs = {arg: name for arg, name in zip(user_args, params)}
    uses: list[tuple[list[str], IndexUse]] = []
    needed: set[Operation] = set()
    for op in fn.body.block.ops:
        rule = index_rule_of(op)
        sliced = rule and _slice(rule(op).indices, inputs)
        if sliced:
            uses.append((sliced[0], rule(op)))
            needed |= sliced[1]
    order = {op: i for i, op in enumerate(fn.body.block.ops)}
    lines = [f"def index_inputs({', '.join(params)}):"]
    for op in sorted(needed, key=order.__getitem__):
        call = emitter_for(op)(op, names)
        lines.append(f"    {names.define(op.results[0])} = {call}")
    seen = set()
    entries = []
    for input_names, use in uses:
        key = (use.indices, use.size, use.ignore)
        if key not in seen:
            seen.add(key)
            source = " and ".join(f"'{n}'" for n in input_names)
            entries.append(f"({names[use.indices]}, {source!r}, {use.size}, {use.ignore!r}, {use.reader!r})")
    lines.append(f"    return [{', '.join(entries)}]")
    return "\n".join(lines) + "\n"
