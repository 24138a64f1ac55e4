"""Triton per-row cross-entropy for runtime/loss.py: one program per row, two sweeps over the
vocabulary in BLOCK-wide tiles (online max/sum for the log-sum-exp, then the gradient written
over the logits), so a row of any vocabulary size needs no more than one tile of registers."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from autosp.common.precision import accumulation_dtype

# A finite "minus infinity" for running maxima: exp(m_old - m_new) stays 0/1, never NaN.
# (Globals a kernel reads must be constexpr.)
_NEG_BIG = tl.constexpr(-1.0e30)


@triton.jit
def _cross_entropy_rows(
    logits_ptr, stride_row, labels_ptr, loss_ptr, vocab, ignore_index, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    run_max = tl.full([BLOCK], _NEG_BIG, tl.float32)
    run_sum = tl.zeros([BLOCK], tl.float32)
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(run_max, x)
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.exp(x - new_max)
        run_max = new_max
    row_max = tl.max(run_max, 0)
    lse = row_max + tl.log(tl.sum(run_sum * tl.exp(run_max - row_max), 0))
    target = tl.load(base + tl.where(valid, label, 0)).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - target, 0.0))
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < vocab, other=0.0).to(tl.float32)
        grad = tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)
        grad = tl.where(valid, grad, 0.0)
        tl.store(base + cols, grad.to(logits_ptr.dtype.element_ty), mask=cols < vocab)


def rows_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, block: int = 4096) -> torch.Tensor:
    """Same contract as runtime.loss.rows_cross_entropy (fp32 loss per row, logits overwritten);
    `block`: the vocabulary tile width (a power of two)."""
    rows, vocab = logits.shape
    assert logits.stride(1) == 1
    loss = torch.empty(rows, dtype=accumulation_dtype(logits.dtype), device=logits.device)
    block = min(block, triton.next_power_of_2(vocab))
    _cross_entropy_rows[(rows,)](logits, logits.stride(0), labels, loss, vocab, ignore_index, BLOCK=block)
    return loss
