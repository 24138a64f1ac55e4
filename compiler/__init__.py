"""AutoSP: compile a torch.export training step into a sequence-parallel per-rank program.

    step = autosp.compile(ep)       # ep: ExportedProgram whose forward returns the scalar loss
    loss = step(input_ids, labels)  # grads land in the model parameters' .grad
"""

from autosp.common.errors import AutoSPError


def compile(ep, *, sp: int = 1, remat: bool = False, memory_budget=None, cost_model=None, fuse: bool = True, tile_mlp="auto",  # noqa: A001
            cache_dir=None, timeout=None, check_every: int = 0, shard: str = "none", optimizer=None, mesh=None,
            prefetch: bool = True, host_memory_budget=None, tile_rows="auto"):
    """Import `ep`, run the pipeline, generate the per-rank program; returns a `TrainStep`.

    remat=True recomputes what it must to fit `memory_budget` per rank (bytes, "70GiB", or
    "auto" = the parameters' device memory less a margin, less what other allocations already
    hold there) at the least time estimated by `cost_model` ("h100", "mi300x", "cpu"; default:
    the parameters' device). `host_memory_budget` (bytes, "64GiB", 0: none, or "auto" = 80% of
    the host's memory over its local ranks; default "auto" on a GPU, none on CPU) lets remat also
    move values to the host's memory after the forward and back before the backward needs them,
    copies that overlap compute, as a third choice beside keeping and recomputing (when cheaper
    than recomputing; nothing moves when the step fits). fuse=False keeps elementwise chains as separate ATen calls (no
    generated kernels). tile_mlp=True computes gated MLPs in chunks of rows and recomputes their
    gate/up projections chunk by chunk in the backward; "auto" (default) does so only when remat
    finds no plan that fits otherwise. tile_rows=True computes every token-wise chain (norms,
    MLPs of any shape, projections, RoPE, residual adds: what sits between two attentions) in
    chunks of rows, forward and backward, its backward recomputing each chunk's forward;
    "auto" (default) does so only when nothing fits with the gated MLPs in chunks.

    With torch.distributed initialized and several processes, world = sp x dp (`mesh`: your
    DeviceMesh with dims ("dp", "sp"), else one is built: SP groups of contiguous ranks),
    gradients averaged over the dp replicas. `shard` shards the training state over every rank
    (ZeRO): "optimizer" (the optimizer's state), "gradients" (and the gradients during the
    backward), "parameters" (and the parameters, gathered per layer when needed); the model's
    parameters then become DTensors (Shard(0) on the flattened mesh): create the optimizer after
    compile. Each bucket's gather starts one bucket ahead so it overlaps compute
    (`prefetch=False`: where it is needed, holding one bucket's buffer less). `optimizer`
    ("adamw", "sgd", a torch.optim class or instance, or bytes of state per parameter element) is
    the state the memory plan counts. `timeout` (seconds; default
    $AUTOSP_TIMEOUT or 300) bounds how long compile and the first step wait for every rank.
    Before each step the ranks agree on their inputs' validity and fingerprints (one small
    all-gather); `check_every=N` also compares the replicated parameters' fingerprints every N
    steps (0: the first step only)."""
    from autosp.driver import compile_program

    return compile_program(
        ep, sp=sp, remat=remat, memory_budget=memory_budget, cost_model=cost_model, fuse=fuse, tile_mlp=tile_mlp,
        cache_dir=cache_dir, timeout=timeout, check_every=check_every, shard=shard, optimizer=optimizer, mesh=mesh,
        prefetch=prefetch, host_memory_budget=host_memory_budget, tile_rows=tile_rows,
    )


def full_state_dict(model, *, cpu_offload: bool = False) -> dict:
    """The model's state dict with whole tensors (sharded parameters gathered), e.g. for HF's
    `save_pretrained(folder, state_dict=...)`. Collective: call it on every rank. With
    cpu_offload=True the tensors go to CPU and only rank 0 gets them (the others an empty dict).
    torch's own get_model_state_dict, which also serves torch.distributed.checkpoint."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload))


def export(model, args=(), kwargs=None, **options):
    """torch.export.export(model, args, kwargs, **options), also for a model whose parameters
    autosp.compile(shard=...) made DTensor shards (e.g. another sequence length): each shard is
    traced as a whole-shaped stand-in (a fake tensor: no memory, no gather), and compiling the
    program with shard= trains the model's DTensors."""
    import torch

    from autosp.runtime.sharded_model import stand_ins

    with stand_ins(model):
        return torch.export.export(model, tuple(args), kwargs, **options)


__all__ = ["AutoSPError", "compile", "export", "full_state_dict"]
