"""Recognize an attention mask built in the graph as a function of (query index, key index).

HF models (and many hand-written ones) build `[B, 1, Sq, Sk]` masks from `arange`, `le`, `&`.
Rather than matching one model's op sequence, the mask's producing subgraph is evaluated
abstractly: an integer tensor is an affine function of its own indices, a boolean tensor a
conjunction of linear inequalities over them. One rule per op, registered in `MASK_RULES`.
At the end the inequalities over (i = query, j = key) must read `j <= i` (causal) and optionally
`j > i - W` (sliding window); anything else is refused with the node that made it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.fx import Node

aten = torch.ops.aten


class MaskNotUnderstood(Exception):
    """The mask is not a function of query/key indices this compiler can evaluate blockwise."""


@dataclass(frozen=True)
class Affine:
    """value[i_0, ..., i_n-1] = const + sum_d coef[d] * i_d (coef on size-1 dims is 0)."""

    coef: tuple[int, ...]
    const: int

    def aligned(self, rank: int) -> Affine:
        return Affine((0,) * (rank - len(self.coef)) + self.coef, self.const)

    def minus(self, other: Affine) -> Affine:
        rank = max(len(self.coef), len(other.coef))
        a, b = self.aligned(rank), other.aligned(rank)
        return Affine(tuple(x - y for x, y in zip(a.coef, b.coef)), a.const - b.const)


@dataclass(frozen=True)
class Predicate:
    """True where every inequality `sum coef * i + const <= 0` holds (no inequality: all True).
    `additive` marks a float mask (0 where True, -inf where False)."""

    rank: int
    inequalities: frozenset[Affine]
    additive: bool = False

    def aligned(self, rank: int) -> Predicate:
        return Predicate(rank, frozenset(a.aligned(rank) for a in self.inequalities), self.additive)


@dataclass(frozen=True)
class MaskDescription:
    causal: bool
    window: int  # 0: unbounded


AbstractValue = Affine | Predicate | int | float | bool
Rule = Callable[[Node, list], AbstractValue]
MASK_RULES: dict[object, Rule] = {}


def mask_rule(*targets):
    def register(fn: Rule) -> Rule:
        for target in targets:
            MASK_RULES[target] = fn
        return fn

    return register


def _shape(node: Node) -> tuple[int, ...]:
    return tuple(int(s) for s in node.meta["val"].shape)


def _zero_unit_dims(coef: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(0 if size == 1 else c for c, size in zip(coef, shape))


def _as_affine(value: AbstractValue, node: Node) -> Affine:
    if isinstance(value, Affine):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise MaskNotUnderstood(f"{node.name}: expected an integer index expression")
    return Affine((), value)


def _map_dims(value: AbstractValue, fn: Callable[[tuple], tuple]) -> AbstractValue:
    if isinstance(value, Affine):
        return Affine(fn(value.coef), value.const)
    if isinstance(value, Predicate):
        out = frozenset(Affine(fn(a.coef), a.const) for a in value.inequalities)
        rank = len(fn((0,) * value.rank))
        return Predicate(rank, out, value.additive)
    return value


def bound_arguments(node: Node, schema=None) -> dict[str, object]:
    """The node's arguments by schema name, defaults filled in (`schema`: node.target's)."""
    schema = schema or node.target._schema  # type: ignore[union-attr]
    bound = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            bound[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            bound[arg.name] = node.kwargs[arg.name]
        else:
            bound[arg.name] = arg.default_value
    return bound


# --- rules -------------------------------------------------------------------------------


@mask_rule(aten.arange.default, aten.arange.start, aten.arange.start_step)
def _arange(node: Node, args: list) -> AbstractValue:
    if node.target == aten.arange.default:
        start, step = 0, 1
    else:
        start = args[0]
        step = args[2] if len(args) > 2 else 1
    if not all(isinstance(x, int) for x in (start, step)):
        raise MaskNotUnderstood(f"{node.name}: arange with non-integer bounds")
    return Affine((step,), start)


def _offset(node: Node, args: list, sign: int) -> AbstractValue:
    a, b = args[0], args[1]
    if len(args) > 2 and args[2] != 1:
        raise MaskNotUnderstood(f"{node.name}: alpha != 1")
    if isinstance(a, Affine) or isinstance(b, Affine):
        a, b = _as_affine(a, node), _as_affine(b, node)
        return a.minus(b) if sign < 0 else a.minus(Affine(tuple(-c for c in b.coef), -b.const))
    return a + sign * b


@mask_rule(aten.add.Tensor, aten.add.Scalar)
def _add(node: Node, args: list) -> AbstractValue:
    return _offset(node, args, +1)


@mask_rule(aten.sub.Tensor, aten.sub.Scalar)
def _sub(node: Node, args: list) -> AbstractValue:
    return _offset(node, args, -1)


@mask_rule(aten.unsqueeze.default)
def _unsqueeze(node: Node, args: list) -> AbstractValue:
    rank = len(_shape(node))
    dim = args[1] % rank
    return _map_dims(args[0], lambda c: c[:dim] + (0,) + c[dim:])


@mask_rule(aten.expand.default, aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _reshape_unit_dims(node: Node, args: list) -> AbstractValue:
    """expand, and reshapes that only add or drop size-1 dims, keep the non-unit dims in order."""
    source = node.args[0]
    src_shape, out_shape = _shape(source), _shape(node)
    if node.target == aten.expand.default:
        src_shape = (1,) * (len(out_shape) - len(src_shape)) + src_shape
        value = _map_dims(args[0], lambda c: (0,) * (len(out_shape) - len(c)) + c)
        return _map_dims(value, lambda c: _zero_unit_dims(c, src_shape))
    if [s for s in src_shape if s != 1] != [s for s in out_shape if s != 1]:
        raise MaskNotUnderstood(f"{node.name}: reshape {src_shape} -> {out_shape} mixes dims")

    def move(coef: tuple) -> tuple:
        kept = [c for c, s in zip(coef, src_shape) if s != 1]
        it = iter(kept)
        return tuple(next(it) if s != 1 else 0 for s in out_shape)

    return _map_dims(args[0], move)


@mask_rule(aten.slice.Tensor)
def _slice(node: Node, args: list) -> AbstractValue:
    value = args[0]
    rank = len(_shape(node))
    dim = (args[1] if len(args) > 1 else 0) % rank
    start = (args[2] if len(args) > 2 else None) or 0
    step = args[4] if len(args) > 4 else 1
    if start < 0:
        raise MaskNotUnderstood(f"{node.name}: slice with a negative start")
    if isinstance(value, Predicate):
        return Predicate(
            value.rank,
            frozenset(
                Affine(a.coef[:dim] + (a.coef[dim] * step,) + a.coef[dim + 1 :], a.const + a.coef[dim] * start)
                for a in value.inequalities
            ),
            value.additive,
        )
    a = _as_affine(value, node)
    return Affine(a.coef[:dim] + (a.coef[dim] * step,) + a.coef[dim + 1 :], a.const + a.coef[dim] * start)


@mask_rule(
    aten.clone.default,
    aten.alias.default,
    aten.contiguous.default,
    aten.lift_fresh_copy.default,
    aten.detach.default,
)
def _identity(node: Node, args: list) -> AbstractValue:
    return args[0]


@mask_rule(aten.to.dtype, aten._to_copy.default, aten.to.dtype_layout, aten.to.device)
def _cast(node: Node, args: list) -> AbstractValue:
    value = args[0]
    dtype = node.meta["val"].dtype
    if isinstance(value, Predicate) and dtype != torch.bool and not value.additive:
        raise MaskNotUnderstood(f"{node.name}: a boolean mask cast to {dtype}")
    if isinstance(value, Affine) and (dtype.is_floating_point or dtype == torch.bool):
        raise MaskNotUnderstood(f"{node.name}: an index cast to {dtype}")
    return value


def _predicate(node: Node, rank: int, inequalities) -> Predicate:
    """Drops inequalities that hold everywhere; refuses one that holds nowhere."""
    kept = set()
    for ineq in inequalities:
        ineq = ineq.aligned(rank)
        if any(ineq.coef):
            kept.add(ineq)
        elif ineq.const > 0:
            raise MaskNotUnderstood(f"{node.name}: the mask hides every key")
    return Predicate(rank, frozenset(kept))


def _compare(node: Node, args: list, lhs_minus_rhs_le: Callable[[Affine, Affine], list[Affine]]) -> Predicate:
    a, b = _as_affine(args[0], node), _as_affine(args[1], node)
    return _predicate(node, len(_shape(node)), lhs_minus_rhs_le(a, b))


def _constant_truth(node: Node, a: Affine, b: Affine) -> bool:
    difference = a.minus(b)
    if any(difference.coef):
        raise MaskNotUnderstood(f"{node.name}: '!=' of index expressions (a disjunction)")
    return difference.const == 0


def _plus(a: Affine, k: int) -> Affine:
    return Affine(a.coef, a.const + k)


@mask_rule(aten.le.Tensor, aten.le.Scalar)
def _le(node, args):
    return _compare(node, args, lambda a, b: [a.minus(b)])


@mask_rule(aten.lt.Tensor, aten.lt.Scalar)
def _lt(node, args):
    return _compare(node, args, lambda a, b: [_plus(a.minus(b), 1)])


@mask_rule(aten.ge.Tensor, aten.ge.Scalar)
def _ge(node, args):
    return _compare(node, args, lambda a, b: [b.minus(a)])


@mask_rule(aten.gt.Tensor, aten.gt.Scalar)
def _gt(node, args):
    return _compare(node, args, lambda a, b: [_plus(b.minus(a), 1)])


@mask_rule(aten.eq.Tensor, aten.eq.Scalar)
def _eq(node, args):
    return _compare(node, args, lambda a, b: [a.minus(b), b.minus(a)])


@mask_rule(aten.ne.Tensor, aten.ne.Scalar)
def _ne(node: Node, args: list) -> AbstractValue:
    """Only constant: a 0/1 integer index expression (e.g. HF's packed-sequence check)."""
    equal = _constant_truth(node, _as_affine(args[0], node), _as_affine(args[1], node))
    return Affine((0,) * len(_shape(node)), int(not equal))


@mask_rule(aten.cumsum.default)
def _cumsum(node: Node, args: list) -> AbstractValue:
    a = _as_affine(args[0], node)
    rank = len(_shape(node))
    dim = args[1] % rank
    a = a.aligned(rank)
    if any(a.coef):
        raise MaskNotUnderstood(f"{node.name}: cumsum of a non-constant index expression")
    # sum_{k<=i} c = c * (i + 1)
    return Affine(tuple(a.const if d == dim else 0 for d in range(rank)), a.const)


@mask_rule(aten.diff.default)
def _diff(node: Node, args: list) -> AbstractValue:
    x = _as_affine(args[0], node)
    rank = len(_shape(node.args[0]))
    n = args[1] if len(args) > 1 else 1
    dim = (args[2] if len(args) > 2 else -1) % rank
    prepend = args[3] if len(args) > 3 else None
    append = args[4] if len(args) > 4 else None
    x = x.aligned(rank)
    if n != 1 or append is not None:
        raise MaskNotUnderstood(f"{node.name}: diff with n != 1 or append")
    if prepend is not None:
        p = _as_affine(prepend, node).aligned(rank)
        expected = Affine(x.coef[:dim] + (0,) + x.coef[dim + 1 :], x.const - x.coef[dim])
        if Affine(p.coef[:dim] + (0,) + p.coef[dim + 1 :], p.const) != expected:
            raise MaskNotUnderstood(f"{node.name}: diff whose prepend does not continue the sequence")
    return Affine((0,) * rank, x.coef[dim])


@mask_rule(aten.index.Tensor)
def _index(node: Node, args: list) -> AbstractValue:
    """x[i_0, ..., i_k-1] with index tensors on the leading dims."""
    x, indices = args[0], args[1]
    if not isinstance(x, Affine) or any(i is None for i in indices):
        raise MaskNotUnderstood(f"{node.name}: indexing that is not x[idx_0, ..., idx_k] of an index expression")
    x = x.aligned(len(_shape(node.args[0])))
    out_rank = len(_shape(node))
    k = len(indices)
    index_rank = out_rank - (len(x.coef) - k)
    coef = [0] * out_rank
    const = x.const
    for d, idx in enumerate(indices):
        idx = _as_affine(idx, node).aligned(index_rank)
        const += x.coef[d] * idx.const
        for e, c in enumerate(idx.coef):
            coef[e] += x.coef[d] * c
    for d in range(k, len(x.coef)):
        coef[index_rank + d - k] += x.coef[d]
    return Affine(tuple(coef), const)


@mask_rule(
    aten.bitwise_and.Tensor,
    aten.logical_and.default,
    aten.__and__.Tensor,
    aten.mul.Tensor,
)
def _and(node: Node, args: list) -> AbstractValue:
    rank = len(_shape(node))
    a, b = (_as_predicate(node, x, rank) for x in args[:2])
    if a.additive or b.additive:
        raise MaskNotUnderstood(f"{node.name}: '{node.target}' of additive masks")
    return Predicate(rank, a.aligned(rank).inequalities | b.aligned(rank).inequalities)


def _as_predicate(node: Node, value: AbstractValue, rank: int) -> Predicate:
    """A boolean mask; a constant 0/1 index expression counts as all-False / all-True."""
    if isinstance(value, Predicate):
        return value
    if isinstance(value, Affine) and not any(value.coef) and value.const in (0, 1):
        return _predicate(node, rank, [Affine((), 1 - 2 * value.const)])
    raise MaskNotUnderstood(f"{node.name}: '{node.target}' of a non-boolean value")


@mask_rule(
    aten.ones.default,
    aten.full.default,
    aten.ones_like.default,
    aten.full_like.default,
    aten.new_ones.default,
)
def _all_true(node: Node, args: list) -> AbstractValue:
    val = node.meta["val"]
    fill = args[1] if node.target in (aten.full.default, aten.full_like.default) else True
    if val.dtype != torch.bool or fill is not True:
        raise MaskNotUnderstood(f"{node.name}: a constant mask that is not all-True")
    return Predicate(val.dim(), frozenset())


def _is_masked_value(x: object) -> bool:
    """-inf, or the most negative finite float of some dtype (HF's `min_dtype`)."""
    if not isinstance(x, float):
        return False
    return x == -math.inf or any(x == torch.finfo(d).min for d in (torch.float32, torch.float16, torch.bfloat16))


@mask_rule(aten.where.ScalarOther, aten.where.Scalar, aten.where.self)
def _where(node: Node, args: list) -> AbstractValue:
    cond, keep_value, drop_value = args
    if isinstance(cond, Predicate) and keep_value == 0 and _is_masked_value(drop_value):
        return Predicate(cond.rank, cond.inequalities, additive=True)
    raise MaskNotUnderstood(f"{node.name}: where() that is not (mask, 0, -inf)")


@mask_rule(aten.tril.default)
def _tril(node: Node, args: list) -> AbstractValue:
    value = args[0]
    diagonal = args[1] if len(args) > 1 else 0
    if not (isinstance(value, Predicate) and not value.inequalities):
        raise MaskNotUnderstood(f"{node.name}: tril of something other than an all-True mask")
    rank = value.rank
    coef = [0] * rank
    coef[-2], coef[-1] = -1, 1  # col - row - diagonal <= 0
    return Predicate(rank, frozenset({Affine(tuple(coef), -diagonal)}))


# --- evaluation and classification ----------------------------------------------------------


def evaluate(node: Node, memo: dict[Node, AbstractValue] | None = None) -> AbstractValue:
    memo = {} if memo is None else memo
    if node in memo:
        return memo[node]
    if node.op == "placeholder":
        raise MaskNotUnderstood(f"it depends on the graph input '{node.name}'")
    rule = MASK_RULES.get(node.target)
    if node.op != "call_function" or rule is None:
        raise MaskNotUnderstood(f"{node.name}: no mask rule for {node.target}")

    def arg(a):
        if isinstance(a, Node):
            return evaluate(a, memo)
        if isinstance(a, (list, tuple)):
            return type(a)(arg(x) for x in a)
        return a

    # Arguments in schema order whether passed by position or by name, defaults filled in.
    bound = bound_arguments(node)
    args = [arg(v) for name, v in bound.items() if name not in _IGNORED_KWARGS]
    memo[node] = rule(node, args)
    return memo[node]


_IGNORED_KWARGS = {"device", "dtype", "layout", "pin_memory", "memory_format", "non_blocking", "copy"}


def classify(mask: Node) -> MaskDescription:
    """The mask as (causal, window); raises MaskNotUnderstood otherwise."""
    value = evaluate(mask)
    if not isinstance(value, Predicate):
        raise MaskNotUnderstood(f"{mask.name}: not a boolean or additive mask")
    value = value.aligned(4)
    upper: int | None = None  # key j <= query i + upper
    lower: int | None = None  # key j >= query i - lower
    for ineq in value.inequalities:
        *other, cq, ck = ineq.coef
        if any(other) or ck == 0 or cq != -ck:
            raise MaskNotUnderstood(f"{mask.name}: inequality {ineq} is not of the form j - i <= c")
        bound = math.floor(-ineq.const / abs(ck))
        if ck > 0:
            upper = bound if upper is None else min(upper, bound)
        else:
            lower = bound if lower is None else min(lower, bound)
    if upper is None and lower is None:
        return MaskDescription(causal=False, window=0)
    if upper != 0:
        raise MaskNotUnderstood(
            f"{mask.name}: keys up to query + {upper} are visible (only the causal diagonal is supported)"
        )
    if lower is not None and lower < 0:
        raise MaskNotUnderstood(f"{mask.name}: a query sees no key")
    return MaskDescription(causal=True, window=0 if lower is None else lower + 1)
