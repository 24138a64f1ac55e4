"""sp-partition: rewrite the program sp-propagate annotated into the per-rank program.

Each operand whose layout differs from what its op needs gets a conversion, made once per
(value, layout) and reused by every later use:

    R -> S(d), H(d)  autosp.local_shard (free: every rank holds the replicated value)
    S(d) -> R  dist.all_gather          P -> R     dist.all_reduce
    R -> P     autosp.to_partial         P -> S(d)  dist.reduce_scatter
    S(a) <-> H(b)  dist.all_to_all: Ulysses around attention
    H(d x replicas) -> P  autosp.place_shard (kv heads shared by several ranks)

The program is partitioned for one rank of the group (`rank`): when the sequence length does not
divide by sp, rank r holds part r as torch.tensor_split cuts it (parts differ by one token), so
the ranks' programs differ only in those sizes, and every rank runs the same collectives in the
same order. No padding: there are no fake tokens to mask out of the loss or the gradients.

Results get their local (per-rank) types, and shape-carrying properties (`size`/`shape` of view,
expand, ...) are rewritten to the local shape. Results an op computes in another layout than
it declares (attention: head-sharded) are converted right after it, and the computed value is
remembered, so the attention gradient reuses the forward's head-sharded q, k, v and output.
The function returns replicated values: the loss and parameter gradients are all-reduced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    DenseArrayBase,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    SymbolRefAttr,
    TensorType,
)
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from autosp.ir.program import partition_of, train_step_of
from autosp.ir.aten import AtenOp, overload_of
from autosp.ir.autosp import LocalShardOp, PlaceShardOp, ToPartialOp
from autosp.ir.dist import AllGatherOp, AllReduceOp, AllToAllOp, GroupDeclOp, ReduceScatterOp
from autosp.ir.layout import Layout, LayoutKind
from autosp.passes.sharding_rules import P, R
from autosp.passes.sp_propagate import COMPUTED, IN_LAYOUTS, LAYOUTS, read_layouts
from autosp.common.sizes import split_sizes
from autosp.common.errors import AutoSPError

aten = torch.ops.aten

GROUP = SymbolRefAttr("sp")
LIKE_OPS = {aten.full_like.default, aten.zeros_like.default, aten.ones_like.default, aten.empty_like.default}
SHAPE_PROPERTIES = ("size", "shape")


def _i64(value: int) -> IntegerAttr:
    return IntegerAttr(value, IntegerType(64))


class _Partitioner:
    def __init__(self, sp: int, rank: int, seq_len: int):
        self.sp, self.rank, self.seq_len = sp, rank, seq_len
        self.layout_of: dict[SSAValue, Layout] = {}
        self.converted: dict[tuple[SSAValue, Layout], SSAValue] = {}
        self.shrunk: dict[SSAValue, SSAValue] = {}

    def local_type(self, value_type: TensorType, layout: Layout, where: str) -> TensorType:
        shape = list(value_type.get_shape())
        if layout.sharded:  # a multiple of the sequence: this rank's part of it
            if shape[layout.dim] % self.seq_len:
                raise AutoSPError(
                    f"{where}: dim {layout.dim} of {shape} is sharded but not a multiple of the sequence length {self.seq_len}"
                )
            part = split_sizes(self.seq_len, self.sp)[self.rank]
            shape[layout.dim] = shape[layout.dim] // self.seq_len * part
        elif layout.kind is LayoutKind.HEADS:
            blocks = layout.blocks(self.sp)
            if shape[layout.dim] % blocks:
                raise AutoSPError(
                    f"{where}: {shape[layout.dim]} heads (dim {layout.dim} of {shape}) do not split into {blocks} blocks (sp={self.sp})"
                )
            shape[layout.dim] //= blocks
        return TensorType(value_type.element_type, shape)

    def _collective(self, cls, value: SSAValue, result_layout: Layout, **props) -> Operation:
        common = {"group": GROUP}
        defaults = {"replicas": 1, "outer": 1}  # left out of the IR when they have no effect
        properties = common | {
            k: (_i64(v) if isinstance(v, int) else StringAttr(v)) for k, v in props.items() if defaults.get(k) != v
        }
        global_type = self._global_type(value)
        out_type = self.local_type(global_type, result_layout, cls.name)
        if cls is PlaceShardOp:
            out_type = global_type
        op = cls.build(operands=[value], result_types=[out_type], properties=properties)
        if value.name_hint:
            suffix = re.sub(r"[^a-z0-9]", "", str(result_layout).lower())
            op.results[0].name_hint = f"{value.name_hint}_{suffix}"
        return op

    def _global_type(self, value: SSAValue) -> TensorType:
        layout = self.layout_of[value]
        shape = list(value.type.get_shape())
        if layout.sharded:
            part = split_sizes(self.seq_len, self.sp)[self.rank]
            shape[layout.dim] = shape[layout.dim] // part * self.seq_len
        elif layout.kind is LayoutKind.HEADS:
            shape[layout.dim] *= layout.blocks(self.sp)
        return TensorType(value.type.element_type, shape)

    def shrink_factory(self, value: SSAValue, dst: Layout) -> bool:
        """A fill used only sharded (full/zeros/empty with a `size`, or a `*_like` of one) is made
        at its local size instead of at full size and then sliced: at long sequence lengths the
        full-size fill alone (e.g. [1, S, 8192] in the MLP backward) would not fit."""
        owner = value.owner
        if len(list(value.uses)) != 1 or self.layout_of.get(value) != R or not isinstance(owner, AtenOp):
            return False
        if not owner.operands and "size" in owner.properties:
            local = self.local_type(value.type, dst, owner.name)
            owner.properties["size"] = DenseArrayBase.from_list(IntegerType(64), list(local.get_shape()))
        elif overload_of(owner) in LIKE_OPS and self.shrink_factory(owner.operands[0], dst):
            local = owner.operands[0].type
        else:
            return False
        new = Rewriter.replace_value_with_new_type(value, local)
        self.layout_of[new] = dst
        self.shrunk[value] = new
        return True

    def conversion(self, value: SSAValue, src: Layout, dst: Layout) -> list[Operation]:
        """The ops turning `value` (in layout src) into layout dst."""
        if src == dst:
            return []
        plain_src = src.blocked and src.replicas == 1
        plain_dst = dst.blocked and dst.replicas == 1
        if src == R and dst.blocked:
            if self.shrink_factory(value, dst):
                return []
            return [self._collective(LocalShardOp, value, dst, dim=dst.dim, replicas=dst.replicas, outer=dst.outer)]
        if plain_src and dst == R:
            return [self._collective(AllGatherOp, value, R, dim=src.dim, outer=src.outer)]
        if src == P and dst == R:
            return [self._collective(AllReduceOp, value, R, reduce="sum")]
        if src == R and dst == P:
            return [self._collective(ToPartialOp, value, P)]
        if src == P and plain_dst:
            return [self._collective(ReduceScatterOp, value, dst, reduce="sum", dim=dst.dim, outer=dst.outer)]
        if plain_src and plain_dst and src.outer == dst.outer == 1:
            return [self._collective(AllToAllOp, value, dst, split_dim=dst.dim, concat_dim=src.dim)]
        if src.blocked and src.replicas > 1 and dst == P:  # blocks held by several ranks: a partial sum
            return [self._collective(PlaceShardOp, value, P, dim=src.dim, replicas=src.replicas)]
        # Two steps: through partial when blocks are shared (their sum is the value), else
        # through replicated.
        via = P if src.blocked and src.replicas > 1 else R
        first = self.conversion(value, src, via)
        self.layout_of[first[-1].results[0]] = via
        return first + self.conversion(first[-1].results[0], via, dst)

    def convert_before(self, value: SSAValue, dst: Layout, anchor: Operation) -> SSAValue:
        key = (value, dst)
        if key not in self.converted:
            ops = self.conversion(value, self.layout_of[value], dst)
            if not ops:
                return self.shrunk.get(value, value)
            Rewriter.insert_op(ops, InsertPoint.before(anchor))
            self.converted[key] = ops[-1].results[0]
            self.layout_of[ops[-1].results[0]] = dst
        return self.converted[key]

    def partition_op(self, op: Operation) -> None:
        required = read_layouts(op.attributes.pop(IN_LAYOUTS))
        for i, (operand, layout) in enumerate(zip(list(op.operands), required)):
            new = self.convert_before(operand, layout, op)
            if new is not operand:
                op.operands[i] = new
        if isinstance(op, func.ReturnOp):
            return
        declared = read_layouts(op.attributes.pop(LAYOUTS))
        computed = read_layouts(op.attributes.pop(COMPUTED)) if COMPUTED in op.attributes else declared
        for result, layout in zip(list(op.results), computed):
            local = Rewriter.replace_value_with_new_type(result, self.local_type(result.type, layout, op.name))
            self.layout_of[local] = layout
        if isinstance(op, AtenOp) and len(op.results) == 1:
            for name in SHAPE_PROPERTIES:
                if name in op.properties and computed[0].sharded:
                    op.properties[name] = DenseArrayBase.from_list(
                        IntegerType(64), list(op.results[0].type.get_shape())
                    )
        anchor = op
        for result, have, want in zip(op.results, computed, declared):
            if have == want:
                continue
            ops = self.conversion(result, have, want)
            Rewriter.insert_op(ops, InsertPoint.after(anchor))
            anchor = ops[-1]
            converted = ops[-1].results[0]
            result.replace_uses_with_if(converted, lambda use: use.operation is not ops[0])
            self.layout_of[converted] = want
            self.converted[(converted, have)] = result


@dataclass(frozen=True)
class SPPartition(ModulePass):
    name = "sp-partition"

    rank: int = 0  # the rank (within the SP group) whose program to produce

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        partition = partition_of(op)
        if partition is None:
            raise AutoSPError("sp-partition: run sp-propagate first (the module has no #autosp.partition)")
        sp, seq_len = partition.sp.data, partition.seq_len.data
        if not 0 <= self.rank < sp:
            raise AutoSPError(f"sp-partition: rank={self.rank} is not in 0..{sp - 1}")
        partitioner = _Partitioner(sp, self.rank, seq_len)
        fn = train_step_of(op)
        # The SP group the collectives name, declared once in the module.
        group = GroupDeclOp.build(properties={
            "sym_name": StringAttr(GROUP.root_reference.data), "size": _i64(sp), "axis": StringAttr("sequence"),
        })
        op.body.block.insert_op_before(group, fn)
        for arg in fn.body.block.args:
            partitioner.layout_of[arg] = R
        for inner in list(fn.body.block.ops):
            if IN_LAYOUTS not in inner.attributes:
                raise AutoSPError(f"sp-partition: {inner.name} has no layouts; run sp-propagate first")
            partitioner.partition_op(inner)
