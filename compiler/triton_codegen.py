"""Backend for `autosp.fused`: one generated Triton kernel per fused group, plus a PyTorch
reference function with the group's original ATen calls (what CPU runs use by default).

Each op of a group becomes one Triton expression (passes/kernel_exprs.py, one entry per ATen
overload; the same tables decide what fuse-elementwise fuses).
Floating-point math runs in fp32 (fp64 for fp64) and every op's result is rounded to its own IR
dtype, as eager rounds each op's output, so a bf16 chain gives eager's bf16 values. A program
computes a [ROWS, BLOCK] tile: ROWS rows of the group's shape (its last dim is the row) and a
column tile of BLOCK; a group with a row reduction takes whole rows. Narrow rows (RoPE's
head_dim) share a program, so no program works on a few dozen values. Inputs are read through
their own strides (broadcast dims have stride 0), so views need no copy; outputs are new
contiguous tensors.

Values of a group may be narrower than its last dim: each is meaningful on its own columns
(loads and stores are masked to them). Ops that move values along the last dim (`@column_expr`:
slice, cat, slice_scatter, as in RoPE's rotate_half and its gradient) read their operands at
shifted columns: the operand's expression is emitted again at `cols + k` (a load at other
columns, then the ops on it), so no value crosses lanes.
"""

from __future__ import annotations

import math

import triton
from xdsl.ir import SSAValue

from autosp.ir.autosp import FusedOp
from autosp.ir.aten import overload_of
from autosp.passes.kernel_exprs import (
    COLUMN_EXPRS,
    ROW_REDUCTIONS,
    TRITON_DTYPES,
    TRITON_EXPRS,
    columns,
    dtype_of,
    is_float,
    shape_of,
    width_of,
)

COLUMN_TILE = 1024  # columns per program when a group has no row reduction
TILE_VALUES = 4096  # values per program: narrow rows are taken several at a time


def _compute(value: SSAValue, expr: str) -> str:
    """An operand as the math sees it: floats in fp32 (fp64 stays), integers and bools as they
    are. Named values already hold their IR dtype, so only 16-bit floats need a cast."""
    if is_float(value) and dtype_of(value) not in ("torch.float32", "torch.float64"):
        return f"{expr}.to(tl.float32)"
    return expr


def _rounded(op, expr: str) -> str:
    """`expr` rounded to the op's IR dtype, as eager rounds each op's output. Float math on fp32
    operands is already fp32: no cast then (a cast from another type or to another width stays)."""
    result = dtype_of(op.results[0])
    fp32_math = op.operands and all(dtype_of(v) == "torch.float32" for v in op.operands)
    if result == "torch.float32" and fp32_math and op.name != "aten._to_copy.default":
        return expr
    return f"({expr}).to({TRITON_DTYPES[result]})"


# --- the kernel ---------------------------------------------------------------------------


def kernel_source(op: FusedOp, name: str) -> tuple[str, dict]:
    """(source of `@triton.jit def {name}_kernel`, launch facts for the wrapper)."""
    shape = list(op.shape.get_values())
    lead, width = shape[:-1], shape[-1]
    row_mode = any(
        overload_of(o) in ROW_REDUCTIONS or (shape_of(o.results[0])[-1:] == [1] and width > 1)
        for o in op.block.ops if o.results
    )
    block = triton.next_power_of_2(width) if row_mode else min(COLUMN_TILE, triton.next_power_of_2(width))
    block = max(block, 16)
    rows = math.prod(lead)
    rows_per_program = max(1, min(triton.next_power_of_2(rows), TILE_VALUES // block))
    inputs = [f"in{i}" for i in range(len(op.inputs))]
    outputs = [f"out{i}" for i in range(len(op.outputs))]
    strides = [f"{x}_s{d}" for x in inputs for d in range(len(shape))]
    lines = [
        "@triton.jit",
        f"def {name}_kernel({', '.join(inputs + outputs + strides)}, ROWS: tl.constexpr, BLOCK: tl.constexpr):",
        "    row = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)[:, None]",
        # int64: a column times a transposed input's stride can pass 2^31 elements
        "    cols = (tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)[None, :]",
        f"    rmask = row < {rows}",
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
            return "cmask" if value_width in (1, width) else f"(cols < {value_width})"
        c = columns(k)
        return f"({c} >= 0) & ({c} < {value_width})"

    def at(value: SSAValue, k: int) -> str:
        """The name of `value` at column offset k, emitting what it takes."""
        value_width = width_of(value)
        if value_width == 1:
            k = 0  # a row value, or a broadcast column: the same at every column
        if (value, k) in emitted:
            return emitted[(value, k)]
        if value in arg_index:
            i = arg_index[value]
            offset = " + ".join([f"{index[d]} * {inputs[i]}_s{d}" for d in range(len(lead))] + [f"{columns(k)} * {inputs[i]}_s{len(lead)}"])
            name = f"v{i}" if k == 0 else f"v{i}_{len(emitted)}"
            lines.append(f"    {name} = tl.load({inputs[i]} + {offset}, mask=rmask & {valid(k, value_width)}, other=0)")
        else:
            inner = value.owner
            if overload_of(inner) in COLUMN_EXPRS:
                expr = COLUMN_EXPRS[overload_of(inner)](inner, at, k)
            else:
                assert k == 0 or overload_of(inner) not in ROW_REDUCTIONS, "a row reduction is one value per row"
                expr = TRITON_EXPRS[overload_of(inner)](inner, [_compute(v, at(v, k)) for v in inner.operands])
            name = f"t{len(emitted)}"
            lines.append(f"    {name} = {_rounded(inner, expr)}")
        emitted[(value, k)] = name
        return name

    for i, value in enumerate(op.block.last_op.operands):
        value_width = width_of(value)
        result = at(value, 0)
        if value_width == 1 and width > 1:  # one value per row
            lines.append(f"    tl.store({outputs[i]} + row + cols * 0, tl.broadcast_to({result}, [ROWS, BLOCK]), mask=rmask & (cols == 0))")
        else:
            lines.append(
                f"    tl.store({outputs[i]} + row * {value_width} + cols, tl.broadcast_to({result}, [ROWS, BLOCK]), "
                f"mask=rmask & {valid(0, value_width)})"
            )
    grid = (triton.cdiv(rows, rows_per_program), 1 if row_mode else triton.cdiv(width, block))
    warps = 8 if block * rows_per_program >= 2048 else 4
    return "\n".join(lines), {"rows": rows_per_program, "block": block, "grid": grid, "warps": warps}
