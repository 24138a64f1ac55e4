"""The dtype sums accumulate in: fp32 for 16-bit and fp32 values, fp64 for fp64 (the kernels,
the fused loss and the frontends' loss rewrite must agree on it)."""

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)
