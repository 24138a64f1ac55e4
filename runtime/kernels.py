"""The kernels a generated program calls, each dispatched to Triton or to the PyTorch reference.

`AUTOSP_KERNELS` picks: `auto` (default) runs Triton on GPU tensors (CUDA or ROCm builds of
torch alike) and the reference on CPU; `triton` also runs Triton on CPU tensors, which needs
`TRITON_INTERPRET=1` (how the tests run the kernels without a GPU); `reference` never uses
Triton. fp64 always takes the reference (Triton's fp64 math is not worth a kernel variant).
"""

from __future__ import annotations

import os

import torch

from autosp.runtime import attention as reference_attention
from autosp.runtime import loss as reference_loss
from autosp.common.errors import AutoSPError

BACKENDS = ("auto", "triton", "reference")


def backend() -> str:
    choice = os.environ.get("AUTOSP_KERNELS", "auto")
    if choice not in BACKENDS:
        raise AutoSPError(f"AUTOSP_KERNELS={choice!r}: choose one of {', '.join(BACKENDS)}")
    return choice


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(tensor: torch.Tensor) -> bool:
    choice = backend()
    if choice == "reference" or tensor.dtype == torch.float64:
        return False
    if tensor.is_cuda:
        return True
    if choice == "triton":
        if not interpreting():
            raise AutoSPError("AUTOSP_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter)")
        return True
    return False


def attention_forward(q, k, v, causal: bool, window: int, scale: float, documents=None):
    if use_triton(q):
        from autosp.runtime import triton_attention

        return triton_attention.attention_forward(q, k, v, causal, window, scale, documents)
    return reference_attention.attention_forward(q, k, v, causal, window, scale, documents)


def attention_backward(grad_out, q, k, v, out, lse, causal: bool, window: int, scale: float, documents=None):
    if use_triton(q):
        from autosp.runtime import triton_attention

        return triton_attention.attention_backward(grad_out, q, k, v, out, lse, causal, window, scale, documents)
    return reference_attention.attention_backward(grad_out, q, k, v, out, lse, causal, window, scale, documents)


def linear_cross_entropy(hidden, weight, labels, ignore_index: int, chunk: int):
    rows = reference_loss.rows_cross_entropy
    if use_triton(hidden):
        from autosp.runtime import triton_loss

        rows = triton_loss.rows_cross_entropy
    return reference_loss.linear_cross_entropy(hidden, weight, labels, ignore_index, chunk, rows)


def broadcast_strides(x: torch.Tensor, shape: list[int]) -> list[int]:
    """x's strides over `shape` (x broadcast to it): 0 along dims x lacks or has size 1."""
    pad = len(shape) - x.dim()
    return [0 if d < pad or x.shape[d - pad] == 1 else x.stride(d - pad) for d in range(len(shape))]


def gated_mlp_forward(x, w_gate, w_up, w_down, activation: str, chunk: int):
    """Matmuls and one activation per chunk: PyTorch on every device (cuBLAS/hipBLAS do the work)."""
    from autosp.runtime import mlp

    return mlp.gated_mlp_forward(x, w_gate, w_up, w_down, activation, chunk)


def gated_mlp_backward(grad_out, x, w_gate, w_up, w_down, activation: str, chunk: int):
    from autosp.runtime import mlp

    return mlp.gated_mlp_backward(grad_out, x, w_gate, w_up, w_down, activation, chunk)
