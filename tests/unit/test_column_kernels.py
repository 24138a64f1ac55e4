"""Generated kernels that move values along the last dim (slices, concatenations and
slice_scatter inside one fused chain, as RoPE's rotate_half and its gradient): the whole step
in Triton (the interpreter on CPU) against eager, fp32 and bf16."""

import copy

import pytest
import torch

import autosp
from tests.conftest import relative_error


class Shuffles(torch.nn.Module):
    """Pieces of odd widths, moved and recombined, forward and backward."""

    def __init__(self, dtype):
        super().__init__()
        self.embed = torch.nn.Embedding(32, 12, dtype=dtype)

    def forward(self, ids):
        x = self.embed(ids)
        y = torch.cat([x[..., 3:7] * 2, -x[..., :3], x[..., 7:]], dim=-1)  # widths 4 + 3 + 5
        z = torch.slice_scatter(torch.zeros_like(x), y[..., 2:9].sigmoid(), dim=-1, start=1, end=8)
        return (z * x + y).float().square().mean()


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_moved_columns_match_eager(dtype, tolerance, tmp_cache, monkeypatch):
    monkeypatch.setenv("AUTOSP_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    module = Shuffles(dtype)
    reference = copy.deepcopy(module)
    ids = torch.randint(0, 32, (2, 5))
    step = autosp.compile(torch.export.export(module, (ids,)))
    kernels = step.source.split("@triton.jit")[1:]
    assert any("(cols + " in k and "tl.where(cols < " in k for k in kernels), "no kernel reads shifted columns"
    loss = step(ids)
    eager = reference(ids)
    eager.backward()
    assert relative_error(loss.float(), eager.detach().float()) < tolerance
    assert relative_error(module.embed.weight.grad.float(), reference.embed.weight.grad.float()) < tolerance
