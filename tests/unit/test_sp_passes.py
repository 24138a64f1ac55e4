"""sp-propagate / sp-partition on whole imported programs (no processes needed)."""

import pytest
import torch

from autosp.frontends import import_program
from autosp.pipeline import pipeline_spec, run_pipeline
from autosp.common.errors import AutoSPError
from autosp.ir.program import train_step_of
from tests.conftest import tiny_causal_lm


@pytest.fixture(scope="module")
def llama_ir():
    module = tiny_causal_lm("Llama")
    ids = torch.randint(0, 96, (1, 48))
    return str(import_program(torch.export.export(module, (ids, ids.clone()))))


def partition(text, sp):
    from xdsl.parser import Parser

    from autosp.ir import autosp_context

    return run_pipeline(Parser(autosp_context(), text).parse_module(), pipeline_spec(sp=sp))


def collectives(module):
    return [op for op in module.walk() if op.name.startswith("dist.")]


def test_ulysses_collectives_per_layer(llama_ir):
    module = partition(llama_ir, 2)
    names = [op.name for op in collectives(module)]
    layers = 2
    # forward q, k, v, o + backward dO, dq, dk, dv: 8 all-to-alls per layer, nothing gathered.
    assert names.count("dist.all_to_all") == 8 * layers
    assert "dist.all_gather" not in names
    # every parameter gradient and the loss are all-reduced once
    params = sum(1 for arg in train_step_of(module).body.block.args if "p_" in (arg.name_hint or ""))
    assert names.count("dist.all_reduce") == params + 1


def test_sequence_sharded_local_shapes(llama_ir):
    module = partition(llama_ir, 4)
    for op in module.walk():
        if op.name == "autosp.attention":
            q, k = op.query.type.get_shape(), op.key.type.get_shape()
            assert tuple(q) == (1, 1, 48, 12)  # 4 heads / sp 4, full sequence
            assert tuple(k) == (1, 1, 48, 12)  # one of 2 kv heads, not expanded
        if op.name == "aten.embedding.default":
            assert tuple(op.results[0].type.get_shape()) == (1, 12, 48)


def test_heads_that_do_not_split_are_refused(llama_ir):
    with pytest.raises(AutoSPError, match=r"4 query heads / 2 key-value heads do not split over sp=3 .*valid sp degrees: \[1, 2, 4\]"):
        partition(llama_ir, 3)


def test_uneven_sequence_parts_differ_only_in_sizes():
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids = torch.randint(0, 96, (1, 30))
    text = str(import_program(torch.export.export(module, (ids, ids.clone()))))
    from xdsl.parser import Parser

    from autosp.ir import autosp_context

    programs = [
        run_pipeline(Parser(autosp_context(), text).parse_module(), pipeline_spec(sp=4, rank=rank))
        for rank in range(4)
    ]
    embedding_tokens = []
    for program in programs:
        embedding = next(op for op in program.walk() if op.name == "aten.embedding.default")
        embedding_tokens.append(embedding.results[0].type.get_shape()[1])
    assert embedding_tokens == [8, 8, 7, 7]  # torch.tensor_split parts of 30 tokens
    # the same collectives in the same order on every rank
    sequences = [[op.name for op in program.walk() if op.name.startswith("dist.")] for program in programs]
    assert all(seq == sequences[0] for seq in sequences)
    # attention sees the whole (unpadded) sequence
    attention = next(op for op in programs[3].walk() if op.name == "autosp.attention")
    assert attention.query.type.get_shape()[2] == 30


def test_sequence_shorter_than_sp_is_refused(llama_ir):
    with pytest.raises(AutoSPError, match="sequence length 48 is shorter than sp=64"):
        partition(llama_ir, 64)


def test_llama_1b_128k_sp8_moves_the_ulysses_optimum():
    from autosp.frontends.presets import export_preset
    from autosp.report import comm_report, ulysses_optimum_per_layer

    module = import_program(export_preset("llama-3.2-1b", seq=131072, layers=2, fake=True))
    report = comm_report(run_pipeline(module, pipeline_spec(sp=8)))
    optimum = ulysses_optimum_per_layer(batch=1, seq=131072, q_heads=32, kv_heads=8, head_dim=64, dtype_bytes=4, sp=8)
    assert optimum == 560 * 2**20
    assert report.by_layer == {"layer 0 attention": optimum, "layer 1 attention": optimum, "gradients and loss": report.by_kind["all_reduce"]}
    assert report.count["all_to_all"] == 16 and "all_gather" not in report.count


def test_batch_merged_with_sequence_stays_sharded():
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids = torch.randint(0, 96, (2, 16))
    text = str(import_program(torch.export.export(module, (ids, ids.clone()))))
    names = [op.name for op in collectives(partition(text, 2))]
    assert "dist.all_gather" not in names
    assert names.count("dist.all_to_all") == 8
