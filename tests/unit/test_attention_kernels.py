"""Triton flash attention (Triton's interpreter on CPU) and the PyTorch reference kernels against
attention written as plain math in fp64 (scores, mask, softmax, autograd): forward output, LSE,
and dQ/dK/dV."""

import math
import os
import types

import pytest
import torch

from autosp.runtime import attention as reference
from autosp.runtime import triton_attention
from tests.conftest import relative_error

# On a GPU machine the same tests run the kernels compiled; on CPU, in Triton's interpreter.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# The reference runs torch's CPU flash attention on CPU tensors and blockwise elsewhere: both.
BLOCKWISE = types.SimpleNamespace(attention_forward=reference.blockwise_forward, attention_backward=reference.blockwise_backward)
KERNELS = {"reference": reference, "blockwise": BLOCKWISE, "triton": triton_attention}


def _math(q, k, v, causal, window, scale, grad_out, documents=None):
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = q @ kk.transpose(-1, -2) * scale
    if causal:
        i = torch.arange(q.shape[2], device=q.device)[:, None]
        j = torch.arange(k.shape[2], device=q.device)[None, :]
        keep = (j <= i) & ((j > i - window) if window else True)
        scores = scores.masked_fill(~keep, float("-inf"))
    if documents is not None:
        same = documents[:, None, :, None] == documents[:, None, None, :]
        scores = scores.masked_fill(~same, float("-inf"))
    lse = torch.logsumexp(scores, -1)
    out = torch.softmax(scores, -1) @ vv
    out.backward(grad_out.double())
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad


def _inputs(b, hq, hkv, sq, sk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g).to(dtype).to(DEVICE)  # noqa: E731
    return make(b, hq, sq, d), make(b, hkv, sk, d), make(b, hkv, sk, d), make(b, hq, sq, d)


CASES = [
    # b, hq, hkv, sq, sk, d, causal, window
    pytest.param(1, 4, 2, 40, 40, 64, True, 0, id="causal-gqa-tail-d64"),
    pytest.param(2, 2, 2, 33, 33, 64, False, 0, id="full-mha-tail-b2"),
    pytest.param(1, 4, 1, 48, 48, 128, True, 0, id="causal-mqa-d128"),
    pytest.param(1, 2, 1, 45, 45, 64, True, 7, id="window7-tail"),
    pytest.param(1, 2, 2, 20, 37, 64, False, 0, id="cross-sq-ne-sk"),
    pytest.param(1, 2, 1, 17, 17, 80, True, 0, id="d80-padded"),
]


@pytest.mark.parametrize("kernel", ["triton", "reference", "blockwise"])
@pytest.mark.parametrize("b,hq,hkv,sq,sk,d,causal,window", CASES)
def test_forward_and_backward_match_math(kernel, b, hq, hkv, sq, sk, d, causal, window):
    q, k, v, grad_out = _inputs(b, hq, hkv, sq, sk, d, torch.float32)
    scale = 1 / math.sqrt(d)
    expected = _math(q, k, v, causal, window, scale, grad_out)
    ops = KERNELS[kernel]
    out, lse = ops.attention_forward(q, k, v, causal, window, scale)
    grads = ops.attention_backward(grad_out, q, k, v, out, lse, causal, window, scale)
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), (out, lse) + tuple(grads), expected):
        assert got.shape == want.shape, name
        assert relative_error(got.double(), want) < 2e-5, name


def test_bf16_within_bf16_tolerance():
    q, k, v, grad_out = _inputs(1, 4, 2, 40, 40, 64, torch.bfloat16, seed=3)
    expected = _math(q, k, v, True, 0, 0.125, grad_out)
    out, lse = triton_attention.attention_forward(q, k, v, True, 0, 0.125)
    grads = triton_attention.attention_backward(grad_out, q, k, v, out, lse, True, 0, 0.125)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), (out, lse) + tuple(grads), expected):
        assert relative_error(got.double(), want) < 3e-2, name


def test_strided_inputs_and_a_row_that_sees_no_key():
    """q/k/v as transposed views (the joint graph's layout), and queries past the keys under a
    window: such rows attend to nothing (output 0, lse -inf), as in the reference."""
    q, k, v, grad_out = _inputs(1, 2, 2, 24, 24, 64, torch.float32, seed=5)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    out, lse = triton_attention.attention_forward(qt, kt, vt, True, 4, 0.125)
    expected_out, expected_lse = reference.attention_forward(q, k, v, True, 4, 0.125)
    assert relative_error(out, expected_out) < 1e-5 and relative_error(lse, expected_lse) < 1e-5
    short_k, short_v = k[:, :, :8], v[:, :, :8]
    out, lse = triton_attention.attention_forward(q, short_k, short_v, True, 4, 0.125)
    ref_out, ref_lse = reference.attention_forward(q, short_k, short_v, True, 4, 0.125)
    assert torch.equal(lse[:, :, 11:], ref_lse[:, :, 11:]) and torch.all(lse[:, :, 11:] == float("-inf"))
    assert torch.all(out[:, :, 11:] == 0) and relative_error(out, ref_out) < 1e-5


def _packed(lengths_per_row):
    """Document numbers of packed rows: lengths [[7, 16, 17], ...] -> [[0]*7 + [1]*16 + [2]*17, ...]."""
    rows = [torch.cat([torch.full((n,), doc) for doc, n in enumerate(lengths)]) for lengths in lengths_per_row]
    return torch.stack(rows).to(DEVICE)


DOCUMENT_CASES = [
    # b, hq, hkv, s, causal, window, documents
    pytest.param(2, 4, 2, 40, True, 0, [[7, 16, 17], [33, 1, 6]], id="packed-causal-gqa"),
    pytest.param(1, 2, 2, 37, False, 0, [[20, 17]], id="packed-bidirectional"),
    pytest.param(1, 2, 1, 45, True, 6, [[10, 25, 10]], id="packed-window"),
    pytest.param(1, 2, 1, 34, True, 0, None, id="scattered-ids"),
]


@pytest.mark.parametrize("kernel", ["triton", "reference", "blockwise"])
@pytest.mark.parametrize("b,hq,hkv,s,causal,window,lengths", DOCUMENT_CASES)
def test_documents_match_math(kernel, b, hq, hkv, s, causal, window, lengths):
    """Packed sequences: only keys of the query's document. Document boundaries fall inside
    and between the interpreter's 16-wide tiles, so whole tiles are skipped and others cut; the
    last case numbers documents in no order (ids repeat far apart), which no skip may assume."""
    q, k, v, grad_out = _inputs(b, hq, hkv, s, s, 64, torch.float32, seed=7)
    if lengths is None:
        documents = (torch.arange(s, device=DEVICE) * 7 % 3)[None].repeat(b, 1)
    else:
        documents = _packed(lengths)
    expected = _math(q, k, v, causal, window, 0.125, grad_out, documents)
    ops = KERNELS[kernel]
    out, lse = ops.attention_forward(q, k, v, causal, window, 0.125, documents)
    grads = ops.attention_backward(grad_out, q, k, v, out, lse, causal, window, 0.125, documents)
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), (out, lse) + tuple(grads), expected):
        assert relative_error(got.double(), want) < 2e-5, name


OFFSETS_PAST_2_31 = """
import os, tempfile, torch
from autosp.runtime import triton_attention, attention as reference
S, D, STRIDE = 80, 16, 1 << 25  # row 79 starts at element 79 * 2^25 > 2^31
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "sparse")
    n = (S - 1) * STRIDE + 4 * D
    with open(path, "wb") as f:
        f.truncate(n * 4)  # a sparse file: only the pages the rows touch are ever written
    storage = torch.from_file(path, shared=True, size=n, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    small = [torch.randn(1, 1, S, D, generator=g) for _ in range(4)]
    big = [storage.as_strided((1, 1, S, D), (0, 0, STRIDE, 1), i * D) for i in range(4)]
    for b, s in zip(big, small):
        b.copy_(s)
    out, lse = triton_attention.attention_forward(*big[:3], True, 0, 0.25)
    grads = triton_attention.attention_backward(big[3], *big[:3], out, lse, True, 0, 0.25)
    ref_out, ref_lse = reference.blockwise_forward(*small[:3], True, 0, 0.25)
    ref = reference.blockwise_backward(small[3], *small[:3], ref_out, ref_lse, True, 0, 0.25)
    print(max((a - b).abs().max().item() for a, b in zip((out, lse, *grads), (ref_out, ref_lse, *ref))))
"""


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the interpreter reads CPU memory")
def test_offsets_past_2_31_elements():
    """q/k/v/dO rows 2^25 elements apart (views of a sparse file), so row offsets pass 2^31: the
    kernels take them in int64 (an int32 offset wraps and reads outside the tensor: a wrong
    result or a crash, hence a process of its own)."""
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", OFFSETS_PAST_2_31], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-5


def test_tile_configs(monkeypatch):
    """Autotuning tries the listed configs of a head-dim bucket and dtype; with documents, under
    AUTOSP_AUTOTUNE=0 and at fp32 there is one (nothing is timed); head dims past 128 are refused."""
    monkeypatch.setattr(triton_attention, "interpreting", lambda: False)
    listed = triton_attention.CONFIGS["forward"][(128, 2)]
    assert triton_attention.configs_for("forward", 128, 2, False) == listed and len(listed) > 1
    assert triton_attention.configs_for("forward", 128, 2, True) == listed[:1]
    assert triton_attention.configs_for("dq", 80 + 48, 4, False) == triton_attention.CONFIGS["dq"][(128, 4)]
    assert len(triton_attention.CONFIGS["dq"][(64, 4)]) == 1
    monkeypatch.setenv("AUTOSP_AUTOTUNE", "0")
    assert triton_attention.configs_for("dkdv", 64, 2, False) == triton_attention.CONFIGS["dkdv"][(64, 2)][:1]
    with pytest.raises(NotImplementedError, match="up to 128"):
        triton_attention.configs_for("forward", 256, 2, False)


TORCH_GPU_CASES = [
    # kernel, b, hq, hkv, s, causal, window, documents
    pytest.param("cudnn", 2, 8, 2, 300, True, 0, None, id="cudnn-causal-gqa"),
    pytest.param("cudnn", 1, 4, 4, 257, False, 0, None, id="cudnn-full"),
    pytest.param("flash", 2, 8, 2, 300, True, 0, None, id="flash-causal-gqa"),
    pytest.param("flash", 1, 4, 1, 300, True, 64, None, id="flash-window"),
    pytest.param("flash", 1, 4, 2, 300, True, 0, [[100, 77, 123]], id="flash-varlen-documents"),
    pytest.param("flash", 1, 4, 2, 300, True, 32, [[100, 77, 123]], id="flash-varlen-window"),
    pytest.param("flash", 1, 4, 2, 300, True, 0, "scattered", id="flash-scattered-documents-via-triton"),
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's GPU attention kernels need a GPU")
@pytest.mark.parametrize("kernel, b, hq, hkv, s, causal, window, lengths", TORCH_GPU_CASES)
def test_torch_gpu_kernels_match_math(kernel, b, hq, hkv, s, causal, window, lengths):
    """cuDNN and FlashAttention through runtime/torch_attention.py (bf16, the layouts the program
    passes: [B, H, S, D] views of [B, S, H, D]): results contiguous, within bf16 tolerance of fp64 math."""
    from autosp.runtime import kernels

    q, k, v, grad_out = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in _inputs(b, hq, hkv, s, s, 64, torch.bfloat16, seed=11))
    documents = None
    if lengths == "scattered":
        documents = (torch.arange(s, device=DEVICE) * 7 % 3)[None].repeat(b, 1)
    elif lengths is not None:
        documents = _packed(lengths)
    expected = _math(q, k, v, causal, window, 0.125, grad_out, documents)
    forward, backward = kernels.ATTENTION_CALLS[kernel]()
    out, lse = forward(q, k, v, causal, window, 0.125, documents)
    grads = backward(grad_out, q, k, v, out, lse, causal, window, 0.125, documents)
    for name, got, want in zip(("out", "lse", "dq", "dk", "dv"), (out, lse) + tuple(grads), expected):
        assert got.shape == want.shape and got.is_contiguous(), name
        assert relative_error(got.double(), want) < 3e-2, name
