"""sp-propagate{sp=N}: decide the layout of every value on the sequence-parallel axis.

Every argument is replicated (each rank of an SP group receives the same full batch). Integer
user inputs of rank >= 2 are token inputs with the sequence on `seq-dim` (default 1); their
embedding is the seed of sequence sharding, and the rules in `sharding_rules` carry it through
the forward and backward alike. Each op gets `autosp.in_layouts` (what its operands must be) and
`autosp.layouts` (its results), plus `autosp.computed` when the local op yields other layouts
than it declares (attention runs head-sharded and declares sequence-sharded results). Values
returned by @train_step must end replicated: `sp-partition` inserts what that takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, IntAttr, IntegerType, ModuleOp, StringAttr, TensorType, UnitAttr
from xdsl.passes import ModulePass

from autosp.ir.autosp import LayoutAttr, PartitionAttr
from autosp.ir.layout import Layout
from autosp.ir.program import PARTITION, partition_of, train_step_of
from autosp.passes.sharding_rules import R, RuleContext, strategy_for
from autosp.common.errors import AutoSPError

IN_LAYOUTS, LAYOUTS, COMPUTED = "autosp.in_layouts", "autosp.layouts", "autosp.computed"
# On an op no rule shards for its operands' layouts (it runs replicated on gathered inputs).
UNSHARDED = "autosp.unsharded"


def layouts_attr(layouts: list[Layout]) -> ArrayAttr:
    return ArrayAttr([LayoutAttr(l) for l in layouts])


def read_layouts(attr: ArrayAttr) -> list[Layout]:
    return [a.data for a in attr.data]


def token_inputs(fn: func.FuncOp, seq_dim: int) -> set:
    tokens = set()
    for arg, attrs in zip(fn.body.block.args, fn.arg_attrs.data if fn.arg_attrs else []):
        kind = attrs.data.get("autosp.kind")
        if (
            isinstance(kind, StringAttr) and kind.data == "input"
            and isinstance(arg.type, TensorType)
            and isinstance(arg.type.element_type, IntegerType)
            and len(arg.type.get_shape()) > seq_dim
        ):
            tokens.add(arg)
    return tokens


@dataclass(frozen=True)
class SPPropagate(ModulePass):
    name = "sp-propagate"

    sp: int = 1
    seq_dim: int = 1

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.sp < 1:
            raise AutoSPError(f"sp-propagate: sp={self.sp} must be >= 1")
        done = partition_of(op)
        if done is not None:
            raise AutoSPError(
                f"sp-propagate: the module is already partitioned for sp={done.sp.data}; run sp={self.sp} on the "
                "unpartitioned IR (autosp-export's output)"
            )
        fn = train_step_of(op)
        rules = RuleContext(sp=self.sp, token_values=token_inputs(fn, self.seq_dim), seq_dim=self.seq_dim)
        if not rules.token_values:
            raise AutoSPError(
                f"sp-propagate: no token input (an integer input of rank > {self.seq_dim}) to shard "
                "along the sequence; pass seq-dim to name the sequence dim of the inputs"
            )
        lengths = {token.type.get_shape()[self.seq_dim] for token in rules.token_values}
        if len(lengths) != 1:
            raise AutoSPError(f"sp-propagate: token inputs disagree on the sequence length: {sorted(lengths)}")
        rules.seq_len = lengths.pop()
        if rules.seq_len < self.sp:
            raise AutoSPError(f"sp-propagate: sequence length {rules.seq_len} is shorter than sp={self.sp}")
        layout_of = {arg: R for arg in fn.body.block.args}
        for inner in fn.body.block.ops:
            if isinstance(inner, func.ReturnOp):
                inner.attributes[IN_LAYOUTS] = layouts_attr([R] * len(inner.operands))
                continue
            strategy = strategy_for(inner, [layout_of[v] for v in inner.operands], rules)
            inner.attributes[IN_LAYOUTS] = layouts_attr(strategy.inputs)
            inner.attributes[LAYOUTS] = layouts_attr(strategy.outputs)
            if strategy.computed is not None:
                inner.attributes[COMPUTED] = layouts_attr(strategy.computed)
            if strategy.fallback:
                inner.attributes[UNSHARDED] = UnitAttr()
            for result, layout in zip(inner.results, strategy.outputs):
                layout_of[result] = layout
        op.attributes[PARTITION] = PartitionAttr(IntAttr(self.sp), IntAttr(rules.seq_len))
