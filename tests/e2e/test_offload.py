"""Offload (remat's third choice): under a device budget below the least that recomputation alone
reaches, values go to the host's memory after their last forward use and come back before the
backward reads them. The step fits, its device peak is predicted as measured (the host pool is
not device memory), the pool is the size the plan says, and the loss and every gradient are
bitwise those of the same step without remat (copies do not change bits)."""

import pytest
import torch

import autosp
from autosp.driver import imported
from autosp.passes.cost_model import device_profile
from autosp.passes.remat import least_memory
from autosp.pipeline import pipeline_spec, run_pipeline, until_remat
from tests.conftest import tiny_causal_lm
from tests.e2e.sp_harness import run_pooled

SEQ = 384
ARCHS = {
    "Llama": {},
    "Qwen2": {},
    "Phi3": {"pad_token_id": 0},  # fused qkv and gate_up projections
    "GPTNeoX": {},  # LayerNorm, parallel attention and MLP
}
HOST = "64MiB"


def _model(arch: str):
    config = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=SEQ) | ARCHS[arch]
    if arch == "GPTNeoX":
        config.pop("num_key_value_heads")
    module = tiny_causal_lm(arch, **config)
    ids = torch.randint(0, 96, (1, SEQ - 1), generator=torch.Generator().manual_seed(4))  # odd: uneven sp parts
    labels = ids.clone()
    labels[0, ::6] = -100
    return module, ids, labels


def offload_case(rank, world, *, arch):
    """On each rank (sp = world): the budget halfway between the least device peak with and
    without offload (largest rank's, so one budget for all); the step with offload against the
    step without remat."""
    torch.use_deterministic_algorithms(True)  # the embedding gradient's accumulation order
    try:
        module, ids, labels = _model(arch)
        ep = torch.export.export(module, (ids, labels))
        options = dict(sp=world, remat=True, fuse=True)
        head, _ = until_remat(pipeline_spec(**options))
        program = run_pipeline(imported(ep, False)[0], head)  # rank 0's (the largest)
        profile = device_profile("cpu")
        alone = least_memory(program, profile, fused=True)
        offloading = least_memory(program, profile, fused=True, host_budget=autosp_bytes(HOST))
        budget = (alone + offloading) // 2
        plain = autosp.compile(ep, sp=world)

        def run(step):
            module.zero_grad(set_to_none=True)
            measured = step.measure_memory(ids, labels)
            module.zero_grad(set_to_none=True)
            loss = step(ids, labels)
            return measured, loss, [p.grad.clone() for p in module.parameters()]

        _, loss, grads = run(plain)
        step = autosp.compile(ep, sp=world, remat=True, memory_budget=budget, cost_model="cpu", host_memory_budget=HOST)
        measured, offload_loss, offload_grads = run(step)
        pool = step.program.HOST
        return dict(
            alone=alone, offloading=offloading, budget=budget, measured=measured, tracked=step.predicted_tracked_bytes,
            predicted=step.predicted_peak_bytes, offloads=step.source.count("offload.offload_start("),
            pool=pool.buffer.numel() if pool is not None else 0, planned_pool=step.program.HOST_POOL_BYTES,
            reported="host memory per rank" in step.report and "host copies by layer" in step.report,
            bitwise=torch.equal(loss, offload_loss) and all(torch.equal(a, b) for a, b in zip(grads, offload_grads)),
        )
    finally:
        torch.use_deterministic_algorithms(False)


def autosp_bytes(size: str) -> int:
    from autosp.passes.remat import parse_host_budget

    return parse_host_budget(size)


def check(stats: dict) -> None:
    print(stats)
    assert stats["offloading"] < stats["alone"], "offload reaches no less than recomputation: the case tests nothing"
    assert stats["offloads"] > 0 and stats["reported"]
    assert stats["measured"] == stats["tracked"] <= stats["predicted"] <= stats["budget"]
    assert stats["pool"] == stats["planned_pool"] > 0
    assert stats["bitwise"]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_offload_fits_below_what_recomputation_reaches_sp1(arch, tmp_cache):
    check(offload_case(0, 1, arch=arch))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_offload_under_sequence_parallelism_sp2(arch):
    for stats in run_pooled(2, offload_case, arch=arch):
        check(stats)
