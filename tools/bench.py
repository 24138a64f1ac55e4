"""autosp-bench: measurements that write JSON.

    autosp-bench remat --preset llama-3.2-1b --sp 1 8 --memory 80GiB -o remat.json
        the predicted max context per sp degree on devices of that size (budget "auto": less 8%): for S = 8K, 16K, ...
        1M, export (shapes only), run the pipeline with --remat and record whether the step fits,
        its predicted peak, the recompute overhead and how long each stage took.
    autosp-bench kernels -o kernels.json
        attention forward/backward TFLOP/s of every kernel AutoSP runs (its Triton kernels, cuDNN and
        FlashAttention as the runtime calls them) vs SDPA's flash and cuDNN backends in the same run,
        causal bf16, D 64 and 128, S 4K, 16K, 64K, and packed rows. Without a GPU: an interpreter
        correctness check only.
    autosp-bench step -o step.json
        CPU: the compiled step's time beside eager PyTorch's on the same Llama and data (S 2K and 4K,
        hidden 512, 4 layers, fp32), and each step's resident memory against the plan's predicted
        peak, without remat and with remat at a fraction of that peak.
    autosp-bench train --preset llama-3.2-1b -o train.json
        max context (double S until OOM, then bisect) and tokens/s at fixed S for AutoSP (remat auto),
        eager HF, HF gradient checkpointing, torch.compile, and HF checkpointing + chunked loss (8K).
        Without a GPU: AutoSP's predicted max context from its memory plan (like `remat`, sp=1).
    autosp-bench zoo -o benchmarks/zoo.json --table docs/models.md
        every causal LM of the installed transformers at tiny size, one step against eager at sp=1 and
        sp=2 (loss and every gradient), each model in its own process: exact / inexact / refused (its
        line) / failed (its reason); the JSON and the generated table of docs/models.md.
"""

from __future__ import annotations

import argparse
import json
import time

from autosp.tools.errors import OneLineParser, run_cli
from autosp.tools.files import write_atomically
from autosp.tools.export import DTYPES


def parse_args(argv=None) -> argparse.Namespace:
    from autosp.frontends.presets import PRESETS

    parser = OneLineParser(prog="autosp-bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    remat = commands.add_parser("remat", help="predicted max context with --remat, per sp degree")
    remat.add_argument("--preset", choices=sorted(PRESETS), default="llama-3.2-1b")
    remat.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    remat.add_argument("--sp", type=int, nargs="+", default=[1, 8], help="sp degrees (default 1 8)")
    remat.add_argument("--min-seq", type=int, default=None, help="the first S tried (default 8192, or --max-seq if less)")
    remat.add_argument("--max-seq", type=int, default=1 << 20, help="the last S tried (default 1048576); S doubles")
    remat.add_argument("--memory", default="80GiB", help="device memory per rank (default 80GiB); the budget is what --memory-budget=auto leaves of it")
    remat.add_argument("--cost-model", default="h100")
    remat.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="bf16", help="parameter dtype (default bf16)")
    remat.add_argument("--keep-going", action="store_true", help="try every S even after one does not fit")
    remat.add_argument("--shard", choices=["none", "optimizer", "gradients", "parameters"], default="none",
                       help="shard the training state over the sp x dp ranks (ZeRO-1/2/3; default none)")
    remat.add_argument("--dp", type=int, default=1, help="data-parallel replicas (the state is sharded over sp x dp ranks)")
    remat.add_argument("--no-prefetch", action="store_true", help="with --shard: start each parameter gather where it is needed")
    remat.add_argument("--optimizer", default="none",
                       help="optimizer state the plan holds: adamw (moments in the parameters' dtype), adamw-fp32, adamw-master "
                            "(fp32 master weights + moments), sgd, ... (default none)")
    remat.add_argument("--host-memory", default=None,
                       help="host memory per node that remat may offload to (e.g. 1TiB; default: no offload)")
    remat.add_argument("--ranks-per-node", type=int, default=8,
                       help="GPUs per node sharing --host-memory (default 8; each rank plans for 80%% of its share)")
    remat.add_argument("-o", "--output", default="remat.json")
    kernels = commands.add_parser("kernels", help="attention TFLOP/s vs SDPA flash/cuDNN (GPU)")
    kernels.add_argument("--seq", type=int, nargs="+", default=[4096, 16384, 65536])
    kernels.add_argument("--dim", type=int, nargs="+", default=[64, 128])
    kernels.add_argument("--doc-len", type=int, default=4096, help="also time AutoSP on rows packed with documents this long (0: don't)")
    kernels.add_argument("-o", "--output", default="kernels.json")
    step = commands.add_parser("step", help="CPU: compiled step vs eager (time) and resident memory vs the plan")
    step.add_argument("--seq", type=int, nargs="+", default=[2048, 4096])
    step.add_argument("--hidden", type=int, default=512)
    step.add_argument("--layers", type=int, default=4)
    step.add_argument("--vocab", type=int, default=32000)
    step.add_argument("--repeats", type=int, default=3, help="timed steps of each (the fastest counts)")
    step.add_argument("--remat", type=float, nargs="*", default=[0.7],
                      help="also measure memory with remat at these fractions of the predicted peak (default 0.7)")
    step.add_argument("-o", "--output", default="step.json")
    train = commands.add_parser("train", help="max context and tokens/s vs HF baselines (GPU)")
    train.add_argument("--preset", choices=sorted(PRESETS), default="llama-3.2-1b")
    train.add_argument("--layers", type=int, default=None)
    train.add_argument("--methods", nargs="+", default=["autosp", "hf-eager", "hf-ckpt", "torch-compile", "hf-ckpt-chunked-loss"])
    train.add_argument("--throughput-seq", type=int, nargs="+", default=[16384, 49152, 262144])
    train.add_argument("--start-seq", type=int, default=8192)
    train.add_argument("--max-seq", type=int, default=1 << 20)
    train.add_argument("--refine", type=int, default=16384, help="bisect the max context down to this many tokens")
    train.add_argument("-o", "--output", default="train.json")
    zoo = commands.add_parser("zoo", help="every causal LM of transformers at tiny size vs eager, per sp degree")
    zoo.add_argument("--only", default=None, help="model types matching this regular expression (default: all)")
    zoo.add_argument("--sp", type=int, nargs="+", default=[1, 2], help="sp degrees (default 1 2)")
    zoo.add_argument("--timeout", type=float, default=600, help="seconds per model and sp degree (default 600)")
    zoo.add_argument("--resume", action="store_true", help="keep the results already in -o, run the rest")
    zoo.add_argument("--redo", nargs="*", default=[], help="with --resume: run again the models of these statuses")
    zoo.add_argument("--table", default=None, help="also write the generated markdown table here (docs/models.md)")
    zoo.add_argument("-o", "--output", default="zoo.json")
    return parser.parse_args(argv)


def remat_point(preset: str, layers: int | None, seq: int, sp: int, memory: str, cost_model: str, dtype: str,
                shard: str = "none", dp: int = 1, optimizer: str = "none", prefetch: bool = True, host_budget: int = 0) -> dict:
    import torch

    from autosp.frontends import import_program
    from autosp.frontends.presets import export_preset
    from autosp.passes.cost_model import device_profile
    from autosp.ir.autosp import AttentionOp
    from autosp.passes.remat import RematInfeasible, RematProblem, parse_budget, rematerialize
    from autosp.pipeline import pipeline_spec, run_pipeline

    # A device of `memory` bytes: the budget is what "auto" leaves of it.
    profile = device_profile(cost_model)
    profile = device_profile(cost_model, memory_bytes=parse_budget(memory, profile))
    point: dict = {"seq": seq, "sp": sp, "dp": dp, "shard": shard, "optimizer": optimizer, "prefetch": prefetch,
                   "budget_gib": parse_budget("auto", profile) / 2**30, "host_budget_gib": host_budget / 2**30}
    started = time.perf_counter()
    ep = export_preset(preset, seq=seq, layers=layers, fake=True, dtype=getattr(torch, DTYPES[dtype]))
    point["export_s"] = time.perf_counter() - started
    from autosp.passes.tile_rows import CHUNK_BYTES

    # As compile's tile_mlp, tile_rows="auto" and its lean kernels: more in row chunks, then the
    # attention kernels with the least scratch, only if needed; layers rerun only at the last level.
    for tiled, rows, lean in ((False, False, False), (True, False, False), (True, True, False), (True, True, True)):
        started = time.perf_counter()
        # Rank 0 of sp x dp: the largest sequence part and the largest parameter shards.
        spec = pipeline_spec(sp=sp, fuse=False, shard=shard, world=sp * dp, optimizer=optimizer, prefetch=prefetch,
                             tile_rows=rows, tile_bytes=CHUNK_BYTES, target=profile.target,
                             lean_kernels=lean)  # remat plans the unfused program
        module = run_pipeline(import_program(ep, tile_mlp=tiled), spec)
        point["import_and_sp_s"] = time.perf_counter() - started
        started = time.perf_counter()
        try:
            result = rematerialize(module, parse_budget("auto", profile), profile, fused=True, host_budget=host_budget,
                                   two_level=lean)  # as compile runs it
            break
        except RematInfeasible as error:
            point.update(fits=False, error=str(error), remat_s=time.perf_counter() - started, tiled_mlp=tiled, tiled_rows=rows,
                         lean_kernels=lean)
    else:
        # Where the memory goes under the checkpointing plan that holds least (about the least remat reaches).
        problem = RematProblem(module, profile, fused=True, host_budget=host_budget)
        plan = min((problem.evaluate(p) for p in problem.checkpointing_plans()), key=lambda p: p.peak_bytes)
        point["checkpointing"] = {"plan": plan.name, **breakdown(module, plan, problem.offload_placement(plan), seq, sp, profile)}
        return point
    point.update(
        fits=True,
        error=None,
        tiled_mlp=tiled,
        tiled_rows=rows,
        lean_kernels=lean,
        attention_kernels=sorted({op.kernel.data for op in module.walk() if isinstance(op, AttentionOp) and op.kernel}),
        remat_s=time.perf_counter() - started,
        ilp_s=result.ilp_seconds,
        plan=result.plan.name,
        peak_gib=result.plan.peak_bytes / 2**30,
        peak_without_remat_gib=result.baseline_peak / 2**30,
        recompute_ms=result.plan.seconds * 1e3,
        recomputed_ops=len(result.plan.recompute),
        slots=result.slots,
        **breakdown(module, result.plan, result.placement, seq, sp, profile),
    )
    return point


def breakdown(module, plan, placement, seq: int, sp: int, profile) -> dict:
    """What compile would run (this remat plan with its offloads placed, then fusion): its peak,
    per token, by kind; the host memory and the host copies' estimated exposed time."""
    from autosp.passes.memory_plan import peak_breakdown, plan_memory, state_breakdown
    from autosp.passes.remat import apply_plan
    from autosp.pipeline import run_pipeline
    from autosp.report import offload_timeline

    apply_plan(module, plan.recompute, placement, plan.rerun)
    run_pipeline(module, "fuse-elementwise")
    plan = plan_memory(module)
    timeline = offload_timeline(module, profile)
    return {
        "peak_fused_gib": plan.peak_bytes / 2**30,
        "held_gib": {kind: size / 2**30 for kind, size in state_breakdown(module).items()},
        "host_gib": plan.host_bytes / 2**30,
        "offloaded_values": timeline["values"],
        "copy_exposed_ms": (timeline["exposed_out"] + timeline["exposed_in"]) * 1e3,
        "step_estimate_ms": timeline["step"] * 1e3,
        # per token of this rank's part of the sequence
        "kb_per_token": {kind: size * sp / seq / 1024 for kind, size in peak_breakdown(module, seq // sp)[:12]},
    }


def host_budget_per_rank(host_memory: str | None, ranks_per_node: int) -> int:
    """What each rank may offload: HOST_FRACTION of the node's host memory over its ranks."""
    from autosp.passes.remat import HOST_FRACTION, parse_host_budget

    if host_memory is None:
        return 0
    return int(HOST_FRACTION * parse_host_budget(host_memory) / ranks_per_node)


def check_remat_args(args: argparse.Namespace) -> None:
    """Bad flags fail before any export, naming the flag."""
    from autosp.frontends.presets import preset_config
    from autosp.passes.cost_model import device_profile
    from autosp.passes.remat import parse_budget
    from autosp.ir.autosp import kv_layout
    from autosp.common.errors import AutoSPError

    if args.min_seq is None:
        args.min_seq = min(8192, args.max_seq)
    if args.min_seq < 1 or args.max_seq < args.min_seq:
        raise AutoSPError(f"--min-seq {args.min_seq} --max-seq {args.max_seq}: give 1 <= --min-seq <= --max-seq")
    if any(sp < 1 for sp in args.sp):
        raise AutoSPError(f"--sp {' '.join(map(str, args.sp))}: sp degrees must be >= 1")
    if args.layers is not None and args.layers < 1:
        raise AutoSPError(f"--layers {args.layers}: give at least one layer")
    if args.dp < 1:
        raise AutoSPError(f"--dp {args.dp}: give at least one replica")
    if args.ranks_per_node < 1:
        raise AutoSPError(f"--ranks-per-node {args.ranks_per_node}: give at least one")
    if args.host_memory is not None:
        from autosp.passes.remat import parse_host_budget

        try:
            parse_host_budget(args.host_memory)
        except AutoSPError as err:
            raise AutoSPError(f"--host-memory {args.host_memory}: {err}") from None
    from autosp.passes.optimizers import state_size

    try:
        state_size(args.optimizer)
    except AutoSPError as err:
        raise AutoSPError(f"--optimizer {args.optimizer}: {err}") from None
    config = preset_config(args.preset)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    bad = [sp for sp in args.sp if kv_layout(heads, kv_heads, sp) is None]
    if bad:
        valid = [n for n in range(1, heads + 1) if kv_layout(heads, kv_heads, n) is not None]
        raise AutoSPError(
            f"--sp {' '.join(map(str, bad))}: {args.preset}'s {heads} query / {kv_heads} key-value heads do not split "
            f"over it; valid sp degrees: {valid}"
        )
    try:
        profile = device_profile(args.cost_model)
    except AutoSPError as err:
        raise AutoSPError(f"--cost-model {args.cost_model}: {err}") from None
    try:
        memory = parse_budget(args.memory, profile)
    except AutoSPError as err:
        raise AutoSPError(f"--memory {args.memory}: {err}") from None
    if memory <= 2 << 30:
        raise AutoSPError(
            f"--memory {args.memory}: leaves no budget (the plan keeps max(2 GiB, 8%) of a device for the allocator "
            "and runtime); give more than 2GiB"
        )


def run_remat(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    check_remat_args(args)
    host_budget = host_budget_per_rank(args.host_memory, args.ranks_per_node)
    console = Console(width=150)
    points, best = [], {}
    for sp in args.sp:
        seq = args.min_seq
        while seq <= args.max_seq:
            point = remat_point(args.preset, args.layers, seq, sp, args.memory, args.cost_model, args.dtype,
                                args.shard, args.dp, args.optimizer, not args.no_prefetch, host_budget)
            points.append(point)
            status = f"peak {point['peak_gib']:.1f} GiB, {point['plan']}" if point["fits"] else point["error"]
            if point.get("tiled_rows"):
                status += " (token-wise chains in row chunks)"
            elif point["tiled_mlp"]:
                status += " (gated MLPs in row chunks)"
            console.print(f"sp={sp} S={seq}: {status} (remat {point['remat_s']:.1f}s)")
            if point["fits"]:
                best[sp] = seq
            elif not args.keep_going:
                break
            seq *= 2
    table = Table("sp", "S", "fits", "peak (GiB)", "fused (GiB)", "without remat (GiB)", "recompute (ms)", "plan", "MLP tiled", "remat (s)", "ILP (s)",
                  title=f"{args.preset} ({args.dtype}) on {args.memory} per rank ({args.cost_model} cost model), "
                        f"shard={args.shard} over sp x {args.dp}, optimizer {args.optimizer}")
    for p in points:
        table.add_row(
            str(p["sp"]), str(p["seq"]), "yes" if p["fits"] else "no",
            f"{p['peak_gib']:.1f}" if p["fits"] else "-", f"{p['peak_fused_gib']:.1f}" if p["fits"] else "-",
            f"{p.get('peak_without_remat_gib', 0):.1f}" if p["fits"] else "-",
            f"{p['recompute_ms']:.1f}" if p["fits"] else "-", p.get("plan", "-"), "yes" if p["tiled_mlp"] else "no",
            f"{p['remat_s']:.1f}", f"{p['ilp_s']:.2f}" if p["fits"] else "-",
        )
    console.print(table)
    for sp in args.sp:
        console.print(f"max context sp={sp}: {best.get(sp, 'none of the lengths tried')}")
        last = [p for p in points if p["sp"] == sp][-1]
        where = last.get("checkpointing") or last
        if "kb_per_token" in where:
            state = "fits" if last["fits"] else f"does not fit; with {where['plan']}"
            console.print(f"  at S={last['seq']} ({state}): peak {where['peak_fused_gib']:.1f} GiB; KB per token held at the peak:")
            for kind, kb in where["kb_per_token"].items():
                console.print(f"    {kb:8.1f}  {kind}")
            console.print("  GiB held at the peak: " + ", ".join(f"{kind} {gib:.1f}" for kind, gib in where["held_gib"].items()))
            if where.get("host_gib"):
                console.print(f"  offloaded: {where['offloaded_values']} values, {where['host_gib']:.1f} GiB of host memory; "
                              f"copies exposed {where['copy_exposed_ms']:.1f} ms of a {where['step_estimate_ms']:.0f} ms step (estimated)")
    write_atomically(args.output, json.dumps({"preset": args.preset, "dtype": args.dtype, "memory": args.memory, "cost_model": args.cost_model,
                   "shard": args.shard, "dp": args.dp, "optimizer": args.optimizer, "prefetch": not args.no_prefetch,
                   "host_memory": args.host_memory, "ranks_per_node": args.ranks_per_node,
                   "max_context": {str(sp): best.get(sp) for sp in args.sp}, "points": points}, indent=1))
    console.print(f"wrote {args.output}")


def run_kernels(args: argparse.Namespace) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from autosp.tools import bench_gpu

    console = Console(width=150)
    if not torch.cuda.is_available():
        result = {"gpu": False, "interpreter_check": bench_gpu.kernel_check_cpu()}
        console.print(f"no GPU: Triton attention checked in the interpreter only (max abs error "
                      f"{result['interpreter_check']['max_abs_error']:.2e}); no speed measured")
    else:
        points = [bench_gpu.kernel_point(seq, dim, backend)
                  for dim in args.dim for seq in args.seq for backend in bench_gpu.KERNEL_BACKENDS]
        if args.doc_len:  # packed rows: AutoSP's kernels visit only the tiles of each document
            points += [bench_gpu.kernel_point(seq, dim, backend, doc_len=args.doc_len)
                       for dim in args.dim for seq in args.seq if seq > args.doc_len for backend in ("triton", "flash")]
        result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "points": points}
        table = Table("D", "S", "batch", "backend", "fwd TFLOP/s", "bwd TFLOP/s", "fwd vs cuDNN", "bwd vs cuDNN",
                      title=f"causal bf16 attention on {result['gpu']}")
        cudnn = {(p["dim"], p["seq"]): p for p in points if p["backend"] == "sdpa-cudnn" and "fwd_tflops" in p}
        for p in points:
            if "doc_len" in p:
                continue
            ref = cudnn.get((p["dim"], p["seq"]))
            ratio = lambda key: f"{p[key] / ref[key]:.2f}" if ref and key in p else "-"  # noqa: E731
            table.add_row(str(p["dim"]), str(p["seq"]), str(p["batch"]), p["backend"],
                          f"{p['fwd_tflops']:.0f}" if "fwd_tflops" in p else p.get("error", "-"),
                          f"{p['bwd_tflops']:.0f}" if "bwd_tflops" in p else "-", ratio("fwd_tflops"), ratio("bwd_tflops"))
        console.print(table)
        whole = {(p["backend"], p["dim"], p["seq"]): p for p in points if "doc_len" not in p and "fwd_ms" in p}
        packed = Table("kernel", "D", "S", "doc len", "fwd ms", "bwd ms", "fwd speedup", "bwd speedup",
                       title="packed rows vs one causal document per row (same S, one row)")
        for p in points:
            ref = whole.get((p["backend"], p["dim"], p["seq"]))
            if "doc_len" in p and "fwd_ms" in p and ref:
                per_row = ref["batch"]  # the whole-row point times `batch` rows of S
                packed.add_row(p["backend"], str(p["dim"]), str(p["seq"]), str(p["doc_len"]), f"{p['fwd_ms']:.2f}", f"{p['bwd_ms']:.2f}",
                               f"{ref['fwd_ms'] / per_row / p['fwd_ms']:.1f}x", f"{ref['bwd_ms'] / per_row / p['bwd_ms']:.1f}x")
        console.print(packed)
    write_atomically(args.output, json.dumps(result, indent=1))
    console.print(f"wrote {args.output}")


def run_step(args: argparse.Namespace) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from autosp.passes.memory_plan import human_bytes
    from autosp.tools import bench_cpu

    console = Console(width=150)
    model = dict(hidden=args.hidden, layers=args.layers, vocab=args.vocab)
    times = [bench_cpu.time_point(seq, **model, repeats=args.repeats) for seq in args.seq]
    memory = [bench_cpu.measured_in_process(seq, **model, remat=fraction)
              for seq in args.seq for fraction in [0.0, *args.remat]]
    table = Table("S", "eager s", "compiled s", "compiled / eager", title=f"training step on CPU ({torch.get_num_threads()} threads)")
    for t in times:
        table.add_row(str(t["seq"]), f"{t['eager_s']:.2f}", f"{t['compiled_s']:.2f}", f"{t['compiled_over_eager']:.2f}")
    console.print(table)
    table = Table("S", "remat", "predicted peak", "resident peak", "resident / predicted", title="memory of one step")
    for m in memory:
        if "error" in m:
            table.add_row(str(m["seq"]), str(m["remat_fraction"]), "-", "-", m["error"])
            continue
        table.add_row(str(m["seq"]), f"{m['remat_fraction']:g}" if m["remat_fraction"] else "no",
                      human_bytes(m["predicted_peak_bytes"]), human_bytes(m["measured_peak_bytes"]),
                      f"{m['measured_over_predicted']:.3f}")
    console.print(table)
    write_atomically(args.output, json.dumps({"device": "cpu", "torch": torch.__version__, "model": model,
                                              "time": times, "memory": memory}, indent=1))
    console.print(f"wrote {args.output}")


def run_train(args: argparse.Namespace) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from autosp.tools import bench_gpu

    console = Console(width=150)
    if not torch.cuda.is_available():
        console.print("no GPU: only AutoSP's predicted max context (its memory plan, sp=1, 80GiB) is computed")
        remat = ["remat", "--preset", args.preset, "--sp", "1", "--memory", "80GiB", "--dtype", "bf16",
                 "--min-seq", str(args.start_seq), "--max-seq", str(args.max_seq), "-o", args.output]
        run_remat(parse_args(remat + (["--layers", str(args.layers)] if args.layers else [])))
        return
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "preset": args.preset,
              "max_context": {}, "throughput": [], "ladder": []}
    for method in args.methods:
        best, points = bench_gpu.max_context(method, args.preset, args.layers, args.start_seq, args.max_seq, args.refine)
        result["max_context"][method] = best
        result["ladder"] += points
        console.print(f"{method}: max context {best}")
        for seq in args.throughput_seq:
            if best is not None and seq <= best:
                result["throughput"].append(bench_gpu.train_point(method, args.preset, seq, args.layers))
    table = Table("method", "max context", *(f"tok/s @ {s // 1024}K" for s in args.throughput_seq),
                  title=f"{args.preset} bf16 training step on {result['gpu']}")
    for method in args.methods:
        speeds = {p["seq"]: p for p in result["throughput"] if p["method"] == method and p["fits"]}
        table.add_row(method, str(result["max_context"][method]),
                      *(f"{speeds[s]['tokens_per_s']:.0f}" if s in speeds else "-" for s in args.throughput_seq))
    console.print(table)
    write_atomically(args.output, json.dumps(result, indent=1))
    console.print(f"wrote {args.output}")


def run(argv=None) -> None:
    import os

    from autosp.common.errors import AutoSPError

    args = parse_args(argv)
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise AutoSPError(f"-o {args.output}: cannot write into {folder}; give a writable path before the benchmark runs")
    from autosp.tools.zoo import run_zoo

    {"remat": run_remat, "kernels": run_kernels, "step": run_step, "train": run_train, "zoo": run_zoo}[args.command](args)


def main() -> None:
    run_cli("autosp-bench", run)


if __name__ == "__main__":
    main()
