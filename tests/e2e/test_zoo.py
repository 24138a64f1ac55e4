"""`autosp-bench zoo` on a subset of transformers' causal LMs that covers the mechanisms the full
sweep found (the sweep itself is one command: `autosp-bench zoo -o benchmarks/zoo.json --table
docs/models.md`): each built from its own config class, one step against eager at sp=1 (the
mechanisms at sp=2 are in test_zoo_mechanisms.py, on hand-made modules)."""

import pytest

from autosp.tools import zoo

# model type -> what it exercises
SUBSET = {
    "deepseek_v3": "MLA: a value head dim other than the query/key one",
    "afmoe": "a view of SDPA's transposed output; top-k MoE routing",
    "lfm2": "short causal convolutions without bias (a None bias gradient)",
}


@pytest.mark.parametrize("model_type", sorted(SUBSET))
def test_exact_at_sp1(model_type, tmp_cache):
    result = zoo.check_model(model_type, 1)
    assert result["status"] == "exact", result


def test_the_table_is_generated_from_the_results():
    results = {"transformers": "5.25.0", "models": {
        "llama": {"class": "LlamaForCausalLM", "sp": {"1": {"status": "exact", "loss": 0.0, "grad": 7e-7},
                                                        "2": {"status": "exact", "loss": 1e-8, "grad": 8e-7}}},
        "odd": {"class": "OddForCausalLM", "sp": {"1": {"status": "refused", "reason": "attention x: a | b"}}},
    }}
    table = zoo.markdown(results)
    assert "| exact | 1 | 1 |" in table and "| refused | 1 | 0 |" in table
    assert "| llama | LlamaForCausalLM | exact (7.0e-07) | exact (8.0e-07) |" in table
    assert "| odd | OddForCausalLM | refused: attention x: a \\| b |  |" in table
