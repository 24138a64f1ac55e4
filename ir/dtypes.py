"""The element types AutoSP tensors can have, and their torch dtypes."""

from __future__ import annotations

import math

import torch
from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    IntegerType,
    Signedness,
    TensorType,
)
from xdsl.ir import Attribute, SSAValue

from autosp.common.errors import AutoSPError

_TORCH_TO_IR: dict[torch.dtype, Attribute] = {
    torch.float32: Float32Type(),
    torch.float16: Float16Type(),
    torch.bfloat16: BFloat16Type(),
    torch.float64: Float64Type(),
    torch.int64: IntegerType(64),
    torch.int32: IntegerType(32),
    torch.int16: IntegerType(16),
    torch.int8: IntegerType(8),
    torch.uint8: IntegerType(8, Signedness.UNSIGNED),
    torch.bool: IntegerType(1),
}
_IR_TO_TORCH = {v: k for k, v in _TORCH_TO_IR.items()}

BYTES = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in _TORCH_TO_IR}


def tensor_bytes(value: SSAValue) -> int:
    """The bytes of a tensor-typed value: shape x element size."""
    if not isinstance(value.type, TensorType):
        raise AutoSPError(
            f"value %{value.name_hint or '?'} has type {value.type}: AutoSP plans programs of tensors only "
            "(the IR autosp-export writes)"
        )
    return math.prod(value.type.get_shape()) * BYTES[torch_dtype(value.type.element_type)]


class UnsupportedDtype(ValueError):
    pass


def element_type(dtype: torch.dtype) -> Attribute:
    try:
        return _TORCH_TO_IR[dtype]
    except KeyError:
        supported = ", ".join(str(d).removeprefix("torch.") for d in _TORCH_TO_IR)
        raise UnsupportedDtype(
            f"dtype {dtype} is not supported (supported: {supported})"
        ) from None


def torch_dtype(element: Attribute) -> torch.dtype:
    try:
        return _IR_TO_TORCH[element]
    except KeyError:
        raise UnsupportedDtype(f"element type {element} has no torch dtype") from None


def tensor_type(shape, dtype: torch.dtype) -> TensorType:
    return TensorType(element_type(dtype), [int(s) for s in shape])
