"""zero{level world rank optimizer prefetch}: shard the training state over every rank (ZeRO), as the
program of rank `rank` of `world` (sp x dp ranks). Runs after sp-partition, before remat.

`level` is what is sharded: `optimizer` (ZeRO-1), `gradients` (ZeRO-2), `parameters` (ZeRO-3);
`none` shards nothing and only records the optimizer state. At every level above none the
parameters are stored sharded between steps (the runtime makes them DTensors, Shard(0) over
the world mesh), so the user's optimizer keeps only its shard of the state; the levels differ
in how long whole parameters and gradients live during the step:

- Parameters: each arg becomes this rank's shard (dim 0 cut as DTensor's Shard(0) cuts it; a
  0-dim parameter stays whole, replicated). Parameters are grouped into buckets by the forward
  segments that read them (the attention ops before the reader: about one transformer layer, its
  output projection, MLP and the next layer's norms and q/k/v) and by dtype; a bucket moves in one
  collective. `dist.gather_params` (phase forward) runs right before the bucket's first forward
  use. At `parameters` the forward's copies die after their last forward use and the bucket is
  gathered again (phase backward) before the first backward op that reads one of its parameters
  or a value the forward made in its segments, so that the ops remat recomputes there find it.
  Below `parameters` the forward's copies serve the backward too (whole parameters live
  through the step, as ZeRO-1/2 keep them).
- Gradients: the SP all-reduce of each gradient is replaced by one reduce-scatter over the world
  per bucket (`dist.reduce_scatter_grads`, dividing by dp: the mean over replicas as DDP takes
  it), right after the bucket's last gradient is made (`gradients`, `parameters`: the whole
  gradients die there) or at the end of the backward (`optimizer`: ZeRO-1 holds whole gradients).

Where each collective goes follows from the program's structure alone, the same on every rank,
so the world collectives and the SP collectives interleave identically on all of them. The
module gets `#autosp.zero<...>` with the optimizer state this rank holds, for the memory plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    DenseArrayBase, IntegerAttr, IntegerType, IntAttr, ModuleOp, StringAttr, SymbolRefAttr, TensorType,
)
from xdsl.ir import Operation, OpResult, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from autosp.common.errors import AutoSPError
from autosp.common.sizes import chunk_sizes
from autosp.ir.autosp import SHARD_LEVELS, AttentionOp, ToPartialOp, ZeroAttr
from autosp.ir.dist import AllReduceOp, GatherStartOp, GatherWaitOp, GroupDeclOp, ReduceScatterGradsOp, segment_length
from autosp.ir.aten import overload_of
from autosp.ir.dtypes import BYTES, tensor_bytes, torch_dtype
from autosp.ir.program import ZERO, partition_of, train_step_of, zero_of
from autosp.passes.memory_plan import forward_ops, is_view
from autosp.passes.optimizers import state_size
from autosp.passes.views import rebased

WORLD = SymbolRefAttr("world")
SP = SymbolRefAttr("sp")


def _i64(value: int) -> IntegerAttr:
    return IntegerAttr(value, IntegerType(64))


def shard_type(whole: TensorType, world: int, rank: int) -> TensorType:
    """This rank's shard of a parameter: DTensor's Shard(0) rows, or the whole 0-dim value."""
    shape = list(whole.get_shape())
    if shape:
        shape[0] = chunk_sizes(shape[0], world)[rank]
    return TensorType(whole.element_type, shape)


@dataclass
class Bucket:
    index: int
    params: list[SSAValue] = field(default_factory=list)  # the (sharded) block arguments
    segments: frozenset[int] = frozenset()
    first_use: int = 0


def _state_bytes(args: list[SSAValue], kind: str) -> int:
    size = state_size(kind)
    return sum(
        size.bytes_for(math.prod(a.type.get_shape()), BYTES[torch_dtype(a.type.element_type)]) for a in args
    )


@dataclass(frozen=True)
class Zero(ModulePass):
    name = "zero"

    level: str = "none"
    world: int = 1
    rank: int = 0  # this rank's index on the world (the mesh flattened: dp-major, then sp)
    optimizer: str = "none"
    prefetch: bool = True  # start each gather one bucket ahead (False: where it is waited for)

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.level not in SHARD_LEVELS:
            raise AutoSPError(f"zero: level={self.level!r}; choose one of {', '.join(SHARD_LEVELS)}")
        if not 0 <= self.rank < self.world:
            raise AutoSPError(f"zero: rank={self.rank} is not in 0..{self.world - 1}")
        if zero_of(op) is not None:
            raise AutoSPError("zero: the module is sharded already")
        partition = partition_of(op)
        sp = partition.sp.data if partition is not None else 1
        if self.world % sp:
            raise AutoSPError(f"zero: world={self.world} is not a multiple of sp={sp}")
        fn = train_step_of(op)
        kinds = [attrs.data["autosp.kind"].data for attrs in fn.arg_attrs.data] if fn.arg_attrs else []
        params = [i for i, kind in enumerate(kinds) if kind == "parameter"]
        ret = fn.body.block.last_op
        assert isinstance(ret, func.ReturnOp)
        grads = self._gradients(fn)
        whole = [fn.body.block.args[i] for i in params if i in grads]
        unsharded = 2 * sum(tensor_bytes(a) for a in whole) + _state_bytes(whole, self.optimizer)
        unsharded += sum(tensor_bytes(fn.body.block.args[i]) for i in params if i not in grads)  # frozen
        if self.level != "none":
            op.body.block.insert_op_before(GroupDeclOp.build(properties={
                "sym_name": StringAttr(WORLD.root_reference.data), "size": _i64(self.world), "axis": StringAttr("world"),
            }), fn)
            self._shard(fn, ret, params, grads, sp)
        trainable = [fn.body.block.args[i] for i in params if i in grads]
        state = _state_bytes(trainable, self.optimizer)
        op.attributes[ZERO] = ZeroAttr(
            StringAttr(self.level), IntAttr(self.world), IntAttr(self.world // sp), StringAttr(self.optimizer), IntAttr(state),
            IntAttr(unsharded),
        )

    @staticmethod
    def _gradients(fn: func.FuncOp) -> dict[int, int]:
        """Parameter arg index -> the index of its gradient among the returned values."""
        by_name = {}
        for i, attrs in enumerate(fn.arg_attrs.data if fn.arg_attrs else []):
            if "autosp.name" in attrs.data:
                by_name[attrs.data["autosp.name"].data] = i
        grads = {}
        for i, attrs in enumerate(fn.res_attrs.data if fn.res_attrs else []):
            if "autosp.grad_of" in attrs.data:
                grads[by_name[attrs.data["autosp.grad_of"].data]] = i
        return grads

    def _shard(self, fn: func.FuncOp, ret: func.ReturnOp, params: list[int], grads: dict[int, int], sp: int) -> None:
        block = fn.body.block
        ops = list(block.ops)
        position = {o: i for i, o in enumerate(ops)}
        forward = forward_ops(ops)
        # A forward op's segment: the attention ops before it (a weight's transpose sits with
        # the matmul that reads it, whatever its own inputs are).
        segment, attentions = {}, 0
        for o in ops:
            if o in forward:
                segment[o] = attentions
                attentions += isinstance(o, AttentionOp)
        # The first backward op that reads a value the forward made in each segment.
        first_read: dict[int, int] = {}
        for i, o in enumerate(ops):
            if o in forward or isinstance(o, func.ReturnOp):
                continue
            for operand in o.operands:
                if isinstance(operand, OpResult) and operand.owner in segment:
                    first_read.setdefault(segment[operand.owner], i)

        # Buckets: parameters read by the same forward segments, of one dtype (a parameter
        # nothing reads still gets one: its gradient is reduce-scattered).
        buckets: dict[tuple, Bucket] = {}
        for i in params:
            p = block.args[i]
            users = [u.operation for u in p.uses]
            segs = frozenset(segment[u] for u in users if u in forward)
            bucket = buckets.setdefault((segs, p.type.element_type), Bucket(0, segments=segs, first_use=len(ops)))
            bucket.params.append(i)
            bucket.first_use = min([bucket.first_use] + [position[u] for u in users])
        ordered = sorted(buckets.values(), key=lambda b: b.first_use)

        # Each parameter arg becomes its shard; its uses read the gathered whole parameter.
        whole_types = {i: block.args[i].type for i in params}
        names = {i: block.args[i].name_hint or f"param{i}" for i in params}
        for i in params:
            shard = Rewriter.replace_value_with_new_type(block.args[i], shard_type(whole_types[i], self.world, self.rank))
            shard.name_hint = f"{names[i]}_shard"
        # What the backward reads of each parameter: the parameter itself, or a view of it the
        # forward made (the joint graph reuses the forward's transposed weights).
        root: dict[SSAValue, SSAValue] = {block.args[i]: block.args[i] for i in params}
        for o in ops:
            if o in forward and is_view(o) and o.operands and o.operands[0] in root:
                root[o.results[0]] = root[o.operands[0]]
        read_in_backward: dict[SSAValue, list[int]] = {}
        for i, o in enumerate(ops):
            if o not in forward and not isinstance(o, func.ReturnOp):
                for operand in o.operands:
                    if operand in root:
                        read_in_backward.setdefault(root[operand], []).append(i)
        for index, bucket in enumerate(ordered):
            bucket.index = index
            members = [block.args[i] for i in bucket.params]
            uses = [(u.operation, u.index, m) for m in members for u in list(m.uses)]
            backward_uses = [(o, i, m) for o, i, m in uses if o not in forward]
            backward_reads = [i for m in members for i in read_in_backward.get(m, [])]
            regather = self.level == "parameters" and bool(backward_reads) or bool(uses) and len(backward_uses) == len(uses)
            gathered = {}
            for phase, readers in (("forward", [u for u in uses if u[0] in forward]), ("backward", backward_uses)):
                reads = [position[o] for o, _, _ in readers] + (backward_reads if phase == "backward" else [])
                if not reads or phase == "backward" and not regather:
                    continue
                anchor = min(reads)
                if phase == "backward":  # also before the backward reads what the forward made with them
                    anchor = min([anchor] + [first_read[s] for s in bucket.segments if s in first_read])
                gather = self._gather(members, [whole_types[i] for i in bucket.params], index, phase)
                for i, result in zip(bucket.params, gather.results):
                    result.name_hint = names[i] + ("" if phase == "forward" else "_bwd")
                gather.start.buffer.name_hint = f"bucket{index}_{phase}"
                Rewriter.insert_op([gather.start, gather], InsertPoint.before(ops[anchor]))
                gathered[phase] = gather
                for reader, operand_index, member in (readers if regather else uses):
                    reader.operands[operand_index] = gather.results[members.index(member)]
            if regather and len(gathered) == 2:
                self._rebase_backward_views(ops, forward, gathered["forward"], gathered["backward"])
        if self.prefetch:
            self._start_ahead(block)
        self._reduce_scatter(fn, ret, ordered, grads, names, sp)
        fn.update_function_type()

    def _gather(self, shards: list[SSAValue], wholes: list[TensorType], bucket: int, phase: str) -> GatherWaitOp:
        """The start and the wait of one bucket's gather (the wait's `start` is its start op)."""
        rows = [w.get_shape()[0] if w.get_shape() else 1 for w in wholes]
        segment = sum(segment_length(list(w.get_shape()), self.world) for w in wholes)
        properties = {"group": WORLD, "bucket": _i64(bucket), "phase": StringAttr(phase)}
        start = GatherStartOp.build(
            operands=[shards], result_types=[TensorType(wholes[0].element_type, [self.world, segment])],
            properties={**properties, "rows": DenseArrayBase.from_list(IntegerType(64), rows)},
        )
        return GatherWaitOp.build(operands=[start.buffer], result_types=[wholes], properties=properties)

    @staticmethod
    def _start_ahead(block) -> None:
        """Each gather starts when the one before it (of its phase) has been waited for, so the
        transfer overlaps the layer before its own; the first gather of each phase starts where
        it is waited for (the backward's first bucket is the forward's last: starting it in the
        forward would hold two copies at the peak)."""
        waits: dict[str, list[GatherWaitOp]] = {}
        for op in block.ops:
            if isinstance(op, GatherWaitOp):
                waits.setdefault(op.phase.data, []).append(op)
        for phase_waits in waits.values():
            for before, wait in zip(phase_waits, phase_waits[1:]):
                start = wait.start
                start.detach()
                block.insert_op_after(start, before)

    @staticmethod
    def _rebase_backward_views(ops, forward, fwd: GatherWaitOp, bwd: GatherWaitOp) -> None:
        """Backward ops that read a forward view of a gathered parameter (the joint graph reuses
        the forward's transposed weights) read the same view of the backward's gather, so the
        forward's copy can die after the forward."""
        twins = dict(zip(fwd.results, bwd.results))
        made: dict[SSAValue, SSAValue] = {}
        insert_after = [bwd]

        def insert(clone: Operation) -> None:
            Rewriter.insert_op(clone, InsertPoint.after(insert_after[-1]))
            insert_after.append(clone)

        for o in ops:
            if o in forward or isinstance(o, func.ReturnOp):
                continue
            for index, operand in enumerate(o.operands):
                if operand in twins:
                    continue
                new = rebased(operand, twins, made, insert)
                if new is not None:
                    o.operands[index] = new

    def _reduce_scatter(self, fn, ret: func.ReturnOp, buckets: list[Bucket], grads: dict[int, int], names: dict[int, str], sp: int) -> None:
        """One reduce-scatter over the world per bucket of trainable parameters (one per element
        type its contributions have: a gradient the program accumulated in a wider dtype and
        only then cast, e.g. `cast(all_reduce(partial))`, is reduce-scattered before the cast and
        its shard cast, so it is summed over the ranks in the dtype it was accumulated in)."""
        block = fn.body.block
        dropped: list[Operation] = []
        for bucket in buckets:
            members = [i for i in bucket.params if i in grads]
            if not members:
                continue
            # member -> (its contribution, the value whose op completes it, the cast to apply to its shard)
            parts: dict[int, tuple[SSAValue, SSAValue, Operation | None]] = {}
            before: list[Operation] = []
            for i in members:
                g = ret.operands[grads[i]]
                cast = None
                # Reduce what was cast, then cast the shard (ZeRO-1, which holds the whole gradients
                # to the end, keeps them narrow).
                if self.level != "optimizer" and _is_cast(g.owner) and g.has_one_use():
                    cast = g.owner
                    dropped.append(cast)
                    g = cast.operands[0]
                owner = g.owner
                if isinstance(owner, AllReduceOp) and owner.group == SP and owner.reduce.data == "sum" and g.has_one_use():
                    parts[i] = (owner.input, owner.input, cast)  # this rank's partial sum
                    dropped.append(owner)
                elif sp > 1:  # replicated over the SP group: one rank contributes it
                    before.append(ToPartialOp.build(operands=[g], result_types=[g.type], properties={"group": SP}))
                    parts[i] = (before[-1].results[0], g, cast)
                else:
                    parts[i] = (g, g, cast)
            if self.level == "optimizer":
                anchor = ret  # ZeRO-1 holds the whole gradients to the end of the backward
            else:  # right after the last of them is made
                ops = list(block.ops)
                position = {o: i for i, o in enumerate(ops)}
                made = [position[ready.owner] for _, ready, _ in parts.values() if isinstance(ready, OpResult)]
                anchor = ops[max(made) + 1] if made else ops[0]
            Rewriter.insert_op(before, InsertPoint.before(anchor))
            returned = list(ret.operands)
            for element_type in dict.fromkeys(parts[i][0].type.element_type for i in members):
                group = [i for i in members if parts[i][0].type.element_type == element_type]
                scatter = ReduceScatterGradsOp.build(
                    operands=[[parts[i][0] for i in group]],
                    result_types=[[TensorType(element_type, block.args[i].type.get_shape()) for i in group]],
                    properties={"group": WORLD, "bucket": _i64(bucket.index), "divide": _i64(self.world // sp)},
                )
                Rewriter.insert_op(scatter, InsertPoint.before(anchor))
                for i, shard in zip(group, scatter.results):
                    cast = parts[i][2]
                    if cast is not None:  # the shard in the parameter's dtype
                        shard.name_hint = f"grad_{names[i]}_{element_type}"
                        cast = type(cast).build(operands=[shard], result_types=[block.args[i].type], properties=dict(cast.properties))
                        Rewriter.insert_op(cast, InsertPoint.before(anchor))
                        shard = cast.results[0]
                    shard.name_hint = f"grad_{names[i]}"
                    returned[grads[i]] = shard
            ret.operands = returned
        for owner in dropped:  # casts first, then the all-reduces they read
            assert not owner.results[0].uses
            block.erase_op(owner)


def _is_cast(op) -> bool:
    """A dtype cast to a narrower float (`_to_copy` with only a dtype, e.g. f32 -> bf16)."""
    if not isinstance(op, Operation) or overload_of(op) != torch.ops.aten._to_copy.default or len(op.operands) != 1:
        return False
    source, target = op.operands[0].type.element_type, op.results[0].type.element_type
    return source != target and BYTES[torch_dtype(source)] > BYTES[torch_dtype(target)]
