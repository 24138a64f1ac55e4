"""Sharded training state (ZeRO-1/2/3 on DTensor) on 4 gloo ranks against single-process eager:
sp=4, sp=2 x dp=2 and sp=1 x dp=4 at every shard level, 5 AdamW steps with the user's optimizer
on the sharded parameters; a torch.distributed.checkpoint round trip; the memory the step holds.
One pooled job runs every case (the ranks compile one export under each option)."""

import copy

import pytest
import torch

from tests.conftest import relative_error, tiny_causal_lm
from tests.e2e.sp_harness import run_pooled

TOLERANCE = 1e-5
LEVELS = ("optimizer", "gradients", "parameters")
MESHES = (4, 2, 1)  # sp; dp = 4 / sp
SEQ = 25  # uneven sequence parts at sp=2 and sp=4
CONFIG = dict(vocab_size=98, tie_word_embeddings=True, num_hidden_layers=1)  # 98 rows: uneven shards (25, 25, 25, 23)
# AdamW's update is scale-free: fp32 rounding in near-zero gradient entries moves weights by a
# fraction of lr (abs 2.5e-6 at lr=1e-4 on weights of magnitude 0.07 after 5 steps, dp=4). At
# 1e-5 five steps still move the weights by ~1e-3 of their magnitude, 100x the tolerance: an
# update lost on one shard cannot pass.
LR = 1e-5


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _batches(dp: int):
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, CONFIG["vocab_size"], (dp, 1, SEQ), generator=g)
    labels = ids.clone()
    labels[:, :, ::4] = -100
    return ids, labels


def train_and_compare(rank, world, *, module, sp, shard, steps=5):
    """Compile at (sp, shard), train `steps` AdamW steps next to eager DDP-averaged AdamW."""
    from torch.distributed.tensor import DTensor

    import autosp

    dp = world // sp
    ids_all, labels_all = _batches(dp)
    replica = rank // sp
    ids, labels = ids_all[replica], labels_all[replica]
    module, reference = copy.deepcopy(module), copy.deepcopy(module)
    step = autosp.compile(torch.export.export(module, (ids, labels)), sp=sp, shard=shard, optimizer="adamw")
    opt = torch.optim.AdamW(module.parameters(), lr=LR)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=LR)
    errors = {"loss": 0.0, "grad": 0.0, "param": 0.0}
    for _ in range(steps):
        loss = step(ids, labels)
        ref_losses = []
        for r in range(dp):
            ref_loss = reference(ids_all[r], labels_all[r])
            (ref_loss / dp).backward()
            ref_losses.append(ref_loss.detach())
        errors["loss"] = max(errors["loss"], relative_error(loss, ref_losses[replica]))
        for p, ref in zip(module.parameters(), reference.parameters()):
            errors["grad"] = max(errors["grad"], relative_error(_full(p.grad), ref.grad))
        opt.step()
        opt.zero_grad()
        ref_opt.step()
        ref_opt.zero_grad()
    for p, ref in zip(module.parameters(), reference.parameters()):
        errors["param"] = max(errors["param"], relative_error(_full(p.detach()), ref.detach()))
    # The optimizer holds only this rank's shard of its state.
    local_state = sum(v.to_local().numel() for s in opt.state.values() for k, v in s.items() if k != "step")
    whole_state = sum(2 * p.numel() for p in module.parameters())
    errors["state_fraction"] = local_state / whole_state
    errors["dtensors"] = all(isinstance(p, DTensor) for p in module.parameters())
    return errors


def collectives_match_dtensor(rank, world):
    """The bucket collectives cut as DTensor's Shard(0) does (uneven and empty shards, a 0-dim
    member replicated), gather back the whole tensors, and reduce-scatter the sum / divide."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from autosp.runtime import collectives

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(3)
    wholes = [torch.randn(6, 3, generator=g), torch.randn(2, 5, generator=g), torch.randn((), generator=g), torch.randn(9, generator=g)]
    shards = [distribute_tensor(w, mesh, [Shard(0)]).to_local() if w.dim() else w.clone() for w in wholes]
    buffer = collectives.gather_params_start(*shards, rows=[w.shape[0] if w.dim() else 1 for w in wholes], group=mesh.get_group())
    gathered = collectives.gather_params_wait(buffer, shapes=[list(w.shape) for w in wholes], group=mesh.get_group())
    grads = [w * (rank + 1) for w in wholes]
    reduced = collectives.reduce_scatter_grads(*grads, divide=2, group=mesh.get_group())
    total = sum(range(1, world + 1)) / 2
    expected = [distribute_tensor(w * total, mesh, [Shard(0)]).to_local() if w.dim() else w * total for w in wholes]
    return {
        "shard_rows": [tuple(s.shape) for s in shards],
        "gathered": all(torch.equal(a, b) for a, b in zip(gathered, wholes)),
        "reduced": all(a.shape == b.shape and torch.allclose(a, b) for a, b in zip(reduced, expected)),
    }


def different_weights_are_refused(rank, world):
    """Sharding keeps one copy of each row: ranks whose weights differ are refused at compile,
    on every rank alike (a replica's rows would otherwise silently win)."""
    import autosp

    module = tiny_causal_lm("Llama", **CONFIG)
    if rank == 2:
        with torch.no_grad():
            module.model.model.layers[0].mlp.up_proj.weight.add_(1e-3)
    ids, labels = (t[0] for t in _batches(1))
    try:
        autosp.compile(torch.export.export(module, (ids, labels)), sp=2, shard="gradients")
    except autosp.AutoSPError as err:
        return str(err)
    return None


def remat_under_zero3(rank, world):
    """remat on top of ZeRO-3 at 75% of its peak (at this size a bucket is a third of the model:
    the gathered window is most of what remat cannot recompute): recomputed ops read the
    backward's gathered copies; fits, predicted as measured, bitwise the gradients of the step
    without remat."""
    import autosp

    torch.use_deterministic_algorithms(True)  # the embedding gradient's accumulation order
    try:
        config = dict(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
        base = tiny_causal_lm("Llama", **config)
        ids = torch.randint(0, 128, (1, 128), generator=torch.Generator().manual_seed(7))
        labels = ids.clone()
        runs = []
        for options in ({}, {"remat": True, "cost_model": "cpu"}):
            module = copy.deepcopy(base)
            if options:
                options["memory_budget"] = int(0.75 * runs[0]["predicted"])
            step = autosp.compile(torch.export.export(module, (ids, labels)), sp=2, shard="parameters", **options)
            measured = step.measure_memory(ids, labels)
            runs.append(dict(predicted=step.predicted_peak_bytes, tracked=step.predicted_tracked_bytes, measured=measured,
                             grads=[_full(p.grad).clone() for p in module.parameters()], recomputes="_re = " in step.source,
                             budget=options.get("memory_budget")))
        plain, remat = runs
        return dict(budget=remat["budget"], predicted=remat["predicted"], tracked=remat["tracked"], measured=remat["measured"],
                    recomputes=remat["recomputes"], bitwise=all(torch.equal(a, b) for a, b in zip(plain["grads"], remat["grads"])))
    finally:
        torch.use_deterministic_algorithms(False)


def stale_optimizer_and_live_export(rank, world):
    """An optimizer built before compile holds the replaced whole parameters: its step is refused
    (it would train nothing). An ExportedProgram kept alive holds them too: a warning says so."""
    import warnings

    import autosp

    module = tiny_causal_lm("Llama", **CONFIG)
    early = torch.optim.AdamW(module.parameters())
    ids, labels = (t[0] for t in _batches(1))
    ep = torch.export.export(module, (ids, labels))
    step = autosp.compile(ep, sp=2, shard="optimizer")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step(ids, labels)
    try:
        early.step()
        refused = None
    except autosp.AutoSPError as err:
        refused = str(err)
    late = torch.optim.AdamW(module.parameters())
    late.step()  # the optimizer made after compile steps the shards
    return {"warned": any("still referenced" in str(w.message) for w in caught), "refused": refused}


def cases(rank, world, checkpoint_dir):
    import warnings

    module = tiny_causal_lm("Llama", **CONFIG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)  # what each rank of a user's job would print
        results = {"collectives": collectives_match_dtensor(rank, world), "refused": different_weights_are_refused(rank, world)}
        for sp in MESHES:
            for shard in LEVELS:
                results[(sp, shard)] = train_and_compare(rank, world, module=module, sp=sp, shard=shard)
        results["checkpoint"] = checkpoint_round_trip(rank, world, module, checkpoint_dir)
    results["future_warnings"] = sorted({str(w.message) for w in caught if issubclass(w.category, FutureWarning)})
    results["memory"] = memory_held(rank, world, module)
    results["remat"] = remat_under_zero3(rank, world)
    results["stale"] = stale_optimizer_and_live_export(rank, world)
    return results


def checkpoint_round_trip(rank, world, module, folder):
    """Two AdamW steps, a torch.distributed.checkpoint save of the model and the optimizer, a
    third step; then load and take the third step again: the same loss, gradients and weights."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    import autosp

    sp = 2
    ids_all, labels_all = _batches(world // sp)
    ids, labels = ids_all[rank // sp], labels_all[rank // sp]
    module = copy.deepcopy(module)
    step = autosp.compile(torch.export.export(module, (ids, labels)), sp=sp, shard="parameters", optimizer="adamw")
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)

    def train_one():
        loss = step(ids, labels)
        grads = [_full(p.grad).clone() for p in module.parameters()]
        opt.step()
        opt.zero_grad()
        return loss, grads, [_full(p.detach()).clone() for p in module.parameters()]

    for _ in range(2):
        train_one()
    model_state, optim_state = get_state_dict(module, opt)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=folder)
    first = train_one()
    model_state, optim_state = get_state_dict(module, opt)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=folder)
    set_state_dict(module, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    again = train_one()
    same = torch.equal(first[0], again[0]) and all(
        torch.equal(a, b) for a, b in zip(first[1] + first[2], again[1] + again[2])
    )
    full = autosp.full_state_dict(module)
    return {"identical": same, "full_shapes": all(full[k].shape == v.shape for k, v in module.state_dict().items())}


def memory_held(rank, world, module):
    """At shard="parameters" the tracked peak is the predicted one, and the parameters held are
    this rank's shards: total / world (chunked rows), plus whole parameters only inside a window."""
    import autosp

    sp = 2
    ids_all, labels_all = _batches(world // sp)
    ids, labels = ids_all[rank // sp].clone(), labels_all[rank // sp].clone()  # (not views of the whole batch's storage)
    module = copy.deepcopy(module)
    step = autosp.compile(torch.export.export(module, (ids, labels)), sp=sp, shard="parameters")
    measured = step.measure_memory(ids, labels)
    shards = sum(p.to_local().numel() * p.element_size() for p in module.parameters())
    whole = sum(p.numel() * p.element_size() for p in module.parameters())
    return {
        "measured": measured, "predicted": step.predicted_tracked_bytes, "shard_bytes": shards, "whole_bytes": whole,
        "held": step.predicted_held,
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("dcp"))
    return run_pooled(4, cases, deadline=500, checkpoint_dir=folder)


@pytest.mark.parametrize("shard", LEVELS)
@pytest.mark.parametrize("sp", MESHES, ids=["sp4", "sp2xdp2", "sp1xdp4"])
def test_every_level_on_every_mesh_matches_eager_adamw(results, sp, shard):
    for rank, per_rank in enumerate(results):
        errors = per_rank[(sp, shard)]
        assert errors["loss"] <= TOLERANCE and errors["grad"] <= TOLERANCE and errors["param"] <= TOLERANCE, (rank, errors)
        assert errors["dtensors"], "the model's parameters are not DTensors after compile"
        assert errors["state_fraction"] <= 0.26, errors  # a quarter of the moments (98 rows: 25 of them)


def test_checkpoint_round_trip_gives_identical_next_steps(results):
    for per_rank in results:
        assert per_rank["checkpoint"]["identical"] and per_rank["checkpoint"]["full_shapes"]


def test_parameters_held_are_shards_and_the_peak_is_predicted(results):
    for per_rank in results:
        memory = per_rank["memory"]
        assert memory["measured"] == memory["predicted"], memory
        held = memory["held"]
        assert held["parameters"] == memory["shard_bytes"] <= memory["whole_bytes"] / 4 * 1.05, memory  # chunked rows
        assert 0 < held["gathered parameters"] < memory["whole_bytes"], memory  # a window of the model, never all of it


def test_bucket_collectives_cut_as_dtensor_does(results):
    rows = [per_rank["collectives"]["shard_rows"] for per_rank in results]
    assert [r[0] for r in rows] == [(2, 3), (2, 3), (2, 3), (0, 3)] and [r[1] for r in rows] == [(1, 5), (1, 5), (0, 5), (0, 5)]
    for per_rank in results:
        assert per_rank["collectives"]["gathered"] and per_rank["collectives"]["reduced"], per_rank["collectives"]


def test_sharded_training_and_checkpoints_print_no_future_warnings(results):
    for per_rank in results:
        assert per_rank["future_warnings"] == [], per_rank["future_warnings"]


def test_ranks_with_different_weights_are_refused_alike(results):
    messages = {per_rank["refused"] for per_rank in results}
    assert len(messages) == 1, messages
    (message,) = messages
    assert message.startswith("parameter 'model.model.layers.0.mlp.up_proj.weight' differs between rank 0 and rank 2"), message


def test_remat_fits_a_budget_under_zero3_with_bitwise_equal_gradients(results):
    for per_rank in results:
        remat = per_rank["remat"]
        assert remat["recomputes"] and remat["bitwise"], remat
        assert remat["predicted"] <= remat["budget"] and remat["measured"] == remat["tracked"] <= remat["budget"], remat


def test_an_optimizer_made_before_compile_is_refused_and_a_live_export_warned_of(results):
    for per_rank in results:
        stale = per_rank["stale"]
        assert stale["warned"], stale
        assert stale["refused"] and stale["refused"].startswith("AdamW holds a parameter that autosp.compile(shard=...) replaced"), stale
