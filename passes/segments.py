"""The forward cut into segments at attention ops: segment d holds the forward ops whose inputs
have passed through d attention ops at most (along the longest path). A transformer layer's
q/k/v projections fall in the segment of its attention; its output projection, MLP and the
next layer's norms in the next one. Remat gives identical segments one decision template;
the zero pass gathers the parameters of each segment as one bucket."""

from __future__ import annotations

from xdsl.ir import Operation, SSAValue

from autosp.ir.autosp import AttentionOp


def forward_segments(ops: list[Operation], forward: set[Operation]) -> dict[Operation, int]:
    """The segment of every forward op in `ops` (program order)."""
    depth: dict[SSAValue, int] = {}
    segment: dict[Operation, int] = {}
    for op in ops:
        if op not in forward:
            continue
        d = max((depth.get(o, 0) for o in op.operands), default=0)
        for r in op.results:
            depth[r] = d + isinstance(op, AttentionOp)  # an attention op ends its segment
        segment[op] = d
    return segment
