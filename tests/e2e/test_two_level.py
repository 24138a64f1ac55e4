"""Two-level checkpointing (remat's `rerun`): some layer inputs are neither held on the device nor
offloaded but made again where their layer's backward begins, by running the layer before
from its own (held) input. Under a budget below the least that plans without it reach: the step
fits, its device peak is predicted as measured, and the loss and every gradient are bitwise
those of the same step without remat. At sp=2 with ZeRO-3 and a host budget too small for every
layer input, the rerun layer's parameters are gathered for the backward ahead of the rerun, the
other layer inputs are offloaded, and both ranks run the same collectives."""

import copy
import re

import torch

import autosp
from autosp.driver import imported
from autosp.passes.cost_model import device_profile
from autosp.passes.remat import RematProblem
from autosp.pipeline import pipeline_spec, run_pipeline, until_remat
from tests.conftest import tiny_causal_lm
from tests.e2e.sp_harness import run_pooled

SEQ = 768  # long enough for the layer inputs to matter at the peak


def _model(arch: str):
    config = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=SEQ)
    if arch == "Phi3":
        config["pad_token_id"] = 0
    module = tiny_causal_lm(arch, **config)
    ids = torch.randint(0, 64, (1, SEQ - 1), generator=torch.Generator().manual_seed(4))  # odd: uneven sp parts
    labels = ids.clone()
    labels[0, ::6] = -100
    return module, ids, labels


def _least(program, host: int, rerun: bool) -> int:
    """The least device peak of remat's plans with (or without) rerun layer inputs."""
    problem = RematProblem(program, device_profile("cpu"), fused=True, host_budget=host)
    plans = [p for p in problem.checkpointing_plans() if bool(p.rerun) == rerun]
    if not rerun:
        least, _, _ = problem.solve(None)
        plans.append(problem.plan("least memory", *least))
    return min(problem.evaluate(plan).peak_bytes for plan in plans)


def rerun_case(rank, world, *, arch, shard="none", host=0, tiled=False):
    """On each rank (sp = world): the budget halfway between the least device peak with and
    without rerun layer inputs (largest rank's); the step against the same step without remat
    (`tiled`: both with every token-wise chain in chunks of rows, as compile's last resort)."""
    from torch.distributed.tensor import DTensor

    from autosp.passes import tile_rows

    torch.use_deterministic_algorithms(True)  # the embedding gradient's accumulation order
    chunk_bytes, tile_rows.CHUNK_BYTES = tile_rows.CHUNK_BYTES, 1 << 15  # ~250 rows a chunk here
    try:
        module, ids, labels = _model(arch)
        twin = copy.deepcopy(module)  # a sharded compile makes the module's parameters its DTensors
        ep = torch.export.export(module, (ids, labels))
        options = dict(sp=world, shard=shard)
        head, _ = until_remat(pipeline_spec(**options, remat=True, fuse=True, tile_rows=tiled, tile_bytes=1 << 15))
        program = run_pipeline(imported(ep, tiled)[0], head)  # rank 0's (the largest)
        without, rerunning = _least(program, host, False), _least(program, host, True)
        budget = (without + rerunning) // 2
        tiling = dict(tile_mlp=tiled, tile_rows=tiled)
        plain = autosp.compile(ep, **options, **tiling)

        def run(step, model):
            model.zero_grad(set_to_none=True)
            measured = step.measure_memory(ids, labels)
            model.zero_grad(set_to_none=True)
            loss = step(ids, labels)
            grads = [p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad.clone() for p in model.parameters()]
            return measured, loss, grads

        _, loss, grads = run(plain, module)
        # (tiling is what compile tries first when nothing fits; here, rerun is the only way)
        step = autosp.compile(torch.export.export(twin, (ids, labels)), **options, remat=True, memory_budget=budget,
                              cost_model="cpu", host_memory_budget=host or None, **tiling)
        measured, rerun_loss, rerun_grads = run(step, twin)
        collectives = [line.split("(")[0].split("= ")[-1] for line in step.source.splitlines()
                       if "collectives." in line or "offload." in line]
        return dict(
            without=without, rerunning=rerunning, budget=budget, measured=measured, tracked=step.predicted_tracked_bytes,
            predicted=step.predicted_peak_bytes, report=re.sub(r"[\s│]", "", step.report),
            offloads=step.source.count("offload.offload_start("), collectives=collectives,
            tiled=step.source.count("tiles.run("),
            bitwise=torch.equal(loss, rerun_loss) and all(torch.equal(a, b) for a, b in zip(grads, rerun_grads)),
        )
    finally:
        torch.use_deterministic_algorithms(False)
        tile_rows.CHUNK_BYTES = chunk_bytes


def check(stats: dict, offloads: bool) -> None:
    print({k: v for k, v in stats.items() if k not in ("collectives", "report")})
    assert stats["rerunning"] < stats["without"], "rerun reaches no less: the case tests nothing"
    assert "layerinputsrerun" in stats["report"]
    assert stats["measured"] == stats["tracked"] <= stats["predicted"] <= stats["budget"]
    assert (stats["offloads"] > 0) == offloads
    assert stats["bitwise"]


def test_rerun_fits_below_what_other_plans_reach_sp1(tmp_cache):
    check(rerun_case(0, 1, arch="Phi3"), offloads=False)  # fused qkv and gate_up (Llama: below)


def test_rerun_of_tiled_layers_sp1(tmp_cache):
    # The rerun chain runs the layer's tiled regions again (how the 8B reaches 4M tokens).
    stats = rerun_case(0, 1, arch="Llama", tiled=True)
    check(stats, offloads=False)
    assert stats["tiled"] > 0


def test_rerun_with_zero3_and_offload_sp2():
    # Host room for about three of the seven layer inputs (384 x 32 fp32: 48 KiB each).
    first, second = run_pooled(2, rerun_case, arch="Llama", shard="parameters", host=160 << 10)
    for stats in (first, second):
        check(stats, offloads=True)
    assert first["collectives"] == second["collectives"]
