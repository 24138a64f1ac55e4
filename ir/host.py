"""The `host` dialect: values a step moves to the host's memory and back (offload).

A value offloaded by remat leaves the device after its last forward use and comes back before its
first backward use:

    %h = host.offload_start %v {offset = 0 : i64} : tensor<4x8xbf16> -> tensor<4x8xbf16, #host.memory>
    host.offload_wait %v, %h : tensor<4x8xbf16>, tensor<4x8xbf16, #host.memory>
    ...
    %p = host.prefetch_start %h : tensor<4x8xbf16, #host.memory> -> tensor<4x8xbf16>
    %d = host.prefetch_wait %p : tensor<4x8xbf16>

`offload_start` starts copying `v` into the host pool at byte `offset` (pinned memory the runtime
allocates once, as large as the furthest offset + bytes of the program's offloads); `offload_wait`
waits for that copy, so `v`'s device memory may be reused after it (it is `v`'s last use).
`prefetch_start` allocates a device tensor and starts copying the host value into it;
`prefetch_wait` waits for that copy and returns the same tensor (a view, no memory of its own).
The copies run on a side stream, so they overlap the compute between start and wait; on the CPU
they are plain copies into a pool that the memory plan and the tracker count as host memory,
not device memory. The ops have side effects (copies in flight): never removed or reordered.
"""

from __future__ import annotations

from typing import ClassVar

from xdsl.dialects.builtin import IntegerAttr, NoneAttr, TensorType
from xdsl.ir import Dialect, ParametrizedAttribute, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    prop_def,
    result_def,
)
from xdsl.utils.exceptions import VerifyException

from autosp.ir.dtypes import tensor_bytes
from autosp.ir.interfaces import MovesData, ProgramGlobal, RuntimeCall, RuntimeCallInterface

POOL_ALIGNMENT = 512  # bytes: each offloaded value starts at a multiple (DMA-friendly, any dtype)

# --- attributes ---------------------------------------------------------------------------


@irdl_attr_definition
class HostMemoryAttr(ParametrizedAttribute):
    """`#host.memory`: the encoding of a tensor type whose value lives in the host's memory."""

    name = "host.memory"


def on_host(value: SSAValue) -> bool:
    return isinstance(value.type, TensorType) and isinstance(value.type.encoding, HostMemoryAttr)


def host_type(device: TensorType) -> TensorType:
    return TensorType(device.element_type, device.get_shape(), HostMemoryAttr())


def device_type(host: TensorType) -> TensorType:
    return TensorType(host.element_type, host.get_shape(), NoneAttr())


# --- ops ----------------------------------------------------------------------------------


class _CopyOp(IRDLOperation, MovesData, RuntimeCallInterface):
    """A copy over the host link (or the wait for one)."""

    irdl_options = (ParsePropInAttrDict(),)
    CALLEE: ClassVar[str]

    def runtime_call(self) -> RuntimeCall:
        return RuntimeCall(self.CALLEE, list(self.operands))


@irdl_op_definition
class OffloadStartOp(_CopyOp):
    name = "host.offload_start"
    CALLEE: ClassVar[str] = "offload.offload_start"
    value = operand_def(TensorType)
    host = result_def(TensorType)
    offset = prop_def(IntegerAttr)

    assembly_format = "$value attr-dict `:` type($value) `->` type($host)"

    def verify_(self) -> None:
        if on_host(self.value) or self.host.type != host_type(self.value.type):  # type: ignore[arg-type]
            raise VerifyException(f"{self.name}: moves a device tensor to the same type in #host.memory")
        offset = self.offset.value.data
        if offset < 0 or offset % POOL_ALIGNMENT:
            raise VerifyException(f"{self.name}: offset {offset} must be a multiple of {POOL_ALIGNMENT} bytes, >= 0")

    def copied_bytes(self) -> int:
        return tensor_bytes(self.value)

    def runtime_call(self) -> RuntimeCall:
        return RuntimeCall(self.CALLEE, [self.value], {"offset": self.offset, "pool": ProgramGlobal("HOST")})


@irdl_op_definition
class OffloadWaitOp(_CopyOp):
    name = "host.offload_wait"
    CALLEE: ClassVar[str] = "offload.offload_wait"
    value = operand_def(TensorType)
    host = operand_def(TensorType)

    assembly_format = "$value `,` $host attr-dict `:` type($value) `,` type($host)"

    def verify_(self) -> None:
        if not isinstance(self.host.owner, OffloadStartOp) or self.host.owner.value != self.value:
            raise VerifyException(f"{self.name}: waits for the host.offload_start of its value")


@irdl_op_definition
class PrefetchStartOp(_CopyOp):
    name = "host.prefetch_start"
    CALLEE: ClassVar[str] = "offload.prefetch_start"
    host = operand_def(TensorType)
    value = result_def(TensorType)

    assembly_format = "$host attr-dict `:` type($host) `->` type($value)"

    def verify_(self) -> None:
        if not on_host(self.host) or self.value.type != device_type(self.host.type):  # type: ignore[arg-type]
            raise VerifyException(f"{self.name}: moves a #host.memory tensor to the same type on the device")

    def copied_bytes(self) -> int:
        return tensor_bytes(self.value)

    def runtime_call(self) -> RuntimeCall:
        return RuntimeCall(self.CALLEE, [self.host], {"pool": ProgramGlobal("HOST")})


@irdl_op_definition
class PrefetchWaitOp(_CopyOp):
    """Its result is its operand once the copy is done: a view (no storage of its own)."""

    name = "host.prefetch_wait"
    CALLEE: ClassVar[str] = "offload.prefetch_wait"
    IS_VIEW: ClassVar[bool] = True
    started = operand_def(TensorType)
    value = result_def(TensorType)

    assembly_format = "$started attr-dict `:` type($started) `->` type($value)"

    def verify_(self) -> None:
        if not isinstance(self.started.owner, PrefetchStartOp) or self.value.type != self.started.type:
            raise VerifyException(f"{self.name}: waits for a host.prefetch_start, same type")


Host = Dialect("host", [OffloadStartOp, OffloadWaitOp, PrefetchStartOp, PrefetchWaitOp], [HostMemoryAttr])
