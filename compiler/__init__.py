"""AutoSP: compile a torch.export training step into a sequence-parallel per-rank program.

    step = autosp.compile(ep)       # ep: ExportedProgram whose forward returns the scalar loss
    loss = step(input_ids, labels)  # grads land in the model parameters' .grad
"""

from autosp.runtime.errors import AutoSPError


def compile(ep, *, sp: int = 1, remat: bool = False, memory_budget=None, cost_model=None, fuse: bool = True, tile_mlp="auto", cache_dir=None):  # noqa: A001
    """Import `ep`, run the pipeline, generate the per-rank program; returns a `TrainStep`.

    remat=True recomputes what it must to fit `memory_budget` per rank (bytes, "70GiB", or
    "auto" = the parameters' device memory less a margin) at the least time estimated by
    `cost_model` ("h100", "mi300x", "cpu"; default: the parameters' device). fuse=False keeps
    elementwise chains as separate ATen calls (no generated kernels). tile_mlp=True computes
    gated MLPs in chunks of rows and recomputes their gate/up projections chunk by chunk in the
    backward; "auto" (default) does so only when remat finds no plan that fits otherwise."""
    from autosp.driver import compile_program

    return compile_program(
        ep, sp=sp, remat=remat, memory_budget=memory_budget, cost_model=cost_model, fuse=fuse, tile_mlp=tile_mlp, cache_dir=cache_dir
    )


__all__ = ["AutoSPError", "compile"]
