"""Which kernel runs an attention op (and the fused loss) on which device, and the scratch each
takes: the facts `select-kernels` chooses by and the memory plan prices, so the kernel the plan
prices is the kernel that runs (`runtime/kernels.py` runs the op's choice).

Attention kernels, in order of preference on their devices (torch's own where they do the job):

| kernel | devices | runs | scratch (beside its results) |
|---|---|---|---|
| `cudnn` | CUDA sm80+ | bf16/fp16, head dim <= 128 (multiple of 8), causal or none, GQA; no window, no documents | backward: fp32 dQ accumulator and row sums (cuDNN's SDPA backward workspace) |
| `flash` | CUDA sm80+, ROCm | bf16/fp16, head dim <= 256 (multiple of 8), causal, sliding window, GQA, documents as variable-length sequences (batch 1) | backward: fp32 dQ accumulator ([S rounded to 128, H, D rounded to 32]), row sums; with GQA, dK/dV at the query head count |
| `triton` | CUDA, ROCm, Triton's interpreter | bf16/fp16/fp32 (fp32: IEEE dots), any mask, one head dim up to 128 | backward: delta, one fp32 per query row |
| `cpu-flash` | CPU | torch's CPU flash kernel: `is_causal` without a mask tensor where the mask is plain causal (or none); window or documents as an additive mask of q's dtype | the mask; backward: a q-sized buffer |
| `blockwise` | any | the reference: one [block, Sk] score tile at a time, fp64 too | forward: two fp32 score tiles; backward: three |

torch's kernels write their results in their inputs' layout (q's, usually [B, S, H, D] under a
[B, H, S, D] view); the program's values are contiguous, so each result is copied once after
the kernel when it is not: that copy (out, or dq first in the backward) is priced as scratch
too, as the larger of it and the kernel's own.

A case the chosen kernel can only tell from the data (documents that are not contiguous runs,
for `flash`) runs its `fallback`; the plan prices the larger scratch of the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from autosp.common.errors import AutoSPError
from autosp.common.attention import QUERY_BLOCK, every_row_sees_a_key
DEVICES = ("cpu", "cuda", "rocm", "interpreter")


@dataclass(frozen=True)
class Target:
    """The device a program is compiled for: `cpu`, `cuda:sm90` (compute capability 9.0),
    `rocm`, or `interpreter` (Triton's interpreter on CPU tensors, for tests). `exclude`: kernels
    that did not work on the live device (a probe at compile) and must not be chosen."""

    device: str
    arch: int = 0
    exclude: frozenset[str] = frozenset()

    @staticmethod
    def parse(text: str, exclude: str = "") -> Target:
        device, _, arch = text.partition(":")
        if device not in DEVICES or (arch and not (device == "cuda" and arch.startswith("sm") and arch[2:].isdigit())):
            raise AutoSPError(f"target {text!r}: give one of cpu, cuda:smNN (e.g. cuda:sm90), rocm, interpreter")
        excluded = frozenset(k for k in exclude.split(",") if k)
        unknown = excluded - set(ATTENTION_KERNELS)
        if unknown:
            raise AutoSPError(f"exclude={','.join(sorted(unknown))}: not attention kernels ({', '.join(ATTENTION_KERNELS)})")
        return Target(device, int(arch[2:]) if arch else (90 if device == "cuda" else 0), excluded)

    def __str__(self) -> str:
        return f"cuda:sm{self.arch}" if self.device == "cuda" else self.device


@dataclass(frozen=True)
class AttentionCase:
    """One attention op's problem (per rank: local head counts)."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    value_dim: int
    dtype: torch.dtype
    causal: bool
    window: int
    documents: bool

    @property
    def element(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def rows(self) -> int:
        """Query rows over all heads: B * Hq * Sq."""
        return self.batch * self.q_heads * self.q_len



@dataclass(frozen=True)
class AttentionKernel:
    name: str
    devices: tuple[str, ...]
    refuses: Callable[[AttentionCase, Target], str | None]  # why it cannot run the case, or None
    forward_scratch: Callable[[AttentionCase], int]
    backward_scratch: Callable[[AttentionCase], int]
    fallback: str | None = None  # what runs when the data rule this kernel out


ATTENTION_KERNELS: dict[str, AttentionKernel] = {}  # in order of preference


def attention_kernel(name: str, devices: tuple[str, ...], forward_scratch, backward_scratch, fallback: str | None = None):
    def register(refuses: Callable[[AttentionCase, Target], str | None]):
        ATTENTION_KERNELS[name] = AttentionKernel(name, devices, refuses, forward_scratch, backward_scratch, fallback)
        return refuses

    return register


def _round(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _sixteen_bit(case: AttentionCase) -> str | None:
    return None if case.dtype in (torch.bfloat16, torch.float16) else f"{case.dtype} (bf16/fp16 only)"


def _fp32_rows(case: AttentionCase) -> int:
    return case.rows() * 4


def _gqa_expanded(case: AttentionCase, element: int) -> int:
    """dK and dV at the query head count (summed to the kv heads after the kernel)."""
    return 0 if case.q_heads == case.kv_heads else 2 * case.batch * case.kv_len * case.q_heads * case.head_dim * element


def _out(case: AttentionCase) -> int:
    """One out- (or dq-) sized result: the copy made when a kernel wrote it in q's layout."""
    return case.rows() * case.value_dim * case.element


def _cudnn_backward(case: AttentionCase) -> int:
    return max(case.rows() * case.head_dim * 4 + _fp32_rows(case), _out(case))


@attention_kernel("cudnn", ("cuda",), forward_scratch=_out, backward_scratch=_cudnn_backward)
def _cudnn(case: AttentionCase, target: Target) -> str | None:
    if target.arch < 80:
        return f"sm{target.arch} (cuDNN attention needs sm80+)"
    if case.window or case.documents:
        return "a sliding window or documents (torch's cuDNN attention takes neither)"
    if case.head_dim != case.value_dim or case.head_dim % 8 or case.head_dim > 128:
        return f"head dims {case.head_dim}/{case.value_dim} (one dim, a multiple of 8, <= 128)"
    if case.causal and case.q_len != case.kv_len:
        return "causal with Sq != Sk (cuDNN aligns the diagonal differently)"
    return _sixteen_bit(case)


def _flash_backward(case: AttentionCase) -> int:
    rows = _round(case.q_len, 128) + (128 * case.batch if case.documents else 0)
    batch = 1 if case.documents else case.batch
    accumulator = batch * rows * case.q_heads * _round(case.head_dim, 32) * 4
    return max(accumulator + batch * case.q_heads * rows * 4 + _gqa_expanded(case, case.element), _out(case))


@attention_kernel("flash", ("cuda", "rocm"), forward_scratch=_out, backward_scratch=_flash_backward,
                  fallback="triton")
def _flash(case: AttentionCase, target: Target) -> str | None:
    if target.device == "cuda" and target.arch < 80:
        return f"sm{target.arch} (FlashAttention needs sm80+)"
    if case.head_dim != case.value_dim or case.head_dim % 8 or case.head_dim > 256:
        return f"head dims {case.head_dim}/{case.value_dim} (one dim, a multiple of 8, <= 256)"
    if case.causal and case.q_len != case.kv_len:
        return "causal with Sq != Sk (FlashAttention aligns the diagonal bottom-right)"
    if case.documents and case.batch != 1:
        return "documents in a batch of several rows (variable-length sequences need one row)"
    return _sixteen_bit(case)


def _triton_refuses(case: AttentionCase, target: Target) -> str | None:
    if case.head_dim != case.value_dim or case.head_dim > 128:
        return f"head dims {case.head_dim}/{case.value_dim} (the Triton kernels take one, up to 128)"
    if case.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return f"{case.dtype} (bf16/fp16/fp32)"
    return None


attention_kernel("triton", ("cuda", "rocm", "interpreter"), forward_scratch=lambda case: 0, backward_scratch=_fp32_rows)(
    _triton_refuses
)


def _cpu_mask(case: AttentionCase) -> int:
    """The additive mask torch's CPU flash kernel reads for a window or documents ([Sq, Sk], or
    [B, 1, Sq, Sk] with documents), in q's dtype."""
    if not (case.window or case.documents):
        return 0
    return (case.batch if case.documents else 1) * case.q_len * case.kv_len * case.element


@attention_kernel("cpu-flash", ("cpu",), forward_scratch=lambda case: max(_cpu_mask(case), _out(case) + _fp32_rows(case)),
                  backward_scratch=lambda case: _cpu_mask(case) + _out(case))
def _cpu_flash(case: AttentionCase, target: Target) -> str | None:
    if not every_row_sees_a_key(case.q_len, case.kv_len, case.window):
        return "rows that see no key (torch's CPU flash kernel leaves them NaN)"
    if case.head_dim != case.value_dim:
        return f"head dims {case.head_dim}/{case.value_dim} (torch's CPU flash kernel takes one)"
    return None


def _score_tiles(case: AttentionCase, tiles: int) -> int:
    acc = 8 if case.dtype == torch.float64 else 4
    block = min(case.q_len, QUERY_BLOCK)
    return tiles * case.batch * case.q_heads * block * case.kv_len * acc


attention_kernel("blockwise", DEVICES, forward_scratch=lambda case: _score_tiles(case, 2),
                 backward_scratch=lambda case: _score_tiles(case, 3))(lambda case, target: None)


def runnable(case: AttentionCase, target: Target) -> list[str]:
    """The kernels of the target's device that run the case and are not excluded, best first."""
    return [k.name for k in ATTENTION_KERNELS.values()
            if target.device in k.devices and k.name not in target.exclude and k.refuses(case, target) is None]


def choose_attention(case: AttentionCase, target: Target, lean: bool = False) -> str:
    """The fastest kernel that runs the case; `lean`: the one with the least scratch (the Triton
    kernels' backward holds one fp32 per query row where cuDNN's and FlashAttention's hold an
    fp32 dQ), for programs nothing else fits."""
    kernels = runnable(case, target)
    if lean:
        return min(kernels, key=lambda k: attention_scratch(k, case, backward=True))
    return kernels[0]


def attention_scratch(kernel: str, case: AttentionCase, backward: bool) -> int:
    """The kernel's scratch, or its fallback's where that is larger (the data decide which runs)."""
    names = [kernel] + ([ATTENTION_KERNELS[kernel].fallback] if ATTENTION_KERNELS[kernel].fallback else [])
    return max((ATTENTION_KERNELS[n].backward_scratch if backward else ATTENTION_KERNELS[n].forward_scratch)(case)
               for n in names)


# The fused LM head + loss: Triton rows on GPUs (in place on the logits), PyTorch rows elsewhere
# (in place for fp32 logits, an fp32 copy of a 16-bit chunk).
LOSS_KERNELS = ("triton", "reference")


def choose_loss(dtype: torch.dtype, target: Target) -> str:
    if target.device in ("cuda", "rocm", "interpreter") and dtype in (torch.bfloat16, torch.float16, torch.float32):
        return "triton"
    return "reference"
