"""autosp-bench: measurements that write JSON.

    autosp-bench remat --preset llama-3.2-1b --sp 1 8 --memory 80GiB -o remat.json
        the predicted max context per sp degree on devices of that size (budget "auto": less 8%): for S = 8K, 16K, ...
        1M, export (shapes only), run the pipeline with --remat and record whether the step fits,
        its predicted peak, the recompute overhead and how long each stage took.
"""

from __future__ import annotations

import argparse
import json
import time

from autosp.tools.errors import run_cli
from autosp.tools.export import DTYPES


def parse_args(argv=None) -> argparse.Namespace:
    from autosp.frontends.presets import PRESETS

    parser = argparse.ArgumentParser(prog="autosp-bench", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    remat = commands.add_parser("remat", help="predicted max context with --remat, per sp degree")
    remat.add_argument("--preset", choices=sorted(PRESETS), default="llama-3.2-1b")
    remat.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    remat.add_argument("--sp", type=int, nargs="+", default=[1, 8], help="sp degrees (default 1 8)")
    remat.add_argument("--min-seq", type=int, default=8192)
    remat.add_argument("--max-seq", type=int, default=1 << 20)
    remat.add_argument("--memory", default="80GiB", help="device memory per rank (default 80GiB); the budget is what --memory-budget=auto leaves of it")
    remat.add_argument("--cost-model", default="h100")
    remat.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="bf16", help="parameter dtype (default bf16)")
    remat.add_argument("--keep-going", action="store_true", help="try every S even after one does not fit")
    remat.add_argument("-o", "--output", default="remat.json")
    return parser.parse_args(argv)


def remat_point(preset: str, layers: int | None, seq: int, sp: int, memory: str, cost_model: str, dtype: str) -> dict:
    import torch

    from autosp.frontends import import_program
    from autosp.frontends.presets import export_preset
    from autosp.passes.cost_model import device_profile
    from autosp.passes.remat import parse_budget, rematerialize
    from autosp.pipeline import pipeline_spec, run_pipeline
    from autosp.runtime.errors import AutoSPError

    # A device of `memory` bytes: the budget is what "auto" leaves of it.
    profile = device_profile(cost_model)
    profile = device_profile(cost_model, memory_bytes=parse_budget(memory, profile))
    point: dict = {"seq": seq, "sp": sp, "budget_gib": parse_budget("auto", profile) / 2**30}
    started = time.perf_counter()
    ep = export_preset(preset, seq=seq, layers=layers, fake=True, dtype=getattr(torch, DTYPES[dtype]))
    point["export_s"] = time.perf_counter() - started
    started = time.perf_counter()
    module = run_pipeline(import_program(ep), pipeline_spec(sp=sp))
    point["import_and_sp_s"] = time.perf_counter() - started
    started = time.perf_counter()
    try:
        result = rematerialize(module, parse_budget("auto", profile), profile)
    except AutoSPError as error:
        point.update(fits=False, error=str(error), remat_s=time.perf_counter() - started)
        return point
    point.update(
        fits=True,
        remat_s=time.perf_counter() - started,
        ilp_s=result.ilp_seconds,
        plan=result.plan.name,
        peak_gib=result.plan.peak_bytes / 2**30,
        peak_without_remat_gib=result.baseline_peak / 2**30,
        recompute_ms=result.plan.seconds * 1e3,
        recomputed_ops=len(result.plan.recompute),
        slots=result.slots,
    )
    return point


def run_remat(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    points, best = [], {}
    for sp in args.sp:
        seq = args.min_seq
        while seq <= args.max_seq:
            point = remat_point(args.preset, args.layers, seq, sp, args.memory, args.cost_model, args.dtype)
            points.append(point)
            status = f"peak {point['peak_gib']:.1f} GiB, {point['plan']}" if point["fits"] else point["error"]
            console.print(f"sp={sp} S={seq}: {status} (remat {point['remat_s']:.1f}s)")
            if point["fits"]:
                best[sp] = seq
            elif not args.keep_going:
                break
            seq *= 2
    table = Table("sp", "S", "fits", "peak (GiB)", "without remat (GiB)", "recompute (ms)", "plan", "remat (s)", "ILP (s)",
                  title=f"{args.preset} ({args.dtype}) on {args.memory} per rank ({args.cost_model} cost model)")
    for p in points:
        table.add_row(
            str(p["sp"]), str(p["seq"]), "yes" if p["fits"] else "no",
            f"{p['peak_gib']:.1f}" if p["fits"] else "-", f"{p.get('peak_without_remat_gib', 0):.1f}" if p["fits"] else "-",
            f"{p['recompute_ms']:.1f}" if p["fits"] else "-", p.get("plan", "-"),
            f"{p['remat_s']:.1f}", f"{p['ilp_s']:.2f}" if p["fits"] else "-",
        )
    console.print(table)
    for sp in args.sp:
        console.print(f"max context sp={sp}: {best.get(sp, 'none of the lengths tried')}")
    with open(args.output, "w") as f:
        json.dump({"preset": args.preset, "dtype": args.dtype, "memory": args.memory, "cost_model": args.cost_model,
                   "max_context": {str(sp): best.get(sp) for sp in args.sp}, "points": points}, f, indent=1)
    console.print(f"wrote {args.output}")


def run(argv=None) -> None:
    args = parse_args(argv)
    if args.command == "remat":
        run_remat(args)


def main() -> None:
    run_cli("autosp-bench", run)


if __name__ == "__main__":
    main()
