"""AutoSP: compile a torch.export training step into a sequence-parallel per-rank program.

    step = autosp.compile(ep)       # ep: ExportedProgram whose forward returns the scalar loss
    loss = step(input_ids, labels)  # grads land in the model parameters' .grad
"""

from autosp.common.errors import AutoSPError


def compile(ep, *, sp: int = 1, remat: bool = False, memory_budget=None, cost_model=None, fuse: bool = True, tile_mlp="auto",  # noqa: A001
            cache_dir=None, timeout=None, check_every: int = 0):
    """Import `ep`, run the pipeline, generate the per-rank program; returns a `TrainStep`.

    remat=True recomputes what it must to fit `memory_budget` per rank (bytes, "70GiB", or
    "auto" = the parameters' device memory less a margin) at the least time estimated by
    `cost_model` ("h100", "mi300x", "cpu"; default: the parameters' device). fuse=False keeps
    elementwise chains as separate ATen calls (no generated kernels). tile_mlp=True computes
    gated MLPs in chunks of rows and recomputes their gate/up projections chunk by chunk in the
    backward; "auto" (default) does so only when remat finds no plan that fits otherwise.

    With torch.distributed initialized and several processes, world = sp x dp: SP groups of
    contiguous ranks, gradients averaged over the dp replicas. `timeout` (seconds; default
    $AUTOSP_TIMEOUT or 300) bounds how long compile and the first step wait for every rank.
    Before each step the ranks agree on their inputs' validity and fingerprints (one small
    all-gather); `check_every=N` also compares the parameters' fingerprints every N steps (0:
    the first step only)."""
    from autosp.driver import compile_program

    return compile_program(
        ep, sp=sp, remat=remat, memory_budget=memory_budget, cost_model=cost_model, fuse=fuse, tile_mlp=tile_mlp,
        cache_dir=cache_dir, timeout=timeout, check_every=check_every,
    )


__all__ = ["AutoSPError", "compile"]
