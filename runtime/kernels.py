"""The kernels a generated program calls.

Attention and the fused loss run the kernel the compiler chose for them (`kernel=`, from the
`select-kernels` pass: cuDNN or FlashAttention through torch, AutoSP's Triton kernels, torch's
CPU flash kernel or the blockwise reference; ir/kernel_choice.py says which runs what). A
program compiled without a choice takes Triton on GPU tensors (CUDA or ROCm builds of torch
alike) and the reference on CPU, as do the generated elementwise kernels.

`AUTOSP_KERNELS` overrides, for tests and debugging: `auto` (default) keeps the choices;
`triton` runs Triton everywhere, CPU tensors included, which needs `TRITON_INTERPRET=1` (how the
tests run the kernels without a GPU); `reference` never uses Triton nor torch's GPU attention.
fp64 always takes the reference (Triton's fp64 math is not worth a kernel variant).
"""

from __future__ import annotations

import functools
import os
import weakref

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


def unit_last(x: torch.Tensor) -> torch.Tensor:
    """The attention kernels index the head dim with stride 1 (any other strides are passed)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def per_step(find):
    """`find(tensor)` remembered for the last tensor it was asked about (the same object, not
    written since): every layer of a step reads one documents tensor, so what is found from it
    (a host sync) is found once per step."""
    last: list = [None, -1, None]  # weakref to the tensor, its version, what was found

    @functools.wraps(find)
    def remembered(tensor: torch.Tensor):
        ref, version, found = last
        if ref is not None and ref() is tensor and version == tensor._version:
            return found
        found = find(tensor)
        last[:] = [weakref.ref(tensor), tensor._version, found]
        return found

    return remembered


def _triton_attention():
    from autosp.runtime import triton_attention

    return triton_attention


def _torch_attention():
    from autosp.runtime import torch_attention

    return torch_attention


# kernel name -> the module holding its (forward, backward); imported on first use (Triton's
# and torch's GPU kernels are not needed on CPU).
ATTENTION_CALLS = {
    "cudnn": lambda: (_torch_attention().cudnn_forward, _torch_attention().cudnn_backward),
    "flash": lambda: (_torch_attention().flash_forward, _torch_attention().flash_backward),
    "triton": lambda: (_triton_attention().attention_forward, _triton_attention().attention_backward),
    "cpu-flash": lambda: (reference_attention.cpu_flash_forward, reference_attention.cpu_flash_backward),
    "blockwise": lambda: (reference_attention.blockwise_forward, reference_attention.blockwise_backward),
    "reference": lambda: (reference_attention.attention_forward, reference_attention.attention_backward),
}


def attention_kernel(q: torch.Tensor, v: torch.Tensor, kernel: str | None) -> str:
    """The kernel that runs: the compiler's choice unless AUTOSP_KERNELS overrides it (the
    Triton kernels take one head dim: MLA's value dim runs on the reference)."""
    choice = backend()
    if q.dtype == torch.float64 or choice == "reference":
        return "reference"
    if choice == "triton" or kernel is None:
        return "triton" if use_triton(q) and q.shape[-1] == v.shape[-1] else "reference"
    return kernel


def attention_forward(q, k, v, causal: bool, window: int, scale: float, documents=None, kernel: str | None = None):
    forward, _ = ATTENTION_CALLS[attention_kernel(q, v, kernel)]()
    return forward(q, k, v, causal, window, scale, documents)


def attention_backward(grad_out, q, k, v, out, lse, causal: bool, window: int, scale: float, documents=None,
                       kernel: str | None = None):
    _, backward = ATTENTION_CALLS[attention_kernel(q, v, kernel)]()
    return backward(grad_out, q, k, v, out, lse, causal, window, scale, documents)


def linear_cross_entropy(hidden, weight, labels, ignore_index: int, chunk: int, kernel: str | None = None):
    rows = reference_loss.rows_cross_entropy
    choice = backend()
    triton_rows = use_triton(hidden) if kernel is None or choice != "auto" else kernel == "triton"
    if triton_rows and hidden.dtype != torch.float64:
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


_PROBES: dict[tuple, str | None] = {}


def probe_attention(kernel: str, dtype: torch.dtype, head_dim: int, group: int, causal: bool, window: int,
                    documents: bool, device: torch.device) -> str | None:
    """Why `kernel` cannot be trusted with a case of this kind on `device` (None: it can): a
    small case (384 tokens, a partial last tile, two kv heads of `group` query heads each, a
    window of at most 64, three documents) forward and backward, against the blockwise
    reference in fp32. Once per kind and process."""
    key = (kernel, dtype, head_dim, group, causal, window, documents, str(device))
    if key in _PROBES:
        return _PROBES[key]
    generator = torch.Generator(device).manual_seed(0)
    seq, hkv = 384, 2

    def rand(*shape):
        return torch.randn(*shape, generator=generator, device=device).to(dtype)

    q, k, v = rand(1, hkv * group, seq, head_dim), rand(1, hkv, seq, head_dim), rand(1, hkv, seq, head_dim)
    grad = rand(*q.shape)
    docs = torch.repeat_interleave(torch.arange(3, device=device), torch.tensor([100, 150, 134], device=device))[None] if documents else None
    mask = (causal, min(window, 64), head_dim ** -0.5, docs)
    try:
        forward, backward = ATTENTION_CALLS[kernel]()
        out, lse = forward(q, k, v, *mask)
        got = (out, lse, *backward(grad, q, k, v, out, lse, *mask))
    except Exception as err:  # noqa: BLE001 (any failure rules the kernel out)
        _PROBES[key] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return _PROBES[key]
    up = [t.float() for t in (q, k, v, grad)]
    ref_out, ref_lse = reference_attention.blockwise_forward(*up[:3], *mask)
    expected = (ref_out, ref_lse, *reference_attention.blockwise_backward(up[3], *up[:3], ref_out, ref_lse, *mask))
    names = ("out", "lse", "dq", "dk", "dv")
    for name, a, b in zip(names, got, expected):
        error = float((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-6))
        if not error <= 3e-2:  # bf16/fp16 rounding; NaN fails too
            _PROBES[key] = f"{name} differs from the reference by {error:.2g} (relative)"
            return _PROBES[key]
    _PROBES[key] = None
    return None
