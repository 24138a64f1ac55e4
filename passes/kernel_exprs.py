"""How each elementwise op is computed inside a generated kernel, one entry per op: the
fuse-elementwise pass fuses exactly the ops these tables express (`expressible`), and the Triton
codegen (compiler/triton_codegen.py) writes the expressions they return.

`@triton_expr`: the op's value as a Triton expression of its tensor operands' expressions.
`@column_expr`: ops that move values along the last dim (slice, cat, slice_scatter, as in RoPE's
rotate_half and its gradient): the value at column offset k from `at(operand, k')`, an operand's
expression at another offset. Either returns None for an instance it cannot express.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch._ops import OpOverload
from xdsl.dialects.builtin import FloatAttr, IntegerAttr, StringAttr, TensorType
from xdsl.ir import Operation, SSAValue

from autosp.common.rules import registrar
from autosp.ir.dtypes import torch_dtype
from autosp.ir.aten import overload_of

aten = torch.ops.aten

# A row reduction keeps the whole row in registers: rows up to this long.
MAX_ROW = 16384

TRITON_DTYPES = {
    "torch.float32": "tl.float32", "torch.float16": "tl.float16", "torch.bfloat16": "tl.bfloat16",
    "torch.float64": "tl.float64", "torch.int64": "tl.int64", "torch.int32": "tl.int32", "torch.bool": "tl.int1",
}

# op -> expression from its tensor operands' expressions (None: this instance is not supported).
Expr = Callable[[Operation, list[str]], "str | None"]
TRITON_EXPRS: dict[OpOverload, Expr] = {}
ROW_REDUCTIONS = {aten.sum.dim_IntList, aten.mean.dim}


triton_expr = registrar(TRITON_EXPRS)


# op -> expression of its value at column offset k, from `at(operand, k')` (an operand's
# expression at column offset k'), or None when this instance is not supported.
At = Callable[[SSAValue, int], str]
ColumnExpr = Callable[[Operation, At, int], "str | None"]
COLUMN_EXPRS: dict[OpOverload, ColumnExpr] = {}


column_expr = registrar(COLUMN_EXPRS)


def _prop(op: Operation, name: str, default=None):
    attr = op.properties.get(name)
    if isinstance(attr, (IntegerAttr, FloatAttr)):
        return attr.value.data
    if isinstance(attr, StringAttr):
        return attr.data
    return default


def _num(value) -> str:
    return repr(float(value)) if isinstance(value, float) else repr(int(value))


@triton_expr(aten.add.Tensor, aten.sub.Tensor)
def _add_sub(op, a):
    alpha = _prop(op, "alpha", 1)
    other = a[1] if alpha == 1 else f"{_num(alpha)} * {a[1]}"
    return f"{a[0]} {'+' if overload_of(op) == aten.add.Tensor else '-'} {other}"


@triton_expr(aten.add.Scalar, aten.sub.Scalar)
def _add_sub_scalar(op, a):
    other = _prop(op, "other") * _prop(op, "alpha", 1)
    return f"{a[0]} {'+' if overload_of(op) == aten.add.Scalar else '-'} {_num(other)}"


@triton_expr(aten.mul.Tensor)
def _mul(op, a):
    return f"{a[0]} * {a[1]}"


@triton_expr(aten.div.Tensor)
def _div(op, a):
    return None if _prop(op, "rounding_mode") else f"{a[0]} / {a[1]}"


@triton_expr(aten.mul.Scalar, aten.div.Scalar)
def _mul_div_scalar(op, a):
    return f"{a[0]} {'*' if overload_of(op) == aten.mul.Scalar else '/'} {_num(_prop(op, 'other'))}"


UNARY = {
    aten.neg.default: "-{0}",
    aten.exp.default: "tl.exp({0})",
    aten.log.default: "tl.log({0})",
    aten.sqrt.default: "tl.sqrt({0})",
    aten.rsqrt.default: "tl.math.rsqrt({0})",
    aten.reciprocal.default: "1.0 / {0}",
    aten.sigmoid.default: "1.0 / (1.0 + tl.exp(-{0}))",
    aten.silu.default: "{0} / (1.0 + tl.exp(-{0}))",
    aten.tanh.default: "2.0 / (1.0 + tl.exp(-2.0 * {0})) - 1.0",
    aten.cos.default: "tl.cos({0})",
    aten.sin.default: "tl.sin({0})",
    aten.abs.default: "tl.abs({0})",
    aten.relu.default: "tl.maximum({0}, 0.0)",
    aten.clone.default: "{0}",
}


@triton_expr(*UNARY)
def _unary(op, a):
    return UNARY[overload_of(op)].format(a[0])


@triton_expr(aten._to_copy.default)
def _cast(op, a):
    # Only a dtype change (the result dtype does the cast); layout/memory-format changes are not elementwise here.
    return a[0] if set(op.properties) <= {"dtype", "non_blocking"} else None


@triton_expr(aten.pow.Tensor_Scalar)
def _pow(op, a):
    forms = {2: "{0} * {0}", 3: "{0} * {0} * {0}", 1: "{0}", 0.5: "tl.sqrt({0})", -0.5: "tl.math.rsqrt({0})", -1: "1.0 / {0}"}
    form = forms.get(_prop(op, "exponent"))
    return form.format(a[0]) if form else None


COMPARE = {"ne": "!=", "eq": "==", "ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


@triton_expr(*(getattr(aten, c).Scalar for c in COMPARE))
def _compare_scalar(op, a):
    return f"{a[0]} {COMPARE[op.name.split('.')[1]]} {_num(_prop(op, 'other'))}"


@triton_expr(*(getattr(aten, c).Tensor for c in COMPARE))
def _compare(op, a):
    return f"{a[0]} {COMPARE[op.name.split('.')[1]]} {a[1]}"


@triton_expr(aten.bitwise_and.Tensor, aten.bitwise_or.Tensor)
def _bitwise(op, a):
    return f"{a[0]} {'&' if 'and' in op.name else '|'} {a[1]}"


@triton_expr(aten.bitwise_not.default)
def _bitwise_not(op, a):
    return f"({a[0]} == 0)" if is_bool(op.results[0]) else f"~{a[0]}"


@triton_expr(aten.where.self)
def _where(op, a):
    return f"tl.where({a[0]}, {a[1]}, {a[2]})"


@triton_expr(aten.clamp.default)
def _clamp(op, a):
    low, high = _prop(op, "min"), _prop(op, "max")
    expr = a[0]
    if low is not None:
        expr = f"tl.maximum({expr}, {_num(low)})"
    if high is not None:
        expr = f"tl.minimum({expr}, {_num(high)})"
    return expr


@triton_expr(aten.gelu.default)
def _gelu(op, a):
    x = a[0]
    if _prop(op, "approximate", "none") == "tanh":
        inner = f"{math.sqrt(2 / math.pi)!r} * ({x} + 0.044715 * {x} * {x} * {x})"
        return f"0.5 * {x} * (2.0 / (1.0 + tl.exp(-2.0 * ({inner}))))"
    return f"0.5 * {x} * (1.0 + tl.math.erf({x} * {1 / math.sqrt(2)!r}))"


@triton_expr(aten.full.default)
def _full(op, a):
    fill = _prop(op, "fill_value")
    dtype = TRITON_DTYPES.get(dtype_of(op.results[0]))
    return None if fill is None or dtype is None else f"tl.full([ROWS, BLOCK], {_num(fill)}, {dtype})"


@triton_expr(*ROW_REDUCTIONS)
def _row_reduction(op, a):
    shape = shape_of(op.operands[0])
    dims = [d % len(shape) for d in op.properties["dim"].get_values()] if "dim" in op.properties else []
    if dims != [len(shape) - 1] or not _prop(op, "keepdim", 0) or "dtype" in op.properties:
        return None
    total = f"tl.sum(tl.where(cmask, {a[0]}, 0.0), 1)[:, None]"  # one value per row: [ROWS, 1]
    return total if overload_of(op) == aten.sum.dim_IntList else f"{total} / {shape[-1]}.0"


# --- ops that move values along the last dim ---------------------------------------------------


def columns(k: int) -> str:
    """The column expression at offset k."""
    return "cols" if k == 0 else f"(cols {'+' if k > 0 else '-'} {abs(k)})"


def _last_dim_span(op: Operation, width: int) -> tuple[int, int] | None:
    """[start, end) of a step-1 slice along the last dim of a `width`-wide operand."""
    rank = len(shape_of(op.results[0]))
    if _prop(op, "dim", 0) % rank != rank - 1 or _prop(op, "step", 1) != 1:
        return None
    start, end = _prop(op, "start", 0), _prop(op, "end", width)
    start = max(start + width if start < 0 else start, 0)
    end = min(end + width if end < 0 else end, width)
    return start, end


def _narrow(*values: SSAValue) -> bool:
    """A width-1 value counts as the same at every column, which a moved column is not."""
    return any(width_of(v) in (0, 1) for v in values)


@column_expr(aten.slice.Tensor)
def _slice(op, at, k):
    span = _last_dim_span(op, shape_of(op.operands[0])[-1])
    if span is None or _narrow(op.operands[0], op.results[0]):
        return None
    return at(op.operands[0], k + span[0])


@column_expr(aten.slice_scatter.default)
def _slice_scatter(op, at, k):
    base, src = op.operands
    span = _last_dim_span(op, shape_of(base)[-1])
    if span is None or _narrow(base, src) or dtype_of(base) != dtype_of(src):
        return None
    start, end = span
    c = columns(k)
    return f"tl.where(({c} >= {start}) & ({c} < {end}), {at(src, k - start)}, {at(base, k)})"


@column_expr(aten.cat.default)
def _cat(op, at, k):
    pieces = list(op.operands)
    rank = len(shape_of(op.results[0]))
    if _prop(op, "dim", 0) % rank != rank - 1 or _narrow(*pieces) or any(dtype_of(p) != dtype_of(op.results[0]) for p in pieces):
        return None
    starts = [0]
    for piece in pieces:
        starts.append(starts[-1] + shape_of(piece)[-1])
    expr = at(pieces[-1], k - starts[-2])
    for piece, start, end in reversed(list(zip(pieces[:-1], starts, starts[1:]))):
        expr = f"tl.where({columns(k)} < {end}, {at(piece, k - start)}, {expr})"
    return expr


# --- helpers ------------------------------------------------------------------------------


def shape_of(value: SSAValue) -> list[int]:
    assert isinstance(value.type, TensorType)
    return list(value.type.get_shape())


def width_of(value: SSAValue) -> int:
    """The last dim (1 for a scalar)."""
    return (shape_of(value) or [1])[-1]


def dtype_of(value: SSAValue) -> str:
    return str(torch_dtype(value.type.element_type))  # type: ignore[attr-defined]


def is_bool(value: SSAValue) -> bool:
    return dtype_of(value) == "torch.bool"


def is_float(value: SSAValue) -> bool:
    return dtype_of(value).startswith(("torch.float", "torch.bfloat"))


def expressible(op: Operation) -> bool:
    """Whether `op` can be one expression of a generated kernel."""
    if len(op.results) != 1 or not (overload_of(op) in TRITON_EXPRS or overload_of(op) in COLUMN_EXPRS):
        return False
    values = [*op.operands, *op.results]
    if not all(isinstance(v.type, TensorType) and dtype_of(v) in TRITON_DTYPES for v in values):
        return False
    if overload_of(op) in COLUMN_EXPRS:
        return COLUMN_EXPRS[overload_of(op)](op, lambda value, k: "x", 0) is not None
    return TRITON_EXPRS[overload_of(op)](op, ["x"] * len(op.operands)) is not None
