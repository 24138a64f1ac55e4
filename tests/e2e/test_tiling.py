"""Token-wise chains in chunks of rows (the tile-rows pass): norms, MLPs of every shape (gated,
fused gate_up, GELU), projections, RoPE and residual adds computed a chunk of tokens at a time,
their backward recomputing each chunk. Against eager PyTorch (loss and every gradient within
1e-5) at sp=1 and sp=2, with the step's measured peak equal to the prediction and below the
untiled step's; and `tile_rows="auto"` choosing it where nothing else fits."""

import copy

import pytest
import torch

import autosp
from tests.conftest import relative_error, tiny_causal_lm
from tests.e2e.sp_harness import run_pooled

SEQ = 509  # odd: uneven sp parts, and a last chunk shorter than the others
ARCHS = {
    "Llama": {},
    "Qwen2": {},
    "Phi3": {"pad_token_id": 0},  # fused qkv and gate_up projections
    "GPTNeoX": {},  # LayerNorm, GELU MLP, parallel attention and MLP, partial rotary
}
CHUNK_BYTES = 1 << 16  # ~100 tokens a chunk at these widths: several chunks, the last shorter


def _model(arch: str, **overrides):
    config = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=SEQ) | ARCHS[arch] | overrides
    if arch == "GPTNeoX":
        config.pop("num_key_value_heads")
    module = tiny_causal_lm(arch, **config)
    ids = torch.randint(0, 96, (1, SEQ), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[0, ::5] = -100
    return module, ids, labels


def tiled_case(rank, world, *, arch):
    """The step with every token-wise chain tiled, on this rank (sp = world), against eager."""
    from autosp.passes import tile_rows

    module, ids, labels = _model(arch)
    reference = copy.deepcopy(module)
    ep = torch.export.export(module, (ids, labels))
    untiled = autosp.compile(ep, sp=world, tile_rows=False)
    chunk_bytes, tile_rows.CHUNK_BYTES = tile_rows.CHUNK_BYTES, CHUNK_BYTES
    try:
        step = autosp.compile(ep, sp=world, tile_rows=True)
    finally:  # (the ranks' processes run other tests after this one)
        tile_rows.CHUNK_BYTES = chunk_bytes
    measured = step.measure_memory(ids, labels)
    module.zero_grad(set_to_none=True)
    loss = step(ids, labels)
    eager = reference(ids, labels)
    eager.backward()
    return dict(
        tiled=step.source.count("tiles.run("), loss=relative_error(loss, eager.detach()),
        grad=max(relative_error(p.grad, r.grad) for p, r in zip(module.parameters(), reference.parameters())),
        measured=measured, tracked=step.predicted_tracked_bytes, predicted=step.predicted_peak_bytes,
        untiled=untiled.predicted_peak_bytes, reported="computed in chunks of rows" in step.report,
    )


def check(stats: dict) -> None:
    print(stats)
    assert stats["tiled"] >= 4  # two layers: a forward and a backward region between attentions, and more
    assert stats["reported"]
    assert stats["loss"] <= 1e-5 and stats["grad"] <= 1e-5
    assert stats["measured"] == stats["tracked"] <= stats["predicted"] < stats["untiled"]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_tiled_chains_match_eager_sp1(arch, tmp_cache):
    check(tiled_case(0, 1, arch=arch))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_tiled_chains_match_eager_sp2(arch):
    for stats in run_pooled(2, tiled_case, arch=arch):
        check(stats)


def test_tile_rows_auto_where_nothing_else_fits(tmp_cache, monkeypatch):
    """A budget below the least peak remat reaches with whole token-wise chains (and gated MLPs
    in chunks) but above the least with them tiled: compile's default tile_rows="auto" tiles."""
    from autosp.driver import imported
    from autosp.passes import tile_rows
    from autosp.passes.cost_model import device_profile
    from autosp.passes.remat import least_memory
    from autosp.pipeline import pipeline_spec, run_pipeline, until_remat

    chunk = CHUNK_BYTES // 2  # ~50 tokens: here the tiled step's least peak is below the others'
    monkeypatch.setattr(tile_rows, "CHUNK_BYTES", chunk)
    module, ids, labels = _model("Llama")
    reference = copy.deepcopy(module)
    ep = torch.export.export(module, (ids, labels))

    def least(mlp: bool, rows: bool) -> int:
        head, _ = until_remat(pipeline_spec(remat=True, tile_rows=rows, tile_bytes=chunk))
        return least_memory(run_pipeline(imported(ep, mlp)[0], head), device_profile("cpu"), fused=True)

    whole, tiled = min(least(False, False), least(True, False)), least(True, True)
    assert tiled < whole
    budget = (whole + tiled) // 2
    step = autosp.compile(ep, remat=True, memory_budget=budget, cost_model="cpu")
    assert step.source.count("tiles.run(") >= 4
    assert step.measure_memory(ids, labels) <= step.predicted_peak_bytes <= budget
    module.zero_grad(set_to_none=True)
    loss = step(ids, labels)
    eager = reference(ids, labels)
    eager.backward()
    assert relative_error(loss, eager.detach()) <= 1e-5
    assert max(relative_error(p.grad, r.grad) for p, r in zip(module.parameters(), reference.parameters())) <= 1e-5


def zero3_tiled_case(rank, world, *, sp):
    """ZeRO-3 places each bucket's gradient reduce-scatter right after its last gradient: in the
    first layer that is before the embedding gradient's mask of the token ids, which the tiled
    backward region reads; the mask (made from the arguments alone) moves to the region, so
    every region is tiled as without sharding, and the gradients equal eager's."""
    from torch.distributed.tensor import DTensor

    from autosp.passes import tile_rows

    module, ids, labels = _model("Llama", tie_word_embeddings=True)  # the embedding gradient in the last bucket
    reference = copy.deepcopy(module)
    sharded = copy.deepcopy(module)
    chunk_bytes, tile_rows.CHUNK_BYTES = tile_rows.CHUNK_BYTES, CHUNK_BYTES
    try:
        plain = autosp.compile(torch.export.export(module, (ids, labels)), sp=sp, tile_rows=True)
        step = autosp.compile(torch.export.export(sharded, (ids, labels)), sp=sp, tile_rows=True, shard="parameters")
    finally:
        tile_rows.CHUNK_BYTES = chunk_bytes
    loss = step(ids, labels)
    eager = reference(ids, labels)
    eager.backward()
    grads = [p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad for p in sharded.parameters()]
    return dict(
        tiled=step.source.count("tiles.run("), unsharded_tiled=plain.source.count("tiles.run("),
        loss=relative_error(loss, eager.detach()),
        grad=max(relative_error(g, r.grad) for g, r in zip(grads, reference.parameters())),
    )


@pytest.mark.parametrize("sp", [1, 2])  # dp=2, sp=2
def test_tiled_chains_under_zero3(sp):
    for stats in run_pooled(2, zero3_tiled_case, sp=sp):
        print(stats)
        assert stats["tiled"] == stats["unsharded_tiled"] >= 4
        assert stats["loss"] <= 1e-5 and stats["grad"] <= 1e-5
