"""The generated program reads like code a person would write: one kernel per distinct body,
whatever the depth, and no bookkeeping lines in the program that trains."""

import re

import pytest
import torch

from autosp.codegen import generate
from autosp.frontends import import_program
from autosp.frontends.presets import export_preset
from autosp.pipeline import pipeline_spec, run_pipeline


def program(layers: int) -> str:
    ep = export_preset("tiny-llama", seq=32, layers=layers, fake=True, dtype=torch.bfloat16)
    return generate(run_pipeline(import_program(ep), pipeline_spec()))


@pytest.fixture(scope="module")
def shallow_and_deep():
    return program(2), program(16)


def test_a_deeper_model_compiles_no_more_kernels(shallow_and_deep):
    shallow, deep = shallow_and_deep
    kernels = [set(re.findall(r"^def (\w+)_kernel\(", source, re.M)) for source in (shallow, deep)]
    assert kernels[0] == kernels[1] and len(kernels[0]) >= 8
    calls = [len(re.findall(r"= (?:" + "|".join(kernels[0]) + r")\(", source)) for source in (shallow, deep)]
    assert calls[1] > 4 * calls[0]  # the layers call the same kernels


def test_the_program_has_no_tracking_lines(shallow_and_deep):
    shallow, _ = shallow_and_deep
    assert "TRACK" not in shallow


def test_each_block_names_the_model_module_it_came_from(shallow_and_deep):
    _, deep = shallow_and_deep
    comments = re.findall(r"^    # (.*)$", deep, re.M)
    for layer in (0, 15):
        for module in (f"layers.{layer}.self_attn (LlamaAttention)", f"layers.{layer}.mlp.down_proj (Linear)"):
            assert f"model.model.{module}" in comments
            assert f"backward of model.model.{module}" in comments
    # Blocks follow the model: the forward runs layer 0 to 15, the backward 15 to 0.
    layers = [int(m) for c in comments for m in re.findall(r"layers\.(\d+)\.", c)]
    turn = layers.index(15)
    assert layers[: turn + 1] == sorted(layers[: turn + 1])
    backward = [int(m) for c in comments if c.startswith("backward of") for m in re.findall(r"layers\.(\d+)\.", c)]
    assert backward == sorted(backward, reverse=True) and backward[0] == 15 and backward[-1] == 0
