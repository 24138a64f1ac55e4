"""Recognize an attention mask built in the graph as a function of (query index, key index).

HF models (and many hand-written ones) build `[B, 1, Sq, Sk]` masks from `arange`, `le`, `&`.
Rather than matching one model's op sequence, the mask's producing subgraph is evaluated
abstractly: an integer tensor is an affine function of its own indices, a boolean tensor a
conjunction of linear inequalities over them. One rule per op, registered in `MASK_RULES`.
At the end the inequalities over (i = query, j = key) must read `j <= i` (causal) and optionally
`j > i - W` (sliding window); anything else is refused with the node that made it.

Packed sequences (several documents in one row) add one more conjunct: `doc[b, i] == doc[b, j]`
for an integer tensor `doc` computed at run time (a graph input, or HF's document numbering
`cumsum(diff(position_ids) != 1)`). Such a tensor is `Gathered`: its entries at affine positions,
exact whatever its values. HF's causal test on packed rows compares positions,
`position_ids[b, j] <= position_ids[b, i]`; that becomes `j <= i` only where the same-document
conjunct holds and the document numbering was derived from those very positions (`segments`):
inside one document the positions step by exactly +1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.fx import Node

from autosp.common.rules import registrar

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
class Gathered:
    """value[i] = source[index_0(i), ..., index_k-1(i)] + offset(i): entries of a tensor known only
    at run time, read at affine positions. `segments` = (g, d): equal entries of this tensor along
    its dim d (other indices equal) mark positions where the gathered values `g` (indexed over this
    tensor's own dims) step by exactly +1 along d."""

    source: Node
    index: tuple[Affine, ...]
    offset: Affine
    segments: tuple[Gathered, int] | None = None
    reason: str = field(default="", compare=False)

    def map(self, fn: Callable[[Affine], Affine]) -> Gathered:
        return Gathered(self.source, tuple(fn(a) for a in self.index), fn(self.offset), self.segments, self.reason)


@dataclass(frozen=True)
class Steps:
    """diff(g) along dim, the first step taken as +1 (the sequence continued backwards)."""

    gathered: Gathered
    dim: int


@dataclass(frozen=True)
class Boundaries:
    """diff(g) != 1 along dim: True where g does not continue by +1 (a new document starts)."""

    gathered: Gathered
    dim: int


@dataclass(frozen=True)
class Predicate:
    """True where every inequality `sum coef * i + const <= 0` holds (no inequality: all True),
    every pair in `same` reads equal values, and `a - b <= 0` for every pair (a, b) in `ordered`.
    `additive` marks a float mask (0 where True, -inf where False)."""

    rank: int
    inequalities: frozenset[Affine]
    additive: bool = False
    same: frozenset[tuple[Gathered, Gathered]] = frozenset()
    ordered: frozenset[tuple[Gathered, Gathered]] = frozenset()

    def map(self, fn: Callable[[Affine], Affine], rank: int | None = None) -> Predicate:
        pairs = lambda pairs: frozenset((a.map(fn), b.map(fn)) for a, b in pairs)  # noqa: E731
        return Predicate(
            self.rank if rank is None else rank,
            frozenset(fn(a) for a in self.inequalities),
            self.additive,
            pairs(self.same),
            pairs(self.ordered),
        )

    def aligned(self, rank: int) -> Predicate:
        return self.map(lambda a: a.aligned(rank), rank)

    def conjoin(self, other: Predicate, rank: int) -> Predicate:
        a, b = self.aligned(rank), other.aligned(rank)
        return Predicate(
            rank, a.inequalities | b.inequalities, False, a.same | b.same, a.ordered | b.ordered
        )


@dataclass(frozen=True)
class MaskDescription:
    causal: bool
    window: int  # 0: unbounded
    # keep only keys in the query's document: documents[b, i] == documents[b, j], an integer tensor
    # of the graph, [B, S] with one row per batch entry, or [S]; or, when `documents_row` is set,
    # [Bd, S] whose row `documents_row` serves every batch entry
    documents: Node | None = None
    documents_row: int | None = None


AbstractValue = Affine | Gathered | Steps | Boundaries | Predicate | int | float | bool
Rule = Callable[[Node, list], AbstractValue]
MASK_RULES: dict[object, Rule] = {}


mask_rule = registrar(MASK_RULES)  # keyed by ATen target


def _shape(node: Node) -> tuple[int, ...]:
    return tuple(int(s) for s in node.meta["val"].shape)


def _zero_unit_dims(coef: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(0 if size == 1 else c for c, size in zip(coef, shape))


def _as_affine(value: AbstractValue, node: Node) -> Affine:
    if isinstance(value, Affine):
        return value
    if isinstance(value, Gathered):
        raise MaskNotUnderstood(f"{node.name}: uses the run-time values of {value.source.name}{value.reason}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise MaskNotUnderstood(f"{node.name}: expected an integer index expression")
    return Affine((), value)


def _map_affines(value: AbstractValue, fn: Callable[[Affine], Affine], rank: int, node: Node) -> AbstractValue:
    """`value` with every affine function of the indices replaced by fn(it) (a change of index space)."""
    if isinstance(value, Affine):
        return fn(value)
    if isinstance(value, Gathered):
        return value.map(fn)
    if isinstance(value, Predicate):
        return value.map(fn, rank)
    if isinstance(value, (Steps, Boundaries)):
        raise MaskNotUnderstood(f"{node.name}: reshapes a difference of run-time values")
    return value


def _map_dims(value: AbstractValue, fn: Callable[[tuple], tuple], node: Node) -> AbstractValue:
    return _map_affines(value, lambda a: Affine(fn(a.coef), a.const), len(_shape(node)), node)


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
    if sign > 0 and isinstance(b, Gathered):
        a, b = b, a
    if isinstance(a, Gathered):  # run-time values plus an index expression
        b = _as_affine(b, node)
        return Gathered(a.source, a.index, _shifted(a.offset, b, sign), a.segments, a.reason)
    if isinstance(a, Affine) or isinstance(b, Affine) or isinstance(b, Gathered):
        a, b = _as_affine(a, node), _as_affine(b, node)
        return _shifted(a, b, sign)
    return a + sign * b


def _shifted(a: Affine, b: Affine, sign: int) -> Affine:
    return a.minus(b) if sign < 0 else a.minus(Affine(tuple(-c for c in b.coef), -b.const))


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
    return _map_dims(args[0], lambda c: c[:dim] + (0,) + c[dim:], node)


@mask_rule(aten.expand.default, aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _reshape_unit_dims(node: Node, args: list) -> AbstractValue:
    """expand, and reshapes that only add or drop size-1 dims, keep the non-unit dims in order."""
    source = node.args[0]
    src_shape, out_shape = _shape(source), _shape(node)
    if node.target == aten.expand.default:
        src_shape = (1,) * (len(out_shape) - len(src_shape)) + src_shape
        return _map_dims(args[0], lambda c: _zero_unit_dims((0,) * (len(out_shape) - len(c)) + c, src_shape), node)
    if [s for s in src_shape if s != 1] != [s for s in out_shape if s != 1]:
        raise MaskNotUnderstood(f"{node.name}: reshape {src_shape} -> {out_shape} mixes dims")

    def move(coef: tuple) -> tuple:
        kept = [c for c, s in zip(coef, src_shape) if s != 1]
        it = iter(kept)
        return tuple(next(it) if s != 1 else 0 for s in out_shape)

    return _map_dims(args[0], move, node)


@mask_rule(aten.slice.Tensor)
def _slice(node: Node, args: list) -> AbstractValue:
    value = args[0]
    rank = len(_shape(node))
    dim = (args[1] if len(args) > 1 else 0) % rank
    start = (args[2] if len(args) > 2 else None) or 0
    step = args[4] if len(args) > 4 else 1
    if start < 0:
        raise MaskNotUnderstood(f"{node.name}: slice with a negative start")

    def substitute(a: Affine) -> Affine:  # index i_dim of the slice reads i_dim * step + start
        a = a.aligned(rank)
        return Affine(a.coef[:dim] + (a.coef[dim] * step,) + a.coef[dim + 1 :], a.const + a.coef[dim] * start)

    if isinstance(value, (Predicate, Gathered)):
        return _map_affines(value, substitute, rank, node)
    return substitute(_as_affine(value, node))


@mask_rule(aten.select.int)
def _select(node: Node, args: list) -> AbstractValue:
    in_rank = len(_shape(node.args[0]))
    dim, index = args[1] % in_rank, args[2] % _shape(node.args[0])[args[1] % in_rank]

    def fix(a: Affine) -> Affine:  # i_dim is `index`, and the dim is gone
        a = a.aligned(in_rank)
        return Affine(a.coef[:dim] + a.coef[dim + 1 :], a.const + a.coef[dim] * index)

    return _map_affines(args[0], fix, in_rank - 1, node)


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
    if isinstance(value, Affine) and not any(value.coef):  # a constant: only its truth or its value matter
        if dtype == torch.bool:
            return _as_predicate(node, Affine(value.coef, int(value.const != 0)), node.meta["val"].dim())
        return value
    if isinstance(value, (Affine, Gathered)) and (dtype.is_floating_point or dtype == torch.bool):
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


def _compare(node: Node, args: list, le_pairs: Callable[[object, object], list]) -> Predicate:
    """`le_pairs(a, b)` lists the (x, y) with `x - y <= 0` that make the comparison of a and b."""
    a, b = args[0], args[1]
    rank = len(_shape(node))
    if isinstance(a, Gathered) or isinstance(b, Gathered):
        if not (isinstance(a, Gathered) and isinstance(b, Gathered) and a.source is b.source):
            raise MaskNotUnderstood(
                f"{node.name}: compares run-time values of "
                f"{(a if isinstance(a, Gathered) else b).source.name} with something else"
            )
        return Predicate(rank, frozenset(), ordered=frozenset(le_pairs(a, b))).aligned(rank)
    a, b = _as_affine(a, node), _as_affine(b, node)
    return _predicate(node, rank, [x.minus(y) for x, y in le_pairs(a, b)])


def _plus(a, k: int):
    if isinstance(a, Gathered):
        return Gathered(a.source, a.index, _plus(a.offset, k), a.segments, a.reason)
    return Affine(a.coef, a.const + k)


@mask_rule(aten.le.Tensor, aten.le.Scalar)
def _le(node, args):
    return _compare(node, args, lambda a, b: [(a, b)])


@mask_rule(aten.lt.Tensor, aten.lt.Scalar)
def _lt(node, args):
    return _compare(node, args, lambda a, b: [(_plus(a, 1), b)])


@mask_rule(aten.ge.Tensor, aten.ge.Scalar)
def _ge(node, args):
    return _compare(node, args, lambda a, b: [(b, a)])


@mask_rule(aten.gt.Tensor, aten.gt.Scalar)
def _gt(node, args):
    return _compare(node, args, lambda a, b: [(_plus(b, 1), a)])


@mask_rule(aten.eq.Tensor, aten.eq.Scalar)
def _eq(node, args):
    a, b = args[0], args[1]
    if isinstance(a, Gathered) and isinstance(b, Gathered) and a.source is b.source and a.offset == b.offset:
        rank = len(_shape(node))
        x, y = (g.map(lambda f: f.aligned(rank)) for g in (a, b))
        return Predicate(rank, frozenset(), same=frozenset({(x, y)}))
    return _compare(node, args, lambda a, b: [(a, b), (b, a)])


@mask_rule(aten.ne.Tensor, aten.ne.Scalar)
def _ne(node: Node, args: list) -> AbstractValue:
    """A constant 0/1 index expression, or (HF's packed-sequence numbering) the document
    boundaries `diff(positions) != 1`."""
    if isinstance(args[0], Steps) and args[1] == 1:
        return Boundaries(args[0].gathered, args[0].dim)
    a, b = _as_affine(args[0], node), _as_affine(args[1], node)
    difference = a.minus(b)
    if any(difference.coef):
        raise MaskNotUnderstood(f"{node.name}: '!=' of index expressions (a disjunction)")
    return Affine((0,) * len(_shape(node)), int(difference.const != 0))


@mask_rule(aten.cumsum.default)
def _cumsum(node: Node, args: list) -> AbstractValue:
    rank = len(_shape(node))
    dim = args[1] % rank
    if isinstance(args[0], Boundaries) and args[0].dim == dim:
        # Document numbers: equal along `dim` exactly where no boundary lies between.
        return Gathered(node, _identity_index(rank), Affine((0,) * rank, 0), (args[0].gathered, dim))
    a = _as_affine(args[0], node).aligned(rank)
    if any(a.coef):
        raise MaskNotUnderstood(f"{node.name}: cumsum of a non-constant index expression")
    # sum_{k<=i} c = c * (i + 1)
    return Affine(tuple(a.const if d == dim else 0 for d in range(rank)), a.const)


def _identity_index(rank: int) -> tuple[Affine, ...]:
    return tuple(Affine(tuple(int(e == d) for e in range(rank)), 0) for d in range(rank))


def _without_dim(a: Affine, dim: int) -> Affine:
    return Affine(a.coef[:dim] + (0,) + a.coef[dim + 1 :], a.const)


@mask_rule(aten.diff.default)
def _diff(node: Node, args: list) -> AbstractValue:
    x = args[0]
    rank = len(_shape(node.args[0]))
    n = args[1] if len(args) > 1 else 1
    dim = (args[2] if len(args) > 2 else -1) % rank
    prepend = args[3] if len(args) > 3 else None
    append = args[4] if len(args) > 4 else None
    if n != 1 or append is not None:
        raise MaskNotUnderstood(f"{node.name}: diff with n != 1 or append")
    if isinstance(x, Gathered):
        # Only with the sequence continued backwards (prepend = x[..., :1] - 1): then a step of
        # +1 everywhere inside a document, the first element included.
        x = x.map(lambda a: a.aligned(rank))
        expected = Gathered(
            x.source, tuple(_without_dim(a, dim) for a in x.index), _plus(_without_dim(x.offset, dim), -1)
        )
        if not (isinstance(prepend, Gathered) and prepend.map(lambda a: a.aligned(rank)) == expected):
            raise MaskNotUnderstood(f"{node.name}: diff of run-time values whose prepend is not x[..., :1] - 1")
        return Steps(x, dim)
    x = _as_affine(x, node).aligned(rank)
    if prepend is not None:
        p = _as_affine(prepend, node).aligned(rank)
        expected = Affine(x.coef[:dim] + (0,) + x.coef[dim + 1 :], x.const - x.coef[dim])
        if Affine(p.coef[:dim] + (0,) + p.coef[dim + 1 :], p.const) != expected:
            raise MaskNotUnderstood(f"{node.name}: diff whose prepend does not continue the sequence")
    return Affine((0,) * rank, x.coef[dim])


@mask_rule(aten.index.Tensor)
def _index(node: Node, args: list) -> AbstractValue:
    """x[i_0, ..., i_k-1] with index tensors on the leading dims (x an index expression or a
    mask: a mask read at affine positions is its conditions at those positions)."""
    x, indices = args[0], args[1]
    if not isinstance(x, (Affine, Gathered, Predicate)) or any(i is None for i in indices):
        raise MaskNotUnderstood(f"{node.name}: indexing that is not x[idx_0, ..., idx_k] of an index expression")
    in_rank, out_rank = len(_shape(node.args[0])), len(_shape(node))
    k = len(indices)
    index_rank = out_rank - (in_rank - k)
    indices = [_as_affine(i, node).aligned(index_rank) for i in indices]

    def compose(a: Affine) -> Affine:
        """a over x's dims -> over the output's: x's first k dims read the index tensors."""
        a = a.aligned(in_rank)
        coef, const = [0] * out_rank, a.const
        for d, idx in enumerate(indices):
            const += a.coef[d] * idx.const
            for e, c in enumerate(idx.coef):
                coef[e] += a.coef[d] * c
        for d in range(k, in_rank):
            coef[index_rank + d - k] += a.coef[d]
        return Affine(tuple(coef), const)

    if isinstance(x, Predicate):
        return x.aligned(in_rank).map(compose, out_rank)
    return x.map(compose) if isinstance(x, Gathered) else compose(x)


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
    return a.conjoin(b, rank)


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
    if val.dtype == torch.bool and fill is True:
        return Predicate(val.dim(), frozenset())
    if val.dtype != torch.bool and isinstance(fill, (int, float)) and float(fill).is_integer():
        return Affine((0,) * val.dim(), int(fill))  # HF's default attention_mask of ones: 1 everywhere
    raise MaskNotUnderstood(f"{node.name}: a constant mask that is not all-True")


def _is_masked_value(x: object) -> bool:
    """-inf, or the most negative finite float of some dtype (HF's `min_dtype`)."""
    if not isinstance(x, float):
        return False
    return x == -math.inf or any(x == torch.finfo(d).min for d in (torch.float32, torch.float16, torch.bfloat16))


@mask_rule(aten.where.ScalarOther, aten.where.Scalar, aten.where.self)
def _where(node: Node, args: list) -> AbstractValue:
    cond, keep_value, drop_value = args
    if isinstance(cond, Predicate) and keep_value == 0 and _is_masked_value(drop_value):
        return Predicate(cond.rank, cond.inequalities, True, cond.same, cond.ordered)
    raise MaskNotUnderstood(f"{node.name}: where() that is not (mask, 0, -inf)")


@mask_rule(aten.tril.default)
def _tril(node: Node, args: list) -> AbstractValue:
    value = args[0]
    diagonal = args[1] if len(args) > 1 else 0
    if not (isinstance(value, Predicate) and not (value.inequalities or value.same or value.ordered)):
        raise MaskNotUnderstood(f"{node.name}: tril of something other than an all-True mask")
    rank = value.rank
    coef = [0] * rank
    coef[-2], coef[-1] = -1, 1  # col - row - diagonal <= 0
    return Predicate(rank, frozenset({Affine(tuple(coef), -diagonal)}))


# --- evaluation and classification ----------------------------------------------------------


def evaluate(node: Node, memo: dict[Node, AbstractValue] | None = None) -> AbstractValue:
    memo = {} if memo is None else memo
    if node not in memo:
        try:
            memo[node] = _evaluate(node, memo)
        except MaskNotUnderstood as err:
            # An integer tensor the rules cannot follow is still exact as what it is: a tensor
            # the graph computes at run time (document ids, positions, ...).
            if not _is_integer_tensor(node):
                raise
            rank = len(_shape(node))
            memo[node] = Gathered(node, _identity_index(rank), Affine((0,) * rank, 0), reason=f" ({err})")
        value = memo[node]
        if isinstance(value, Gathered):  # positions along size-1 dims are 0 whatever the coefficient
            shape = _shape(node)
            memo[node] = value.map(lambda a: Affine(_zero_unit_dims(a.aligned(len(shape)).coef, shape), a.const))
    return memo[node]


def _is_integer_tensor(node: Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and not val.dtype.is_floating_point and val.dtype != torch.bool and val.dim() > 0


def _evaluate(node: Node, memo: dict[Node, AbstractValue]) -> AbstractValue:
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
    return rule(node, args)


_IGNORED_KWARGS = {"device", "dtype", "layout", "pin_memory", "memory_format", "non_blocking", "copy"}


def _not_constant(mask: Node, inequalities: set[Affine]) -> list[Affine]:
    """The inequalities (`const + coef . index <= 0`) that depend on where in the mask they are
    read: one that holds at every index of the mask's shape (BERT's `i >= 0`) says nothing; one
    that holds nowhere leaves a query without keys."""
    shape = tuple(mask.meta["val"].shape)
    shape = (1,) * (4 - len(shape)) + shape
    kept = []
    for ineq in inequalities:
        reach = [c * (n - 1) for c, n in zip(ineq.coef, shape)]
        if ineq.const + sum(max(r, 0) for r in reach) <= 0:
            continue
        if ineq.const + sum(min(r, 0) for r in reach) > 0:
            raise MaskNotUnderstood(f"{mask.name}: a query sees no key")
        kept.append(ineq)
    return kept


def classify(mask: Node) -> MaskDescription:
    """The mask as (causal, window, documents); raises MaskNotUnderstood otherwise."""
    value = evaluate(mask)
    if not isinstance(value, Predicate):
        raise MaskNotUnderstood(f"{mask.name}: not a boolean or additive mask")
    value = value.aligned(4)
    batch, query, key = (Affine(tuple(int(e == d) for e in range(4)), 0) for d in (0, 2, 3))
    documents, row = _documents(mask, value, batch, query, key)
    inequalities = set(value.inequalities)
    for a, b in value.ordered:
        inequalities.add(_within_document(mask, a, b, value.same))
    upper: int | None = None  # key j <= query i + upper
    lower: int | None = None  # key j >= query i - lower
    for ineq in _not_constant(mask, inequalities):
        *other, cq, ck = ineq.coef
        if any(other) or ck == 0 or cq != -ck:
            raise MaskNotUnderstood(f"{mask.name}: inequality {ineq} is not of the form j - i <= c")
        bound = math.floor(-ineq.const / abs(ck))
        if ck > 0:
            upper = bound if upper is None else min(upper, bound)
        else:
            lower = bound if lower is None else min(lower, bound)
    if upper is None and lower is None:
        return MaskDescription(causal=False, window=0, documents=documents, documents_row=row)
    if upper != 0:
        raise MaskNotUnderstood(
            f"{mask.name}: keys up to query + {upper} are visible (only the causal diagonal is supported)"
        )
    if lower is not None and lower < 0:
        raise MaskNotUnderstood(f"{mask.name}: a query sees no key")
    return MaskDescription(causal=True, window=0 if lower is None else lower + 1, documents=documents, documents_row=row)


def _documents(mask: Node, value: Predicate, batch: Affine, query: Affine, key: Affine) -> tuple[Node | None, int | None]:
    """The tensor of `doc[b, i] == doc[b, j]` (query i, key j) if the mask has that conjunct, and
    the one row of it every batch entry reads (None: row b for batch entry b)."""
    sources = {a.source for a, _ in value.same}
    if len(sources) > 1:
        raise MaskNotUnderstood(f"{mask.name}: equalities over several run-time tensors ({', '.join(sorted(s.name for s in sources))})")
    rows = set()
    for a, b in value.same:
        *lead_a, last_a = a.index
        *lead_b, last_b = b.index
        if (
            {last_a, last_b} != {query, key}
            or len(lead_a) > 1
            or lead_a != lead_b
            or (lead_a and lead_a[0] != batch and any(lead_a[0].coef))
            or _shape(a.source)[-1] != _shape(mask)[-1]
            or _shape(mask)[-1] != _shape(mask)[-2]
        ):
            raise MaskNotUnderstood(
                f"{mask.name}: an equality of {a.source.name} values that is not doc[b, query] == doc[b, key] "
                "over one sequence"
            )
        rows.add(lead_a[0].const if lead_a and lead_a[0] != batch else None)
    if len(rows) > 1:
        raise MaskNotUnderstood(f"{mask.name}: equalities over different rows of {a.source.name}")
    return (sources.pop(), rows.pop()) if sources else (None, None)


def _within_document(mask: Node, a: Gathered, b: Gathered, same) -> Affine:
    """`a - b <= 0` as an index inequality, where a and b read positions in one document: a same
    pair (x, y) over a document numbering that segments the positions they read."""
    for x, y in same:
        if x.segments is None:
            continue
        positions, dim = x.segments
        if positions.source is not a.source or any(p != q for d, (p, q) in enumerate(zip(x.index, y.index)) if d != dim):
            continue
        for first, second in ((x, y), (y, x)):
            at_first, at_second = (positions.map(lambda f, g=g: _compose(f, g.index)) for g in (first, second))
            if (a.source, a.index) == (at_first.source, at_first.index) and (b.source, b.index) == (at_second.source, at_second.index):
                # positions[first] - positions[second] = first_dim - second_dim inside a document
                steps = first.index[dim].minus(second.index[dim])
                offsets = a.offset.minus(at_first.offset).minus(b.offset.minus(at_second.offset))
                return Affine(tuple(s + o for s, o in zip(steps.aligned(4).coef, offsets.aligned(4).coef)), steps.const + offsets.const)
    raise MaskNotUnderstood(
        f"{mask.name}: compares run-time values of {a.source.name}, and not as positions inside one "
        "document of a numbering derived from them"
    )


def _compose(a: Affine, index: tuple[Affine, ...]) -> Affine:
    """a(i) with i = index(o): an affine over o."""
    rank = max((len(i.coef) for i in index), default=0)
    coef, const = [0] * rank, a.const
    for c, i in zip(a.aligned(len(index)).coef, index):
        i = i.aligned(rank)
        const += c * i.const
        for e, ic in enumerate(i.coef):
            coef[e] += c * ic
    return Affine(tuple(coef), const)
