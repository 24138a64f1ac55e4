"""The pass pipeline for a set of options, shared by `autosp.compile` and `autosp-opt`."""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import PassPipeline

from autosp.ir import autosp_context
from autosp.passes import all_passes
from autosp.common.errors import AutoSPError

# Cleanups that every pipeline starts with.
BASE_PASSES = ("drop-aliases", "dce")


def check_options(sp: int, budget: str | int, cost_model: str, shard: str = "none", world: int | None = None,
                  world_rank: int = 0, optimizer: str = "none") -> None:
    from autosp.ir.autosp import SHARD_LEVELS
    from autosp.passes.cost_model import device_profile
    from autosp.passes.optimizers import state_size
    from autosp.passes.remat import parse_budget

    if not isinstance(sp, int) or sp < 1:
        raise AutoSPError(f"--sp={sp}: the sequence-parallel degree must be an integer >= 1")
    if shard not in SHARD_LEVELS:
        raise AutoSPError(f"shard={shard!r}: choose one of {', '.join(SHARD_LEVELS)}")
    world = sp if world is None else world
    if not isinstance(world, int) or world < 1 or world % sp or not 0 <= world_rank < world:
        raise AutoSPError(f"world={world} (rank {world_rank}): the ranks sharing the state must be a multiple of sp={sp}")
    state_size(optimizer)
    parse_budget(budget, device_profile(cost_model))


def pipeline_spec(
    sp: int = 1, remat: bool = False, rank: int = 0, memory_budget: str | int = "auto", cost_model: str = "h100",
    fuse: bool = True, shard: str = "none", world: int | None = None, world_rank: int = 0, optimizer: str = "none",
    prefetch: bool = True,
) -> str:
    """The passes for these options; `rank` (within the SP group) picks whose program to make
    (they differ only where the sequence does not divide by sp). `shard` (none, optimizer,
    gradients, parameters: ZeRO-0..3) shards the training state over the `world` ranks (sp x dp; default sp),
    as rank `world_rank` holds it; `optimizer` (a kind of passes/optimizers.py) is the state the
    memory plan counts; `prefetch` starts each parameter gather one bucket ahead. With remat, `memory_budget` (bytes, "70GiB" or "auto") is per rank and
    `cost_model` prices recomputation. `fuse`: elementwise chains into generated kernels (after
    remat, never raising the peak it planned)."""
    check_options(sp, memory_budget, cost_model, shard, world, world_rank, optimizer)
    passes = list(BASE_PASSES)
    if sp > 1:
        passes += [f"sp-propagate{{sp={sp}}}", f"sp-partition{{rank={rank}}}"]
    if shard != "none" or optimizer != "none":
        world = sp if world is None else world
        passes.append(
            f'zero{{level="{shard}" world={world} rank={world_rank} optimizer="{optimizer}" prefetch={str(prefetch).lower()}}}'
        )
    if remat:
        passes.append(f'remat{{budget="{memory_budget}" cost_model="{cost_model}" fused={str(fuse).lower()}}}')
    if fuse:
        passes.append("fuse-elementwise")
    return ",".join(passes)


def run_pipeline(module: ModuleOp, spec: str) -> ModuleOp:
    pipeline = PassPipeline.parse_spec(all_passes(), spec)
    ctx = autosp_context()
    pipeline.apply(ctx, module)
    module.verify()
    return module
