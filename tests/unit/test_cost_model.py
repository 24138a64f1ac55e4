"""The remat pass's inputs: budgets and the roofline cost model."""

import pytest
from xdsl.dialects.builtin import TensorType, f32
from xdsl.ir import Block

from autosp.ir.autosp import AttentionOp
from autosp.ir.context import autosp_context
from autosp.passes.cost_model import GiB, device_profile, op_flops, op_seconds
from autosp.passes.remat import parse_budget
from autosp.common.errors import AutoSPError


@pytest.mark.parametrize(
    "text, expected",
    [(123456, 123456), ("123456", 123456), ("512MiB", 512 * 2**20), ("70GiB", 70 * GiB), ("1.5 GB", 1_500_000_000),
     ("80gib", 80 * GiB)],
)
def test_budget_sizes(text, expected):
    assert parse_budget(text, device_profile("h100")) == expected


def test_auto_budget_leaves_a_margin():
    h100 = device_profile("h100")
    assert parse_budget("auto", h100) == 80 * GiB - int(0.08 * 80 * GiB)
    small = device_profile("h100", memory_bytes=16 * GiB)
    assert parse_budget("auto", small) == 14 * GiB  # at least 2 GiB


@pytest.mark.parametrize("bad", ["lots", "70 GiBs", "-1GiB", "0", ""])
def test_bad_budgets_are_refused(bad):
    with pytest.raises(AutoSPError, match="memory budget"):
        parse_budget(bad, device_profile("h100"))


def test_unknown_cost_model():
    with pytest.raises(AutoSPError, match="unknown cost model 'tpu'; known: cpu, h100, h200, mi300x"):
        device_profile("tpu")


def _ops(seq: int):
    autosp_context()  # registers the aten op classes
    from autosp.ir.aten import aten_op_class

    t = TensorType(f32, [1, 32, seq, 64])
    block = Block(arg_types=[t])
    x = block.args[0]
    attention = AttentionOp(x, x, x, causal=True, window=0, scale=0.125)
    sigmoid = aten_op_class("aten.sigmoid.default").build(operands=[x], result_types=[t])
    return attention, sigmoid


def test_roofline_prices_attention_quadratically_and_elementwise_by_bytes():
    h100 = device_profile("h100")
    short_attention, _ = _ops(4096)
    long_attention, long_sigmoid = _ops(65536)
    # Causal attention: 4 * B * H * S * (S+1)/2 * D FLOPs.
    assert op_flops(short_attention) == 4 * 32 * 4096 * (4097 / 2) * 64
    growth = op_seconds(long_attention, h100) / op_seconds(short_attention, h100)
    assert 200 < growth < 260  # ~S^2: 16x longer, ~256x the time
    # The sigmoid is bandwidth-bound: its time is its bytes over the bandwidth, not its FLOPs.
    sigmoid_bytes = 2 * 32 * 65536 * 64 * 4
    assert op_seconds(long_sigmoid, h100) == pytest.approx(h100.launch_s + sigmoid_bytes / h100.bandwidth)
    assert op_seconds(long_attention, h100) > 100 * op_seconds(long_sigmoid, h100)
    # Overrides change the numbers the roofline uses.
    slow = device_profile("h100", bandwidth=h100.bandwidth / 10)
    assert op_seconds(long_sigmoid, slow) > 9 * (op_seconds(long_sigmoid, h100) - h100.launch_s)
