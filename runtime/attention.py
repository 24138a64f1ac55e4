"""Reference attention kernels in PyTorch: exact and GQA-native. On CPU tensors they call
torch's own CPU flash attention (what SDPA runs there, with its log-sum-exp): `is_causal` where
the mask is plain causal, so the kernel skips the masked half and no mask tensor exists, else an
additive mask for windows and documents; K/V keep their own head count. Elsewhere (fp64 on a
GPU, or rows that see no key) they run blockwise over queries so no S x S tensor is ever held
(one [B, Hq, block, Sk] score tile at a time). Every result is contiguous: the joint graph was
traced with that layout and its views rely on it.

Layout: q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv]; query head h reads kv head
h // (Hq / Hkv). The mask is a description evaluated per tile: `causal` keeps key j <= query i,
`window` W > 0 also drops keys j <= i - W, `documents` [B, S] (packed sequences; Sq = Sk) keeps
only keys with the query's document number. Accumulation is in fp32 (fp64 for fp64 inputs), and so is the log-sum-exp.
"""

from __future__ import annotations

import torch

from autosp.common.attention import QUERY_BLOCK, every_row_sees_a_key
from autosp.common.precision import accumulation_dtype


def _mask_tile(q_start: int, q_len: int, sk: int, causal: bool, window: int, documents, device) -> torch.Tensor | None:
    """[block, Sk], or [B, 1, 1, block, Sk] with documents; None: every key is kept."""
    keep = None
    if causal:
        i = torch.arange(q_start, q_start + q_len, device=device)[:, None]
        j = torch.arange(sk, device=device)[None, :]
        keep = j <= i
        if window:
            keep &= j > i - window
    if documents is not None:
        same = documents[:, q_start : q_start + q_len, None] == documents[:, None, :]
        keep = (same if keep is None else same & keep)[:, None, None]
    return keep


def _masked_scores(q_tile, kf, scale: float, start: int, causal: bool, window: int, documents) -> torch.Tensor:
    """q k^T * scale for one query tile, masked keys at -inf: a new [B, Hkv, G, block, Sk] tile."""
    scores = q_tile @ kf.transpose(-1, -2)
    scores.mul_(scale)
    keep = _mask_tile(start, q_tile.shape[-2], kf.shape[-2], causal, window, documents, q_tile.device)
    if keep is not None:
        scores.masked_fill_(~keep, float("-inf"))
    return scores


def _cpu_flash_mask(q, sk: int, causal: bool, window: int, documents) -> torch.Tensor | None:
    """The additive mask torch's CPU flash kernel needs, in q's dtype: none where `is_causal`
    (or no mask) says it all, else [Sq, Sk], or [B, 1, Sq, Sk] with documents."""
    if not window and documents is None:
        return None
    keep = _mask_tile(0, q.shape[-2], sk, causal, window, documents, q.device)
    keep = keep[:, :, 0] if keep.dim() == 5 else keep
    return torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill_(~keep, float("-inf"))


def cpu_flash_forward(q, k, v, causal: bool, window: int, scale: float, documents=None):
    """torch's CPU flash kernel (what SDPA runs on CPU), GQA-native (K/V keep their head count)."""
    mask = _cpu_flash_mask(q, k.shape[-2], causal, window, documents)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal and mask is None, attn_mask=mask, scale=scale
    )
    del mask
    # The program's values are contiguous; the kernel writes in q's layout: one copy at a time,
    # each original dropped once copied (the scratch ir/kernel_choice.py prices).
    out = out.contiguous()
    return out, lse.contiguous()


def cpu_flash_backward(grad_out, q, k, v, out, lse, causal: bool, window: int, scale: float, documents=None):
    mask = _cpu_flash_mask(q, k.shape[-2], causal, window, documents)
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad_out, q, k, v, out, lse, 0.0, causal and mask is None, attn_mask=mask, scale=scale
    )
    del mask
    dq = dq.contiguous()
    dk = dk.contiguous()
    return dq, dk, dv.contiguous()


def _grouped(x: torch.Tensor, hkv: int) -> torch.Tensor:
    """[B, Hq, S, D] -> [B, Hkv, G, S, D] (a view)."""
    b, hq, s, d = x.shape
    return x.view(b, hkv, hq // hkv, s, d)


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, window: int, scale: float,
    documents: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: torch's CPU flash kernel on CPU where it runs the mask, else blockwise."""
    if q.device.type == "cpu" and every_row_sees_a_key(q.shape[-2], k.shape[-2], window) and q.shape[-1] == v.shape[-1]:
        return cpu_flash_forward(q, k, v, causal, window, scale, documents)
    return blockwise_forward(q, k, v, causal, window, scale, documents)


def blockwise_forward(q, k, v, causal: bool, window: int, scale: float, documents=None):
    b, hq, sq, _ = q.shape
    hkv, dv = k.shape[1], v.shape[3]
    out = torch.empty(b, hq, sq, dv, dtype=q.dtype, device=q.device)
    acc = accumulation_dtype(q.dtype)
    lse = torch.empty(b, hq, sq, dtype=acc, device=q.device)
    kf = k.to(acc).unsqueeze(2)  # [B, Hkv, 1, Sk, D]
    vf = v.to(acc).unsqueeze(2)
    qg, outg, lseg = _grouped(q, hkv), _grouped(out, hkv), lse.view(b, hkv, hq // hkv, sq)
    for start in range(0, sq, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, sq)
        # One score tile, turned into probabilities in place (the kernel's only big buffer).
        probs = _masked_scores(qg[:, :, :, start:stop].to(acc), kf, scale, start, causal, window, documents)
        row_max = probs.amax(dim=-1, keepdim=True)
        row_max.masked_fill_(row_max == float("-inf"), 0.0)  # a row that sees no key
        row_sum = probs.sub_(row_max).exp_().sum(dim=-1, keepdim=True)
        lseg[:, :, :, start:stop] = (row_max + row_sum.log()).squeeze(-1)
        probs.div_(row_sum).nan_to_num_(0.0)  # such a row attends to nothing: output 0
        outg[:, :, :, start:stop] = (probs @ vf).to(q.dtype)
        del probs
    return out, lse


def attention_backward(grad_out, q, k, v, out, lse, causal: bool, window: int, scale: float, documents=None):
    """(dq, dk, dv): dk/dv at the kv head count, summed over each group."""
    if q.device.type == "cpu" and every_row_sees_a_key(q.shape[-2], k.shape[-2], window) and q.shape[-1] == v.shape[-1]:
        return cpu_flash_backward(grad_out, q, k, v, out, lse, causal, window, scale, documents)
    return blockwise_backward(grad_out, q, k, v, out, lse, causal, window, scale, documents)


def blockwise_backward(grad_out, q, k, v, out, lse, causal: bool, window: int, scale: float, documents=None):
    b, hq, sq, _ = q.shape
    hkv = k.shape[1]
    acc = accumulation_dtype(q.dtype)
    kf = k.to(acc).unsqueeze(2)
    vf = v.to(acc).unsqueeze(2)
    qg = _grouped(q, hkv)
    dog = _grouped(grad_out, hkv)
    lseg = lse.view(b, hkv, hq // hkv, sq)
    # delta_i = sum_d dO_i * O_i: the softmax-Jacobian term, one scalar per query row.
    delta = _grouped((grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True), hkv)
    dq = q.new_empty(q.shape)  # contiguous whatever q's strides (the op's contract)
    dqg = _grouped(dq, hkv)
    dk = torch.zeros(k.shape, dtype=acc, device=k.device)
    dv = torch.zeros(v.shape, dtype=acc, device=v.device)
    for start in range(0, sq, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, sq)
        q_tile = qg[:, :, :, start:stop].to(acc)
        do_tile = dog[:, :, :, start:stop].to(acc)
        # Two tiles at most: the probabilities, and dP turned into dS in place.
        probs = _masked_scores(q_tile, kf, scale, start, causal, window, documents)
        probs.sub_(lseg[:, :, :, start:stop].unsqueeze(-1)).exp_().nan_to_num_(0.0)
        dv += (probs.transpose(-1, -2) @ do_tile).sum(2)
        dscores = do_tile @ vf.transpose(-1, -2)
        dscores.sub_(delta[:, :, :, start:stop]).mul_(probs).mul_(scale)
        del probs
        dqg[:, :, :, start:stop] = (dscores @ kf).to(q.dtype)
        dk += (dscores.transpose(-1, -2) @ q_tile).sum(2)
        del dscores
    return dq, dk.to(k.dtype).contiguous(), dv.to(v.dtype).contiguous()
