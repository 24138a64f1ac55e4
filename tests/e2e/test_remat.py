"""remat: under a budget the step fits it, the prediction matches what it holds, and it computes
exactly the same loss and gradients (recomputing the same ops on the same inputs is bitwise equal
on CPU)."""

import re

import pytest
import torch

import autosp
from autosp.driver import imported
from autosp.frontends import import_program
from autosp.passes.cost_model import device_profile
from autosp.passes.remat import RECOMPUTE, RematProblem, least_memory, rematerialize
from autosp.pipeline import pipeline_spec, run_pipeline
from tests.conftest import tiny_causal_lm

SEQ = 512


@pytest.fixture(scope="module")
def deep_model():
    """Narrow and deep, so activations dominate the peak (not parameters, not attention scratch)."""
    model = tiny_causal_lm(
        "Llama", vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=8,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=SEQ,
    )
    ids = torch.randint(0, 128, (1, SEQ), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, ::7] = -100
    return model, torch.export.export(model, (ids, labels)), (ids, labels)


@pytest.fixture
def deterministic():
    # The embedding gradient (index_put with accumulate) sums in a thread-dependent order on CPU.
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def run_step(model, step, inputs):
    measured = step.measure_memory(*inputs)
    model.zero_grad(set_to_none=True)
    loss = step(*inputs)
    return measured, loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_budgets_fit_with_bitwise_equal_results(deep_model, tmp_cache, deterministic):
    model, ep, inputs = deep_model
    plain = autosp.compile(ep, fuse=False)  # remat plans on the unfused program; fusion never raises its peak
    _, loss, grads = run_step(model, plain, inputs)
    baseline = plain.predicted_peak_bytes
    for fraction in (1.0, 0.6, 0.4):
        budget = int(fraction * baseline)
        step = autosp.compile(ep, remat=True, memory_budget=budget, cost_model="cpu")
        measured, remat_loss, remat_grads = run_step(model, step, inputs)
        recomputed = len(re.findall(r"^\s+\w+_re(?:_\d+)? = ", step.source, re.M))
        print(f"budget {fraction:.0%}: predicted {step.predicted_peak_bytes} (tracked {step.predicted_tracked_bytes}), "
              f"measured {measured}, {recomputed} recomputed values")
        assert step.predicted_peak_bytes <= budget
        assert measured <= budget
        assert abs(step.predicted_tracked_bytes - measured) <= 0.05 * measured
        assert torch.equal(remat_loss, loss)
        assert remat_grads.keys() == grads.keys()
        for name in grads:
            assert torch.equal(remat_grads[name], grads[name]), name
        assert "recompute time (estimated)" in step.report
        if fraction == 1.0:  # remat costs nothing when memory allows
            assert recomputed == 0 and "fits without recompute" in step.report
        else:
            assert recomputed > 0


def test_ilp_never_costs_more_than_per_layer_checkpointing(deep_model):
    _, ep, _ = deep_model
    module = run_pipeline(imported(ep, False)[0], pipeline_spec(fuse=False))  # remat decides on the unfused program
    profile = device_profile("cpu")
    problem = RematProblem(module, profile)
    checkpointing = problem.evaluate(problem.checkpointing())
    assert checkpointing.seconds > 0
    for slack in (1.0, 1.1, 1.3):
        result = rematerialize(module, int(slack * checkpointing.peak_bytes), profile)
        assert result.plan.peak_bytes <= slack * checkpointing.peak_bytes
        assert result.plan.seconds <= checkpointing.seconds
        if slack > 1.0:  # with room, the ILP's own plan wins outright
            assert result.plan.name == "ilp" and result.plan.seconds < checkpointing.seconds
    # The template: 8 identical layers share their slots.
    assert problem.num_slots < len(problem.candidates) / 3


def test_attention_is_kept_and_cheap_ops_recomputed_at_long_context():
    """Llama-3.2-1B's layer shape at S=32K (fake tensors): under the H100 roofline the pass
    recomputes elementwise ops and matmuls but never attention (O(S^2) FLOPs on O(S) bytes)."""
    from autosp.frontends.presets import export_preset

    ep = export_preset("llama-3.2-1b", seq=32768, layers=2, fake=True)
    module = run_pipeline(import_program(ep), pipeline_spec(fuse=False))
    baseline = rematerialize(module, 2**60, device_profile("h100")).baseline_peak
    module = run_pipeline(module, f'remat{{budget="{int(0.85 * baseline)}" cost_model="h100"}}')
    recomputed = [op.name for op in module.walk() if RECOMPUTE in op.attributes]
    assert recomputed and "autosp.attention" not in recomputed
    assert any(name.startswith("aten.mul") for name in recomputed)


def test_remat_under_sequence_parallelism():
    """sp=2 on two gloo processes, 511 tokens (rank parts of 256 and 255: the ranks' programs
    differ in sizes), one budget for both: 50% and 40% of the larger rank's peak without
    remat. Every rank applies the plan made on rank 0's program, so where all-to-alls around
    attention are recomputed in the backward (at 50%), both ranks run the same collectives in
    the same order; each fits, is predicted as measured, and computes bitwise the loss and
    gradients of the step without remat."""
    from tests.e2e.sp_harness import run_distributed

    config = dict(vocab_size=128, hidden_size=64, intermediate_size=512, num_hidden_layers=8,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=SEQ)
    ranks = run_distributed(2, remat=True, config=config, seq=SEQ - 1, fractions=(0.5, 0.4))
    for rank_stats in ranks:
        for s in rank_stats:
            print({k: v for k, v in s.items() if k != "collectives"})
            assert s["predicted"] <= s["budget"] and s["measured"] <= s["budget"]
            assert abs(s["tracked"] - s["measured"]) <= 0.05 * s["measured"]
            assert s["recomputes"] and s["bitwise"]
    for at_budget in zip(*ranks):
        assert at_budget[0]["collectives"] == at_budget[1]["collectives"]
    assert any(s["recomputed_collectives"] for s in ranks[0])


@pytest.mark.parametrize("arch, extra", [("Qwen2", {}), ("Mistral", {"num_key_value_heads": 1}), ("Gemma", {"head_dim": 32})])
def test_other_architectures_at_half_the_peak(arch, extra, tmp_cache, deterministic):
    config = dict(vocab_size=96, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=384)
    model = tiny_causal_lm(arch, **(config | extra))
    ids = torch.randint(0, 96, (1, 384), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[0, ::5] = -100
    ep = torch.export.export(model, (ids, labels))
    plain = autosp.compile(ep)
    _, loss, grads = run_step(model, plain, (ids, labels))
    budget = int(0.5 * plain.predicted_peak_bytes)
    step = autosp.compile(ep, remat=True, memory_budget=budget, cost_model="cpu")
    measured, remat_loss, remat_grads = run_step(model, step, (ids, labels))
    assert measured <= budget and measured == step.predicted_tracked_bytes
    assert torch.equal(remat_loss, loss)
    assert all(torch.equal(remat_grads[name], grads[name]) for name in grads)


def test_gated_mlps_in_row_chunks_when_nothing_else_fits(deep_model, tmp_cache, monkeypatch):
    """A budget below the least remat reaches with whole MLPs, above what it reaches with MLPs in
    row chunks (64 rows of 512): "auto" compiles the chunked MLPs, fits, is predicted as
    measured, and matches eager within 1e-5."""
    import copy

    from autosp.frontends import mlp
    from tests.conftest import relative_error

    monkeypatch.setattr(mlp, "CHUNK_BYTES", 256 * 4 * 64)
    model, ep, inputs = deep_model
    profile = device_profile("cpu")
    floors = {  # compile below imports the same copies again (the driver keeps them per program)
        tiled: least_memory(run_pipeline(imported(ep, tiled)[0], pipeline_spec(fuse=False)), profile)
        for tiled in (False, True)
    }
    assert floors[True] < floors[False]
    budget = (floors[True] + floors[False]) // 2  # whole MLPs cannot fit: below their least
    reference = copy.deepcopy(model)
    step = autosp.compile(ep, remat=True, memory_budget=budget, cost_model="cpu")
    assert step.source.count("kernels.gated_mlp_backward(") == 8
    measured, loss, grads = run_step(model, step, inputs)
    assert step.predicted_peak_bytes <= budget and measured <= budget
    assert abs(step.predicted_tracked_bytes - measured) <= 0.05 * measured
    eager = reference(*inputs)
    eager.backward()
    assert relative_error(loss, eager.detach()) <= 1e-5
    for name, ref in reference.named_parameters():
        assert relative_error(grads[name], ref.grad) <= 1e-5, name
