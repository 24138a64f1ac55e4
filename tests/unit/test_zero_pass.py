"""The zero pass on a whole imported program (no processes needed): what each rank holds, what it
sends, and what the memory plan counts, at every shard level."""

import math

import pytest

from autosp.frontends import import_program
from autosp.frontends.presets import export_preset
from autosp.ir.dist import GatherWaitOp, ReduceScatterGradsOp
from autosp.ir.dtypes import tensor_bytes
from autosp.ir.program import train_step_of
from autosp.passes.memory_plan import plan_memory, state_breakdown
from autosp.pipeline import pipeline_spec, run_pipeline
from autosp.report import comm_report

SP, WORLD = 2, 4


@pytest.fixture(scope="module")
def imported():
    return import_program(export_preset("tiny-llama", seq=32, layers=2, fake=True))


def compiled(imported, shard, rank=0, optimizer="adamw"):
    spec = pipeline_spec(sp=SP, rank=rank % SP, shard=shard, world=WORLD, world_rank=rank, optimizer=optimizer, fuse=False)
    return run_pipeline(imported.clone(), spec)


def parameter_bytes(module) -> int:
    fn = train_step_of(module)
    return sum(tensor_bytes(arg) for arg, attrs in zip(fn.body.block.args, fn.arg_attrs.data)
               if attrs.data["autosp.kind"].data == "parameter")


def test_zero3_moves_three_times_the_parameters(imported):
    """One forward gather, one backward gather, one reduce-scatter per bucket: the ZeRO-3 volume
    (tiny-llama's dims divide by 4: no padding)."""
    whole = parameter_bytes(imported)
    report = comm_report(compiled(imported, "parameters"))
    volume = {kind: report.by_kind[kind] for kind in ("gather_params (forward)", "gather_params (backward)", "reduce_scatter_grads")}
    assert all(v == pytest.approx(whole * (WORLD - 1) / WORLD) for v in volume.values()), volume
    buckets = report.count["reduce_scatter_grads"]
    assert buckets == report.count["gather_params (forward)"] == report.count["gather_params (backward)"] == 3  # a layer each
    assert sum(v for k, v in report.by_layer.items() if k.startswith("parameters ")) == pytest.approx(3 * whole * 3 / 4)
    assert "all_reduce" in report.by_kind and report.count["all_reduce"] == 1  # only the loss: no gradient all-reduce left


@pytest.mark.parametrize("shard", ["optimizer", "gradients"])
def test_zero1_and_zero2_gather_once(imported, shard):
    whole = parameter_bytes(imported)
    report = comm_report(compiled(imported, shard))
    assert report.by_kind["gather_params (forward)"] + report.by_kind["reduce_scatter_grads"] == pytest.approx(2 * whole * 3 / 4)
    assert "gather_params (backward)" not in report.by_kind


@pytest.mark.parametrize("rank", range(WORLD))
def test_each_rank_holds_its_shards_and_its_share_of_the_optimizer_state(imported, rank):
    whole = parameter_bytes(imported)
    module = compiled(imported, "parameters", rank=rank)
    assert parameter_bytes(module) == whole / WORLD  # tiny-llama's rows divide by 4
    held = state_breakdown(module)
    assert held["parameters"] == whole / WORLD
    assert held["optimizer state"] == 2 * whole / WORLD  # AdamW: two moments in the parameters' dtype
    gathered = [op for op in module.walk() if isinstance(op, GatherWaitOp)]
    largest_bucket = max(sum(tensor_bytes(r) for r in op.results) for op in gathered)
    # a window, never the whole model: one bucket whole, the next one's buffer in flight
    assert held["gathered parameters"] <= 2 * largest_bucket
    assert plan_memory(module).peak_bytes - plan_memory(module, optimizer_state=False).peak_bytes == 2 * whole / WORLD


def test_zero3_peak_is_below_the_unsharded_one(imported):
    unsharded = plan_memory(compiled(imported, "none")).peak_bytes
    sharded = plan_memory(compiled(imported, "parameters")).peak_bytes
    whole = parameter_bytes(imported)
    # parameters and AdamW state: 3 x whole unsharded, 3 x whole / 4 sharded, plus a gathered
    # window and the gather's staging (at this size a bucket is a third of the model)
    assert sharded < unsharded - 1.5 * whole


def test_every_gradient_leaves_as_a_shard(imported):
    module = compiled(imported, "gradients")
    fn = train_step_of(module)
    scattered = {r for op in module.walk() if isinstance(op, ReduceScatterGradsOp) for r in op.results}
    returned = list(fn.body.block.last_op.operands)[1:]
    assert returned and all(v in scattered for v in returned)
    assert math.isclose(sum(tensor_bytes(v) for v in returned), parameter_bytes(imported) / WORLD)
