"""The mask recognizer: masks built from arange/compare ops become (causal, window)."""

import pytest
import torch

from autosp.frontends.mask import MaskNotUnderstood, classify

S = 12


class Builder(torch.nn.Module):
    def __init__(self, make):
        super().__init__()
        self.make = make

    def forward(self, q):
        mask = self.make()
        return torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask).sum()


def mask_node(make):
    ep = torch.export.export(Builder(make), (torch.randn(1, 2, S, 4),))
    sdpa = next(n for n in ep.graph.nodes if n.target == torch.ops.aten.scaled_dot_product_attention.default)
    return sdpa.args[3]


def causal_le():
    i = torch.arange(S)
    return i[None, None, None, :] <= i[None, None, :, None]


def causal_tril():
    return torch.ones(S, S, dtype=torch.bool).tril()


def sliding(window=4):
    i = torch.arange(S)
    q, k = i[:, None], i[None, :]
    return (k <= q) & (k > q - window)


def additive_causal():
    return torch.where(causal_le(), 0.0, float("-inf"))


def all_true():
    return torch.ones(1, 1, S, S, dtype=torch.bool)


@pytest.mark.parametrize(
    "make, causal, window",
    [(causal_le, True, 0), (causal_tril, True, 0), (sliding, True, 4), (additive_causal, True, 0), (all_true, False, 0)],
)
def test_recognized(make, causal, window):
    description = classify(mask_node(make))
    assert (description.causal, description.window) == (causal, window)


def anti_causal():
    i = torch.arange(S)
    return i[None, :] >= i[:, None]


def shifted_diagonal():
    i = torch.arange(S)
    return i[None, :] <= i[:, None] + 2


def disjunction():
    i = torch.arange(S)
    return (i[None, :] <= i[:, None]) | (i[None, :] == 0)


@pytest.mark.parametrize("make", [anti_causal, shifted_diagonal, disjunction])
def test_refused(make):
    with pytest.raises(MaskNotUnderstood):
        classify(mask_node(make))
