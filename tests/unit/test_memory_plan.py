"""memory-plan: the predicted peak equals what the generated program holds when it runs."""

import pytest

import autosp
from autosp.frontends import import_program
from autosp.frontends.presets import build_preset, export_loss_module
from autosp.passes.memory_plan import plan_memory
from autosp.pipeline import pipeline_spec, run_pipeline


@pytest.mark.parametrize("seq", [256, 1024])
def test_predicted_peak_matches_measured(seq, tmp_cache):
    model, (ids, labels) = build_preset("tiny-llama", seq=seq)
    ep = export_loss_module(model, (ids, labels))
    step = autosp.compile(ep)
    measured = step.measure_memory(ids, labels)
    # The tracker sees the storages the program holds between ops, not a kernel's scratch.
    plan = plan_memory(run_pipeline(import_program(ep), pipeline_spec()), workspace=False)
    assert abs(plan.peak_bytes - measured) <= 0.05 * measured, (plan.peak_bytes, measured)
    assert plan.held_bytes < 0.2 * plan.peak_bytes  # activations dominate at these lengths
    assert "memory (predicted)" in step.report and "peak" in step.report
