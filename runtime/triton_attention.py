"""Flash attention in Triton, forward and backward, with the same contract as the reference
kernels in runtime/attention.py: q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, D] (any
strides), query head h reads kv head h // (Hq / Hkv) (GQA-native: K/V are never repeated), the
mask is a description evaluated per tile (`causal`: key j <= query i; `window` W > 0: also
j > i - W; `documents` [B, S] (packed sequences): only keys with the query's document number),
any lengths (tails masked), any head dim (padded to a power of two in registers), fp32
accumulation, and the log-sum-exp of every query row as an output.

Each loop over tiles runs in three stretches: tiles the mask cuts (computed with the mask),
tiles every row sees entirely (no mask arithmetic), and the masked tiles again. With documents,
a tile whose key documents and query documents have disjoint ranges is skipped (exact for any
numbering; packed rows skip everything outside the diagonal blocks), every other tile compares
document numbers. The backward is
two kernels: dK/dV per key tile (looping over the query heads of its group and their query
tiles, so GQA needs no atomics) and dQ per query tile; delta = rowsum(dO·O) comes first.
fp32 inputs use IEEE fp32 dots (not TF32): the fp32 contract is 1e-5.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from autosp.runtime.kernels import interpreting

LOG2E = 1.4426950408889634
# Globals a kernel reads must be constexpr.
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(0.6931471805599453)
_NEG_BIG = tl.constexpr(-1.0e30)  # a finite running-max start: masked tiles give exp2(-inf) = 0, never NaN
_DOC_MAX = tl.constexpr(2**62)  # beyond any document number the range tests see (int64)


def _configs(blocks: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    if interpreting():  # tiny shapes on CPU: one small tile size, nothing to tune
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in blocks]


FORWARD_CONFIGS = _configs([(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 4), (128, 32, 4, 4)])
DKDV_CONFIGS = _configs([(32, 128, 4, 3), (64, 128, 8, 3), (32, 64, 4, 4), (64, 64, 4, 3)])
DQ_CONFIGS = _configs([(128, 32, 4, 3), (128, 64, 8, 3), (64, 64, 4, 4), (64, 32, 4, 3)])


# Triton's interpreter multiplies bf16 operands of tl.dot as raw uint16 bits (triton 3.9):
# under the interpreter, dots take fp32 copies (the GPU path keeps 16-bit tensor-core dots).
_UPCAST_DOTS = tl.constexpr(interpreting())


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    if _UPCAST_DOTS:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _stretches(lo, full_lo, full_hi, hi):
    """[lo, hi) cut into masked [lo, b), unmasked [b, c), masked [c, hi)."""
    b = tl.minimum(tl.maximum(full_lo, lo), hi)
    c = tl.maximum(tl.minimum(full_hi, hi), b)
    return b, c


@triton.jit
def _keep(rows, cols, SK, CAUSAL: tl.constexpr, WINDOW):
    keep = cols[None, :] < SK
    if CAUSAL:
        keep = keep & (cols[None, :] <= rows[:, None])
        if WINDOW > 0:
            keep = keep & (cols[None, :] > rows[:, None] - WINDOW)
    return keep


@triton.jit
def _masked(x, fill, rows, cols, doc_q, doc_k, SK, WINDOW, CAUSAL: tl.constexpr, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr):
    """x [rows, cols] with `fill` where the mask hides the key (only in MASKED tiles) or the key is
    in another document."""
    if MASKED:
        x = tl.where(_keep(rows, cols, SK, CAUSAL, WINDOW), x, fill)
    if HAS_DOCS:
        x = tl.where(doc_q[:, None] == doc_k[None, :], x, fill)
    return x


@triton.jit
def _transposed_tile(base, stride_s, cols, offs_d, SK, D):
    """The [D, cols] tile of a [SK, D] matrix (K or V of one head), zeros past its bounds."""
    return tl.load(base + cols[None, :] * stride_s + offs_d[:, None], mask=(cols[None, :] < SK) & (offs_d[:, None] < D), other=0.0)


@triton.jit
def _load_documents(doc_base, idx, n, HAS_DOCS: tl.constexpr):
    """Document numbers at positions idx (< n) and their range (min, max); zeros without documents."""
    if HAS_DOCS:
        valid = idx < n
        docs = tl.load(doc_base + idx, mask=valid, other=0).to(tl.int64)
        lo = tl.min(tl.where(valid, docs, _DOC_MAX), 0)
        hi = tl.max(tl.where(valid, docs, -_DOC_MAX), 0)
    else:
        docs = tl.zeros_like(idx).to(tl.int64)
        lo = tl.full([], 0, tl.int64)
        hi = tl.full([], 0, tl.int64)
    return docs, lo, hi


@triton.jit
def _key_range(m0, SK, CAUSAL: tl.constexpr, WINDOW, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key tiles query rows [m0, m0 + BLOCK_M) see: all [lo, hi), entirely [full_lo, full_hi)."""
    lo = m0 * 0  # tensors from the start: a runtime `if` below may reassign them
    hi = lo + SK
    full_lo = lo
    full_hi = lo + (SK // BLOCK_N) * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(SK, m0 + BLOCK_M)
        full_hi = tl.minimum(full_hi, ((m0 + 1) // BLOCK_N) * BLOCK_N)
        if WINDOW > 0:
            lo = (tl.maximum(m0 - WINDOW + 1, 0) // BLOCK_N) * BLOCK_N
            full_lo = tl.cdiv(tl.maximum(m0 + BLOCK_M - WINDOW, 0), BLOCK_N) * BLOCK_N
    return lo, full_lo, full_hi, hi


@triton.jit
def _query_tile(
    Q, K, V, stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_vb, stride_vh, HQ, GROUP, SQ, D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The query rows of this program (grid: row tiles x batch*query heads): their first row,
    batch*head, batch, head, row/key/dim offsets, mask and q tile, and where its kv head's K and
    V start (query head h reads kv head h // GROUP)."""
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // HQ, bh % HQ
    hkv = h // GROUP
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = (rows[:, None] < SQ) & (offs_d[None, :] < D)
    q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + offs_d[None, :], mask=row_mask, other=0.0)
    k_base = K + b * stride_kb + hkv * stride_kh
    v_base = V + b * stride_vb + hkv * stride_vh
    return m0, bh, b, h, rows, offs_n, offs_d, row_mask, q, k_base, v_base


@triton.jit
def _forward_tiles(
    acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
    start, stop, qk_scale, SK, D, WINDOW, doc_base, doc_q, doc_lo, doc_hi,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + offs_n
        doc_k, k_lo, k_hi = _load_documents(doc_base, cols, SK, HAS_DOCS)
        if (k_hi >= doc_lo) & (k_lo <= doc_hi):  # always true without documents
            k_t = _transposed_tile(k_base, stride_ks, cols, offs_d, SK, D)
            s = _dot(q, k_t, PRECISION) * qk_scale  # log2 units
            s = _masked(s, float("-inf"), rows, cols, doc_q, doc_k, SK, WINDOW, CAUSAL, MASKED, HAS_DOCS)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :], mask=(cols[:, None] < SK) & (offs_d[None, :] < D), other=0.0)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION)
            m_i = m_new
    return acc, m_i, l_i


@triton.autotune(configs=FORWARD_CONFIGS, key=["SQ", "SK", "BLOCK_D", "CAUSAL", "HAS_DOCS"])
@triton.jit
def _attention_forward(
    Q, K, V, O, LSE, DOCS, qk_scale,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    HQ, GROUP, SQ, SK, D, WINDOW,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    m0, bh, b, h, rows, offs_n, offs_d, q_mask, q, k_base, v_base = _query_tile(
        Q, K, V, stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_vb, stride_vh, HQ, GROUP, SQ, D,
        BLOCK_M, BLOCK_N, BLOCK_D,
    )
    m_i = tl.full([BLOCK_M], _NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    doc_base = DOCS + b * SK
    doc_q, doc_lo, doc_hi = _load_documents(doc_base, rows, SQ, HAS_DOCS)
    lo, full_lo, full_hi, hi = _key_range(m0, SK, CAUSAL, WINDOW, BLOCK_M, BLOCK_N)
    mid_lo, mid_hi = _stretches(lo, full_lo, full_hi, hi)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                                   lo, mid_lo, qk_scale, SK, D, WINDOW, doc_base, doc_q, doc_lo, doc_hi,
                                   CAUSAL, True, HAS_DOCS, BLOCK_N, PRECISION)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                                   mid_lo, mid_hi, qk_scale, SK, D, WINDOW, doc_base, doc_q, doc_lo, doc_hi,
                                   CAUSAL, False, HAS_DOCS, BLOCK_N, PRECISION)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                                   mid_hi, hi, qk_scale, SK, D, WINDOW, doc_base, doc_q, doc_lo, doc_hi,
                                   CAUSAL, True, HAS_DOCS, BLOCK_N, PRECISION)
    seen = l_i > 0.0  # a row that sees no key attends to nothing: output 0, lse -inf
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * _LN2, float("-inf"))
    tl.store(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + offs_d[None, :], out.to(O.dtype.element_ty), mask=q_mask)
    tl.store(LSE + bh * SQ + rows, lse, mask=rows < SQ)


@triton.jit
def _row_dot(
    A, B, OUT, stride_ab, stride_ah, stride_as, stride_bb, stride_bh, stride_bs, H, S, D,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """OUT[b, h, s] = Σ_d A[b, h, s, d] · B[b, h, s, d] in fp32 (delta = rowsum(dO·O))."""
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    rows = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < S) & (offs_d[None, :] < D)
    a = tl.load(A + b * stride_ab + h * stride_ah + rows[:, None] * stride_as + offs_d[None, :], mask=mask, other=0.0)
    x = tl.load(B + b * stride_bb + h * stride_bh + rows[:, None] * stride_bs + offs_d[None, :], mask=mask, other=0.0)
    tl.store(OUT + bh * S + rows, tl.sum(a.to(tl.float32) * x.to(tl.float32), 1), mask=rows < S)


@triton.jit
def _query_range(n0, SQ, CAUSAL: tl.constexpr, WINDOW, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The query tiles that see keys [n0, n0 + BLOCK_N): all [lo, hi), entirely [full_lo, full_hi).
    Rows past SQ load as zeros and contribute nothing, so they need no mask."""
    lo = n0 * 0  # tensors from the start: a runtime `if` below may reassign them
    hi = lo + SQ
    full_lo = lo
    full_hi = lo + SQ
    if CAUSAL:
        lo = (n0 // BLOCK_M) * BLOCK_M
        full_lo = tl.cdiv(n0 + BLOCK_N - 1, BLOCK_M) * BLOCK_M
        if WINDOW > 0:
            hi = tl.minimum(SQ, n0 + BLOCK_N - 1 + WINDOW)
            full_hi = ((n0 + WINDOW) // BLOCK_M) * BLOCK_M
    return lo, full_lo, full_hi, hi


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos, cols, offs_m, offs_d,
    start, stop, qk_scale, SQ, SK, D, WINDOW, doc_base, doc_k, doc_lo, doc_hi,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr,
):
    for m0 in range(start, stop, BLOCK_M):
        rows = m0 + offs_m
        doc_q, q_lo, q_hi = _load_documents(doc_base, rows, SQ, HAS_DOCS)
        if (q_hi >= doc_lo) & (q_lo <= doc_hi):  # always true without documents
            dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos,
                                cols, rows, offs_d, qk_scale, SQ, SK, D, WINDOW, doc_k, doc_q,
                                CAUSAL, MASKED, HAS_DOCS, PRECISION)
    return dk, dv


@triton.jit
def _dkdv_tile(
    dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qs, stride_dos, cols, rows, offs_d,
    qk_scale, SQ, SK, D, WINDOW, doc_k, doc_q,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, PRECISION: tl.constexpr,
):
    row_mask = (rows[None, :] < SQ) & (offs_d[:, None] < D)
    q_t = tl.load(q_base + rows[None, :] * stride_qs + offs_d[:, None], mask=row_mask, other=0.0)
    do = tl.load(do_base + rows[:, None] * stride_dos + offs_d[None, :], mask=(rows[:, None] < SQ) & (offs_d[None, :] < D), other=0.0)
    lse = tl.load(lse_base + rows, mask=rows < SQ, other=0.0) * _LOG2E
    delta = tl.load(delta_base + rows, mask=rows < SQ, other=0.0)
    s_t = _dot(k, q_t, PRECISION) * qk_scale  # [BLOCK_N, BLOCK_M], log2 units
    p_t = tl.math.exp2(s_t - lse[None, :])
    if MASKED:
        # _keep is written for [rows, cols]; transposed here.
        keep = cols[:, None] < SK
        if CAUSAL:
            keep = keep & (cols[:, None] <= rows[None, :])
            if WINDOW > 0:
                keep = keep & (cols[:, None] > rows[None, :] - WINDOW)
        p_t = tl.where(keep, p_t, 0.0)
    if HAS_DOCS:
        p_t = tl.where(doc_k[:, None] == doc_q[None, :], p_t, 0.0)
    dv += _dot(p_t.to(do.dtype), do, PRECISION)
    dp_t = _dot(v, tl.trans(do), PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += _dot(ds_t.to(q_t.dtype), tl.trans(q_t), PRECISION)
    return dk, dv


@triton.autotune(configs=DKDV_CONFIGS, key=["SQ", "SK", "BLOCK_D", "CAUSAL", "HAS_DOCS"])
@triton.jit
def _attention_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, DOCS, qk_scale, sm_scale,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos, stride_dkb, stride_dkh, stride_dks, stride_dvb, stride_dvh, stride_dvs,
    HQ, HKV, GROUP, SQ, SK, D, WINDOW,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    n0 = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)
    b, hkv = bh // HKV, bh % HKV
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (cols[:, None] < SK) & (offs_d[None, :] < D)
    k = tl.load(K + b * stride_kb + hkv * stride_kh + cols[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * stride_vb + hkv * stride_vh + cols[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    doc_base = DOCS + b * SK
    doc_k, doc_lo, doc_hi = _load_documents(doc_base, cols, SK, HAS_DOCS)
    lo, full_lo, full_hi, hi = _query_range(n0, SQ, CAUSAL, WINDOW, BLOCK_M, BLOCK_N)
    mid_lo, mid_hi = _stretches(lo, full_lo, full_hi, hi)
    for g in range(0, GROUP):
        h = hkv * GROUP + g
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        row_base = (b * HQ + h) * SQ
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qs, stride_dos,
                             cols, offs_m, offs_d, lo, mid_lo, qk_scale, SQ, SK, D, WINDOW, doc_base, doc_k, doc_lo, doc_hi,
                             CAUSAL, True, HAS_DOCS, BLOCK_M, PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qs, stride_dos,
                             cols, offs_m, offs_d, mid_lo, mid_hi, qk_scale, SQ, SK, D, WINDOW, doc_base, doc_k, doc_lo, doc_hi,
                             CAUSAL, False, HAS_DOCS, BLOCK_M, PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qs, stride_dos,
                             cols, offs_m, offs_d, mid_hi, hi, qk_scale, SQ, SK, D, WINDOW, doc_base, doc_k, doc_lo, doc_hi,
                             CAUSAL, True, HAS_DOCS, BLOCK_M, PRECISION)
    tl.store(DK + b * stride_dkb + hkv * stride_dkh + cols[:, None] * stride_dks + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b * stride_dvb + hkv * stride_dvh + cols[:, None] * stride_dvs + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
    start, stop, qk_scale, SK, D, WINDOW, doc_base, doc_q, doc_lo, doc_hi,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + offs_n
        doc_k, k_lo, k_hi = _load_documents(doc_base, cols, SK, HAS_DOCS)
        if (k_hi >= doc_lo) & (k_lo <= doc_hi):  # always true without documents
            k_t = _transposed_tile(k_base, stride_ks, cols, offs_d, SK, D)
            v_t = _transposed_tile(v_base, stride_vs, cols, offs_d, SK, D)
            p = tl.math.exp2(_dot(q, k_t, PRECISION) * qk_scale - lse[:, None])
            p = _masked(p, 0.0, rows, cols, doc_q, doc_k, SK, WINDOW, CAUSAL, MASKED, HAS_DOCS)
            dp = _dot(do, v_t, PRECISION)
            ds = p * (dp - delta[:, None])
            dq += _dot(ds.to(k_t.dtype), tl.trans(k_t), PRECISION)
    return dq


@triton.autotune(configs=DQ_CONFIGS, key=["SQ", "SK", "BLOCK_D", "CAUSAL", "HAS_DOCS"])
@triton.jit
def _attention_dq(
    Q, K, V, DO, LSE, DELTA, DQ, DOCS, qk_scale, sm_scale,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos, stride_dqb, stride_dqh, stride_dqs,
    HQ, GROUP, SQ, SK, D, WINDOW,
    CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    m0, bh, b, h, rows, offs_n, offs_d, row_mask, q, k_base, v_base = _query_tile(
        Q, K, V, stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_vb, stride_vh, HQ, GROUP, SQ, D,
        BLOCK_M, BLOCK_N, BLOCK_D,
    )
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dos + offs_d[None, :], mask=row_mask, other=0.0)
    lse = tl.load(LSE + bh * SQ + rows, mask=rows < SQ, other=0.0) * _LOG2E
    delta = tl.load(DELTA + bh * SQ + rows, mask=rows < SQ, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    doc_base = DOCS + b * SK
    doc_q, doc_lo, doc_hi = _load_documents(doc_base, rows, SQ, HAS_DOCS)
    lo, full_lo, full_hi, hi = _key_range(m0, SK, CAUSAL, WINDOW, BLOCK_M, BLOCK_N)
    mid_lo, mid_hi = _stretches(lo, full_lo, full_hi, hi)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                   lo, mid_lo, qk_scale, SK, D, WINDOW, doc_base, doc_q, doc_lo, doc_hi,
                   CAUSAL, True, HAS_DOCS, BLOCK_N, PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                   mid_lo, mid_hi, qk_scale, SK, D, WINDOW, doc_base, doc_q, doc_lo, doc_hi,
                   CAUSAL, False, HAS_DOCS, BLOCK_N, PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                   mid_hi, hi, qk_scale, SK, D, WINDOW, doc_base, doc_q, doc_lo, doc_hi,
                   CAUSAL, True, HAS_DOCS, BLOCK_N, PRECISION)
    tl.store(DQ + b * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqs + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_mask)


# --- launch ------------------------------------------------------------------------------


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    """The kernels index the head dim with stride 1 (any other strides are passed)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _common(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    if v.shape[-1] != q.shape[-1]:
        raise NotImplementedError("the Triton kernels need one head dim for q/k and v")
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    return b, hq, hkv, sq, sk, d, max(16, triton.next_power_of_2(d)), precision


def _documents(documents: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """[B, S] int64 contiguous (the range tests are int64); any tensor stands in when absent
    (HAS_DOCS=False: never read)."""
    return like if documents is None else documents.to(torch.int64).contiguous()


def attention_forward(q, k, v, causal: bool, window: int, scale: float, documents=None):
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    b, hq, hkv, sq, sk, d, block_d, precision = _common(q, k, v)
    out = torch.empty(b, hq, sq, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, hq, sq, dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(sq, meta["BLOCK_M"]), b * hq)  # noqa: E731
    _attention_forward[grid](
        q, k, v, out, lse, _documents(documents, lse), scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        hq, hq // hkv, sq, sk, d, window,
        CAUSAL=causal, HAS_DOCS=documents is not None, BLOCK_D=block_d, PRECISION=precision,
    )
    return out, lse


def attention_backward(grad_out, q, k, v, out, lse, causal: bool, window: int, scale: float, documents=None):
    grad_out, q, k, v, out = (_unit_last(t) for t in (grad_out, q, k, v, out))
    lse = lse.contiguous()
    b, hq, hkv, sq, sk, d, block_d, precision = _common(q, k, v)
    delta = torch.empty(b, hq, sq, dtype=torch.float32, device=q.device)
    _row_dot[(triton.cdiv(sq, 64), b * hq)](
        grad_out, out, delta,
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), out.stride(0), out.stride(1), out.stride(2),
        hq, sq, d, BLOCK_S=64, BLOCK_D=block_d,
    )
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    docs, has_docs = _documents(documents, lse), documents is not None
    strides = (
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
    )
    _attention_dkdv[lambda meta: (triton.cdiv(sk, meta["BLOCK_N"]), b * hkv)](
        q, k, v, grad_out, lse, delta, dk, dv, docs, scale * LOG2E, scale, *strides,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        hq, hkv, hq // hkv, sq, sk, d, window,
        CAUSAL=causal, HAS_DOCS=has_docs, BLOCK_D=block_d, PRECISION=precision,
    )
    _attention_dq[lambda meta: (triton.cdiv(sq, meta["BLOCK_M"]), b * hq)](
        q, k, v, grad_out, lse, delta, dq, docs, scale * LOG2E, scale, *strides,
        dq.stride(0), dq.stride(1), dq.stride(2),
        hq, hq // hkv, sq, sk, d, window,
        CAUSAL=causal, HAS_DOCS=has_docs, BLOCK_D=block_d, PRECISION=precision,
    )
    return dq, dk, dv
