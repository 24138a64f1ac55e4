"""What a compiled step will do, before it runs: predicted peak memory per rank, saved
activations, what remat recomputes (per op family, FLOPs and estimated time), communication volume
per collective kind and per layer (a layer = one attention op and its gradient).

Volume is what each rank sends per step, for ring algorithms: all_to_all (n-1)/n of its input,
all_gather (n-1) x its input, reduce_scatter (n-1)/n of its input, all_reduce 2(n-1)/n; a
bucket of parameters (ZeRO) gathered or its gradients reduce-scattered: (n-1) x one rank's
padded segment, so ZeRO-3 moves 3 x the parameter bytes x (n-1)/n per step.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

from xdsl.dialects.builtin import ModuleOp, NameLoc
from xdsl.ir import Operation, SSAValue

from autosp.ir.autosp import AttentionGradOp, AttentionOp, LinearCrossEntropyOp, TiledOp, YieldOp
from autosp.ir.dist import AllGatherOp, AllReduceOp, BucketOp, CollectiveOp, GatherStartOp
from autosp.ir.dtypes import torch_dtype
from autosp.ir.host import OffloadStartOp, OffloadWaitOp, PrefetchStartOp, PrefetchWaitOp
from autosp.passes.memory_plan import STATE_KINDS, host_pool_bytes, human_bytes, plan_memory, state_breakdown
from autosp.ir.program import partition_of, remat_of, train_step_of, zero_of
from autosp.passes.remat import RECOMPUTE
from autosp.passes.sp_propagate import UNSHARDED


@dataclass
class CommReport:
    sp: int
    memory: object = None  # the MemoryPlan, when known
    held: dict[str, int] = field(default_factory=dict)  # the peak by what it holds (memory_plan.state_breakdown)
    zero: str = ""  # how the training state is sharded, when it is
    by_kind: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    by_layer: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    remat: dict[str, str] = field(default_factory=dict)  # budget, plan, cost model
    # op family -> [count, FLOPs, estimated seconds] of the recomputed ops
    recompute: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0, 0.0, 0.0]))
    # op -> all-gathers made for it because no sharding rule covers it (whole-sequence values)
    unplanned: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    offload: dict[str, str] = field(default_factory=dict)  # host memory, bytes copied, exposed copy time
    offloaded: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # type -> [count, bytes]
    offload_by_layer: dict[str, list[float]] = field(default_factory=dict)  # layer -> [compute, exposed copies] seconds
    timeline: dict = field(default_factory=dict)  # offload_timeline's estimate, when values are offloaded
    # what a tiled region computes -> [count, rows per chunk, chunks, scratch bytes]
    tiled: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0]))
    # "attention", "attention backward", "loss" -> {kernel: count} (select-kernels' choices)
    kernels: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    @property
    def total(self) -> float:
        return sum(self.by_kind.values())

    def table(self) -> str:
        from io import StringIO

        from rich.console import Console
        from rich.table import Table

        kinds = Table("collective", "count", "sent per rank per step", title=f"communication (sp={self.sp})")
        for kind in sorted(self.by_kind):
            kinds.add_row(kind, str(self.count[kind]), human_bytes(self.by_kind[kind]))
        kinds.add_row("total", str(sum(self.count.values())), human_bytes(self.total))
        layers = Table("where", "sent per rank per step")
        for where in sorted(self.by_layer, key=_layer_key):
            layers.add_row(where, human_bytes(self.by_layer[where]))
        out = StringIO()
        console = Console(file=out, width=100)
        if self.memory is not None:
            memory = Table("memory per rank", "bytes", title="memory (predicted)")
            memory.add_row("peak", human_bytes(self.memory.peak_bytes))
            memory.add_row("  at", self.memory.peak_op)
            for kind in STATE_KINDS:
                if kind in self.held:
                    memory.add_row(f"  {kind}", human_bytes(self.held[kind]))
            if self.zero:
                memory.add_row("training state", self.zero)
            memory.add_row("saved activations (forward -> backward)", human_bytes(self.memory.saved_bytes))
            for key, value in self.remat.items():
                memory.add_row(key, value)
            console.print(memory)
        if self.remat:
            model = self.remat.get("cost model", "")
            recompute = Table("op family", "count", "FLOPs", f"time ({model})", title="recomputed in the backward")
            for family, (count, flops, seconds) in sorted(self.recompute.items(), key=lambda kv: -kv[1][2]):
                recompute.add_row(family, str(int(count)), f"{flops:.3g}", f"{seconds * 1e3:.3f} ms")
            total = [sum(v[i] for v in self.recompute.values()) for i in range(3)]
            recompute.add_row("total", str(int(total[0])), f"{total[1]:.3g}", f"{total[2] * 1e3:.3f} ms")
            console.print(recompute)
        if self.offload:
            offload = Table("offload (host memory)", "", title="offloaded to the host in the forward, back for the backward")
            for key, value in self.offload.items():
                offload.add_row(key, value)
            for kind, (count, size) in sorted(self.offloaded.items(), key=lambda kv: -kv[1][1]):
                offload.add_row(f"  {kind}", f"{count} x, {human_bytes(size)}")
            console.print(offload)
            by_layer = Table("where", "compute (estimated)", "copies exposed (estimated)",
                             title="host copies by layer (a wait for a copy not done stalls the compute)")
            for where in sorted(self.offload_by_layer, key=_layer_key):
                compute, exposed = self.offload_by_layer[where]
                by_layer.add_row(where, f"{compute * 1e3:.3f} ms", f"{exposed * 1e3:.3f} ms")
            console.print(by_layer)
        if self.tiled:
            tiled = Table("token-wise region", "count", "rows per chunk", "chunks", "scratch",
                          title="computed in chunks of rows (autosp.tiled)")
            for what, (count, rows, chunks, scratch) in sorted(self.tiled.items(), key=lambda kv: -kv[1][0]):
                tiled.add_row(what, str(count), str(rows), str(chunks), human_bytes(scratch))
            console.print(tiled)
        if self.kernels:
            chosen = Table("op", "kernel", "count", title="kernels (select-kernels)")
            for what in sorted(self.kernels):
                for kernel, count in sorted(self.kernels[what].items()):
                    chosen.add_row(what, kernel, str(count))
            console.print(chosen)
        if self.by_kind:
            console.print(kinds)
            console.print(layers)
        if self.unplanned:
            unplanned = Table("op", "all-gathers", title="all-gathers no sharding rule asked for (the op runs on whole-sequence values)")
            for name, count in sorted(self.unplanned.items()):
                unplanned.add_row(name, str(count))
            console.print(unplanned)
        return out.getvalue()


def _layer_key(where: str):
    for rank, prefix in enumerate(("layer ", "parameters ")):
        if where.startswith(prefix):
            return (rank, int(where[len(prefix):].split()[0].rstrip(":")))
    return (2, 0)


def _attention_of(value: SSAValue, layer_of: dict[Operation, int]) -> int | None:
    """The layer of the attention op that produces `value` or reads it (through collectives)."""
    owner = value.owner
    while isinstance(owner, CollectiveOp):
        owner = owner.input.owner
    if owner in layer_of:
        return layer_of[owner]
    for use in value.uses:
        user = use.operation
        if user in layer_of:
            return layer_of[user]
        if isinstance(user, CollectiveOp):
            found = _attention_of(user.output, layer_of)
            if found is not None:
                return found
    return None


def comm_report(module: ModuleOp) -> CommReport:
    partition = partition_of(module)
    report = CommReport(sp=partition.sp.data if partition is not None else 1, memory=plan_memory(module),
                        held=state_breakdown(module))
    zero = zero_of(module)
    if zero is not None:
        report.zero = (f"shard={zero.level.data} over {zero.world.data} ranks (dp={zero.dp.data}); optimizer "
                       f"{zero.optimizer.data}: {human_bytes(zero.state_bytes.data)} of state per rank")
    # Layers by their attention: the forward's in order, the backward's attention gradients in
    # reverse order, and an attention op remat recomputes in the layer of the gradient it feeds.
    layer_of: dict[Operation, int] = {}
    forward = [op for op in module.walk() if isinstance(op, AttentionOp) and RECOMPUTE not in op.attributes]
    for i, op in enumerate(forward):
        layer_of[op] = i
    backward = [op for op in module.walk() if isinstance(op, AttentionGradOp)]
    for i, op in enumerate(backward):
        layer_of[op] = len(backward) - 1 - i
        source = op.lse.owner
        while isinstance(source, CollectiveOp):
            source = source.input.owner
        if isinstance(source, AttentionOp) and RECOMPUTE in source.attributes:
            layer_of[source] = layer_of[op]
    for op in module.walk():  # a layer's attention rerun for the next layer's backward
        if isinstance(op, AttentionOp) and op not in layer_of and isinstance(op.location, NameLoc):
            if found := _LAYER.search(op.location.desc.data):
                layer_of[op] = int(found.group(1))
    _remat_report(module, report)
    _tiled_report(module, report)
    _kernels_report(module, report)
    buckets = _bucket_names(module)
    for op in module.walk():
        if isinstance(op, BucketOp):
            kind = f"gather_params ({op.phase.data})" if isinstance(op, GatherStartOp) else "reduce_scatter_grads"
            report.by_kind[kind] += op.sent_bytes()
            report.count[kind] += 1
            report.by_layer[buckets.get(op.bucket.value.data, f"parameters {op.bucket.value.data}")] += op.sent_bytes()
            continue
        if not isinstance(op, CollectiveOp):
            continue
        volume = op.sent_bytes()
        kind = op.name.removeprefix("dist.") + (" (recomputed)" if RECOMPUTE in op.attributes else "")
        report.by_kind[kind] += volume
        report.count[kind] += 1
        layer = _attention_of(op.output, layer_of)
        if layer is None:
            layer = _attention_of(op.input, layer_of)
        where = f"layer {layer} attention" if layer is not None else (
            "gradients and loss" if isinstance(op, AllReduceOp) else "other"
        )
        report.by_layer[where] += volume
        if isinstance(op, AllGatherOp):
            for use in op.output.uses:
                if UNSHARDED in use.operation.attributes:
                    report.unplanned[use.operation.name] += 1
    return report


def _kernels_report(module: ModuleOp, report: CommReport) -> None:
    what = {AttentionOp: "attention", AttentionGradOp: "attention backward", LinearCrossEntropyOp: "LM head + loss"}
    for op in module.walk():
        if type(op) in what and op.kernel is not None:  # type: ignore[attr-defined]
            report.kernels[what[type(op)]][op.kernel.data] += 1  # type: ignore[attr-defined]


def _bucket_names(module: ModuleOp) -> dict[int, str]:
    """Each parameter bucket -> "parameters <bucket>: <its first parameter> +<how many more>"."""
    fn = train_step_of(module)
    names = {arg: attrs.data["autosp.name"].data for arg, attrs in zip(fn.body.block.args, fn.arg_attrs.data if fn.arg_attrs else [])
             if "autosp.name" in attrs.data}
    return {
        op.bucket.value.data: f"parameters {op.bucket.value.data}: {names.get(op.shards[0], '?')} +{len(op.shards) - 1}"
        for op in module.walk() if isinstance(op, GatherStartOp)
    }


def _remat_report(module: ModuleOp, report: CommReport) -> None:
    from autosp.passes.cost_model import device_profile, op_flops, op_seconds
    from autosp.passes.memory_plan import is_view

    remat = remat_of(module)
    if remat is None:
        return
    model = remat.cost_model.data
    profile = device_profile(model)
    report.remat = {
        "peak without remat": human_bytes(remat.peak_without_remat.data),
        "budget": human_bytes(remat.budget.data),
        "remat plan": remat.plan.data,
        "cost model": model,
    }
    for op in module.walk():
        if RECOMPUTE not in op.attributes or is_view(op):
            continue
        family = op.name if op.name.startswith("autosp.") else ".".join(op.name.split(".")[:2])
        entry = report.recompute[family]
        entry[0] += 1
        entry[1] += op_flops(op)
        entry[2] += op_seconds(op, profile)
    total = sum(v[2] for v in report.recompute.values())
    report.remat["recompute time (estimated)"] = f"{total * 1e3:.3f} ms per step"
    _offload_report(module, report, profile)


_LAYER = re.compile(r"layers\.(\d+)\b")


def offload_timeline(module: ModuleOp, profile) -> dict:
    """The host copies on a timeline: the program's ops one after another on the compute stream,
    the copies one after another on their way's stream (to the host, back: the runtime's two
    streams; the host link is full duplex), each starting when issued (or when the one before it
    on its stream ends); a wait whose copy has not ended stalls the compute stream: that is the
    exposed copy time. Seconds, and bytes copied each way."""
    from autosp.passes.cost_model import copy_seconds, op_seconds

    now = 0.0
    copies = {"out": 0.0, "in": 0.0}  # when each way's stream is next free
    ends: dict[SSAValue, float] = {}
    timeline = {"values": 0, "out": 0, "in": 0, "exposed_out": 0.0, "exposed_in": 0.0}
    layer = "other"  # of the model: from the ops' locations (copies and loose ops join the one before)
    by_layer: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # layer -> [compute, exposed]
    timeline["by_layer"] = by_layer
    for op in train_step_of(module).body.block.ops:
        if isinstance(op.location, NameLoc) and (found := _LAYER.search(op.location.desc.data)):
            layer = f"layer {found.group(1)}"
        if isinstance(op, (OffloadStartOp, PrefetchStartOp)):
            way = "out" if isinstance(op, OffloadStartOp) else "in"
            copies[way] = max(now, copies[way]) + copy_seconds(op.copied_bytes(), profile)
            ends[op.results[0]] = copies[way]
            timeline[way] += op.copied_bytes()
            timeline["values"] += isinstance(op, OffloadStartOp)
        elif isinstance(op, (OffloadWaitOp, PrefetchWaitOp)):
            way, copy = ("out", op.host) if isinstance(op, OffloadWaitOp) else ("in", op.started)
            stall = max(0.0, ends[copy] - now)
            timeline[f"exposed_{way}"] += stall
            by_layer[layer][1] += stall
            now += stall
        else:
            seconds = op_seconds(op, profile)
            by_layer[layer][0] += seconds
            now += seconds
    timeline["step"] = now
    return timeline


def _offload_report(module: ModuleOp, report: CommReport, profile) -> None:
    timeline = offload_timeline(module, profile)
    if not timeline["values"]:
        return
    for op in train_step_of(module).body.block.ops:
        if isinstance(op, OffloadStartOp):
            kind = f"{list(op.value.type.get_shape())} {torch_dtype(op.value.type.element_type)}".replace("torch.", "")
            report.offloaded[kind][0] += 1
            report.offloaded[kind][1] += op.copied_bytes()
    report.offload = {
        "host memory per rank": human_bytes(host_pool_bytes(module)),
        "values offloaded": str(timeline["values"]),
        "copied to the host / back per step": f"{human_bytes(timeline['out'])} / {human_bytes(timeline['in'])}",
        "copy time exposed (estimated)": (
            f"{timeline['exposed_out'] * 1e3:.3f} ms out, {timeline['exposed_in'] * 1e3:.3f} ms back, "
            f"of a {timeline['step'] * 1e3:.3f} ms step"
        ),
    }
    worst = max(timeline["by_layer"].items(), key=lambda kv: (kv[1][1], kv[1][0]))
    report.offload["most exposed layer"] = f"{worst[0]}: {worst[1][1] * 1e3:.3f} ms of {worst[1][0] * 1e3:.3f} ms compute"
    report.offload_by_layer = dict(timeline["by_layer"])
    report.timeline = {**timeline, "by_layer": report.offload_by_layer}


def _tiled_report(module: ModuleOp, report: CommReport) -> None:
    """Each kind of tiled region (the op families it computes, forward or backward), how many."""
    for op in module.walk():
        if isinstance(op, TiledOp):
            families = dict.fromkeys(
                inner.name.split(".")[1] if inner.name.startswith("aten.") else inner.name
                for inner in op.block.ops if not isinstance(inner, YieldOp)
            )
            what = ", ".join(list(families)[:6]) + (", ..." if len(families) > 6 else "")
            entry = report.tiled[what]
            entry[0] += 1
            entry[1:] = [op.chunk.value.data, op.chunks, max(entry[3], op.scratch.value.data)]


def ulysses_optimum_per_layer(batch: int, seq: int, q_heads: int, kv_heads: int, head_dim: int, dtype_bytes: int, sp: int) -> float:
    """Bytes each rank sends per layer and step when Q, K, V, O move once forward and dO, dQ,
    dK, dV once backward, K/V at kv_heads: each rank holds seq/sp tokens and keeps 1/sp."""
    per_token = (2 * q_heads + 2 * kv_heads) * head_dim * dtype_bytes
    return 2 * batch * (seq // sp) * per_token * (sp - 1) / sp
