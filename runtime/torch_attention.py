"""Attention through the kernels torch ships for GPUs, with the contract of runtime/attention.py
(q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D] in any layout with unit last stride, GQA-native,
contiguous results, the log-sum-exp [B, Hq, Sq] in fp32):

- cuDNN: `aten._scaled_dot_product_cudnn_attention` and its backward (causal or no mask);
- FlashAttention: `aten._flash_attention_forward` / `_backward`, which also take a sliding
  window (`window_size_left` = W - 1) and packed documents as variable-length sequences
  (`cum_seq_q/k`) where each document is one contiguous run of tokens; documents in any other
  order run the Triton kernels instead (one host sync per step finds the runs).

Both read q/k/v as [B, S, H, D] views of the program's [B, H, S, D] values (no copy) and write
their results in their inputs' layout; each result is copied once to the contiguous layout the
program expects (the scratch ir/kernel_choice.py prices). Dropout is never on (p = 0), so the
random-state tensors the backward takes are placeholders.
"""

from __future__ import annotations

import torch

from autosp.runtime.kernels import per_step, unit_last

aten = torch.ops.aten


# --- cuDNN ------------------------------------------------------------------------------------


def cudnn_forward_call(q, k, v, causal: bool, scale: float) -> tuple:
    """(op, args, kwargs) of the forward: what `cudnn_forward` runs (checked against the schema
    by the tests)."""
    return aten._scaled_dot_product_cudnn_attention.default, (q, k, v, None, True, 0.0, causal, False), {"scale": scale}


def cudnn_backward_call(grad_out, q, k, v, out, lse, causal: bool, scale: float) -> tuple:
    seed = torch.zeros((), dtype=torch.int64, device=q.device)  # dropout off: never read
    args = (grad_out, q, k, v, out, lse.unsqueeze(-1), seed, seed.clone(), None, None, None, q.shape[2], k.shape[2], 0.0, causal)
    return aten._scaled_dot_product_cudnn_attention_backward.default, args, {"scale": scale}


def cudnn_forward(q, k, v, causal: bool, window: int, scale: float, documents=None):
    assert not window and documents is None, "select-kernels gives cuDNN neither windows nor documents"
    op, args, kwargs = cudnn_forward_call(*map(unit_last, (q, k, v)), causal, scale)
    out, lse = op(*args, **kwargs)[:2]
    out = out.contiguous()
    return out, lse.squeeze(-1).contiguous()


def cudnn_backward(grad_out, q, k, v, out, lse, causal: bool, window: int, scale: float, documents=None):
    op, args, kwargs = cudnn_backward_call(*map(unit_last, (grad_out, q, k, v, out)), lse, causal, scale)
    dq, dk, dv = op(*args, **kwargs)
    dq = dq.contiguous()
    dk = dk.contiguous()
    return dq, dk, dv.contiguous()


# --- FlashAttention -----------------------------------------------------------------------------


@per_step
def document_runs(documents: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """(cumulative lengths [n + 1] int32, longest) of the runs of equal document numbers of a
    [1, S] row, or None when a number appears in two runs (then they are not separate
    sequences). Found once per step."""
    row = documents[0]
    starts = torch.cat([row.new_zeros(1), (row[1:] != row[:-1]).nonzero().flatten() + 1])
    bounds = torch.cat([starts, starts.new_full((1,), row.numel())])
    if torch.unique(row[starts]).numel() != starts.numel():
        return None
    return bounds.to(torch.int32), int((bounds[1:] - bounds[:-1]).max())


def _window(window: int) -> dict:
    return {"window_size_left": window - 1, "window_size_right": 0} if window else {}


def flash_forward_call(q, k, v, causal: bool, window: int, scale: float, runs=None) -> tuple:
    """(op, args, kwargs): q/k/v as [B, S, H, D] views, or [S, H, D] with `runs` (one row)."""
    qf, kf, vf = (x.transpose(1, 2) for x in (q, k, v))
    if runs is None:
        sequences = (None, None, q.shape[2], k.shape[2])
    else:
        qf, kf, vf = qf[0], kf[0], vf[0]
        sequences = (runs[0], runs[0], runs[1], runs[1])
    return aten._flash_attention_forward.default, (qf, kf, vf, *sequences, 0.0, causal, False), {"scale": scale, **_window(window)}


def flash_backward_call(grad_out, q, k, v, out, lse, causal: bool, window: int, scale: float, runs=None) -> tuple:
    gf, qf, kf, vf, of = (x.transpose(1, 2) for x in (grad_out, q, k, v, out))
    if runs is None:
        sequences = (None, None, q.shape[2], k.shape[2])
    else:
        gf, qf, kf, vf, of, lse = gf[0], qf[0], kf[0], vf[0], of[0], lse[0]
        sequences = (runs[0], runs[0], runs[1], runs[1])
    rng = torch.zeros(2, dtype=torch.uint64, device=q.device), torch.zeros((), dtype=torch.uint64, device=q.device)
    args = (gf, qf, kf, vf, of, lse, *sequences, 0.0, causal, *rng)
    return aten._flash_attention_backward.default, args, {"scale": scale, **_window(window)}


def flash_forward(q, k, v, causal: bool, window: int, scale: float, documents=None):
    runs = None if documents is None else document_runs(documents)
    if documents is not None and runs is None:  # documents FlashAttention cannot express: Triton's (priced too)
        from autosp.runtime import triton_attention

        return triton_attention.attention_forward(q, k, v, causal, window, scale, documents)
    op, args, kwargs = flash_forward_call(*map(unit_last, (q, k, v)), causal, window, scale, runs)
    out, lse = op(*args, **kwargs)[:2]
    if runs is not None:  # [S, H, D] and [H, S]: one row of [1, H, S, D] and [1, H, S]
        out, lse = out.unsqueeze(0), lse.unsqueeze(0)
    out = out.transpose(1, 2).contiguous()
    return out, lse.contiguous()


def flash_backward(grad_out, q, k, v, out, lse, causal: bool, window: int, scale: float, documents=None):
    runs = None if documents is None else document_runs(documents)
    if documents is not None and runs is None:
        from autosp.runtime import triton_attention

        return triton_attention.attention_backward(grad_out, q, k, v, out, lse, causal, window, scale, documents)
    op, args, kwargs = flash_backward_call(*map(unit_last, (grad_out, q, k, v, out)), lse, causal, window, scale, runs)
    dq, dk, dv = op(*args, **kwargs)
    if runs is not None:
        dq, dk, dv = dq.unsqueeze(0), dk.unsqueeze(0), dv.unsqueeze(0)
    dq = dq.transpose(1, 2).contiguous()
    dk = dk.transpose(1, 2).contiguous()
    return dq, dk, dv.transpose(1, 2).contiguous()
