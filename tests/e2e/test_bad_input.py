"""Bad input: one clear AutoSPError naming what is wrong, never a wrong result."""

import pytest
import torch

import autosp
from autosp import AutoSPError
from tests.conftest import tiny_causal_lm


class NotALoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.linear(x)


def test_forward_must_return_a_scalar(tmp_cache):
    ep = torch.export.export(NotALoss(), (torch.randn(2, 8),))
    with pytest.raises(AutoSPError, match="scalar loss"):
        autosp.compile(ep)


def test_input_of_another_shape_is_refused(tmp_cache):
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids = torch.randint(0, 96, (1, 16))
    step = autosp.compile(torch.export.export(module, (ids, ids.clone())))
    other = torch.randint(0, 96, (1, 20))
    with pytest.raises(AutoSPError, match=r"input 'input_ids' is int64\[1, 20\] but the step was compiled for int64\[1, 16\]"):
        step(other, other.clone())
    with pytest.raises(AutoSPError, match="takes 2 inputs"):
        step(ids)


def test_bad_options_are_refused_not_ignored(tmp_cache):
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids = torch.randint(0, 96, (1, 16))
    ep = torch.export.export(module, (ids, ids.clone()))
    with pytest.raises(AutoSPError, match="sp=2 needs torch.distributed initialized"):
        autosp.compile(ep, sp=2)
    with pytest.raises(AutoSPError, match="only apply with remat=True"):
        autosp.compile(ep, memory_budget="1GiB")
    with pytest.raises(AutoSPError, match="memory budget '12 parsecs' is not a size"):
        autosp.compile(ep, remat=True, memory_budget="12 parsecs")
    with pytest.raises(AutoSPError, match=r"remat: the step needs .* per rank at S=16 \(sp=1\)"):
        autosp.compile(ep, remat=True, memory_budget=4096)
    with pytest.raises(AutoSPError, match="tile_mlp='yes': use True, False or 'auto'"):
        autosp.compile(ep, tile_mlp="yes")
    with pytest.raises(AutoSPError, match="ExportedProgram"):
        autosp.compile(module)


class MaskedAttention(torch.nn.Module):
    def __init__(self, mask_kind: str):
        super().__init__()
        self.proj = torch.nn.Linear(16, 48)
        self.mask_kind = mask_kind

    def forward(self, x, padding):
        q, k, v = self.proj(x).view(1, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
        if self.mask_kind == "input":  # a padding mask that comes from a graph input
            mask = padding[:, None, None, :].bool()
        else:  # anti-causal: keys after the query
            i = torch.arange(8)
            mask = i[None, :] >= i[:, None]
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.sum()


@pytest.mark.parametrize("kind, message", [("input", "depends on the graph input"), ("anti", "attention mask is not understood")])
def test_masks_that_are_not_index_functions_are_refused(kind, message, tmp_cache):
    ep = torch.export.export(MaskedAttention(kind), (torch.randn(1, 8, 16), torch.ones(1, 8)))
    with pytest.raises(AutoSPError, match=message):
        autosp.compile(ep)
