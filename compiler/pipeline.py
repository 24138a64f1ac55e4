"""The pass pipeline for a set of options, shared by `autosp.compile` and `autosp-opt`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import PassPipeline

from autosp.ir import autosp_context
from autosp.passes import all_passes
from autosp.common.errors import AutoSPError
from autosp.ir.program import train_step_of

# Cleanups that every pipeline starts with.
BASE_PASSES = ("drop-aliases", "dce")


def check_options(sp: int, budget: str | int, cost_model: str, shard: str = "none", world: int | None = None,
                  world_rank: int = 0, optimizer: str = "none", host_budget: str | int = 0, target: str = "cuda:sm90",
                  exclude: str = "") -> None:
    from autosp.ir.autosp import SHARD_LEVELS
    from autosp.ir.kernel_choice import Target
    from autosp.passes.cost_model import device_profile
    from autosp.passes.optimizers import state_size
    from autosp.passes.remat import parse_budget, parse_host_budget

    if not isinstance(sp, int) or sp < 1:
        raise AutoSPError(f"--sp={sp}: the sequence-parallel degree must be an integer >= 1")
    if shard not in SHARD_LEVELS:
        raise AutoSPError(f"shard={shard!r}: choose one of {', '.join(SHARD_LEVELS)}")
    world = sp if world is None else world
    if not isinstance(world, int) or world < 1 or world % sp or not 0 <= world_rank < world:
        raise AutoSPError(f"world={world} (rank {world_rank}): the ranks sharing the state must be a multiple of sp={sp}")
    state_size(optimizer)
    Target.parse(target, exclude)
    parse_budget(budget, device_profile(cost_model))
    parse_host_budget(host_budget)


def pipeline_spec(
    sp: int = 1, remat: bool = False, rank: int = 0, memory_budget: str | int = "auto", cost_model: str = "h100",
    fuse: bool = True, shard: str = "none", world: int | None = None, world_rank: int = 0, optimizer: str = "none",
    prefetch: bool = True, host_budget: str | int = 0, tile_rows: bool = False, tile_bytes: int = 128 << 20,
    remat_plan: RematPlan | None = None, target: str = "cuda:sm90", exclude: str = "", lean_kernels: bool = False,
) -> str:
    """The passes for these options; `rank` (within the SP group) picks whose program to make
    (they differ only where the sequence does not divide by sp). `shard` (none, optimizer,
    gradients, parameters: ZeRO-0..3) shards the training state over the `world` ranks (sp x dp; default sp),
    as rank `world_rank` holds it; `optimizer` (a kind of passes/optimizers.py) is the state the
    memory plan counts; `prefetch` starts each parameter gather one bucket ahead; `tile_rows`
    computes token-wise chains in chunks of rows (each chunk's widest row value within
    `tile_bytes`). With remat, `memory_budget` (bytes, "70GiB" or "auto") is per rank and
    `cost_model` prices recomputation and host copies; `host_budget` (bytes, or "auto") is what
    remat may offload to the host's memory per rank; `remat_plan` is a plan made on another rank's program
    (`largest_rank_plan`), applied instead of solving here. `fuse`: elementwise chains into
    generated kernels (after remat, never raising the peak it planned). `target` (cpu, cuda:smNN,
    rocm, interpreter) is the device the kernels are chosen for (`select-kernels`), less the
    attention kernels in `exclude`; `lean_kernels`: attention kernels with the least scratch
    rather than the fastest."""
    check_options(sp, memory_budget, cost_model, shard, world, world_rank, optimizer, host_budget, target, exclude)
    passes = list(BASE_PASSES)
    if sp > 1:
        passes += [f"sp-propagate{{sp={sp}}}", f"sp-partition{{rank={rank}}}"]
    if shard != "none" or optimizer != "none":
        world = sp if world is None else world
        passes.append(
            f'zero{{level="{shard}" world={world} rank={world_rank} optimizer="{optimizer}" prefetch={str(prefetch).lower()}}}'
        )
    select = f'target="{target}"' + (f' exclude="{exclude}"' if exclude else "") + (" lean=true" if lean_kernels else "")
    passes.append(f"select-kernels{{{select}}}")
    if tile_rows:
        passes.append(f"tile-rows{{chunk_bytes={tile_bytes}}}")
    if remat:
        options = f'budget="{memory_budget}" cost_model="{cost_model}" fused={str(fuse).lower()}'
        if host_budget not in (0, "0", None):
            options += f' host_budget="{host_budget}"'
        if remat_plan is not None:
            options += f' given="{remat_plan.name}"'
            for name, indices in (("recompute", remat_plan.recompute), ("offload", remat_plan.offload),
                                  ("rerun", remat_plan.rerun)):
                options += f" {name}={','.join(map(str, indices))}" if indices else ""
        passes.append(f"remat{{{options}}}")
    if fuse:
        passes.append("fuse-elementwise")
    return ",".join(passes)


@dataclass(frozen=True)
class RematPlan:
    name: str
    recompute: tuple[int, ...]  # forward ops by index in the program remat sees
    offload: tuple[int, ...]  # forward ops whose results go to the host's memory
    rerun: tuple[int, ...]  # layer inputs made again by running the layer before (two-level checkpointing)
    structure: str  # a digest of that program's op sequence: the plan is for programs with it


def structure_digest(module: ModuleOp) -> str:
    """The ops of the step in order, by name: the ranks' programs differ only in sizes."""
    names = "\0".join(op.name for op in train_step_of(module).body.block.ops)
    return hashlib.sha256(names.encode()).hexdigest()[:16]


def until_remat(spec: str) -> tuple[str, str]:
    """`spec` cut before its remat pass: (the passes before, remat and those after)."""
    passes = spec.split(",remat{")
    return (passes[0], "remat{" + passes[1]) if len(passes) == 2 else (spec, "")


def remat_plan(module: ModuleOp, two_level: bool = True, **options) -> RematPlan:
    """remat's plan for `module`, the program as it is before remat (`options` as
    `pipeline_spec`'s). Made on world rank 0's program (the largest sequence part and parameter
    shards), it fits the other ranks', and every rank applies it (`remat_plan=`): a collective
    it recomputes is recomputed on every rank, in the same place. `two_level`: plans may rerun
    layers (two-level checkpointing)."""
    from autosp.passes.cost_model import device_profile
    from autosp.passes.remat import parse_budget, parse_host_budget, rematerialize

    profile = device_profile(options.get("cost_model", "h100"))
    budget = parse_budget(options.get("memory_budget", "auto"), profile)
    host = parse_host_budget(options.get("host_budget", 0))
    plan = rematerialize(module, budget, profile, options.get("fuse", True), host, two_level).plan
    return RematPlan(plan.name, tuple(sorted(plan.recompute)), tuple(sorted(plan.offload)), tuple(sorted(plan.rerun)),
                     structure_digest(module))


def check_pass_options(spec: str) -> None:
    """Each of AutoSP's passes in `spec` given options of the types it takes, refused by pass and
    option (xDSL's own error names neither)."""
    import dataclasses
    import typing

    from xdsl.utils.arg_spec import parse_pipeline

    from autosp.passes import PASSES

    names = {str: "a string (in quotes)", int: "an integer", bool: "true or false", float: "a number"}
    for given in parse_pipeline(spec):
        if given.name not in PASSES:
            continue
        cls = PASSES[given.name]()
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        for option, values in given.normalize_parameter_names().parameters.items():
            if option not in fields:
                raise AutoSPError(f"pass {given.name} has no option {option!r}; its options: {', '.join(sorted(fields)) or 'none'}")
            wanted = [t for t in typing.get_args(hints[option]) or (hints[option],) if t is not type(None)]

            def accepts(t) -> bool:
                if typing.get_origin(t) is tuple:  # a list of values: recompute=1,5,9
                    return all(type(v) is typing.get_args(t)[0] for v in values)
                return len(values) == 1 and (type(values[0]) is t or (t is float and type(values[0]) is int))

            if not any(accepts(t) for t in wanted):
                expected = " or ".join(
                    f"a list of {names[typing.get_args(t)[0]].removeprefix('a ').removeprefix('an ')}s"
                    if typing.get_origin(t) is tuple else names.get(t, str(t)) for t in wanted
                )
                shown = ",".join(map(repr, values)) if values else "nothing"
                raise AutoSPError(f"{given.name}{{{option}=...}}: got {shown}, expected {expected}")


def run_pipeline(module: ModuleOp, spec: str) -> ModuleOp:
    check_pass_options(spec)
    pipeline = PassPipeline.parse_spec(all_passes(), spec)
    ctx = autosp_context()
    pipeline.apply(ctx, module)
    module.verify()
    return module
