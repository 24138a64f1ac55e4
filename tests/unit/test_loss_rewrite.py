"""The frontend fuses exactly `cross_entropy(linear(h, W)[.float()].view(-1, V), labels)` into
autosp.linear_cross_entropy, and leaves any other loss as written."""

import re

import pytest
import torch
import torch.nn.functional as F

from autosp.frontends import import_program
from autosp.frontends.loss import chunk_rows

VOCAB, WIDTH, SEQ = 40, 8, 12


class HeadLoss(torch.nn.Module):
    def __init__(self, **ce):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        self.head = torch.nn.Linear(WIDTH, VOCAB, bias=False)
        self.ce = ce

    def forward(self, ids, labels):
        logits = self.head(torch.tanh(self.embed(ids))).float()
        return F.cross_entropy(logits.view(-1, VOCAB), labels.view(-1), **self.ce)


def _ir(**ce) -> str:
    ids = torch.randint(0, VOCAB, (2, SEQ))
    ep = torch.export.export(HeadLoss(**ce), (ids, ids.clone()))
    return str(import_program(ep))


def _logits_tensors(ir: str) -> list[str]:
    return [line for line in ir.splitlines() if f"{2 * SEQ}x{VOCAB}x" in line]


def test_mean_loss_is_fused_and_divided_by_the_valid_count():
    ir = _ir()
    assert "autosp.linear_cross_entropy" in ir
    assert "ignore_index = -100" in ir
    # sum / max(count, 1), NaN where the count is 0: eager's 0/0 loss without its 1/0 in the backward
    assert "%clamp = aten.clamp.default %sum <{min = 1 : i64}>" in ir
    assert "%gt = aten.gt.Scalar %sum <{other = 0 : i64}>" in ir
    assert "aten.div.Tensor %linear_cross_entropy_r0, %clamp" in ir
    assert re.search(r"%where = aten.where.self %gt, %div, %full_like ", ir)
    # the backward: the gradient scale is where(count > 0, 1, 0) / max(count, 1), never 1/0
    assert re.search(r"%where_1 = aten.where.self %gt, %full_like_1, %scalar_tensor ", ir)
    assert "aten.div.Tensor %where_1, %clamp" in ir
    assert not _logits_tensors(ir)  # no [N, V] value anywhere, forward or backward


def test_sum_loss_is_fused_without_a_division():
    ir = _ir(reduction="sum", ignore_index=3)
    assert "autosp.linear_cross_entropy" in ir and "ignore_index = 3" in ir
    assert "aten.div.Tensor %linear_cross_entropy_r0" not in ir


@pytest.mark.parametrize("ce", [dict(label_smoothing=0.1), dict(weight=torch.rand(VOCAB))])
def test_other_losses_are_left_as_written(ce):
    ir = _ir(**ce)
    assert "autosp.linear_cross_entropy" not in ir
    assert _logits_tensors(ir)


def test_chunk_rows_bound_the_logits_chunk():
    assert chunk_rows(1 << 20, 128256) == 2048  # 1 GiB of fp32 logits at a Llama-3 vocabulary
    assert chunk_rows(100, 50) == 100
