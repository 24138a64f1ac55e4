"""Misuse across ranks: every rank raises the same AutoSPError (or none does), before any
collective of the step, within a bounded time; a step that was refused leaves the ranks in step,
so the next good batch trains exactly as eager does."""

import copy
import time

import pytest
import torch

import autosp
from autosp import AutoSPError
from tests.conftest import relative_error, tiny_causal_lm
from tests.e2e.sp_harness import run_pooled, run_ranks

SEQ = 16


def _raised(fn) -> str | None:
    try:
        fn()
    except AutoSPError as err:
        return str(err)
    return None


def misuse_then_train(rank, world, *, sp):
    """A sequence of steps that one rank gets wrong, each refused on every rank, then a good step
    checked against eager. Returns each refused step's message (per rank) and the good step's errors."""
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    reference = copy.deepcopy(module)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 96, (1, SEQ), generator=g)
    labels = ids.clone()
    step = autosp.compile(torch.export.export(module, (ids, labels)), sp=sp, check_every=1)
    last = rank == world - 1  # the rank that gets things wrong; with sp=2 its shard is the second half
    other_ids = (ids + 1) % 96 if last else ids
    bad_labels = labels.clone()
    if last:
        bad_labels[0, -2] = 500
    longer = torch.randint(0, 96, (1, SEQ + 4), generator=g) if last else ids
    messages = {
        "bad label": _raised(lambda: step(ids, bad_labels)),
        "other length": _raised(lambda: step(longer, longer.clone() if last else labels)),
        "negative id": _raised(lambda: step(ids.clone().fill_(-3) if last else ids, labels)),
    }
    assert all(p.grad is None for p in module.parameters()), "a refused step stored gradients"
    messages["different batch"] = _raised(lambda: step(other_ids, labels))  # a real step for dp replicas
    module.zero_grad(set_to_none=True)
    loss = step(ids, labels)  # every rank in step again
    eager = reference(ids, labels)
    eager.backward()
    errors = {"loss": relative_error(loss, eager.detach())}
    errors["grad"] = max(relative_error(p.grad, r.grad) for p, r in zip(module.parameters(), reference.parameters()))
    with torch.no_grad():  # replicas drift apart: caught by the parameter check (check_every=1)
        if last:
            module.model.model.norm.weight.add_(1e-3)
    messages["different weights"] = _raised(lambda: step(ids, labels))
    return messages, errors


@pytest.mark.parametrize("sp", [2, 1], ids=["sp2", "sp1-dp2"])
def test_misuse_is_refused_on_every_rank_and_the_ranks_stay_in_step(sp):
    results = run_pooled(2, misuse_then_train, sp=sp)  # refused steps keep the ranks in step: a pool is fine
    (messages, errors), (other, other_errors) = results
    assert messages == other, "the ranks raised different errors"
    assert errors["loss"] <= 1e-5 and errors["grad"] <= 1e-5, errors
    if sp == 2:
        assert messages["different batch"].startswith("ranks 0 and 1 of one SP group were given different 'input_ids'")
    else:  # data parallel replicas may differ
        assert messages["different batch"] is None
    assert messages["bad label"] == (
        "rank 1: input 'labels' gives index 500, outside the loss's vocabulary [0, 96) or ignore_index=-100"
    )
    assert messages["other length"].startswith(
        "rank 1: input 'input_ids' is int64[1, 20] but the step was compiled for int64[1, 16]"
    )
    assert messages["negative id"] == "rank 1: input 'input_ids' gives index -3, outside the embedding table [0, 96)"
    assert messages["different weights"].startswith(
        "parameter 'model.model.norm.weight' differs between rank 0 and rank 1"
    )


def leave_early(rank, world, *, timeout, stage):
    """Rank 1 stops (crashes, say) before compile or before the first step; rank 0 must raise
    an error naming it within the timeout, not wait in a collective for torch's 30 minutes."""
    if rank == 1 and stage == "compile":
        return "left"
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids = torch.randint(0, 96, (1, SEQ), generator=torch.Generator().manual_seed(0))
    ep = torch.export.export(module, (ids, ids.clone()))
    if rank == 1:
        autosp.compile(ep, sp=2, timeout=timeout)
        return "compiled, then left"
    start = time.monotonic()
    message = _raised(lambda: autosp.compile(ep, sp=2, timeout=timeout)(ids, ids.clone()))
    return message, time.monotonic() - start


@pytest.mark.parametrize("stage", ["compile", "step"])
def test_a_rank_that_leaves_is_named_within_the_timeout(stage):
    (message, seconds), _ = run_ranks(2, leave_early, timeout=3, stage=stage)
    where = "autosp.compile" if stage == "compile" else "the first step"
    assert message.startswith(f"{where}: rank 1 of 2 did not arrive within 3 s"), message
    assert seconds < 60


def compile_fails_on_one_rank(rank, world):
    # Rank 1's model has 3 query heads, which sp=2 cannot split: its compile fails, rank 0's
    # succeeds; both raise rank 1's error at once instead of rank 0 waiting in group creation.
    heads = 3 if rank == 1 else 4
    module = tiny_causal_lm("Llama", num_hidden_layers=1, num_attention_heads=heads, num_key_value_heads=1, hidden_size=48)
    ids = torch.randint(0, 96, (1, SEQ))
    start = time.monotonic()
    message = _raised(lambda: autosp.compile(torch.export.export(module, (ids, ids.clone())), sp=2, timeout=120))
    return message, time.monotonic() - start


def test_a_compile_that_fails_on_one_rank_fails_on_every_rank():
    (message, seconds), (other, _) = run_pooled(2, compile_fails_on_one_rank)
    assert message == other and message.startswith("rank 1: "), (message, other)
    assert "sp" in message and seconds < 100


def fail_inside_the_program(rank, world):
    """Rank 1's program fails after the ranks agreed to run the step (an OOM, say): rank 1
    refuses every later call at once instead of entering collectives the others left behind, and
    rank 0, waiting for rank 1's gradients, fails as soon as rank 1 is gone."""
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids = torch.randint(0, 96, (1, SEQ), generator=torch.Generator().manual_seed(0))
    step = autosp.compile(torch.export.export(module, (ids, ids.clone())), timeout=60)  # sp=1, dp=2
    if rank == 1:
        def out_of_memory(*args):
            raise torch.OutOfMemoryError("injected")

        step.program.train_step = out_of_memory
        try:
            step(ids, ids.clone())
        except torch.OutOfMemoryError:
            pass
        return _raised(lambda: step(ids, ids.clone()))
    start = time.monotonic()
    try:
        step(ids, ids.clone())
    except Exception as err:  # noqa: BLE001 (the backend's error: the peer is gone)
        return f"failed after {time.monotonic() - start:.0f} s: {type(err).__name__}"
    return "no error"


def test_a_rank_whose_program_failed_refuses_later_steps():
    first, second = run_ranks(2, fail_inside_the_program)
    assert second.startswith("an earlier step failed on this rank after the ranks had started it (OutOfMemoryError: injected)")
    assert first.startswith("failed after"), first


def remat_with_rank_options(rank, world):
    """remat on sp=2 ranks given different budgets plans once, for the least of them (rank 1's,
    here), and both ranks run that plan: the same collectives in the same order. Ranks given
    different options are refused alike."""
    import re

    config = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=64, num_attention_heads=4, num_key_value_heads=4,
                  head_dim=32)
    module = tiny_causal_lm("Llama", **config)
    ids = torch.randint(0, 96, (1, 16 * SEQ + 1), generator=torch.Generator().manual_seed(2))
    ep = torch.export.export(module, (ids, ids.clone()))
    peak = autosp.compile(ep, sp=2).predicted_peak_bytes
    budget = int(0.8 * peak) if rank == 1 else int(0.95 * peak)
    step = autosp.compile(ep, sp=2, remat=True, memory_budget=budget, cost_model="h100")
    collectives = re.findall(r"= (collectives\.\w+)\(", step.source)
    refused = _raised(lambda: autosp.compile(ep, sp=2, remat=True, fuse=rank == 0, memory_budget=budget))
    return collectives, step.predicted_peak_bytes, budget, refused


def test_remat_plans_once_for_the_least_budget_and_refuses_other_options():
    (collectives, predicted, budget, refused), (other, other_predicted, least, other_refused) = run_pooled(
        2, remat_with_rank_options
    )
    assert collectives == other and "collectives.all_to_all" in collectives
    assert predicted <= least and other_predicted <= least < budget  # rank 0 runs the plan made for rank 1's budget
    assert refused == other_refused and refused.startswith(
        "rank 0: rank 1 compiled with fuse=False, rank 0 with fuse=True: every rank must call autosp.compile with the same "
        "options (the memory budget may differ: the plan is made for the least)"
    ), refused
