"""Mechanisms of the model zoo (`autosp-bench zoo`) on small hand-made modules, each at sp=1 and
on two gloo ranks against eager: the loss and every gradient within 1e-5."""

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import relative_error

TOLERANCE = 1e-5
VOCAB, WIDTH, HEADS = 32, 16, 4


class ViewedAttention(torch.nn.Module):
    """Attention whose output is `view`ed after `.transpose(1, 2).contiguous()`, which export
    keeps only as a no-op (SDPA's result is laid out [B, S, H, D]): the view needs that layout."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, WIDTH)
        self.qkv = torch.nn.Linear(WIDTH, 3 * WIDTH, bias=False)
        self.head = torch.nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, ids, labels):
        b, s = ids.shape
        q, k, v = self.qkv(self.emb(ids)).view(b, s, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(b, s, WIDTH)
        return F.cross_entropy(self.head(out).flatten(0, 1), labels.flatten())


class CausalConvolution(torch.nn.Module):
    """A causal depthwise convolution without bias along the sequence (the short convolutions of
    hybrid models): its backward has no bias gradient (None)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, WIDTH)
        self.conv = torch.nn.Conv1d(WIDTH, WIDTH, 4, groups=WIDTH, padding=3, bias=False)
        self.head = torch.nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, ids, labels):
        x = self.conv(self.emb(ids).transpose(1, 2))[..., : ids.shape[1]].transpose(1, 2)
        return F.cross_entropy(self.head(F.silu(x)).flatten(0, 1), labels.flatten())


class TopTwoRouting(torch.nn.Module):
    """MoE routing: each token's top-2 experts flattened with the tokens ([S, 2] -> [2S]); at an
    odd length the ranks' parts of 2S are not halves of it."""

    def __init__(self, experts=4):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, WIDTH)
        self.router = torch.nn.Linear(WIDTH, experts, bias=False)
        self.experts = torch.nn.Parameter(torch.randn(experts, WIDTH, WIDTH) / WIDTH**0.5)
        self.head = torch.nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, ids, labels):
        x = self.emb(ids)
        weights, chosen = self.router(x).softmax(-1).topk(2)
        routed = x.reshape(-1, WIDTH).repeat_interleave(2, dim=0).unsqueeze(1) @ self.experts[chosen.reshape(-1)]
        out = (routed.view(-1, 2, WIDTH) * weights.reshape(-1, 2, 1)).sum(1).view(x.shape)
        return F.cross_entropy(self.head(out).flatten(0, 1), labels.flatten())


class ValueHeadDim(torch.nn.Module):
    """Attention whose value head dim (8) differs from the query/key head dim (12), as MLA's
    (DeepSeek-V3): kernels that take one head dim must not run it."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, WIDTH)
        self.qk = torch.nn.Linear(WIDTH, 2 * HEADS * 12, bias=False)
        self.v = torch.nn.Linear(WIDTH, HEADS * 8, bias=False)
        self.o = torch.nn.Linear(HEADS * 8, VOCAB, bias=False)

    def forward(self, ids, labels):
        b, s = ids.shape
        x = self.emb(ids)
        q, k = self.qk(x).view(b, s, 2, HEADS, 12).permute(2, 0, 3, 1, 4)
        v = self.v(x).view(b, s, HEADS, 8).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, HEADS * 8)
        return F.cross_entropy(self.o(out).flatten(0, 1), labels.flatten())


class TopKIndexer(torch.nn.Module):
    """A parameter reached only through top-k indices (DeepSeek's sparse-attention indexer):
    the loss does not differentiate it, so eager leaves its .grad None."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, WIDTH)
        self.indexer = torch.nn.Linear(WIDTH, 1, bias=False)
        self.head = torch.nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, ids, labels):
        x = self.emb(ids)
        chosen = self.indexer(x).squeeze(-1).topk(4, dim=-1).indices  # [B, 4]
        summary = x.gather(1, chosen.unsqueeze(-1).expand(-1, -1, WIDTH)).mean(1, keepdim=True)
        return F.cross_entropy(self.head(x + summary).flatten(0, 1), labels.flatten())


class FloatScalarAndMask(torch.nn.Module):
    """A float number and a boolean mask in one op (PhiMoE's `torch.add(0.3333, mask, alpha=0.6667)`),
    and `1.5 - mask`: the number must not take the mask's dtype (a crash, or 1.5 read as 1)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, WIDTH)
        self.head = torch.nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, ids, labels):
        x = self.emb(ids)
        mask = x > 0
        scale = torch.add(0.3333, mask, alpha=0.6667) * torch.rsub(mask.long(), 1.5)
        return F.cross_entropy(self.head(x * scale).flatten(0, 1), labels.flatten())


MODULES = {"viewed-attention": ViewedAttention, "causal-convolution": CausalConvolution, "top-two-routing": TopTwoRouting,
           "value-head-dim": ValueHeadDim, "top-k-indexer": TopKIndexer,
           "float-scalar-and-mask": FloatScalarAndMask}


def errors_against_eager(rank, world, *, name, seq=17):
    """(loss error, worst gradient error) of the step on this rank (sp = world) against eager."""
    import autosp

    torch.manual_seed(0)
    module = MODULES[name]()
    reference = copy.deepcopy(module)
    g = torch.Generator().manual_seed(3)
    ids, labels = torch.randint(0, VOCAB, (1, seq), generator=g), torch.randint(0, VOCAB, (1, seq), generator=g)
    step = autosp.compile(torch.export.export(module, (ids, labels)), sp=world)
    loss = step(ids, labels)
    eager = reference(ids, labels)
    eager.backward()
    grads = [(p.grad, r.grad) for p, r in zip(module.parameters(), reference.parameters())]
    if any((got is None) != (expected is None) for got, expected in grads):
        return float("inf"), float("inf")
    return relative_error(loss, eager.detach()), max(
        relative_error(got, expected) for got, expected in grads if expected is not None)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_at_sp1(name, tmp_cache):
    assert max(errors_against_eager(0, 1, name=name)) <= TOLERANCE


@pytest.mark.parametrize("name", sorted(MODULES))
def test_at_sp2(name):
    from tests.e2e.sp_harness import run_pooled

    for rank, errors in enumerate(run_pooled(2, errors_against_eager, name=name)):
        assert max(errors) <= TOLERANCE, (rank, errors)
