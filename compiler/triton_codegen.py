"""Backend for `autosp.fused`: one generated Triton kernel per fused group, plus a PyTorch
reference function with the group's original ATen calls (what CPU runs use by default).

Each op of a group becomes one Triton expression (`@triton_expr`, one entry per ATen overload).
Floating-point math runs in fp32 (fp64 for fp64) and every op's result is rounded to its own IR
dtype, as eager rounds each op's output, so a bf16 chain gives eager's bf16 values. The kernel
runs one program per row of the group's shape (its last dim) and column tile; a group with a row
reduction takes the whole row in one tile. Inputs are read through their own strides
(broadcast dims have stride 0), so views need no copy; outputs are new contiguous tensors.

Values of a group may be narrower than its last dim: each is meaningful on its own columns
(loads and stores are masked to them). Ops that move values along the last dim (`@column_expr`:
slice, cat, slice_scatter, as in RoPE's rotate_half and its gradient) read their operands at
shifted columns: the operand's expression is emitted again at `cols + k` (a load at other
columns, then the ops on it), so no value crosses lanes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import triton
from xdsl.dialects.builtin import FloatAttr, IntegerAttr, StringAttr, TensorType
from xdsl.ir import Operation, SSAValue

from autosp.ir.autosp import FusedOp
from autosp.ir.dtypes import torch_dtype
from autosp.rules import registrar

# A row reduction keeps the whole row in registers: rows up to this long.
MAX_ROW = 16384
COLUMN_TILE = 1024

TRITON_DTYPES = {
    "torch.float32": "tl.float32", "torch.float16": "tl.float16", "torch.bfloat16": "tl.bfloat16",
    "torch.float64": "tl.float64", "torch.int64": "tl.int64", "torch.int32": "tl.int32", "torch.bool": "tl.int1",
}

# op -> expression from its tensor operands' expressions (None: this instance is not supported).
Expr = Callable[[Operation, list[str]], "str | None"]
TRITON_EXPRS: dict[str, Expr] = {}
ROW_REDUCTIONS = {"aten.sum.dim_IntList", "aten.mean.dim"}


triton_expr = registrar(TRITON_EXPRS)


# op -> expression of its value at column offset k, from `at(operand, k')` (an operand's
# expression at column offset k'), or None when this instance is not supported.
At = Callable[[SSAValue, int], str]
ColumnExpr = Callable[[Operation, At, int], "str | None"]
COLUMN_EXPRS: dict[str, ColumnExpr] = {}


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


@triton_expr("aten.add.Tensor", "aten.sub.Tensor")
def _add_sub(op, a):
    alpha = _prop(op, "alpha", 1)
    other = a[1] if alpha == 1 else f"{_num(alpha)} * {a[1]}"
    return f"{a[0]} {'+' if op.name == 'aten.add.Tensor' else '-'} {other}"


@triton_expr("aten.add.Scalar", "aten.sub.Scalar")
def _add_sub_scalar(op, a):
    other = _prop(op, "other") * _prop(op, "alpha", 1)
    return f"{a[0]} {'+' if op.name == 'aten.add.Scalar' else '-'} {_num(other)}"


@triton_expr("aten.mul.Tensor")
def _mul(op, a):
    return f"{a[0]} * {a[1]}"


@triton_expr("aten.div.Tensor")
def _div(op, a):
    return None if _prop(op, "rounding_mode") else f"{a[0]} / {a[1]}"


@triton_expr("aten.mul.Scalar", "aten.div.Scalar")
def _mul_div_scalar(op, a):
    return f"{a[0]} {'*' if op.name == 'aten.mul.Scalar' else '/'} {_num(_prop(op, 'other'))}"


UNARY = {
    "aten.neg.default": "-{0}",
    "aten.exp.default": "tl.exp({0})",
    "aten.log.default": "tl.log({0})",
    "aten.sqrt.default": "tl.sqrt({0})",
    "aten.rsqrt.default": "tl.math.rsqrt({0})",
    "aten.reciprocal.default": "1.0 / {0}",
    "aten.sigmoid.default": "1.0 / (1.0 + tl.exp(-{0}))",
    "aten.silu.default": "{0} / (1.0 + tl.exp(-{0}))",
    "aten.tanh.default": "2.0 / (1.0 + tl.exp(-2.0 * {0})) - 1.0",
    "aten.cos.default": "tl.cos({0})",
    "aten.sin.default": "tl.sin({0})",
    "aten.abs.default": "tl.abs({0})",
    "aten.relu.default": "tl.maximum({0}, 0.0)",
    "aten.clone.default": "{0}",
}


@triton_expr(*UNARY)
def _unary(op, a):
    return UNARY[op.name].format(a[0])


@triton_expr("aten._to_copy.default")
def _cast(op, a):
    # Only a dtype change (the result dtype does the cast); layout/memory-format changes are not elementwise here.
    return a[0] if set(op.properties) <= {"dtype", "non_blocking"} else None


@triton_expr("aten.pow.Tensor_Scalar")
def _pow(op, a):
    forms = {2: "{0} * {0}", 3: "{0} * {0} * {0}", 1: "{0}", 0.5: "tl.sqrt({0})", -0.5: "tl.math.rsqrt({0})", -1: "1.0 / {0}"}
    form = forms.get(_prop(op, "exponent"))
    return form.format(a[0]) if form else None


COMPARE = {"ne": "!=", "eq": "==", "ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


@triton_expr(*(f"aten.{c}.Scalar" for c in COMPARE))
def _compare_scalar(op, a):
    return f"{a[0]} {COMPARE[op.name.split('.')[1]]} {_num(_prop(op, 'other'))}"


@triton_expr(*(f"aten.{c}.Tensor" for c in COMPARE))
def _compare(op, a):
    return f"{a[0]} {COMPARE[op.name.split('.')[1]]} {a[1]}"


@triton_expr("aten.bitwise_and.Tensor", "aten.bitwise_or.Tensor")
def _bitwise(op, a):
    return f"{a[0]} {'&' if 'and' in op.name else '|'} {a[1]}"


@triton_expr("aten.bitwise_not.default")
def _bitwise_not(op, a):
    return f"({a[0]} == 0)" if _is_bool(op.results[0]) else f"~{a[0]}"


@triton_expr("aten.where.self")
def _where(op, a):
    return f"tl.where({a[0]}, {a[1]}, {a[2]})"


@triton_expr("aten.clamp.default")
def _clamp(op, a):
    low, high = _prop(op, "min"), _prop(op, "max")
    expr = a[0]
    if low is not None:
        expr = f"tl.maximum({expr}, {_num(low)})"
    if high is not None:
        expr = f"tl.minimum({expr}, {_num(high)})"
    return expr


@triton_expr("aten.gelu.default")
def _gelu(op, a):
    x = a[0]
    if _prop(op, "approximate", "none") == "tanh":
        inner = f"{math.sqrt(2 / math.pi)!r} * ({x} + 0.044715 * {x} * {x} * {x})"
        return f"0.5 * {x} * (2.0 / (1.0 + tl.exp(-2.0 * ({inner}))))"
    return f"0.5 * {x} * (1.0 + tl.math.erf({x} * {1 / math.sqrt(2)!r}))"


@triton_expr("aten.full.default")
def _full(op, a):
    fill = _prop(op, "fill_value")
    dtype = TRITON_DTYPES.get(_dtype(op.results[0]))
    return None if fill is None or dtype is None else f"tl.full([BLOCK], {_num(fill)}, {dtype})"


@triton_expr(*ROW_REDUCTIONS)
def _row_reduction(op, a):
    shape = _shape(op.operands[0])
    dims = [d % len(shape) for d in op.properties["dim"].get_values()] if "dim" in op.properties else []
    if dims != [len(shape) - 1] or not _prop(op, "keepdim", 0) or "dtype" in op.properties:
        return None
    total = f"tl.sum(tl.where(cmask, {a[0]}, 0.0), 0)"
    return total if op.name == "aten.sum.dim_IntList" else f"{total} / {shape[-1]}.0"


# --- ops that move values along the last dim ---------------------------------------------------


def columns(k: int) -> str:
    """The column expression at offset k."""
    return "cols" if k == 0 else f"(cols {'+' if k > 0 else '-'} {abs(k)})"


def _last_dim_span(op: Operation, width: int) -> tuple[int, int] | None:
    """[start, end) of a step-1 slice along the last dim of a `width`-wide operand."""
    rank = len(_shape(op.results[0]))
    if _prop(op, "dim", 0) % rank != rank - 1 or _prop(op, "step", 1) != 1:
        return None
    start, end = _prop(op, "start", 0), _prop(op, "end", width)
    start = max(start + width if start < 0 else start, 0)
    end = min(end + width if end < 0 else end, width)
    return start, end


def _narrow(*values: SSAValue) -> bool:
    """A width-1 value counts as the same at every column, which a moved column is not."""
    return any(_width(v) in (0, 1) for v in values)


@column_expr("aten.slice.Tensor")
def _slice(op, at, k):
    span = _last_dim_span(op, _shape(op.operands[0])[-1])
    if span is None or _narrow(op.operands[0], op.results[0]):
        return None
    return at(op.operands[0], k + span[0])


@column_expr("aten.slice_scatter.default")
def _slice_scatter(op, at, k):
    base, src = op.operands
    span = _last_dim_span(op, _shape(base)[-1])
    if span is None or _narrow(base, src) or _dtype(base) != _dtype(src):
        return None
    start, end = span
    c = columns(k)
    return f"tl.where(({c} >= {start}) & ({c} < {end}), {at(src, k - start)}, {at(base, k)})"


@column_expr("aten.cat.default")
def _cat(op, at, k):
    pieces = list(op.operands)
    rank = len(_shape(op.results[0]))
    if _prop(op, "dim", 0) % rank != rank - 1 or _narrow(*pieces) or any(_dtype(p) != _dtype(op.results[0]) for p in pieces):
        return None
    starts = [0]
    for piece in pieces:
        starts.append(starts[-1] + _shape(piece)[-1])
    expr = at(pieces[-1], k - starts[-2])
    for piece, start, end in reversed(list(zip(pieces[:-1], starts, starts[1:]))):
        expr = f"tl.where({columns(k)} < {end}, {at(piece, k - start)}, {expr})"
    return expr


# --- helpers ------------------------------------------------------------------------------


def _shape(value: SSAValue) -> list[int]:
    assert isinstance(value.type, TensorType)
    return list(value.type.get_shape())


def _width(value: SSAValue) -> int:
    """The last dim (1 for a scalar)."""
    return (_shape(value) or [1])[-1]


def _dtype(value: SSAValue) -> str:
    return str(torch_dtype(value.type.element_type))  # type: ignore[attr-defined]


def _is_bool(value: SSAValue) -> bool:
    return _dtype(value) == "torch.bool"


def _is_float(value: SSAValue) -> bool:
    return _dtype(value).startswith(("torch.float", "torch.bfloat"))


def expressible(op: Operation) -> bool:
    """Whether `op` can be one expression of a generated kernel."""
    if len(op.results) != 1 or not (op.name in TRITON_EXPRS or op.name in COLUMN_EXPRS):
        return False
    values = [*op.operands, *op.results]
    if not all(isinstance(v.type, TensorType) and _dtype(v) in TRITON_DTYPES for v in values):
        return False
    if op.name in COLUMN_EXPRS:
        return COLUMN_EXPRS[op.name](op, lambda value, k: "x", 0) is not None
    return TRITON_EXPRS[op.name](op, ["x"] * len(op.operands)) is not None


def _compute(value: SSAValue, expr: str) -> str:
    """An operand as the math sees it: floats in fp32 (fp64 stays), integers and bools as they are."""
    if _is_float(value) and _dtype(value) != "torch.float64":
        return f"{expr}.to(tl.float32)"
    return expr


# --- the kernel ---------------------------------------------------------------------------


def kernel_source(op: FusedOp, name: str) -> tuple[str, dict]:
    """(source of `@triton.jit def {name}_kernel`, launch facts for the wrapper)."""
    shape = list(op.shape.get_values())
    lead, width = shape[:-1], shape[-1]
    row_mode = any(
        o.name in ROW_REDUCTIONS or (_shape(o.results[0])[-1:] == [1] and width > 1)
        for o in op.block.ops if o.results
    )
    block = triton.next_power_of_2(width) if row_mode else min(COLUMN_TILE, triton.next_power_of_2(width))
    block = max(block, 16)
    inputs = [f"in{i}" for i in range(len(op.inputs))]
    outputs = [f"out{i}" for i in range(len(op.outputs))]
    strides = [f"{x}_s{d}" for x in inputs for d in range(len(shape))]
    lines = [
        "@triton.jit",
        f"def {name}_kernel({', '.join(inputs + outputs + strides)}, BLOCK: tl.constexpr):",
        "    row = tl.program_id(0).to(tl.int64)",
        "    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)",
        f"    cmask = cols < {width}",
    ]
    # Row index -> one index per leading dim.
    rest = "row"
    index = []
    for d in range(len(lead) - 1, -1, -1):
        lines.append(f"    i{d} = {rest} % {lead[d]}")
        if d:
            lines.append(f"    r{d} = {rest} // {lead[d]}")
            rest = f"r{d}"
        index.insert(0, f"i{d}")
    arg_index = {arg: i for i, arg in enumerate(op.block.args)}
    emitted: dict[tuple[SSAValue, int], str] = {}

    def valid(k: int, value_width: int) -> str:
        """Columns where a value of this width exists, at offset k."""
        if k == 0:  # (a width-1 value is the same at every column)
            return "cmask" if value_width in (1, width) else f"cols < {value_width}"
        c = columns(k)
        return f"({c} >= 0) & ({c} < {value_width})"

    def at(value: SSAValue, k: int) -> str:
        """The name of `value` at column offset k, emitting what it takes."""
        value_width = _width(value)
        if value_width == 1:
            k = 0  # a row value, or a broadcast column: the same at every column
        if (value, k) in emitted:
            return emitted[(value, k)]
        if value in arg_index:
            i = arg_index[value]
            offset = " + ".join([f"{index[d]} * {inputs[i]}_s{d}" for d in range(len(lead))] + [f"{columns(k)} * {inputs[i]}_s{len(lead)}"])
            name = f"v{i}" if k == 0 else f"v{i}_{len(emitted)}"
            lines.append(f"    {name} = tl.load({inputs[i]} + {offset}, mask={valid(k, value_width)}, other=0)")
        else:
            inner = value.owner
            if inner.name in COLUMN_EXPRS:
                expr = COLUMN_EXPRS[inner.name](inner, at, k)
            else:
                assert k == 0 or inner.name not in ROW_REDUCTIONS, "a row reduction is one value per row"
                expr = TRITON_EXPRS[inner.name](inner, [_compute(v, at(v, k)) for v in inner.operands])
            name = f"t{len(emitted)}"
            lines.append(f"    {name} = ({expr}).to({TRITON_DTYPES[_dtype(value)]})")
        emitted[(value, k)] = name
        return name

    for i, value in enumerate(op.block.last_op.operands):
        value_width = _width(value)
        result = at(value, 0)
        if value_width == 1 and width > 1:  # one value per row
            lines.append(f"    tl.store({outputs[i]} + row + cols * 0, tl.broadcast_to({result}, [BLOCK]), mask=cols == 0)")
        else:
            lines.append(f"    tl.store({outputs[i]} + row * {value_width} + cols, tl.broadcast_to({result}, [BLOCK]), mask={valid(0, value_width)})")
    rows = math.prod(lead)
    grid = (rows, 1 if row_mode else triton.cdiv(width, block))
    return "\n".join(lines), {"block": block, "grid": grid, "warps": 8 if block >= 2048 else 4}
