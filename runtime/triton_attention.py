"""Flash attention in Triton, forward and backward, with the same contract as the reference
kernels in runtime/attention.py: q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, D] (any
strides), query head h reads kv head h // (Hq / Hkv) (GQA-native: K/V are never repeated), the
mask is a description evaluated per tile (`causal`: key j <= query i; `window` W > 0: also
j > i - W; `documents` [B, S] (packed sequences): only keys with the query's document number),
any lengths (tails masked), any head dim (padded to a power of two in registers), fp32
accumulation, and the log-sum-exp of every query row as an output.

Each loop over tiles runs in three stretches: tiles the mask cuts (computed with the mask),
tiles every row sees entirely (no mask arithmetic), and the masked tiles again. With documents,
the loop bounds come from where the tile's documents start and end (each token's document's
first and last position, found once per step), so packed rows visit only the tiles of their
documents with no branch in the loop (which would stop Triton pipelining it); inside those
bounds every tile compares document numbers, which keeps any numbering exact (a document may
come back later in the row). The backward is two kernels: dK/dV per key tile (looping over the
query heads of its group and their query tiles, so GQA needs no atomics) and dQ per query tile;
delta = rowsum(dO·O) comes first. fp32 inputs use IEEE fp32 dots (not TF32): the fp32 contract
is 1e-5.

Offsets that can pass 2^31 elements (a row times its stride, at millions of tokens) are taken in
int64 as one scalar per tile; the offsets inside a tile stay int32. The tile sizes each kernel
may run are listed per head-dim bucket and dtype (`CONFIGS`); every one of them compiles for
sm_90 within shared memory and without spills (tests/kernel_compile.py checks them with the
runtime's own arguments). Autotuning picks among them once per power-of-two length (not per
exact length); `AUTOSP_AUTOTUNE=0` takes the first without timing any, and fp32 has one.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from autosp.runtime.kernels import interpreting, per_step, unit_last

LOG2E = 1.4426950408889634
# Globals a kernel reads must be constexpr.
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(0.6931471805599453)
_NEG_BIG = tl.constexpr(-1.0e30)  # a finite running-max start: masked tiles give exp2(-inf) = 0, never NaN


# (BLOCK_M, BLOCK_N, warps, stages) by kernel, then by (head-dim bucket, element bytes); the
# first of each list is the default, and the only one with documents (their labels and bounds
# take registers) or with AUTOSP_AUTOTUNE=0. fp32 runs on FMA units (IEEE dots): small tiles.
# Each compiles for sm_90 within shared memory and without spills (tests/kernel_compile.py).
CONFIGS: dict[str, dict[tuple[int, int], list[tuple[int, int, int, int]]]] = {
    "forward": {
        (64, 2): [(128, 64, 8, 3), (64, 64, 4, 4)],
        (128, 2): [(128, 64, 8, 3), (64, 64, 4, 4)],
        (64, 4): [(32, 32, 8, 1)],
        (128, 4): [(16, 32, 4, 1)],
    },
    "dkdv": {
        (64, 2): [(32, 128, 8, 3), (64, 64, 8, 3)],
        (128, 2): [(32, 32, 8, 3)],
        (64, 4): [(16, 32, 8, 1)],
        (128, 4): [(16, 32, 4, 1)],
    },
    "dq": {
        (64, 2): [(128, 64, 8, 3), (64, 64, 4, 3)],
        (128, 2): [(128, 64, 8, 3), (64, 64, 8, 3)],
        (64, 4): [(32, 32, 8, 1)],
        (128, 4): [(32, 32, 8, 1)],
    },
}
INTERPRETER_CONFIG = (16, 16, 1, 1)  # tiny shapes on CPU: one small tile size, nothing to tune


def _config(blocks: tuple[int, int, int, int]) -> triton.Config:
    m, n, warps, stages = blocks
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)


def configs_for(kernel: str, block_d: int, element: int, documents: bool) -> list[tuple[int, int, int, int]]:
    """The tile sizes `kernel` may run for this padded head dim, element size and mask."""
    if interpreting():
        return [INTERPRETER_CONFIG]
    if block_d > 128:
        raise NotImplementedError(f"the Triton attention kernels take head dims up to 128, got {block_d}")
    bucket = 64 if block_d <= 64 else 128
    candidates = CONFIGS[kernel][(bucket, 4 if element >= 4 else 2)]
    return candidates[:1] if documents or os.environ.get("AUTOSP_AUTOTUNE", "1") == "0" else candidates


def _prune(kernel: str):
    def prune(configs, named_args, **kwargs):
        wanted = set(configs_for(kernel, kwargs["BLOCK_D"], named_args["Q"].element_size(), kwargs["HAS_DOCS"]))
        return [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]

    return {"early_config_prune": prune}


def _all_configs(kernel: str) -> list[triton.Config]:
    every = {blocks for lists in CONFIGS[kernel].values() for blocks in lists} | {INTERPRETER_CONFIG}
    return [_config(blocks) for blocks in sorted(every)]


# Autotuned once per power-of-two length bucket (LENGTH), head dim, mask kind and dtype. The head
# dim is a constexpr: where it is a power of two, its masks fold away.
TUNING_KEY = ["LENGTH", "D", "CAUSAL", "HAS_DOCS", "PRECISION"]


def _launch(kernel: str, jitted, grid, *args, **kwargs) -> None:
    """Run `jitted` (an autotuner over every config) with the configs `kernel` may run here: the
    one config without timing anything when there is only one, else autotuned."""
    candidates = configs_for(kernel, kwargs["BLOCK_D"], args[0].element_size(), kwargs["HAS_DOCS"])
    if len(candidates) == 1:
        m, n, warps, stages = candidates[0]
        jitted.fn[grid](*args, **kwargs, BLOCK_M=m, BLOCK_N=n, num_warps=warps, num_stages=stages)
    else:
        jitted[grid](*args, **kwargs)


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
def _documents(LABEL, FIRST, LAST, row_base, idx, n, lo, hi, BLOCK: tl.constexpr, HAS_DOCS: tl.constexpr):
    """The document labels at positions idx (< n; -1 past it) and [lo, hi) narrowed to the
    positions their documents span, starting on a multiple of BLOCK."""
    if HAS_DOCS:
        valid = idx < n
        docs = tl.load(LABEL + row_base + idx, mask=valid, other=-1)
        first = tl.min(tl.load(FIRST + row_base + idx, mask=valid, other=n), 0)
        last = tl.max(tl.load(LAST + row_base + idx, mask=valid, other=-1), 0)
        lo = tl.maximum(lo, (first // BLOCK) * BLOCK)
        hi = tl.minimum(hi, last + 1)
    else:
        docs = idx
    return docs, lo, hi


@triton.jit
def _key_labels(LABEL, row_base, cols, SK, HAS_DOCS: tl.constexpr):
    labels = cols
    if HAS_DOCS:
        labels = tl.load(LABEL + row_base + cols, mask=cols < SK, other=-2)
    return labels


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
    Q, stride_qb, stride_qh, stride_qs, HQ, SQ, D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """The query rows of this program (grid: row tiles x batch*query heads): their first row,
    batch*head, batch, head, row/key/dim offsets, mask, and where their rows of Q start (int64:
    a row offset times its stride passes 2^31 at millions of tokens)."""
    m0 = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // HQ, bh % HQ
    offs_m = tl.arange(0, BLOCK_M)
    rows = m0 + offs_m
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_mask = (rows[:, None] < SQ) & (offs_d[None, :] < D)
    q_rows = Q + b * stride_qb + h * stride_qh + m0.to(tl.int64) * stride_qs
    return m0, bh, b, h, rows, offs_m, offs_n, offs_d, row_mask, q_rows


@triton.jit
def _tile(base, first, stride_s, offs, offs_d, n, D, TRANSPOSED: tl.constexpr):
    """Rows [first, first + len(offs)) of a [n, D] matrix whose row 0 is at `base`, zeros past its
    bounds: [rows, D], or [D, rows] when TRANSPOSED."""
    start = base + tl.cast(first, tl.int64) * stride_s
    if TRANSPOSED:
        tile = tl.load(start + offs[None, :] * stride_s + offs_d[:, None],
                       mask=(first + offs[None, :] < n) & (offs_d[:, None] < D), other=0.0)
    else:
        tile = tl.load(start + offs[:, None] * stride_s + offs_d[None, :],
                       mask=(first + offs[:, None] < n) & (offs_d[None, :] < D), other=0.0)
    return tile


@triton.jit
def _forward_tiles(
    acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
    start, stop, qk_scale, SK, D, WINDOW, LABEL, doc_row, doc_q,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + offs_n
        k_t = _tile(k_base, n0, stride_ks, offs_n, offs_d, SK, D, True)
        s = _dot(q, k_t, PRECISION) * qk_scale  # log2 units
        doc_k = _key_labels(LABEL, doc_row, cols, SK, HAS_DOCS)
        s = _masked(s, float("-inf"), rows, cols, doc_q, doc_k, SK, WINDOW, CAUSAL, MASKED, HAS_DOCS)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _tile(v_base, n0, stride_vs, offs_n, offs_d, SK, D, False)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.autotune(configs=_all_configs("forward"), key=TUNING_KEY, prune_configs_by=_prune("forward"))
@triton.jit
def _attention_forward(
    Q, K, V, O, LSE, LABEL, FIRST, LAST, qk_scale,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_os,
    HQ, GROUP, SQ, SK, WINDOW, LENGTH,
    D: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    m0, bh, b, h, rows, offs_m, offs_n, offs_d, row_mask, q_rows = _query_tile(
        Q, stride_qb, stride_qh, stride_qs, HQ, SQ, D, BLOCK_M, BLOCK_N, BLOCK_D,
    )
    q = tl.load(q_rows + offs_m[:, None] * stride_qs + offs_d[None, :], mask=row_mask, other=0.0)
    k_base = K + b * stride_kb + (h // GROUP) * stride_kh
    v_base = V + b * stride_vb + (h // GROUP) * stride_vh
    m_i = tl.full([BLOCK_M], _NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    doc_row = b * SK
    lo, full_lo, full_hi, hi = _key_range(m0, SK, CAUSAL, WINDOW, BLOCK_M, BLOCK_N)
    doc_q, lo, hi = _documents(LABEL, FIRST, LAST, doc_row, rows, SQ, lo, hi, BLOCK_N, HAS_DOCS)
    mid_lo, mid_hi = _stretches(lo, full_lo, full_hi, hi)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                                   lo, mid_lo, qk_scale, SK, D, WINDOW, LABEL, doc_row, doc_q,
                                   CAUSAL, True, HAS_DOCS, BLOCK_N, PRECISION)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                                   mid_lo, mid_hi, qk_scale, SK, D, WINDOW, LABEL, doc_row, doc_q,
                                   CAUSAL, False, HAS_DOCS, BLOCK_N, PRECISION)
    acc, m_i, l_i = _forward_tiles(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                                   mid_hi, hi, qk_scale, SK, D, WINDOW, LABEL, doc_row, doc_q,
                                   CAUSAL, True, HAS_DOCS, BLOCK_N, PRECISION)
    seen = l_i > 0.0  # a row that sees no key attends to nothing: output 0, lse -inf
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * _LN2, float("-inf"))
    o_rows = O + b * stride_ob + h * stride_oh + m0.to(tl.int64) * stride_os
    tl.store(o_rows + offs_m[:, None] * stride_os + offs_d[None, :], out.to(O.dtype.element_ty), mask=row_mask)
    tl.store(LSE + bh * SQ + rows, lse, mask=rows < SQ)


@triton.jit
def _row_dot(
    A, B, OUT, stride_ab, stride_ah, stride_as, stride_bb, stride_bh, stride_bs, H, S,
    D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """OUT[b, h, s] = Σ_d A[b, h, s, d] · B[b, h, s, d] in fp32 (delta = rowsum(dO·O))."""
    bh = tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    s0 = tl.program_id(0) * BLOCK_S
    offs = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    a = _tile(A + b * stride_ab + h * stride_ah, s0, stride_as, offs, offs_d, S, D, False)
    x = _tile(B + b * stride_bb + h * stride_bh, s0, stride_bs, offs, offs_d, S, D, False)
    tl.store(OUT + bh * S + s0 + offs, tl.sum(a.to(tl.float32) * x.to(tl.float32), 1), mask=s0 + offs < S)


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
    start, stop, qk_scale, SQ, SK, D, WINDOW, LABEL, doc_row, doc_k,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr,
):
    for m0 in range(start, stop, BLOCK_M):
        rows = m0 + offs_m
        q_t = _tile(q_base, m0, stride_qs, offs_m, offs_d, SQ, D, True)
        do = _tile(do_base, m0, stride_dos, offs_m, offs_d, SQ, D, False)
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
            doc_q = tl.load(LABEL + doc_row + rows, mask=rows < SQ, other=-1)
            p_t = tl.where(doc_k[:, None] == doc_q[None, :], p_t, 0.0)
        dv += _dot(p_t.to(do.dtype), do, PRECISION)
        dp_t = _dot(v, tl.trans(do), PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q_t.dtype), tl.trans(q_t), PRECISION)
    return dk, dv


@triton.autotune(configs=_all_configs("dkdv"), key=TUNING_KEY, prune_configs_by=_prune("dkdv"))
@triton.jit
def _attention_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, LABEL, FIRST, LAST, qk_scale, sm_scale,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos, stride_dkb, stride_dkh, stride_dks, stride_dvb, stride_dvh, stride_dvs,
    HQ, HKV, GROUP, SQ, SK, WINDOW, LENGTH,
    D: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    n0 = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)
    b, hkv = bh // HKV, bh % HKV
    offs_n = tl.arange(0, BLOCK_N)
    cols = n0 + offs_n
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (cols[:, None] < SK) & (offs_d[None, :] < D)
    k = _tile(K + b * stride_kb + hkv * stride_kh, n0, stride_ks, offs_n, offs_d, SK, D, False)
    v = _tile(V + b * stride_vb + hkv * stride_vh, n0, stride_vs, offs_n, offs_d, SK, D, False)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    doc_row = b * SK
    lo, full_lo, full_hi, hi = _query_range(n0, SQ, CAUSAL, WINDOW, BLOCK_M, BLOCK_N)
    doc_k, lo, hi = _documents(LABEL, FIRST, LAST, doc_row, cols, SK, lo, hi, BLOCK_M, HAS_DOCS)
    mid_lo, mid_hi = _stretches(lo, full_lo, full_hi, hi)
    for g in range(0, GROUP):
        h = hkv * GROUP + g
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        row_base = (b * HQ + h) * SQ
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qs, stride_dos,
                             cols, offs_m, offs_d, lo, mid_lo, qk_scale, SQ, SK, D, WINDOW, LABEL, doc_row, doc_k,
                             CAUSAL, True, HAS_DOCS, BLOCK_M, PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qs, stride_dos,
                             cols, offs_m, offs_d, mid_lo, mid_hi, qk_scale, SQ, SK, D, WINDOW, LABEL, doc_row, doc_k,
                             CAUSAL, False, HAS_DOCS, BLOCK_M, PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, LSE + row_base, DELTA + row_base, stride_qs, stride_dos,
                             cols, offs_m, offs_d, mid_hi, hi, qk_scale, SQ, SK, D, WINDOW, LABEL, doc_row, doc_k,
                             CAUSAL, True, HAS_DOCS, BLOCK_M, PRECISION)
    dk_rows = DK + b * stride_dkb + hkv * stride_dkh + n0.to(tl.int64) * stride_dks
    dv_rows = DV + b * stride_dvb + hkv * stride_dvh + n0.to(tl.int64) * stride_dvs
    tl.store(dk_rows + offs_n[:, None] * stride_dks + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_rows + offs_n[:, None] * stride_dvs + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
    start, stop, qk_scale, SK, D, WINDOW, LABEL, doc_row, doc_q,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + offs_n
        k_t = _tile(k_base, n0, stride_ks, offs_n, offs_d, SK, D, True)
        v_t = _tile(v_base, n0, stride_vs, offs_n, offs_d, SK, D, True)
        p = tl.math.exp2(_dot(q, k_t, PRECISION) * qk_scale - lse[:, None])
        doc_k = _key_labels(LABEL, doc_row, cols, SK, HAS_DOCS)
        p = _masked(p, 0.0, rows, cols, doc_q, doc_k, SK, WINDOW, CAUSAL, MASKED, HAS_DOCS)
        dp = _dot(do, v_t, PRECISION)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k_t.dtype), tl.trans(k_t), PRECISION)
    return dq


@triton.autotune(configs=_all_configs("dq"), key=TUNING_KEY, prune_configs_by=_prune("dq"))
@triton.jit
def _attention_dq(
    Q, K, V, DO, LSE, DELTA, DQ, LABEL, FIRST, LAST, qk_scale, sm_scale,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos, stride_dqb, stride_dqh, stride_dqs,
    HQ, GROUP, SQ, SK, WINDOW, LENGTH,
    D: tl.constexpr, CAUSAL: tl.constexpr, HAS_DOCS: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    m0, bh, b, h, rows, offs_m, offs_n, offs_d, row_mask, q_rows = _query_tile(
        Q, stride_qb, stride_qh, stride_qs, HQ, SQ, D, BLOCK_M, BLOCK_N, BLOCK_D,
    )
    q = tl.load(q_rows + offs_m[:, None] * stride_qs + offs_d[None, :], mask=row_mask, other=0.0)
    do = _tile(DO + b * stride_dob + h * stride_doh, m0, stride_dos, offs_m, offs_d, SQ, D, False)
    k_base = K + b * stride_kb + (h // GROUP) * stride_kh
    v_base = V + b * stride_vb + (h // GROUP) * stride_vh
    lse = tl.load(LSE + bh * SQ + rows, mask=rows < SQ, other=0.0) * _LOG2E
    delta = tl.load(DELTA + bh * SQ + rows, mask=rows < SQ, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    doc_row = b * SK
    lo, full_lo, full_hi, hi = _key_range(m0, SK, CAUSAL, WINDOW, BLOCK_M, BLOCK_N)
    doc_q, lo, hi = _documents(LABEL, FIRST, LAST, doc_row, rows, SQ, lo, hi, BLOCK_N, HAS_DOCS)
    mid_lo, mid_hi = _stretches(lo, full_lo, full_hi, hi)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                   lo, mid_lo, qk_scale, SK, D, WINDOW, LABEL, doc_row, doc_q,
                   CAUSAL, True, HAS_DOCS, BLOCK_N, PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                   mid_lo, mid_hi, qk_scale, SK, D, WINDOW, LABEL, doc_row, doc_q,
                   CAUSAL, False, HAS_DOCS, BLOCK_N, PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, rows, offs_n, offs_d,
                   mid_hi, hi, qk_scale, SK, D, WINDOW, LABEL, doc_row, doc_q,
                   CAUSAL, True, HAS_DOCS, BLOCK_N, PRECISION)
    dq_rows = DQ + b * stride_dqb + h * stride_dqh + m0.to(tl.int64) * stride_dqs
    tl.store(dq_rows + offs_m[:, None] * stride_dqs + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_mask)


# --- launch ------------------------------------------------------------------------------


def _common(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    if v.shape[-1] != q.shape[-1]:
        raise NotImplementedError("the Triton kernels need one head dim for q/k and v")
    b, hq, sq, d = q.shape
    hkv, sk = k.shape[1], k.shape[2]
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    return b, hq, hkv, sq, sk, d, max(16, triton.next_power_of_2(d)), precision


@per_step
def document_bounds(documents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token of [B, S] document numbers (any numbering; a number may come back later in the
    row): a dense int32 label of its document in its row, and the first and last position of that
    document in the row (int32). Found once per step."""
    b, s = documents.shape
    ids, inverse = torch.unique(documents, return_inverse=True)
    slot = inverse + torch.arange(b, device=documents.device)[:, None] * ids.numel()  # (row, document)
    position = torch.arange(s, device=documents.device).expand(b, s)
    first = torch.full((b * ids.numel(),), s, dtype=torch.int64, device=documents.device)
    last = torch.full_like(first, -1)
    first.scatter_reduce_(0, slot.flatten(), position.flatten(), "amin")
    last.scatter_reduce_(0, slot.flatten(), position.flatten(), "amax")
    return (inverse.to(torch.int32).contiguous(), first[slot].to(torch.int32).contiguous(),
            last[slot].to(torch.int32).contiguous())


def _documents_args(documents: torch.Tensor | None, like: torch.Tensor) -> tuple:
    """(labels, first, last) for the kernels; any tensor stands in when absent (never read)."""
    return (like, like, like) if documents is None else document_bounds(documents)


def _length(sq: int, sk: int) -> int:
    """The autotuning bucket of a length: the next power of two."""
    return triton.next_power_of_2(max(sq, sk))


def attention_forward(q, k, v, causal: bool, window: int, scale: float, documents=None):
    q, k, v = unit_last(q), unit_last(k), unit_last(v)
    b, hq, hkv, sq, sk, d, block_d, precision = _common(q, k, v)
    out = torch.empty(b, hq, sq, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, hq, sq, dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(sq, meta["BLOCK_M"]), b * hq)  # noqa: E731
    _launch(
        "forward", _attention_forward, grid,
        q, k, v, out, lse, *_documents_args(documents, lse), scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        hq, hq // hkv, sq, sk, window, _length(sq, sk),
        D=d, CAUSAL=causal, HAS_DOCS=documents is not None, BLOCK_D=block_d, PRECISION=precision,
    )
    return out, lse


def attention_backward(grad_out, q, k, v, out, lse, causal: bool, window: int, scale: float, documents=None):
    grad_out, q, k, v, out = (unit_last(t) for t in (grad_out, q, k, v, out))
    lse = lse.contiguous()
    b, hq, hkv, sq, sk, d, block_d, precision = _common(q, k, v)
    delta = torch.empty(b, hq, sq, dtype=torch.float32, device=q.device)
    _row_dot[(triton.cdiv(sq, 64), b * hq)](
        grad_out, out, delta,
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), out.stride(0), out.stride(1), out.stride(2),
        hq, sq, D=d, BLOCK_S=64, BLOCK_D=block_d,
    )
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    docs, has_docs = _documents_args(documents, lse), documents is not None
    strides = (
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
    )
    _launch(
        "dkdv", _attention_dkdv, lambda meta: (triton.cdiv(sk, meta["BLOCK_N"]), b * hkv),
        q, k, v, grad_out, lse, delta, dk, dv, *docs, scale * LOG2E, scale, *strides,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        hq, hkv, hq // hkv, sq, sk, window, _length(sq, sk),
        D=d, CAUSAL=causal, HAS_DOCS=has_docs, BLOCK_D=block_d, PRECISION=precision,
    )
    _launch(
        "dq", _attention_dq, lambda meta: (triton.cdiv(sq, meta["BLOCK_M"]), b * hq),
        q, k, v, grad_out, lse, delta, dq, *docs, scale * LOG2E, scale, *strides,
        dq.stride(0), dq.stride(1), dq.stride(2),
        hq, hq // hkv, sq, sk, window, _length(sq, sk),
        D=d, CAUSAL=causal, HAS_DOCS=has_docs, BLOCK_D=block_d, PRECISION=precision,
    )
    return dq, dk, dv
