"""AutoSP: compile a torch.export training step into a sequence-parallel per-rank program.

    step = autosp.compile(ep)       # ep: ExportedProgram whose forward returns the scalar loss
    loss = step(input_ids, labels)  # grads land in the model parameters' .grad
"""

from autosp.runtime.errors import AutoSPError


def compile(ep, *, sp: int = 1, remat: bool = False, memory_budget=None, cache_dir=None):  # noqa: A001
    """Import `ep`, run the pipeline, generate the per-rank program; returns a `TrainStep`."""
    from autosp.driver import compile_program

    return compile_program(ep, sp=sp, remat=remat, memory_budget=memory_budget, cache_dir=cache_dir)


__all__ = ["AutoSPError", "compile"]
