"""tile-rows{chunk_bytes}: compute token-wise chains in chunks of rows (tokens), forward and
backward, so that their intermediates exist one chunk at a time.

An op is token-wise when its sharding rule keeps the token (sequence) dim sharded without
communication: under sequence parallelism each rank computes it on its own tokens, so it can as
well be computed chunk after chunk (the rules in sharding_rules.py are the one source of that
knowledge; the pass propagates them over the rank's program, seeded by its token inputs or
their local shards). The pass takes the maximal convex regions of such ops in the forward and,
for each, the backward ops that read what the region made, closed over token-wise consumers and
over sums across the tokens (weight and bias gradients). Both become `autosp.tiled` ops: the
forward's computes the region's values that others read, a chunk at a time; the backward's
recomputes, per chunk, the part of the forward region it needs (so none of the region's values
is kept whole for the backward) and sums the gradients across the chunks in f32. This covers
every MLP shape (gated or not, fused gate_up), norms with their f32 upcasts, RoPE, residual
adds, the output and q/k/v projections: everything between two attentions.

Runs after sp-partition and zero (on this rank's tokens), before remat; a chunk is the largest
divisor of the rank's tokens whose widest row value stays within `chunk_bytes`. Regions whose
values carry other dims merged with the tokens (batch > 1 flattened) are left whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import DenseArrayBase, IntegerAttr, IntegerType, ModuleOp, TensorType
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.passes import ModulePass
from xdsl.traits import Pure

from autosp.common.errors import AutoSPError
from autosp.common.sizes import split_sizes
from autosp.ir.aten import AtenOp
from autosp.ir.autosp import LocalShardOp, TiledOp, YieldOp
from autosp.ir.dist import AllToAllOp
from autosp.ir.dtypes import BYTES, tensor_bytes, torch_dtype
from autosp.ir.layout import Layout, LayoutKind
from autosp.ir.program import partition_of, train_step_of
from autosp.passes.memory_plan import forward_ops, is_view, region_peak
from autosp.passes.sharding_rules import R, RuleContext, strategy_for
from autosp.passes.sp_propagate import token_inputs

SHAPE_PROPERTIES = ("size", "shape")
CHUNK_BYTES = 128 << 20  # what compile asks of a chunk's widest row value


def _i64s(values: list[int]) -> DenseArrayBase:
    return DenseArrayBase.from_list(IntegerType(64), values)


@dataclass
class Rows:
    """The token-wise view of a program: each value's layout along this rank's tokens and, per
    op, the layouts it needs of its operands, or None if it is not token-wise."""

    rows: int
    layout: dict[SSAValue, Layout]
    needs: dict[Operation, list[Layout] | None]


def _token_rows(fn: func.FuncOp, module: ModuleOp) -> int | None:
    """This rank's tokens: the token inputs' length, or (partitioned) their local shard's."""
    tokens = token_inputs(fn, 1)
    if not tokens:
        return None
    if partition_of(module) is None:
        return next(iter(tokens)).type.get_shape()[1]  # type: ignore[attr-defined]
    for op in fn.body.block.ops:
        if isinstance(op, LocalShardOp) and op.outer.value.data == 1 and op.replicas.value.data == 1:
            return op.output.type.get_shape()[op.dim.value.data]  # type: ignore[attr-defined]
    return None


def token_layouts(module: ModuleOp) -> Rows | None:
    """Propagate the sharding rules over the (rank's) program with the tokens as the sharded dim:
    seeded by the token inputs (unpartitioned) or by the local shards and all-to-alls that bring
    tokens onto this rank (partitioned); collectives and everything without a rule end it."""
    fn = train_step_of(module)
    rows = _token_rows(fn, module)
    if rows is None or rows < 2:
        return None
    partitioned = partition_of(module) is not None
    ctx = RuleContext(sp=2, token_values=set() if partitioned else token_inputs(fn, 1), seq_dim=1, seq_len=rows)
    layout: dict[SSAValue, Layout] = {arg: R for arg in fn.body.block.args}
    needs: dict[Operation, list[Layout] | None] = {}
    for op in fn.body.block.ops:
        if isinstance(op, func.ReturnOp):
            continue
        outputs = [R] * len(op.results)
        needs[op] = None
        if isinstance(op, LocalShardOp):
            if op.replicas.value.data == 1:
                outputs = [Layout(LayoutKind.SHARD, op.dim.value.data, 1, op.outer.value.data)]
        elif isinstance(op, AllToAllOp):
            if not layout[op.input].sharded:  # heads -> tokens: this rank's tokens
                outputs = [Layout(LayoutKind.SHARD, op.split_dim.value.data)]
        elif isinstance(op, AtenOp) or op.has_trait(Pure):
            strategy = strategy_for(op, [layout[o] for o in op.operands], ctx)
            outputs = strategy.outputs  # (attention: what it declares, rows of the whole value)
            if _token_wise(op, strategy, [layout[o] for o in op.operands], rows):
                needs[op] = strategy.inputs
        for result, out in zip(op.results, outputs):
            layout[result] = out
    return Rows(rows, layout, needs)


def _token_wise(op: Operation, strategy, have: list[Layout], rows: int) -> bool:
    """Its rule runs it on token shards (some operand or result sharded along a dim of exactly
    the tokens: no heads, no dims merged with them) with no communication: each operand as it
    is, or replicated and cut."""
    values = [*op.operands, *op.results]
    layouts = [*strategy.inputs, *strategy.outputs]
    if strategy.computed is not None or strategy.fallback or not any(l.sharded for l in layouts):
        return False
    for value, layout in zip(values, layouts):
        if layout.kind is LayoutKind.HEADS:
            return False
        if layout.sharded and (layout.outer != 1 or layout.replicas != 1 or value.type.get_shape()[layout.dim] != rows):
            return False
    return all(h == n or (h == R and n.sharded) for h, n in zip(have, strategy.inputs))


# --- regions ------------------------------------------------------------------------------


def _reach(graph: nx.DiGraph, sources: set[Operation], down: bool) -> set[Operation]:
    """Everything reachable from `sources` (not themselves unless on a path), down or up."""
    step = graph.successors if down else graph.predecessors
    seen: set[Operation] = set()
    frontier = [n for s in sources for n in step(s)]
    while frontier:
        node = frontier.pop()
        if node not in seen:
            seen.add(node)
            frontier.extend(step(node))
    return seen


def _convex(ops: set[Operation], graph: nx.DiGraph) -> set[Operation]:
    """The part of `ops` no path leaves and re-enters: ops reached through an outside op that
    itself depends on the set are dropped (they would have to wait for the tiled op)."""
    while True:
        through = (_reach(graph, ops, True) & _reach(graph, ops, False)) - ops
        if not through:
            return ops
        ops = ops - _reach(graph, through, True)


def _components(ops: set[Operation], graph: nx.DiGraph) -> list[set[Operation]]:
    return [set(c) for c in nx.weakly_connected_components(graph.subgraph(ops))]


def _convex_parts(ops: set[Operation], graph: nx.DiGraph) -> list[set[Operation]]:
    """`ops` cut into connected convex parts (the part before a path leaves and comes back,
    then the rest in turn)."""
    parts, pending = [], _components(ops, graph)
    while pending:
        group = pending.pop()
        core = _convex(group, graph)
        parts += _components(core, graph)
        pending += _components(group - core, graph)
    return parts


def _from_arguments(value: SSAValue, cone: set[Operation], known: dict[Operation, bool]) -> bool:
    """Whether `value` is made from the step's arguments alone by pure ops; those ops join `cone`."""
    owner = value.owner
    if not isinstance(owner, Operation):
        return True
    if owner not in known:
        known[owner] = False  # (a cycle cannot happen in SSA; a guard all the same)
        known[owner] = owner.has_trait(Pure) and not owner.regions and all(
            _from_arguments(o, cone, known) for o in owner.operands)
        if known[owner]:
            cone.add(owner)
    return known[owner]


def _graph(ops: list[Operation]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(ops)
    for op in ops:
        for operand in op.operands:
            owner = operand.owner
            if isinstance(owner, Operation) and owner in graph:
                graph.add_edge(owner, op)
    return graph


# --- the rewrite --------------------------------------------------------------------------


class _Tiler:
    def __init__(self, module: ModuleOp, info: Rows, chunk_bytes: int):
        self.block = train_step_of(module).body.block
        self.info, self.chunk_bytes = info, chunk_bytes
        self.rows = info.rows
        partition = partition_of(module)  # the largest rank's tokens decide whether to tile
        self.largest = split_sizes(partition.seq_len.data, partition.sp.data)[0] if partition else info.rows

    def chunk_for(self, ops: list[Operation]) -> int | None:
        """As many rows as keep the widest row value within `chunk_bytes`; None if the largest
        rank's tokens fit that already (nothing to gain; the same answer on every rank)."""
        widest = max(
            (tensor_bytes(r) // self.rows for op in ops for r in op.results if self.info.layout[r].sharded), default=0
        )
        limit = max(1, self.chunk_bytes // widest) if widest else self.largest
        return min(limit, self.rows) if limit < self.largest else None

    def chunk_type(self, value: SSAValue, layout: Layout, chunk: int) -> TensorType:
        shape = list(value.type.get_shape())  # type: ignore[attr-defined]
        if layout.sharded:
            shape[layout.dim] = chunk
        return TensorType(value.type.element_type, shape)  # type: ignore[attr-defined]

    def build(self, ops: list[Operation], outputs: list[SSAValue], chunk: int,
              substitute: dict[SSAValue, SSAValue] | None = None) -> TiledOp:
        """One tiled op computing `outputs` from `ops` (in program order) a chunk at a time; an
        input in `substitute` is read as its substitute (a tiled op's result in its place)."""
        inputs: list[SSAValue] = []
        slices: list[int] = []
        args: dict[tuple[SSAValue, int], SSAValue] = {}
        body = Block()
        mapped: dict[SSAValue, SSAValue] = {}
        inside = set(ops)
        for op in ops:
            operands = []
            for operand, need in zip(op.operands, self.info.needs[op]):  # type: ignore[arg-type]
                if isinstance(operand.owner, Operation) and operand.owner in inside:
                    operands.append(mapped[operand])
                    continue
                dim = need.dim if need.sharded else -1
                operand = (substitute or {}).get(operand, operand)
                key = (operand, dim)
                if key not in args:
                    arg = body.insert_arg(self.chunk_type(operand, need, chunk) if dim >= 0 else operand.type, len(body.args))
                    arg.name_hint = operand.name_hint
                    args[key] = arg
                    inputs.append(operand)
                    slices.append(dim)
                operands.append(args[key])
            result_types = [self.chunk_type(r, self.info.layout[r], chunk) for r in op.results]
            properties = dict(op.properties)
            result_layout = self.info.layout[op.results[0]] if op.results else R
            if isinstance(op, AtenOp) and len(op.results) == 1 and result_layout.sharded:
                for name in SHAPE_PROPERTIES:  # any number of rows: the last chunk may be shorter
                    if name in properties:
                        shape = list(result_types[0].get_shape())
                        shape[result_layout.dim] = -1
                        properties[name] = _i64s(shape)
            clone = type(op).create(operands=operands, result_types=result_types, properties=properties,
                                    attributes=dict(op.attributes))
            clone.location = op.location
            for old, new in zip(op.results, clone.results):
                new.name_hint = old.name_hint
                mapped[old] = new
            body.add_op(clone)
        body.add_op(YieldOp(*(mapped[v] for v in outputs)))
        combines = [self.info.layout[v].dim if self.info.layout[v].sharded else -1 for v in outputs]
        tiled = TiledOp.build(
            operands=[inputs], result_types=[[v.type for v in outputs]], regions=[Region(body)],
            properties={
                "rows": IntegerAttr(self.rows, 64), "chunk": IntegerAttr(chunk, 64), "slices": _i64s(slices),
                "combines": _i64s(combines), "scratch": IntegerAttr(0, 64),
            },
        )
        accumulators = sum(
            tensor_bytes(v) // BYTES[torch_dtype(v.type.element_type)] * 4  # type: ignore[attr-defined]
            for v, dim in zip(outputs, combines) if dim < 0 and BYTES[torch_dtype(v.type.element_type)] < 4  # type: ignore[attr-defined]
        )
        tiled.properties["scratch"] = IntegerAttr(region_peak(body) + accumulators, 64)
        for old, new in zip(outputs, tiled.results):
            new.name_hint = f"{old.name_hint or 'v'}_tiled"
        return tiled

    def window(self, inputs: list[SSAValue], replaced: list[SSAValue], skip: set[Operation]) -> tuple[int, int]:
        """Where an op reading `inputs` and replacing `replaced` (for readers not in `skip`) may
        go: after the last op defining an input, before the first such reader. Views of the
        step's arguments (the backward's transposed weights) are moved to the op, and views of
        what it replaces (a weight gradient's transpose) after it, so neither binds."""
        ops = list(self.block.ops)
        position = {op: i for i, op in enumerate(ops)}
        before, after = self._movable(inputs, replaced, skip)
        defined = [position[v.owner] for v in inputs
                   if isinstance(v.owner, Operation) and v.owner in position and v.owner not in before]
        readers = [position[r] for r in self._readers(replaced, skip, after)]
        return max(defined, default=-1) + 1, min(readers, default=len(ops) - 1)

    def _movable(self, inputs: list[SSAValue], replaced: list[SSAValue], skip: set[Operation]):
        # What the op reads that the step's arguments alone make (views of weights, masks of
        # the token ids): it can be made right before the op, wherever it was.
        cone: set[Operation] = set()
        known: dict[Operation, bool] = {}
        for value in inputs:
            _from_arguments(value, cone, known)
        before = sorted(cone, key=self.block.get_operation_index)
        after: list[Operation] = []  # views of the replaced values, and views of those
        frontier = [u.operation for v in replaced for u in v.uses if u.operation not in skip]
        while frontier:
            op = frontier.pop()
            if is_view(op) and op not in after:
                after.append(op)
                frontier += [u.operation for r in op.results for u in r.uses]
        return before, after

    def _readers(self, replaced: list[SSAValue], skip: set[Operation], views: list[Operation]) -> list[Operation]:
        """The first non-view readers (through views of `replaced`)."""
        found, frontier = [], [u.operation for v in replaced for u in v.uses if u.operation not in skip]
        while frontier:
            op = frontier.pop()
            if op in views:
                frontier += [u.operation for r in op.results for u in r.uses]
            else:
                found.append(op)
        return found

    def fits(self, inputs: list[SSAValue], replaced: list[SSAValue], skip: set[Operation]) -> bool:
        earliest, latest = self.window(inputs, replaced, skip)
        return earliest <= latest

    def place(self, tiled: TiledOp, replaced: list[SSAValue], skip: set[Operation]) -> None:
        """Put `tiled` in its window; readers not in `skip` read its results instead."""
        earliest, latest = self.window(list(tiled.inputs), replaced, skip)
        assert earliest <= latest
        before, after = self._movable(list(tiled.inputs), replaced, skip)
        anchor = next(op for op in list(self.block.ops)[earliest:] if op not in before)
        position = {op: i for i, op in enumerate(self.block.ops)}
        for op in before:
            if position[op] >= earliest:
                op.detach()
                self.block.insert_op_before(op, anchor)
        self.block.insert_op_before(tiled, anchor)
        moved = [op for op in sorted(after, key=position.__getitem__) if position[op] < position[anchor]]
        for op in reversed(moved):
            op.detach()
            self.block.insert_op_after(op, tiled)
        for old, new in zip(replaced, tiled.results):
            old.replace_uses_with_if(new, lambda use: use.operation not in skip)


@dataclass(frozen=True)
class TileRows(ModulePass):
    """Token-wise chains in chunks of rows: each chunk's widest row value within `chunk_bytes`."""

    name = "tile-rows"
    chunk_bytes: int = 128 << 20

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.chunk_bytes < 1:
            raise AutoSPError(f"tile-rows: chunk_bytes={self.chunk_bytes} must be >= 1")
        info = token_layouts(op)
        if info is None:
            return
        tiler = _Tiler(op, info, self.chunk_bytes)
        ops = [o for o in tiler.block.ops if not isinstance(o, func.ReturnOp)]
        forward = forward_ops(list(tiler.block.ops))
        graph = _graph(ops)
        backward = [o for o in ops if o not in forward]
        candidates = {o for o in ops if o in forward and info.needs.get(o) is not None
                      and all(info.layout[r].sharded for r in o.results)}
        regions = _convex_parts(candidates, graph)
        for region in sorted(regions, key=lambda r: min(ops.index(o) for o in r)):
            self._tile(tiler, info, graph, region, backward, forward)

    def _tile(self, tiler: _Tiler, info: Rows, graph: nx.DiGraph, region: set[Operation],
              backward: list[Operation], forward: set[Operation]) -> None:
        order = {o: i for i, o in enumerate(tiler.block.ops)}
        region_ops = sorted(region, key=order.__getitem__)
        chunk = tiler.chunk_for(region_ops)
        if chunk is None:
            return
        made = {r for o in region_ops for r in o.results}
        # The backward ops that read what the region made, and the token-wise ops (or sums over
        # the tokens) that read theirs.
        grads: set[Operation] = set()
        for o in backward:
            if o in order and info.needs.get(o) is not None and any(v in made or v.owner in grads for v in o.operands):
                grads.add(o)
        # And the token-wise backward ops whose results only they read (the gradient flowing in:
        # RoPE's backward, the projections' input gradients), computed per chunk with them.
        for o in reversed(backward):
            if o in order and o not in grads and info.needs.get(o) is not None and o.results and all(
                u.operation in grads for r in o.results for u in r.uses
            ):
                grads.add(o)
        grads = _convex(grads, graph) if grads else grads
        grad_ops = sorted(grads, key=order.__getitem__)
        outside = lambda v, group: any(u.operation not in group for u in v.uses)  # noqa: E731
        # Stages: the region cut at the values others read anyway (the residual stream entering
        # the next layer's norm and projections), so that remat can keep, recompute or offload
        # each stage's results on their own.
        cuts = {r for o in region_ops for r in o.results if outside(r, region | grads) and outside(r, set()) and any(
            u.operation in region for u in r.uses)}
        stage: dict[Operation, int] = {}
        for o in region_ops:
            stage[o] = max((stage[v.owner] + (v in cuts) for v in o.operands if v.owner in stage), default=0)
        stages = [[o for o in region_ops if stage[o] == k] for k in range(max(stage.values()) + 1)]
        stages = [ops for ops in stages if ops]
        materialized = {r for ops in stages for o in ops for r in o.results if outside(r, set(ops) | grads)}
        saved = {v for o in grad_ops for v in o.operands if v in made}
        recomputed: set[Operation] = set()  # what the backward recomputes per chunk (not what is materialized)
        stack = [v for v in saved if v not in materialized]
        while stack:
            owner = stack.pop().owner
            if owner in region and owner not in recomputed:
                recomputed.add(owner)
                stack += [v for v in owner.operands if v in made and v not in materialized]
        external = lambda group: [v for o in group for v in o.operands  # noqa: E731
                                  if not (isinstance(v.owner, Operation) and v.owner in group)]
        grad_out = [r for o in grad_ops for r in o.results if outside(r, grads)]
        backward_ops = [o for o in region_ops if o in recomputed] + grad_ops
        if grad_ops:
            first, last = tiler.window(external(backward_ops), grad_out, grads)
            if first > last:  # the backward cannot be tiled here: it reads the forward's values whole
                materialized |= saved
                grad_ops, grads = [], set()
        replacement: dict[SSAValue, SSAValue] = {}
        for ops in stages:
            members = set(ops)
            out = [r for o in ops for r in o.results if r in materialized or outside(r, members | grads)]
            if len(out) == sum(len(o.results) for o in ops) or not tiler.fits(external(ops), out, members | grads):
                continue  # nothing of it is held a chunk at a time, or it cannot go in one place
            tiled = tiler.build(ops, out, chunk)
            tiler.place(tiled, out, members | grads)
            replacement.update(zip(out, tiled.results))
        if grad_ops and replacement:  # the region's values the backward reads: materialized, or recomputed per chunk
            tiled = tiler.build(backward_ops, grad_out, chunk, replacement)
            if tiler.fits(list(tiled.inputs), grad_out, grads):
                tiler.place(tiled, grad_out, grads)
                for o in reversed(grad_ops):
                    tiler.block.erase_op(o)
            else:
                tiled.erase()
                for old, new in replacement.items():  # the backward reads the materialized copies
                    old.replace_uses_with_if(new, lambda use: use.operation in grads)
        for o in reversed(region_ops):
            if o.parent is not None and all(not r.uses for r in o.results):
                tiler.block.erase_op(o)
