"""AutoSP's operators as torch custom ops, so torch.export and AOT autograd keep attention as
one op forward (`autosp::attention`) and one op backward (`autosp::attention_backward`)."""

from __future__ import annotations

import torch

from autosp.runtime import attention as kernels


@torch.library.custom_op("autosp::attention", mutates_args=())
def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return kernels.attention_forward(q, k, v, causal, window, scale)


@attention.register_fake
def _attention_fake(q, k, v, causal, window, scale):
    b, hq, sq, _ = q.shape
    out = q.new_empty(b, hq, sq, v.shape[3])
    return out, q.new_empty(b, hq, sq, dtype=kernels.accumulation_dtype(q.dtype))


@torch.library.custom_op("autosp::attention_backward", mutates_args=())
def attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    window: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernels.attention_backward(grad_out, q, k, v, out, lse, causal, window, scale)


@attention_backward.register_fake
def _attention_backward_fake(grad_out, q, k, v, out, lse, causal, window, scale):
    # Contiguous, exactly like the kernels' results: the joint graph's views depend on strides.
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, window, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.mask = (causal, window, scale)


def _backward(ctx, grad_out, grad_lse):
    # lse is an auxiliary output for the backward; the model never differentiates through it.
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = attention_backward(grad_out.contiguous(), q, k, v, out, lse, *ctx.mask)
    return dq, dk, dv, None, None, None


attention.register_autograd(_backward, setup_context=_setup_context)
