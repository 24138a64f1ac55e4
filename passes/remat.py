"""remat: keep or recompute each forward value the backward needs, so the step fits a per-rank
memory budget at the least estimated recompute time.

Decision unit: a forward op that makes storage (views are free and follow their storage). Kept:
its results live from the forward to their last backward use. Recomputed: they die after their
last forward use, and a clone of the op is inserted in the backward just before the first op that
needs them (its inputs kept or recomputed in turn, so chains are allowed). Collectives that only
move data (the all-to-alls around attention) may be recomputed: every rank runs one plan, made
on the largest rank's program (`given`: the plan another rank made, applied here by op index;
the ranks' programs differ only in sizes), so the collective order stays the same on every
rank. Reductions and random ops are never recomputed.

The ILP (HiGHS) has two binaries per decision *slot*: keep k and recompute r. Transformer layers
are identical, so the forward is cut into segments at attention ops and segments with the same
op sequence share their slots: one layer template decides all L layers. Constraints:
  - a value the backward uses is kept or recomputed: k + r = 1 (otherwise k + r <= 1);
  - recomputing v needs each input u available: r_v <= k_u + r_u;
  - one memory row per op of the program (the live bytes while it runs, from memory-plan's
    liveness, with each candidate's forward/kept/recomputed lifetime as a term) <= budget.
Objective: the sum of the recomputed ops' roofline times (cost_model.py).

The rows are a conservative linear model of the rewritten program (a recomputed value is counted
from the first point any consumer could need it to the last). The plan the pass applies is then
checked exactly by memory-plan; if the exact peak overshoots, the ILP is re-solved with the
budget lowered by the overshoot. Full per-layer checkpointing (layer inputs kept, every other
recomputable value recomputed) is always evaluated as well, with its layer inputs offloaded as far
as the host budget goes, and two-level checkpointing (some layer inputs `rerun`: made again where
their layer's backward begins, by running the layer before from its held input); one of these is
used when the ILP plan costs more or does not fit (e.g. the solver timed out). If nothing fits,
the pass refuses with the memory the step needs and the sp degree that would fit it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property

import highspy
import networkx as nx
import numpy as np
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import FloatData, IntAttr, IntegerAttr, ModuleOp, StringAttr, UnitAttr
from xdsl.ir import Operation, OpResult, SSAValue
from xdsl.passes import ModulePass
from xdsl.traits import Pure

from autosp.ir.autosp import RematAttr
from autosp.ir.program import REMAT, partition_of, train_step_of, zero_of
from autosp.ir.autosp import AttentionOp
from autosp.ir.dist import CollectiveOp, GatherWaitOp, GroupOp
from autosp.ir.host import POOL_ALIGNMENT, OffloadStartOp, OffloadWaitOp, PrefetchStartOp, PrefetchWaitOp, host_type
from autosp.passes.segments import forward_segments
from autosp.passes.views import rebased, view_chain
from autosp.passes.cost_model import GiB, DeviceProfile, copy_seconds, device_profile, host_memory, op_seconds
from autosp.ir.dtypes import tensor_bytes
from autosp.passes.memory_plan import (
    MemoryPlan,
    forward_ops,
    human_bytes,
    is_view,
    liveness,
    plan_memory,
    workspace_bytes,
)
from autosp.common.errors import AutoSPError

RECOMPUTE = "autosp.recompute"  # marks the clones the pass inserts
log = logging.getLogger("autosp.remat")
ILP_TIME_LIMIT_S = 10.0
MIN_OFFLOAD_BYTES = 4096
HIDDEN_COPY_COST = 0.01  # of a copy's time, for a copy that compute hides
MAX_REFINEMENTS = 4

_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


MAX_BUDGET = (1 << 63) - 1  # budgets are i64 attributes in the IR


def parse_budget(budget: str | int | float, profile: DeviceProfile) -> int:
    """Bytes from 123456, 1.5e9, "512MiB", "70GiB", "1.5GB" or "auto" (device memory less a
    margin for the allocator's fragmentation and the runtime: 8%, at least 2 GiB)."""
    not_a_size = AutoSPError(
        f"memory budget {budget!r} is not a size; give bytes or a number with a unit (e.g. 70GiB, 512MiB, 80GB) or 'auto'"
    )
    if isinstance(budget, bool):
        raise not_a_size
    if isinstance(budget, int):
        value = budget
    elif isinstance(budget, float):
        if not math.isfinite(budget):
            raise not_a_size
        value = int(budget)
    elif not isinstance(budget, str):
        raise not_a_size
    elif budget.strip().lower() == "auto":
        value = profile.memory_bytes - max(2 * GiB, int(0.08 * profile.memory_bytes))
        if value <= 0:
            raise AutoSPError(
                f"memory budget 'auto' leaves nothing of {human_bytes(profile.memory_bytes, 2)} of device memory "
                "(it keeps max(2 GiB, 8%) for the allocator and runtime); give the budget in bytes"
            )
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", budget)
        if not match or match.group(2).lower() not in _UNITS:
            raise not_a_size
        value = int(Fraction(match.group(1)) * _UNITS[match.group(2).lower()])  # exact, any length
    if value <= 0:
        raise AutoSPError(f"memory budget {budget!r} must be positive")
    if value > MAX_BUDGET:
        raise AutoSPError(f"memory budget {str(budget)[:40]!r} is more than 2^63 bytes; give the memory of one device")
    return value


HOST_FRACTION = 0.8  # of the host's memory, for "auto": the rest for the OS, the data loader, ...


def local_ranks() -> int:
    """The processes of this job on this host (torchrun's LOCAL_WORLD_SIZE; else the GPUs here)."""
    if os.environ.get("LOCAL_WORLD_SIZE", "").isdigit():
        return max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    import torch

    return max(1, torch.cuda.device_count())


def parse_host_budget(budget: str | int | float | None) -> int:
    """Bytes of the host's memory values may be offloaded to, per rank: None or 0 (no offload),
    a size as `parse_budget` takes, or "auto" (80% of the host's memory over its local ranks)."""
    if budget is None or budget == 0 or isinstance(budget, str) and budget.strip() == "0":
        return 0
    if isinstance(budget, str) and budget.strip().lower() == "auto":
        return int(HOST_FRACTION * host_memory() / local_ranks())
    try:
        return parse_budget(budget, device_profile("cpu"))
    except AutoSPError as err:
        raise AutoSPError(str(err).replace("memory budget", "host memory budget", 1)) from None


def recomputable(op: Operation) -> bool:
    """Deterministic: Pure ops, the rank-local layout changes, and the collectives that only
    move data (all-to-all, all-gather: replayed, they give the same bits on every rank), since
    every rank applies the same plan; not reductions, nor random ops."""
    if isinstance(op, CollectiveOp):
        return op.REPLAYABLE
    return op.has_trait(Pure) or isinstance(op, GroupOp)


# --- the problem ------------------------------------------------------------------------


@dataclass(eq=False)
class Unit:
    op: Operation
    index: int
    recomputable: bool
    seconds: float
    workspace: int
    results: list[tuple[SSAValue, int, int]] = field(default_factory=list)  # (storage, bytes, last forward use)
    first_direct: int | None = None  # first backward op that reads it
    last_direct: int = -1
    inputs: set["Unit"] = field(default_factory=set, repr=False)
    consumers: set["Unit"] = field(default_factory=set, repr=False)
    needed: bool = False  # by the backward, directly or to recompute a consumer
    first_need: int = 0  # recomputed: materialized before this op (len(ops): never)
    recompute_death: int = -1  # recomputed: last read
    death: int = 0  # kept or offloaded: last read
    earliest_need: int = 0  # kept or offloaded: first read by the backward or a recomputed consumer
    slot: int = -1
    segment: int = 0
    # Offloaded (placed by RematProblem._place_offloads): the copy out is waited for after op
    # `offload_wait`, the copy back started before op `prefetch_at`; their exposed time.
    host_bytes: int = 0
    offload_wait: int = 0
    prefetch_at: int = 0
    offload_seconds: float = 0.0


@dataclass
class Plan:
    name: str  # "ilp", "per-layer checkpointing", ...
    recompute: frozenset[int]  # op indices of the recomputed forward ops
    seconds: float  # estimated time per step: recomputation and exposed host copies
    peak_bytes: int = 0  # exact, from memory-plan on the rewritten program
    offload: frozenset[int] = frozenset()  # op indices of the forward ops whose results go to the host
    rerun: frozenset[int] = frozenset()  # layer inputs made again by running the layer before (apply_recompute)


@dataclass
class RematResult:
    budget_bytes: int
    baseline_peak: int
    plan: Plan
    candidates: list[Plan]
    slots: int
    ilp_seconds: float
    ilp_status: str
    placement: list[tuple[int, int, int]] = field(default_factory=list)  # the plan's offloads (offload_placement)


class RematProblem:
    def __init__(self, module: ModuleOp, profile: DeviceProfile, fused: bool = False, host_budget: int = 0):
        self.module, self.fused, self.profile, self.host_budget = module, fused, profile, host_budget
        self.lv = lv = liveness(module)
        ops = lv.ops
        self.forward = forward = forward_ops(ops)
        returned = lv.returned
        self.units: dict[Operation, Unit] = {}
        regathered = {twin.owner for twin in backward_twins(ops)}  # their values are free to the backward
        for i, op in enumerate(ops):
            if op not in forward or is_view(op) or not op.results or op in regathered:
                continue
            can = recomputable(op)
            pinned = any(r in returned for r in op.results)
            self.units[op] = Unit(op, i, can and not pinned, op_seconds(op, profile) if can else 0.0, workspace_bytes(op))

        def unit_of(value: SSAValue) -> Unit | None:
            root = lv.root[value]
            return self.units.get(root.owner) if isinstance(root, OpResult) else None

        last_forward: dict[SSAValue, int] = {}
        for i, op in enumerate(ops):
            for operand in op.operands:
                producer = unit_of(operand)
                if producer is None:
                    continue
                if op in forward:
                    last_forward[lv.root[operand]] = i
                    consumer = self.units.get(op)
                    if consumer is not None:
                        producer.consumers.add(consumer)
                        consumer.inputs.add(producer)
                elif not isinstance(op, func.ReturnOp):
                    if producer.first_direct is None:
                        producer.first_direct = i
                    producer.last_direct = i
        for unit in self.units.values():
            unit.results = [(r, tensor_bytes(r), last_forward.get(r, unit.index)) for r in unit.op.results]

        for op, segment in forward_segments(ops, forward).items():
            if op in self.units:
                self.units[op].segment = segment

        # Who is needed, and from when to when. A value the backward reads is materialized
        # before that first read; one read only to recompute consumers, when the first of them is
        # (an estimate: a recomputed consumer may want it earlier; the exact check catches that).
        # Recompute chains stay in one segment (see `solve`): a consumer in a later segment reads
        # the value kept, so it extends the kept lifetime only, not the recomputed one.
        for unit in sorted(self.units.values(), key=lambda u: -u.index):
            if any(r in returned for r in unit.op.results):
                continue
            users = [c for c in unit.consumers if c.needed and c.recomputable and c.first_need < len(ops)]
            local = [c.first_need for c in users if c.segment == unit.segment]
            if unit.first_direct is None and not users:
                continue
            unit.needed = True
            unit.first_need = unit.first_direct if unit.first_direct is not None else min(local, default=len(ops))
            unit.recompute_death = max(local + [unit.last_direct])
            direct = [] if unit.first_direct is None else [unit.first_direct]
            unit.earliest_need = min(direct + [c.first_need for c in users])
            unit.death = max([c.first_need for c in users] + [unit.last_direct])
        self.candidates = [u for u in self.units.values() if u.needed]
        self._assign_slots()
        if host_budget > 0 and self.candidates:
            self._place_offloads()

    def _place_offloads(self) -> None:
        """Where each candidate's copies go if it is offloaded: the copy out starts as the value
        is made and is waited for after its last forward use (its device memory is free from
        there; the compute in between hides the copy, or the wait stalls); the copy back starts early enough before
        its first backward need for the compute in between to hide it (but not before the
        backward begins), and is waited for just before that need. Its cost is the copy time
        left exposed, each way (and a little of the hidden part)."""
        ops = self.lv.ops
        self._elapsed = np.concatenate([[0.0], np.cumsum([op_seconds(op, self.profile) for op in ops])])
        self._backward = min(u.first_direct for u in self.candidates if u.first_direct is not None)
        for u in self.candidates:
            u.host_bytes = sum(size for _, size, _ in u.results)
            u.offload_wait = max(last for _, _, last in u.results)  # freed as soon as the forward is done with it
            u.prefetch_at, u.offload_seconds = self._copy_back(u, u.earliest_need)

    def _copy_back(self, u: Unit, need: int) -> tuple[int, float]:
        """Where the copy back of offloaded `u` starts for a first need at op `need`, and the
        estimated time of both its copies (exposed, and a little of the hidden part)."""
        elapsed, copy = self._elapsed, copy_seconds(u.host_bytes, self.profile)
        early = int(np.searchsorted(elapsed, elapsed[need] - copy, side="right")) - 1
        prefetch_at = min(need, max(early, self._backward))
        exposed_out = max(0.0, copy - (elapsed[u.offload_wait + 1] - elapsed[u.index + 1]))
        exposed_in = max(0.0, copy - (elapsed[need] - elapsed[prefetch_at]))
        # A hidden copy still takes the host link and host memory: a little, so that a value
        # that fits on the device is kept there.
        return prefetch_at, exposed_out + exposed_in + HIDDEN_COPY_COST * 2 * copy

    @cached_property
    def _by_index(self) -> dict[int, Unit]:
        return {u.index: u for u in self.candidates}

    def _rerun_chains(self, plan: Plan) -> dict[Unit, set[Unit]]:
        """Each rerun layer input -> the units its private chain makes again (itself included):
        back through what the backward does not hold, to what it does (apply_recompute)."""
        recomputed = plan.recompute | plan.rerun
        chains = {}
        for index in plan.rerun:
            if index not in self._by_index:
                continue
            chain, stack = set(), [self._by_index[index]]
            while stack:
                u = stack.pop()
                if u in chain:
                    continue
                chain.add(u)
                stack += [i for i in u.inputs if i.recomputable and (i.index in recomputed or not i.needed)]
            chains[self._by_index[index]] = chain
        return chains

    def _needs(self, plan: Plan) -> dict[Unit, int]:
        """The first backward need of each offloaded unit under `plan`: a rerun chain that reads it
        needs it where the chain runs, before that layer's own backward."""
        needs = {self._by_index[i]: self._by_index[i].earliest_need for i in plan.offload}
        for target, chain in self._rerun_chains(plan).items():
            for u in chain:
                for i in u.inputs:
                    if i in needs:
                        needs[i] = min(needs[i], target.earliest_need)
        return needs

    def offload_placement(self, plan: Plan) -> list[tuple[int, int, int]]:
        """(op, wait after, prefetch before) by index, for each op `plan` offloads."""
        return [(u.index, u.offload_wait, self._copy_back(u, need)[0])
                for u, need in sorted(self._needs(plan).items(), key=lambda kv: kv[0].index)] if plan.offload else []

    # Segments between attention ops with the same op sequence share their decision slots.
    def _assign_slots(self) -> None:
        segments: dict[int, list[Operation]] = {}
        for op, d in forward_segments(self.lv.ops, self.forward).items():
            segments.setdefault(d, []).append(op)
        classes: dict[tuple, int] = {}
        position: dict[Operation, tuple[int, int]] = {}
        for ops in segments.values():
            local = {op: i for i, op in enumerate(ops)}
            signature = tuple(
                (
                    op.name,
                    tuple(str(r.type) for r in op.results),
                    str(op.properties),
                    tuple(
                        ("local", local[o.owner]) if isinstance(o, OpResult) and o.owner in local else ("external", str(o.type))
                        for o in op.operands
                    ),
                )
                for op in ops
            )
            cls = classes.setdefault(signature, len(classes))
            for op, i in local.items():
                position[op] = (cls, i)
        slots: dict[tuple, int] = {}
        for unit in self.candidates:
            unit.slot = slots.setdefault(position[unit.op], len(slots))
        self.num_slots = len(slots)

    # --- plans --------------------------------------------------------------------------

    def plan(self, name: str, recompute: frozenset[int], offload: frozenset[int] = frozenset(),
             rerun: frozenset[int] = frozenset()) -> Plan:
        """A plan and its estimated time: the recomputed ops, the rerun chains and the host copies."""
        plan = Plan(name, recompute, 0.0, offload=offload, rerun=rerun)
        plan.seconds = sum(u.seconds for u in self.candidates if u.index in recompute)
        plan.seconds += sum(u.seconds for chain in self._rerun_chains(plan).values() for u in chain)
        plan.seconds += sum(self._copy_back(u, need)[1] for u, need in self._needs(plan).items()) if offload else 0.0
        return plan

    def evaluate(self, plan: Plan) -> Plan:
        """The exact peak of the rewritten program (fused, when elementwise fusion follows)."""
        if plan.peak_bytes:  # evaluated already
            return plan
        clone = self.module.clone()
        apply_plan(clone, plan.recompute, self.offload_placement(plan), plan.rerun)
        plan.peak_bytes = exact_peak(clone, self.fused)
        return plan

    def checkpointing_plans(self, budget: int | None = None, two_level: bool = True) -> list[Plan]:
        """Per-layer checkpointing, and variants that hold less: with a host budget, what it keeps
        offloaded as far as the budget goes (the hand-written systems' activation offload); and
        (`two_level`) the two-level plans for `budget`."""
        plain = self.checkpointing()
        offloaded = self._offloaded(plain.name, plain.recompute)
        return [plain] + ([offloaded] if offloaded else []) + (self.two_level_plans(budget) if two_level else [])

    def two_level_plans(self, budget: int | None = None) -> list[Plan]:
        """Two-level checkpointing: some layer inputs are made again from the input of the layer
        before (one more forward of that layer) instead of held (the rest offloaded as far as
        the host budget goes): every other one, and given `budget`, the fewest that fit it
        (bisected, each plan evaluated), from as many as the host has no room for."""
        plain = self.checkpointing()
        offloaded = self._offloaded(plain.name, plain.recompute)
        plans: list[Plan] = []
        inputs = [u for u in self.layer_inputs if u.recomputable]
        n = len(inputs)
        if n < 2:
            return plans

        def two_level(r: int) -> Plan:
            # Spread out (n / r >= 2 apart): each rerun chain runs one layer, from a held input.
            rerun = frozenset(inputs[int((i + 0.5) * n / r)].index for i in range(r))
            name = f"two-level checkpointing ({r} of {n} layer inputs rerun)"
            return self._offloaded(name, plain.recompute, rerun) or self.plan(name, plain.recompute, rerun=rerun)

        left_on_device = sum(u.index not in offloaded.offload for u in inputs) if offloaded is not None else 0
        low, high = min(n // 2, max(1, left_on_device)), n // 2
        most = self.evaluate(two_level(high))
        plans.append(most)
        if budget is None or most.peak_bytes > budget:
            return plans + ([two_level(low)] if low < high else [])
        while low < high:  # the fewest reruns that fit (`high` fits): each costs a layer's forward
            middle = (low + high) // 2
            plan = self.evaluate(two_level(middle))
            if plan.peak_bytes <= budget:
                plans.append(plan)
                high = middle
            else:
                low = middle + 1
        return plans

    def _offloaded(self, name: str, recompute: frozenset[int], rerun: frozenset[int] = frozenset()) -> Plan | None:
        """The plan with what it keeps (values neither recomputed nor rerun) on the host, earliest
        first, as far as the host budget goes; None if nothing goes."""
        offload, room = set(), self.host_budget
        for u in sorted(self.candidates, key=lambda u: u.index):
            if u.index not in recompute and u.index not in rerun and 0 < u.host_bytes <= room:
                offload.add(u.index)
                room -= u.host_bytes
        if not offload:
            return None
        return self.plan(f"{name}, kept values offloaded", recompute, frozenset(offload), rerun)

    @cached_property
    def layer_inputs(self) -> list[Unit]:
        """Each layer's input (the residual stream entering it), in program order: between two
        attention ops, the latest value every path to the second passes through that is also
        used past it (the residual connection)."""
        graph = nx.DiGraph()
        for unit in self.units.values():
            graph.add_node(unit)
            for consumer in unit.consumers:
                graph.add_edge(unit, consumer)
        attentions = [u for u in self.units.values() if isinstance(u.op, AttentionOp)]
        attentions.sort(key=lambda u: u.index)
        found: list[Unit] = []
        for prev, attn in zip(attentions, attentions[1:]):
            between = nx.descendants(graph, prev) & (ancestors := nx.ancestors(graph, attn))
            sub = graph.subgraph(between | {prev, attn})
            dominators = nx.immediate_dominators(sub, prev)
            chain, node = [], dominators.get(attn)
            while node is not None and node is not prev:
                chain.append(node)
                node = dominators.get(node)
            for node in sorted(chain, key=lambda u: -u.index):
                if any(c not in ancestors and c is not attn for c in node.consumers):
                    found.append(node)
                    break
        return [u for u in found if u.needed]

    def checkpointing(self) -> Plan:
        """Full per-layer checkpointing: keep each layer's input, recompute every other
        recomputable value the backward needs."""
        keep = set(self.layer_inputs)
        recompute = frozenset(u.index for u in self.candidates if u.recomputable and u not in keep)
        return self.plan("per-layer checkpointing", recompute)

    # --- the ILP ------------------------------------------------------------------------

    @cached_property
    def _rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """const[t] + keep[t] . k + recompute[t] . r + offload[t] . o = bytes live on the device
        while op t runs."""
        n, s = len(self.lv.ops), self.num_slots
        const = np.array(self.lv.live, dtype=np.float64)
        keep = np.zeros((n + 1, s))
        rec = np.zeros((n + 1, s))
        off = np.zeros((n + 1, s))
        base = np.zeros(n + 1)
        for u in self.candidates:
            for storage, size, last_fwd in u.results:
                # Remove what the unmodified program holds after the last forward use.
                end = self.lv.last_use[storage]
                base[last_fwd + 1] -= size
                base[end + 1] += size
                keep[last_fwd + 1, u.slot] += size
                keep[u.death + 1, u.slot] -= size
                if u.first_need <= u.recompute_death:
                    rec[u.first_need, u.slot] += size
                    rec[u.recompute_death + 1, u.slot] -= size
                if self.host_budget:  # on the device until the copy out is waited for, and from the copy back
                    off[last_fwd + 1, u.slot] += size
                    off[max(u.offload_wait, last_fwd) + 1, u.slot] -= size
                    off[u.prefetch_at, u.slot] += size
                    off[u.death + 1, u.slot] -= size
            # A clone's scratch is in use before the op it feeds allocates its results and its
            # own scratch.
            t = u.first_need
            if t >= n:
                continue
            extra = u.workspace - workspace_bytes(self.lv.ops[t]) - sum(
                tensor_bytes(r) for r in self.lv.ops[t].results if self.lv.root[r] is r
            )
            if extra > 0:
                rec[t, u.slot] += extra
                rec[t + 1, u.slot] -= extra
        const += np.cumsum(base)[:n]
        return const, np.cumsum(keep, axis=0)[:n], np.cumsum(rec, axis=0)[:n], np.cumsum(off, axis=0)[:n]

    def solve(self, budget: float | None) -> tuple[tuple[frozenset[int], frozenset[int]] | None, str, float]:
        """Least estimated time with every memory row <= budget; budget None: the least peak.
        Per slot: `keep` (its forward values stay until the backward), `recompute` (they are
        cloned before their first backward use) and, with a host budget, `offload` (they go to
        the host and come back), binary. Returns (recomputed, offloaded) op indices. Rows are in
        GiB and costs in ms, so the solver sees coefficients near 1."""
        s = self.num_slots
        const, keep_bytes, rec_bytes, off_bytes = self._rows  # the same for every budget
        slot_ms, offload_ms, host_mib = np.zeros(s), np.zeros(s), np.zeros(s)
        must, recomputable = np.zeros(s, bool), np.ones(s, bool)
        for u in self.candidates:
            slot_ms[u.slot] += u.seconds * 1e3
            offload_ms[u.slot] += u.offload_seconds * 1e3
            host_mib[u.slot] += u.host_bytes / 2**20
            must[u.slot] |= u.first_direct is not None
            recomputable[u.slot] &= u.recomputable
        offloading = self.host_budget > 0
        limit = None if budget is None else budget / GiB
        choices = [keep_bytes, rec_bytes] + ([off_bytes] if offloading else [])
        coeffs, offsets = _binding_rows(np.hstack(choices) / GiB, const / GiB, limit)
        if limit is not None and np.any(~coeffs.any(axis=1) & (offsets > limit)):
            return None, "Infeasible", 0.0  # a row over the budget that no choice changes

        highs = _quiet_highs()
        highs.setOptionValue("output_flag", False)
        highs.setOptionValue("time_limit", ILP_TIME_LIMIT_S)
        highs.setOptionValue("mip_rel_gap", 1e-4)
        kind = highspy.HighsVarType.kInteger
        keep = [highs.addVariable(0, 1, type=kind, name=f"keep_{j}") for j in range(s)]
        recompute = [highs.addVariable(0, float(recomputable[j]), type=kind, name=f"recompute_{j}") for j in range(s)]
        # (values under a page are not worth a copy each way)
        offload = [highs.addVariable(0, float(host_mib[j] * 2**20 >= MIN_OFFLOAD_BYTES), type=kind, name=f"offload_{j}")
                   for j in range(s)] if offloading else []
        columns = keep + recompute + offload
        peak = highs.addVariable(name="peak") if limit is None else None
        for i, (row, offset) in enumerate(zip(coeffs, offsets)):
            # (terms under 1e-8 GiB, a few bytes, are below what the solver keeps)
            held = highs.qsum(float(row[j]) * columns[j] for j in np.flatnonzero(np.abs(row) >= 1e-8))
            bound = held - peak <= -offset if peak is not None else held <= limit - offset
            highs.addConstr(bound, name=f"memory_{i}")

        def available(j):  # in the backward without recomputing it
            return keep[j] + offload[j] if offloading else keep[j]

        for j in range(s):  # a slot's values are kept, recomputed, offloaded or (if the backward never reads them) none
            highs.addConstr(available(j) + recompute[j] <= 1, name=f"one_way_{j}")
            if must[j]:
                highs.addConstr(available(j) + recompute[j] >= 1, name=f"needed_{j}")
        if offloading:
            highs.addConstr(highs.qsum(float(host_mib[j]) * offload[j] for j in range(s)) <= self.host_budget / 2**20,
                            name="host_budget")  # MiB
        # A recomputed value needs its inputs kept (or offloaded) or recomputed. An input from an
        # earlier segment must be kept: recompute chains stay inside one layer template
        # (otherwise r_v <= r_u along the residual stream would let a chain run back through
        # every earlier layer, L^2 recompute, all of it held at once).
        inner = {(u.slot, v.slot) for v in self.candidates for u in v.inputs
                 if u.needed and v.recomputable and u.segment == v.segment}
        across = {(u.slot, v.slot) for v in self.candidates for u in v.inputs
                  if u.needed and v.recomputable and u.segment != v.segment}
        for u, v in inner - across:
            highs.addConstr(recompute[v] <= available(u) + recompute[u], name=f"inputs_of_{v}_{u}")
        for u, v in across:
            highs.addConstr(recompute[v] <= available(u), name=f"kept_input_of_{v}_{u}")
        time_ms = highs.qsum(float(slot_ms[j]) * recompute[j] for j in range(s))
        if offloading:
            time_ms = time_ms + highs.qsum(float(offload_ms[j]) * offload[j] for j in range(s))
        started = time.perf_counter()
        highs.minimize(time_ms if peak is None else peak + 1e-6 * time_ms)  # least peak first, then time
        elapsed = time.perf_counter() - started
        status = highs.modelStatusToString(highs.getModelStatus())
        if highs.getInfo().primal_solution_status != 2:  # no feasible solution
            return None, status, elapsed
        chosen = {j for j in range(s) if highs.val(recompute[j]) > 0.5}
        moved = {j for j in range(s) if offloading and highs.val(offload[j]) > 0.5}
        return (
            frozenset(u.index for u in self.candidates if u.slot in chosen),
            frozenset(u.index for u in self.candidates if u.slot in moved),
        ), status, elapsed


def _binding_rows(coeffs: np.ndarray, offsets: np.ndarray, limit: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The memory rows that can bind (with every slot at its largest, above `limit`; all of
    them when minimizing the peak), each distinct row once with the largest offset of its copies."""
    if limit is not None:
        binding = offsets + np.clip(coeffs, 0, None).sum(axis=1) > limit
        coeffs, offsets = coeffs[binding], offsets[binding]
    if not len(offsets):
        return coeffs, offsets
    unique, index = np.unique(np.round(coeffs, 9), axis=0, return_inverse=True)  # sorts the rows
    largest = np.full(len(unique), -np.inf)
    np.maximum.at(largest, index.ravel(), offsets)
    return unique, largest


_BANNER_SHOWN = False


def _quiet_highs():
    """A Highs instance; the first one in a process prints a banner on stdout from C++."""
    import highspy

    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        return highspy.Highs()
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highs = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _BANNER_SHOWN = True
    return highs


# --- the rewrite ------------------------------------------------------------------------


def apply_recompute(module: ModuleOp, recompute: frozenset[int], rerun: frozenset[int] = frozenset()) -> list[Operation]:
    """Clone the chosen forward ops (by index) into the backward, before their first use there,
    each once. A `rerun` op (a layer input: two-level checkpointing) is made at its first backward
    use by a private chain of clones back to the values the backward holds (kept or offloaded:
    the input of the layer before): the chain's clones die there, and the ops the backward needs
    again later are cloned again then. Returns the clones, in program order."""
    block = train_step_of(module).body.block
    ops = list(block.ops)
    forward = forward_ops(ops)
    chosen = {ops[i] for i in recompute}
    replayed = {ops[i] for i in rerun}
    root: dict[SSAValue, SSAValue] = {}
    for op in ops:
        if op not in forward:
            continue
        for r in op.results:
            root[r] = root.get(op.operands[0], op.operands[0]) if is_view(op) and op.operands else r
    # What the backward holds as the forward left it: what it reads, and the inputs of clones.
    held = {root.get(o, o) for op in ops if op not in forward for o in op.operands}
    remade = chosen | replayed
    held |= {root.get(o, o) for op in remade for o in op.operands}

    def storage_of(value: SSAValue) -> Operation | None:
        if not isinstance(value, OpResult) or value.owner not in forward:
            return None
        base = root[value]
        return base.owner if isinstance(base, OpResult) else None

    def storage_recomputed(value: SSAValue) -> bool:
        return storage_of(value) in remade

    def in_chain(value: SSAValue) -> bool:  # made again by a rerun's private chain
        owner = storage_of(value)
        if owner is None:
            return False
        return owner in remade or root[value] not in held and recomputable(owner)

    clones: dict[SSAValue, SSAValue] = {}
    made: list[Operation] = []
    # Whole parameters gathered again for the backward (ZeRO-3): clones read that copy (or their
    # views of it) once it exists, not the forward's, which then dies after the forward. A
    # rerun chain runs the layer before ahead of that layer's backward: its gathers move up.
    twins = backward_twins(ops)
    regathered: dict[SSAValue, SSAValue] = {}
    seen: set[Operation] = set()

    def hoist_gather(value: SSAValue, before: Operation) -> None:
        base, _ = view_chain(value)
        wait = twins[base].owner if base in twins else None
        if not isinstance(wait, GatherWaitOp) or wait in seen:
            return
        for op in (wait.start, wait):
            if op not in seen:
                op.detach()
                block.insert_op_before(op, before)
                seen.add(op)

    def operand_of_clone(value: SSAValue, before: Operation, cache: dict[SSAValue, SSAValue], private: bool) -> SSAValue:
        if value in cache:
            return cache[value]
        if private:
            hoist_gather(value, before)
        ready = {v: t for v, t in twins.items() if t.owner in seen}
        return rebased(value, ready, regathered, lambda op: block.insert_op_before(op, before)) or value

    def materialize(value: SSAValue, before: Operation, cache: dict[SSAValue, SSAValue] | None = None) -> SSAValue:
        # Iterative post-order: recompute chains can be as long as the forward.
        private = cache is not None
        cache = clones if cache is None else cache
        wanted = in_chain if private else storage_recomputed
        stack = [value]
        while stack:
            top = stack[-1]
            if top in cache or not wanted(top):
                stack.pop()
                continue
            owner = top.owner
            assert isinstance(owner, Operation)
            if not private and owner in replayed and root[top] is top:
                clones[top] = materialize(top, before, {})  # its own chain, dead once it is made
                stack.pop()
                continue
            pending = [o for o in owner.operands if o not in cache and wanted(o)]
            if pending:
                stack.extend(pending)
                continue
            clone = owner.clone(value_mapper={o: operand_of_clone(o, before, cache, private) for o in owner.operands})
            clone.attributes[RECOMPUTE] = UnitAttr()
            for old, new in zip(owner.results, clone.results):
                new.name_hint = f"{old.name_hint or 'v'}_re"
                cache[old] = new
            block.insert_op_before(clone, before)
            made.append(clone)
            stack.pop()
        return cache.get(value, value)

    for op in ops:
        if op not in forward and not isinstance(op, func.ReturnOp):
            new = [materialize(o, op) for o in op.operands]
            if any(a is not b for a, b in zip(new, op.operands)):
                op.operands = new
        seen.add(op)
    return made


def apply_plan(module: ModuleOp, recompute: frozenset[int], offload: list[tuple[int, int, int]],
               rerun: frozenset[int] = frozenset()) -> None:
    """Recompute, rerun and offload as planned (op indices in `module` as it is now; `offload`:
    (op, wait after, prefetch before) for each offloaded op, RematProblem.offload_placement)."""
    ops = list(train_step_of(module).body.block.ops)
    targets = [(ops[i], ops[wait], ops[prefetch]) for i, wait, prefetch in offload]
    apply_recompute(module, recompute, rerun)
    apply_offload(module, targets)


def apply_offload(module: ModuleOp, targets: list[tuple[Operation, Operation, Operation]]) -> None:
    """For each (op, wait after, prefetch before): each result of `op` the backward reads (or the
    clones remat put there) is copied to the host pool as it is made (`host.offload_start`), the
    copy is waited for after `wait after` (its device memory free from there), copied back from
    before `prefetch before` (or its first backward reader, if that comes first), waited for
    right before that reader; backward readers of it, and of forward views of it, read the copy."""
    block = train_step_of(module).body.block
    ops = list(block.ops)
    forward = forward_ops(ops)
    position = {op: i for i, op in enumerate(ops)}
    offset = 0
    for op, wait_after, prefetch_before in sorted(targets, key=lambda t: position[t[0]]):
        for result in op.results:
            views, frontier = [result], [result]
            while frontier:  # the forward's views of it
                value = frontier.pop()
                for use in value.uses:
                    user = use.operation
                    if user in forward and is_view(user) and user.operands[0] is value:
                        views += user.results
                        frontier += user.results
            readers = sorted(
                ((use.operation, use.index, value) for value in views for use in list(value.uses)
                 if use.operation not in forward and not isinstance(use.operation, func.ReturnOp)),
                key=lambda r: position.get(r[0], len(ops)),
            )
            if not readers:
                continue
            first = min((r[0] for r in readers), key=lambda o: block.get_operation_index(o))
            start = OffloadStartOp.build(operands=[result], result_types=[host_type(result.type)],
                                         properties={"offset": IntegerAttr(offset, 64)})
            start.host.name_hint = f"{result.name_hint or 'v'}_host"
            block.insert_op_after(start, op)
            block.insert_op_after(OffloadWaitOp.build(operands=[result, start.host]), wait_after)
            prefetch = PrefetchStartOp.build(operands=[start.host], result_types=[result.type])
            prefetch.value.name_hint = f"{result.name_hint or 'v'}_dev"
            early = block.get_operation_index(prefetch_before) <= block.get_operation_index(first)
            block.insert_op_before(prefetch, prefetch_before if early else first)
            done = PrefetchWaitOp.build(operands=[prefetch.value], result_types=[result.type])
            done.value.name_hint = f"{result.name_hint or 'v'}_back"
            block.insert_op_before(done, first)
            twins, made = {result: done.value}, {}
            for reader, index, value in readers:
                reader.operands[index] = twins.get(value) or rebased(value, twins, made, lambda v: block.insert_op_before(v, first))
            offset += -(-tensor_bytes(result) // POOL_ALIGNMENT) * POOL_ALIGNMENT


def backward_twins(ops: list[Operation]) -> dict[SSAValue, SSAValue]:
    """Each whole parameter the forward gathered -> the same parameter gathered again for the
    backward (`dist.gather_params_wait` phase forward / backward of one bucket, passes/zero.py)."""
    phases: dict[int, dict[str, GatherWaitOp]] = {}
    for op in ops:
        if isinstance(op, GatherWaitOp):
            phases.setdefault(op.bucket.value.data, {})[op.phase.data] = op
    return {
        f: b for gathers in phases.values() if len(gathers) == 2
        for f, b in zip(gathers["forward"].results, gathers["backward"].results)
    }


# --- the pass -----------------------------------------------------------------------------


def sequence_length(module: ModuleOp) -> int | None:
    partition = partition_of(module)
    if partition is not None:
        return partition.seq_len.data
    from autosp.passes.sp_propagate import token_inputs

    tokens = token_inputs(train_step_of(module), 1)
    return max((t.type.get_shape()[1] for t in tokens), default=None)  # type: ignore[attr-defined]


class RematInfeasible(AutoSPError):
    """No plan fits the budget."""


def exact_peak(module: ModuleOp, fused: bool) -> int:
    """The planned peak of `module` as it will run: after elementwise fusion when it follows
    (fusion never raises a peak, and lowers some: an fp32 upcast inside a fused norm is never
    materialized)."""
    if fused:
        from autosp.passes.fuse_elementwise import FuseElementwise

        module = module.clone()
        FuseElementwise().apply(Context(), module)
    return plan_memory(module).peak_bytes


def least_memory(module: ModuleOp, profile, fused: bool = False, host_budget: int = 0) -> int:
    """The least peak remat reaches on `module`: per-layer checkpointing (with what it keeps
    offloaded, given a host budget) or the ILP's least-memory plan, whichever holds less."""
    problem = RematProblem(module, profile, fused, host_budget)
    plans = problem.checkpointing_plans()
    least, _, _ = problem.solve(None)
    if least is not None:
        plans.append(problem.plan("least memory", *least))
    return min(problem.evaluate(plan).peak_bytes for plan in plans)


def infeasible(module: ModuleOp, plan: MemoryPlan, needs: int, budget: int, host_budget: int = 0) -> AutoSPError:
    """The error for a budget nothing fits; `plan` is the step's plan without remat."""
    partition = partition_of(module)
    sp = partition.sp.data if partition is not None else 1
    fixed = plan.held_bytes + plan.returned_bytes  # parameters, inputs, gradients: not split by sp
    seq = sequence_length(module)
    where = f" at S={seq}" if seq else ""
    if budget <= fixed:
        hint = _state_hint(module, fixed)
    elif seq is None:  # no sequence to split
        hint = "raise the budget"
    else:
        factor = 2 ** math.ceil(math.log2(max(1.0, (needs - fixed) / (budget - fixed))))
        hint = f"try sp={sp * max(2, factor)} or a larger budget"
    offloading = f" and up to {human_bytes(host_budget, 2)} offloaded to the host" if host_budget else ""
    return RematInfeasible(
        f"remat: the step needs {human_bytes(needs, 2)} per rank{where} (sp={sp}) even with everything "
        f"recomputable recomputed{offloading}; budget {human_bytes(budget, 2)}; {hint}"
    )


def _state_hint(module: ModuleOp, fixed: int) -> str:
    """What to do when the training state alone does not fit: shard it, or over more ranks."""
    zero = zero_of(module)
    level, world = (zero.level.data, zero.world.data) if zero is not None else ("none", 1)
    what = "parameters, gradients and optimizer state" if zero is not None and zero.state_bytes.data else "parameters, inputs and gradients"
    hint = f"the {what} alone take {human_bytes(fixed, 2)} per rank (shard={level!r})"
    if zero is None:
        return hint + "; shard them over the ranks (shard='parameters') or raise the budget"
    ranks = world if world > 1 else 8
    per_rank = human_bytes(zero.unsharded_bytes.data / ranks, 2)
    if level != "parameters":
        return hint + f"; use shard='parameters' ({per_rank} per rank at {ranks} ranks) or raise the budget"
    return hint + f"; shard over more ranks ({human_bytes(zero.unsharded_bytes.data, 2)} in all) or raise the budget"


def rematerialize(module: ModuleOp, budget: int, profile: DeviceProfile, fused: bool = False,
                  host_budget: int = 0, two_level: bool = True) -> RematResult:
    """The cheapest plan whose exact peak fits `budget` (`fused`: the peak after the elementwise
    fusion that follows in the pipeline), offloading at most `host_budget` bytes to the host;
    `two_level`: plans that rerun layers are candidates too (compile tries tiling first)."""
    baseline = plan_memory(module)
    runs_at = exact_peak(module, fused) if fused else baseline.peak_bytes
    if runs_at <= budget:  # remat costs nothing when memory allows
        plan = Plan("none (fits without recompute)", frozenset(), 0.0, runs_at)
        return RematResult(budget, baseline.peak_bytes, plan, [plan], 0, 0.0, "not needed")
    problem = RematProblem(module, profile, fused, host_budget)
    candidates: list[Plan] = []
    ilp_seconds, status = 0.0, "no solution"
    target = float(budget)
    for attempt in range(MAX_REFINEMENTS):
        chosen, status, elapsed = problem.solve(target)
        ilp_seconds += elapsed
        if chosen is None:
            break
        plan = problem.evaluate(problem.plan("ilp", *chosen))
        candidates.append(plan)
        if plan.peak_bytes <= budget:
            break
        target -= (plan.peak_bytes - budget) * 2**attempt  # the model was optimistic here: tighten
    candidates += [problem.evaluate(plan) for plan in problem.checkpointing_plans(budget, two_level=False)]
    fitting = [p for p in candidates if p.peak_bytes <= budget]
    if not fitting:  # the least memory the ILP can reach, if that fits
        least, _, elapsed = problem.solve(None)
        ilp_seconds += elapsed
        if least is not None:
            candidates.append(problem.evaluate(problem.plan("least memory", *least)))
        fitting = [p for p in candidates if p.peak_bytes <= budget]
    if not fitting and two_level:  # layers run twice: only when nothing else fits
        candidates += [problem.evaluate(plan) for plan in problem.two_level_plans(budget)]
        fitting = [p for p in candidates if p.peak_bytes <= budget]
    if not fitting:
        raise infeasible(module, baseline, min(p.peak_bytes for p in candidates), budget, host_budget)
    best = min(fitting, key=lambda p: (p.seconds, p.peak_bytes))
    return RematResult(budget, baseline.peak_bytes, best, candidates, problem.num_slots, ilp_seconds, status,
                       problem.offload_placement(best))


def apply_given(module: ModuleOp, budget: int, profile: DeviceProfile, fused: bool, name: str,
                recompute: frozenset[int], offload: frozenset[int] = frozenset(), host_budget: int = 0,
                rerun: frozenset[int] = frozenset()) -> RematResult:
    """A plan made on another rank's program (the largest: world rank 0's), checked to be one for
    this program (the same forward ops; recomputed ones recomputable) and to fit `budget` here too."""
    baseline = plan_memory(module)
    ops = list(train_step_of(module).body.block.ops)
    forward = forward_ops(ops)
    for verb, indices, fits in (("recomputes", recompute | rerun, recomputable), ("offloads", offload, lambda op: bool(op.results))):
        wrong = [i for i in sorted(indices) if not (0 <= i < len(ops) and ops[i] in forward and fits(ops[i]))]
        if wrong:
            what = "recomputable forward op" if verb == "recomputes" else "forward op with results"
            raise AutoSPError(
                f"remat: the given plan {verb} op {wrong[0]}, which is not a {what} of this program (the plan was made "
                "for another program)"
            )
    if offload or rerun:
        problem = RematProblem(module, profile, fused, host_budget)
        plan = problem.plan(name, recompute, offload, rerun)
        placement = problem.offload_placement(plan)
    else:
        plan, placement = Plan(name, recompute, sum(op_seconds(ops[i], profile) for i in recompute)), []
    clone = module.clone()
    apply_plan(clone, recompute, placement, rerun)
    plan.peak_bytes = exact_peak(clone, fused)
    if plan.peak_bytes > budget:
        raise RematInfeasible(
            f"remat: the plan made on the largest rank's program needs {human_bytes(plan.peak_bytes, 2)} on this rank, "
            f"over its budget of {human_bytes(budget, 2)}"
        )
    return RematResult(budget, baseline.peak_bytes, plan, [plan], 0, 0.0, "given", placement)


@dataclass(frozen=True)
class Remat(ModulePass):
    """Fit `budget` (bytes, "70GiB", or "auto": the cost model's device memory less a margin)
    at the least recompute time estimated for `cost_model` (h100, mi300x, cpu). With `given`
    (a plan's name), apply the plan another rank made instead of solving: `recompute` are its
    forward ops by index (none: nothing recomputed), `offload` those whose results go to the
    host, `rerun` the layer inputs made again by running the layer before."""

    name = "remat"
    budget: str = "auto"
    cost_model: str = "h100"
    fused: bool = False  # fuse-elementwise follows: plans are checked on the fused program
    host_budget: str = "0"  # bytes, "64GiB" or "auto" that values may take in the host's memory
    given: str = ""
    recompute: tuple[int, ...] | None = None
    offload: tuple[int, ...] | None = None
    rerun: tuple[int, ...] | None = None

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        profile = device_profile(self.cost_model)
        budget = parse_budget(self.budget, profile)
        host_budget = parse_host_budget(self.host_budget)
        if self.given:
            result = apply_given(op, budget, profile, self.fused, self.given, frozenset(self.recompute or ()),
                                 frozenset(self.offload or ()), host_budget, frozenset(self.rerun or ()))
        else:
            result = rematerialize(op, budget, profile, self.fused, host_budget)
        log.info(
            "remat: ILP %.2f s (%s, %d slots); plan %s: %d ops recomputed, %d offloaded, %.3f ms estimated, peak %s of %s",
            result.ilp_seconds, result.ilp_status, result.slots, result.plan.name, len(result.plan.recompute),
            len(result.plan.offload), result.plan.seconds * 1e3, human_bytes(result.plan.peak_bytes, 2), human_bytes(budget, 2),
        )
        apply_plan(op, result.plan.recompute, result.placement, result.plan.rerun)
        op.attributes[REMAT] = RematAttr(
            StringAttr(result.plan.name), IntAttr(budget), IntAttr(result.baseline_peak), StringAttr(profile.name),
            FloatData(result.plan.seconds),
        )
