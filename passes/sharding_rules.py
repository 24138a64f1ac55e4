"""Sharding rules: for each op, the layouts its operands must have and the layouts of its results,
given the layouts its operands have, like DTensor's op strategies. AutoSP's own ops answer
through their `ShardingInterface` (ir/interfaces.py); ATen ops through one rule per op family,
registered with `@sharding_rule` by OpOverload or found by torch's `pointwise` tag.

Layouts are on the sequence-parallel axis: `R` replicated, `P` partial sum, `S(d)` dim d carries
the sequence and rank r holds its r-th part, `H(d)` dim d (attention heads) split evenly. A rule returns None when it has no sharded strategy for the
inputs it sees; the op then runs replicated (its inputs are gathered), which is always exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch._ops import OpOverload
from xdsl.dialects.builtin import ArrayAttr, IntegerAttr, TensorType
from xdsl.ir import Operation, SSAValue

from autosp.ir.aten import AtenCallOp, overload_of
from autosp.ir.interfaces import RuleContext, ShardingInterface, Strategy
from autosp.ir.layout import Layout
from autosp.common.rules import registrar

aten = torch.ops.aten


# The rules' vocabulary.
R = Layout.replicated()
P = Layout.partial()
S = Layout.shard
H = Layout.heads


Rule = Callable[[Operation, list[Layout], RuleContext], Strategy | None]
RULES: dict[OpOverload, Rule] = {}


sharding_rule = registrar(RULES)


def shape(value: SSAValue) -> tuple[int, ...]:
    assert isinstance(value.type, TensorType)
    return tuple(value.type.get_shape())


def prop_int(op: Operation, name: str, default: int | None = None) -> int | None:
    attr = op.properties.get(name)
    return attr.value.data if isinstance(attr, IntegerAttr) else default


def prop_ints(op: Operation, name: str) -> list[int]:
    attr = op.properties.get(name)
    return list(attr.get_values()) if attr is not None else []


def replicated(op: Operation, fallback: bool = False) -> Strategy:
    return Strategy([R] * len(op.operands), [R] * len(op.results), fallback=fallback)


def rule_of(op: Operation) -> Rule | None:
    """The op's sharding rule: its interface's, its ATen overload's, or the pointwise one by
    torch's tag; None: it has none."""
    if isinstance(op, ShardingInterface):
        return lambda op, layouts, ctx: op.sharding(layouts, ctx)
    overload = overload_of(op)
    rule = RULES.get(overload)
    if rule is None and overload is not None and torch.Tag.pointwise in overload.tags:
        rule = _pointwise
    return rule


def strategy_for(op: Operation, layouts: list[Layout], ctx: RuleContext) -> Strategy:
    rule = rule_of(op)
    if all(l == R for l in layouts) and overload_of(op) not in SEEDS:
        return replicated(op)
    strategy = rule(op, layouts, ctx) if rule is not None else None
    return strategy or replicated(op, fallback=True)


# --- made from nothing ------------------------------------------------------------------


@sharding_rule(aten.arange.start_step, aten.arange.default, aten.full.default, aten.scalar_tensor.default,
               aten.empty_permuted.default, aten.empty.memory_format, aten.zeros.default, aten.ones.default)
def _factory(op, layouts, ctx):
    """No operands: every rank makes the whole value (sp-partition makes a fill used only
    sharded at its local size)."""
    return replicated(op)


def _norm(dim: int, rank: int) -> int:
    return dim % rank if rank else 0


def _long_enough(value: SSAValue, dim: int, ctx: RuleContext) -> bool:
    s = shape(value)
    return 0 <= dim < len(s) and s[dim] >= ctx.sp


# --- pointwise --------------------------------------------------------------------------

LINEAR_IN_ALL = {aten.add.Tensor, aten.sub.Tensor}  # partial + partial = partial
LINEAR_IN_FIRST = {aten.div.Tensor, aten.mul.Tensor}  # partial * replicated = partial
LINEAR_UNARY = {aten.mul.Scalar, aten.div.Scalar, aten.neg.default}


def _pointwise(op: Operation, layouts: list[Layout], ctx: RuleContext) -> Strategy | None:
    out_rank = len(shape(op.results[0]))
    sharded = {l.at(l.dim + out_rank - len(shape(v))) for v, l in zip(op.operands, layouts) if l.sharded}
    if len(sharded) > 1:
        return None
    if sharded:
        (out,) = sharded
        inputs = []
        for value, layout in zip(op.operands, layouts):
            local_dim = out.dim - (out_rank - len(shape(value)))
            if layout.sharded:
                inputs.append(layout)
            elif local_dim < 0 or shape(value)[local_dim] == 1:
                inputs.append(R)  # broadcast along the sharded dim
            else:
                inputs.append(out.at(local_dim))  # a replicated operand: take the local block
        return Strategy(inputs, [out] * len(op.results))
    partial = [l == P for l in layouts]
    if overload_of(op) in LINEAR_IN_ALL and all(partial):
        return Strategy([P] * len(layouts), [P])
    if overload_of(op) in LINEAR_IN_FIRST and partial[0] and not any(partial[1:]):
        return Strategy([P] + [R] * (len(layouts) - 1), [P])
    if overload_of(op) == aten.mul.Tensor and partial == [False, True]:
        return Strategy([R, P], [P])
    if overload_of(op) in LINEAR_UNARY and partial == [True]:
        return Strategy([P], [P])
    return None


# --- views and layout-preserving ops ----------------------------------------------------


def reshape_layout(src: Sequence[int], dst: Sequence[int], layout: Layout, seq_len: int, sp: int) -> Layout | None:
    """Where the sequence of `layout` (on a dim of `src`) lies after a reshape to `dst`: the dst
    dim that holds it whole, with the elements merged before it as its `outer` factor
    ([2, S, H] -> [2S, H]: dim 0, outer 2). None if a reshape splits the sequence across dims,
    or merges elements after it ([S, k] -> [S k]) when the sequence does not divide into sp
    equal parts: the blocks of S k would then not be k times the blocks of S."""
    before = math.prod(src[: layout.dim]) * layout.outer  # elements outside and before the sequence
    after = src[layout.dim] // (layout.outer * seq_len) * math.prod(src[layout.dim + 1 :])
    for e in range(len(dst)):
        head = math.prod(dst[:e])
        if head <= before < head * dst[e] and before % head == 0:
            outer = before // head
            inner = dst[e] // outer
            if dst[e] % outer or inner % seq_len or inner // seq_len * math.prod(dst[e + 1 :]) != after:
                return None
            if inner > seq_len and seq_len % sp:
                return None
            return S(e, outer)
    return None


def view_rule(*op_names: str):
    """Register a view's rule from where it moves a sequence shard (`moved(op, layout, ctx)`,
    None when it cannot keep it); partial sums pass through since views are linear."""

    def register(moved: Callable[[Operation, Layout, RuleContext], Layout | None]) -> Rule:
        def rule(op, layouts, ctx):
            layout = layouts[0]
            if layout == P:
                return Strategy([P], [P])
            if not layout.sharded:
                return None
            out = moved(op, layout, ctx)
            return None if out is None else Strategy([layout], [out])

        return sharding_rule(*op_names)(rule)

    return register


@view_rule(aten.view.default, aten._unsafe_view.default, aten.reshape.default,
           aten.unsqueeze.default, aten.squeeze.dims, aten.squeeze.dim, aten.squeeze.default)
def _reshape(op, layout, ctx):
    return reshape_layout(shape(op.operands[0]), shape(op.results[0]), layout, ctx.seq_len, ctx.sp)


@view_rule(aten.permute.default)
def _permute(op, layout, ctx):
    dims = [_norm(d, len(shape(op.operands[0]))) for d in prop_ints(op, "dims")]
    return layout.at(dims.index(layout.dim))


@view_rule(aten.transpose.int, aten.t.default)
def _transpose(op, layout, ctx):
    rank = len(shape(op.operands[0]))
    a, b = (_norm(prop_int(op, "dim0"), rank), _norm(prop_int(op, "dim1"), rank)) if overload_of(op) != aten.t.default else (0, 1)
    d = layout.dim
    return layout.at(b if d == a else a if d == b else d)


@view_rule(aten.expand.default)
def _expand(op, layout, ctx):
    return layout.at(layout.dim + len(shape(op.results[0])) - len(shape(op.operands[0])))


@sharding_rule(aten.split_with_sizes.default, aten.split.Tensor)
def _split(op, layouts, ctx):
    """Pieces along a dim other than the sequence's keep its sharding; a split is linear."""
    layout = layouts[0]
    if layout == P:
        return Strategy([P], [P] * len(op.results))
    rank = len(shape(op.operands[0]))
    if not layout.sharded or _norm(prop_int(op, "dim", 0), rank) == layout.dim:
        return None
    return Strategy([layout], [layout] * len(op.results))


@sharding_rule(aten.native_layer_norm.default)
def _layer_norm(op, layouts, ctx):
    """Each token is normalized on its own (over the trailing normalized dims): a sequence shard
    before them stays one, for the output and the per-token mean and rstd; weight and bias
    replicated."""
    x = layouts[0]
    axis = len(shape(op.operands[0])) - len(prop_ints(op, "normalized_shape"))
    if not x.sharded or x.dim >= axis or any(l != R for l in layouts[1:]):
        return None
    return Strategy([x] + [R] * (len(op.operands) - 1), [x] * len(op.results))


@sharding_rule(aten.clone.default, aten._to_copy.default, aten.alias.default, aten.contiguous.default)
def _same_layout(op, layouts, ctx):
    if layouts[0] == P and overload_of(op) == aten._to_copy.default:
        return None  # rounding each summand differs from rounding the sum
    return Strategy([layouts[0]], [layouts[0]])


def _dim_prop(op, name="dim") -> int:
    return _norm(prop_int(op, name, 0), len(shape(op.operands[0])))


@sharding_rule(aten.slice.Tensor, aten._log_softmax.default, aten._softmax.default)
def _along_other_dim(op, layouts, ctx):
    if layouts[0] == P and overload_of(op) == aten.slice.Tensor:
        return Strategy([P], [P])
    if layouts[0].sharded and layouts[0].dim != _dim_prop(op):
        return Strategy([layouts[0]], [layouts[0]])
    return None


@sharding_rule(aten._log_softmax_backward_data.default, aten._softmax_backward_data.default)
def _softmax_backward(op, layouts, ctx):
    shard = _one_shard(layouts)
    dim = _norm(prop_int(op, "dim"), len(shape(op.operands[0])))
    if shard is None or shard.dim == dim:
        return None
    return Strategy([shard, shard], [shard])


def _one_shard(layouts: list[Layout]) -> Layout | None:
    """The single sequence sharding among same-rank operands (None if none, several, or a partial)."""
    shards = {l for l in layouts if l.sharded}
    return shards.pop() if len(shards) == 1 and P not in layouts else None


@sharding_rule(aten.select.int)
def _select(op, layouts, ctx):
    dim = _dim_prop(op)
    if layouts[0].sharded and layouts[0].dim != dim:
        d = layouts[0].dim
        return Strategy([layouts[0]], [layouts[0].at(d - 1 if d > dim else d)])
    return None


@sharding_rule(aten.cat.default)
def _cat(op, layouts, ctx):
    ranks = {len(shape(v)) for v in op.operands}
    shard = _one_shard(layouts)
    if len(ranks) != 1 or shard is None or shard.dim == _norm(prop_int(op, "dim", 0), ranks.pop()):
        return None
    return Strategy([shard] * len(layouts), [shard])


@sharding_rule(aten.slice_scatter.default)
def _slice_scatter(op, layouts, ctx):
    shard = _one_shard(layouts)
    if shard is None or shard.dim == _dim_prop(op):
        return None
    return Strategy([shard, shard], [shard])


@sharding_rule(aten.constant_pad_nd.default)
def _pad(op, layouts, ctx):
    rank = len(shape(op.operands[0]))
    padded = {rank - 1 - i // 2 for i in range(len(prop_ints(op, "pad")))}
    if layouts[0].sharded and layouts[0].dim not in padded:
        return Strategy([layouts[0]], [layouts[0]])
    return None


@sharding_rule(aten.full_like.default, aten.zeros_like.default, aten.ones_like.default, aten.empty_like.default)
def _like(op, layouts, ctx):
    # Only the shape of the operand matters: a sharded operand gives a sharded (local) result.
    return Strategy([layouts[0]], [layouts[0] if layouts[0].sharded else R])


# --- reductions -------------------------------------------------------------------------


@sharding_rule(aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten.amin.default)
def _reduce(op, layouts, ctx):
    layout = layouts[0]
    if layout == P and overload_of(op) == aten.sum.dim_IntList:
        return Strategy([P], [P])
    if not layout.sharded:
        return None
    rank = len(shape(op.operands[0]))
    dims = {_norm(d, rank) for d in prop_ints(op, "dim")} or set(range(rank))
    if layout.dim in dims:
        return Strategy([layout], [P]) if overload_of(op) == aten.sum.dim_IntList else None
    keepdim = bool(prop_int(op, "keepdim", 0))
    return Strategy([layout], [layout.at(layout.dim - (0 if keepdim else sum(d < layout.dim for d in dims)))])


@sharding_rule(aten.sum.default)
def _sum_all(op, layouts, ctx):
    return Strategy([layouts[0]], [P]) if layouts[0] != R else None


# --- contractions -----------------------------------------------------------------------


@sharding_rule(aten.mm.default)
def _mm(op, layouts, ctx):
    a, b = layouts
    if a.is_shard(0) and not b.is_shard(0):
        return Strategy([a, R], [a])
    if b.is_shard(1) and not a.is_shard(1):
        return Strategy([R, b], [b])
    if a.is_shard(1) or b.is_shard(0):  # contraction over the sharded dim: rows must align
        rows = a.at(0) if a.is_shard(1) else b
        if b.sharded and a.sharded and a.outer != b.outer:
            return None
        return Strategy([rows.at(1), rows.at(0)], [P])
    if P in (a, b) and R in (a, b):
        return Strategy([a, b], [P])
    return None


@sharding_rule(aten.addmm.default)
def _addmm(op, layouts, ctx):
    """bias + a @ b: the bias follows the product's layout, broadcast like a pointwise add."""
    inner = _mm(op, layouts[1:], ctx)
    if inner is None:
        return None
    (out,) = inner.outputs
    bias_shape = shape(op.operands[0])
    if out == P:
        bias = P
    elif out.sharded:
        bias_dim = out.dim - (2 - len(bias_shape))
        bias = R if bias_dim < 0 or bias_shape[bias_dim] == 1 else out.at(bias_dim)
    else:
        bias = R
    return Strategy([bias] + inner.inputs, [out])


# --- embeddings, gathers and scatters ---------------------------------------------------

SEEDS = {aten.embedding.default}


@sharding_rule(aten.embedding.default)
def _embedding(op, layouts, ctx):
    indices = op.operands[1]
    layout = layouts[1]
    if layout == R and indices in ctx.token_values and _long_enough(indices, ctx.seq_dim, ctx):
        layout = S(ctx.seq_dim)  # the seed: token embeddings are sharded on the sequence
    if not layout.sharded:
        return None
    return Strategy([R, layout], [layout])


@sharding_rule(aten.gather.default)
def _gather(op, layouts, ctx):
    shard = _one_shard(layouts)
    if shard is None or shard.dim == _dim_prop(op):
        return None
    return Strategy([shard, shard], [shard])


@sharding_rule(aten.scatter.value, aten.scatter.src, aten.scatter_add.default)
def _scatter(op, layouts, ctx):
    shard = _one_shard(layouts)
    if shard is None or shard.dim == _dim_prop(op):
        return None
    return Strategy([shard] * len(layouts), [shard])


@sharding_rule(aten.index_put.default)
def _index_put_accumulate(op: AtenCallOp, layouts, ctx):
    """index_put(self, [index], values, accumulate=True) with values sharded along one of the
    index's dims: each rank scatters its own rows, so the result is a partial sum (the embedding
    gradient); `self` joins as a partial (rank 0 holds it)."""
    args = op.args.data
    accumulate = args[3] if len(args) > 3 else None
    indices = args[1].data if isinstance(args[1], ArrayAttr) else ()
    if not (isinstance(accumulate, IntegerAttr) and accumulate.value.data) or len(indices) != 1:
        return None
    values = layouts[2]
    if not values.sharded or values.dim >= len(shape(op.operands[1])):
        return None  # rows of `values` are the index's entries only along the index's dims
    return Strategy([P, values, values], [P])
