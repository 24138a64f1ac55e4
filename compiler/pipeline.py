"""The pass pipeline for a set of options, shared by `autosp.compile` and `autosp-opt`."""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import PassPipeline

from autosp.ir import autosp_context
from autosp.passes import all_passes
from autosp.runtime.errors import AutoSPError

# Cleanups that every pipeline starts with.
BASE_PASSES = ("drop-aliases", "dce")


def check_options(sp: int, remat: bool) -> None:
    if not isinstance(sp, int) or sp < 1:
        raise AutoSPError(f"--sp={sp}: the sequence-parallel degree must be an integer >= 1")
    if remat:
        raise AutoSPError("--remat: rematerialization is not implemented yet; drop --remat")


def pipeline_spec(sp: int = 1, remat: bool = False, rank: int = 0) -> str:
    """The passes for these options; `rank` (within the SP group) picks whose program to make
    (they differ only where the sequence does not divide by sp)."""
    check_options(sp, remat)
    passes = list(BASE_PASSES)
    if sp > 1:
        passes += [f"sp-propagate{{sp={sp}}}", f"sp-partition{{rank={rank}}}"]
    return ",".join(passes)


def run_pipeline(module: ModuleOp, spec: str) -> ModuleOp:
    pipeline = PassPipeline.parse_spec(all_passes(), spec)
    ctx = autosp_context()
    pipeline.apply(ctx, module)
    module.verify()
    return module
