"""Fused LM head + cross-entropy: the [N, V] logits are computed `chunk` rows at a time, and
each chunk is turned into its loss and, in place, into the gradient of the summed loss w.r.t.
its logits (softmax - one-hot, zero on ignored rows), which two matmuls turn into the chunk's
hidden-state gradient and its share of the head-weight gradient. So the forward already has
both gradients of the summed loss; the backward only scales them by the loss's gradient.

The logits are computed in the model dtype and read in fp32 (as HF upcasts them), the loss and
the weight gradient accumulate in fp32 (fp64 for fp64). Only the per-row step differs between
backends (`rows_cross_entropy`: PyTorch here, Triton in runtime/triton_loss.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from autosp.common.precision import accumulation_dtype
from autosp.common.errors import AutoSPError
from autosp.common.sizes import GRAD_WEIGHT_SLICE

RowsCrossEntropy = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def rows_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Per-row loss of a [c, V] logits chunk (accumulation dtype); the chunk is overwritten
    with the gradient of the rows' summed loss. fp32 logits are worked on in place (torch's
    vectorized log-softmax, as eager's cross-entropy runs it); 16-bit ones in one fp32 copy."""
    acc = accumulation_dtype(logits.dtype)
    x = logits if logits.dtype == acc else logits.to(acc)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0).unsqueeze(1)
    torch.ops.aten._log_softmax.out(x, 1, False, out=x)
    loss = torch.where(valid, -x.gather(1, safe).squeeze(1), 0.0)
    x.exp_()
    x.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=acc))
    x.mul_(valid.unsqueeze(1))
    if x is not logits:
        logits.copy_(x)
    return loss


def check_labels(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Eager cross-entropy fails on a label outside [0, V); so does the fused op (one check per
    step), rather than reading a wrong logit."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise AutoSPError(
            f"linear_cross_entropy: label {value} is outside the vocabulary [0, {vocab}) "
            f"and is not ignore_index={ignore_index}"
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    chunk: int,
    rows: RowsCrossEntropy = rows_cross_entropy,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σ loss over non-ignored rows, ∂/∂hidden, ∂/∂weight) for hidden [N, H], weight [V, H]."""
    n, _ = hidden.shape
    vocab = weight.shape[0]
    check_labels(labels, vocab, ignore_index)
    acc = accumulation_dtype(hidden.dtype)
    loss = torch.zeros((), dtype=acc, device=hidden.device)
    grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rows_in = hidden[start:stop]
        logits = rows_in @ weight.t()  # the only [chunk, V] buffer
        loss += rows(logits, labels[start:stop], ignore_index).sum()
        torch.mm(logits, weight, out=grad_hidden[start:stop])
        if grad_weight.dtype == logits.dtype:
            grad_weight.addmm_(logits.t(), rows_in)
        else:  # each product in the model dtype, added in fp32, a vocabulary slice at a time
            for v0 in range(0, vocab, GRAD_WEIGHT_SLICE):
                grad_weight[v0 : v0 + GRAD_WEIGHT_SLICE] += logits[:, v0 : v0 + GRAD_WEIGHT_SLICE].t() @ rows_in
        del logits
    return loss, grad_hidden, grad_weight
