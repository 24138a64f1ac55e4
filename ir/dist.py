"""The `dist` dialect: explicit collectives over a named process group.

`dist.group @sp {size = 4 : i64, axis = "sequence"}` declares a group in the module: its size and
the mesh axis it spans ("sequence": an SP group; "world": every rank of sp x dp, over which the
training state is sharded). Every collective names its group by symbol, and its verifier checks
the shapes it moves against that group's size. None of the collectives is Pure: dead-code
elimination, CSE and reordering must never change which collectives run or their order, or
ranks deadlock.

The bucket collectives move several parameters' tensors in one call (ZeRO, passes/zero.py):
`dist.gather_params_start` / `dist.gather_params_wait` make whole parameters of their shards
(started ahead, so the transfer overlaps compute), `dist.reduce_scatter_grads` makes gradient
shards of whole (partial) gradients. A parameter is cut along dim 0 as DTensor's
Shard(0) cuts it (torch.chunk: ceil(n / size) rows per rank, the last ranks may hold fewer or
none); a 0-dim parameter is replicated (every rank holds it; its gradient is summed over the group).
"""

from __future__ import annotations

from typing import ClassVar

from xdsl.dialects.builtin import (
    DenseArrayBase, IntegerAttr, IntegerType, StringAttr, SymbolNameConstraint, SymbolRefAttr, TensorType,
)
from xdsl.ir import Attribute, Dialect, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_op_definition,
    operand_def,
    prop_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.traits import SymbolOpInterface, SymbolTable
from xdsl.utils.exceptions import VerifyException

from autosp.common.sizes import chunk_sizes
from autosp.ir.dtypes import BYTES, tensor_bytes, torch_dtype
from autosp.ir.interfaces import CostInterface, RuntimeCall, RuntimeCallInterface

REDUCE_OPS = ("sum", "max", "min")
AXES = ("sequence", "world")


@irdl_op_definition
class GroupDeclOp(IRDLOperation):
    """A process group: `size` ranks along the mesh axis `axis` ("sequence": an SP group)."""

    name = "dist.group"
    sym_name = prop_def(SymbolNameConstraint())
    size = prop_def(IntegerAttr)
    axis = prop_def(StringAttr)

    irdl_options = (ParsePropInAttrDict(),)
    traits = traits_def(SymbolOpInterface())
    assembly_format = "$sym_name attr-dict"

    def verify_(self) -> None:
        if self.size.value.data < 1:
            raise VerifyException(f"dist.group @{self.sym_name.data}: size must be >= 1")
        if self.axis.data not in AXES:
            raise VerifyException(f"dist.group @{self.sym_name.data}: axis must be one of {', '.join(AXES)}")


def group_size(op: IRDLOperation, group: SymbolRefAttr) -> int:
    """The size of the `dist.group` that `op` names, from its declaration in the module."""
    try:
        decl = SymbolTable.lookup_symbol(op, group)
    except ValueError:
        decl = None
    if not isinstance(decl, GroupDeclOp):
        raise VerifyException(f"{op.name}: {group} is not a dist.group of the module")
    return decl.size.value.data


class GroupOp(IRDLOperation):
    """One tensor in, one out, over the process group `group` (a `dist.group` of the module)."""

    input = operand_def(TensorType)
    output = result_def(TensorType)
    group = prop_def(SymbolRefAttr)

    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$input attr-dict `:` type($input) `->` type($output)"

    def verify_(self) -> None:
        self.group_size  # the group must be declared

    @property
    def group_size(self) -> int:
        """The size of the group this op names, from its declaration."""
        return group_size(self, self.group)


class CollectiveOp(GroupOp, CostInterface, RuntimeCallInterface):
    """Computes nothing (its time is the bytes it sends); `workspace_bytes` is the runtime's
    staging. `REPLAYABLE`: it only moves data, so running it again on the same inputs gives the
    same bits on every rank (remat may recompute it, the same decision on every rank)."""

    CALLEE: ClassVar[str]
    REPLAYABLE: ClassVar[bool] = False

    def flops(self, flops_of) -> float:
        return 0.0

    def runtime_call(self) -> RuntimeCall:
        """collectives.<op>(x, <its properties>, group=...): the runtime takes them by name."""
        properties = {name: attr for name, attr in self.properties.items() if name != "group"}
        return RuntimeCall(self.CALLEE, [self.input], {**properties, **self.gathered_length(), "group": self.group})

    def gathered_length(self) -> dict[str, int]:
        """total=: the whole length of a gathered dim (parts may differ by one token)."""
        return {}

    def expected_shapes(self, shape: list[int]) -> list[list[int]]:
        """The result shapes this op may have (a sequence dim split unevenly over the group
        gives parts that differ by one, so a rank's share is one of two sizes)."""
        raise NotImplementedError(f"{type(self).__name__} must say how it changes a shape")

    def _dim(self, name: str, shape: list[int]) -> int:
        dim = getattr(self, name).value.data
        if not 0 <= dim < len(shape):
            raise VerifyException(f"{self.name}: {name} {dim} out of range for rank {len(shape)}")
        return dim

    def _divide(self, shapes: list[list[int]], dim: int) -> list[list[int]]:
        """One part of dim: floor or ceil of size / n."""
        n = self.group_size
        return [s[:dim] + [part] + s[dim + 1 :] for s in shapes for part in sorted({s[dim] // n, -(-s[dim] // n)})]

    def _multiply(self, shapes: list[list[int]], dim: int) -> list[list[int]]:
        """All parts of dim together: n parts of which this rank's is one (sizes differ by <= 1)."""
        n = self.group_size
        return [s[:dim] + [total] + s[dim + 1 :] for s in shapes for total in range(max(1, n * (s[dim] - 1) + 1), n * (s[dim] + 1))]

    def verify_(self) -> None:
        super().verify_()
        in_type, out_type = self.input.type, self.output.type
        assert isinstance(in_type, TensorType) and isinstance(out_type, TensorType)
        if in_type.element_type != out_type.element_type:
            raise VerifyException(f"{self.name}: collectives do not change the element type")
        expected = self.expected_shapes(list(in_type.get_shape()))
        if list(out_type.get_shape()) not in expected:
            shown = expected[0] if len(expected) == 1 else f"one of {expected[:4]}{'...' if len(expected) > 4 else ''}"
            raise VerifyException(f"{self.name}: result shape {list(out_type.get_shape())}, expected {shown}")


class _ReducingOp(CollectiveOp):
    reduce = prop_def(StringAttr)

    def verify_(self) -> None:
        if self.reduce.data not in REDUCE_OPS:
            raise VerifyException(f"{self.name}: reduce must be one of {REDUCE_OPS}")
        super().verify_()


@irdl_op_definition
class AllToAllOp(CollectiveOp):
    """Scatter `split_dim` into `size` chunks (chunk r goes to rank r) and concatenate the
    received chunks along `concat_dim`. Chunks of a sequence dim may differ by one token."""

    name = "dist.all_to_all"
    CALLEE: ClassVar[str] = "collectives.all_to_all"
    REPLAYABLE: ClassVar[bool] = True
    split_dim = prop_def(IntegerAttr)
    concat_dim = prop_def(IntegerAttr)

    def sent_bytes(self) -> float:
        n = self.group_size
        return tensor_bytes(self.input) * (n - 1) / n

    def gathered_length(self) -> dict[str, int]:
        return {"total": self.output.type.get_shape()[self.concat_dim.value.data]}  # type: ignore[attr-defined]

    def workspace_bytes(self) -> int:
        """The runtime sends contiguous (padded) chunks of the input and receives into chunks as
        large as the result, then concatenates them into the result: an input and a result more."""
        return tensor_bytes(self.input) + tensor_bytes(self.output)

    def expected_shapes(self, shape: list[int]) -> list[list[int]]:
        split = self._dim("split_dim", shape)
        concat = self._dim("concat_dim", shape)
        return self._multiply(self._divide([shape], split), concat)


@irdl_op_definition
class AllReduceOp(_ReducingOp):
    name = "dist.all_reduce"
    CALLEE: ClassVar[str] = "collectives.all_reduce"

    def sent_bytes(self) -> float:
        n = self.group_size  # a ring: reduce-scatter, then all-gather
        return 2 * tensor_bytes(self.input) * (n - 1) / n

    def workspace_bytes(self) -> int:
        return 0  # in place, on a copy that is the result

    def expected_shapes(self, shape: list[int]) -> list[list[int]]:
        return [shape]


class _OuterOp(CollectiveOp):
    """Along `dim` = outer x (the part being gathered or scattered): with outer > 1 (batch
    merged before the sequence) each of the outer slices is gathered / scattered."""

    outer = prop_def(IntegerAttr, default_value=IntegerAttr(1, IntegerType(64)))

    def _per_outer(self, shape: list[int], dim: int, fn) -> list[list[int]]:
        o = self.outer.value.data
        if shape[dim] % o:
            raise VerifyException(f"{self.name}: dim {dim} of {shape} is not a multiple of outer {o}")
        inner = shape[:dim] + [shape[dim] // o] + shape[dim + 1 :]
        return [s[:dim] + [s[dim] * o] + s[dim + 1 :] for s in fn([inner], dim)]


@irdl_op_definition
class AllGatherOp(_OuterOp):
    name = "dist.all_gather"
    CALLEE: ClassVar[str] = "collectives.all_gather"
    REPLAYABLE: ClassVar[bool] = True
    dim = prop_def(IntegerAttr)

    def sent_bytes(self) -> float:
        return tensor_bytes(self.input) * (self.group_size - 1)

    def gathered_length(self) -> dict[str, int]:
        return {"total": self.output.type.get_shape()[self.dim.value.data] // self.outer.value.data}  # type: ignore[attr-defined]

    def workspace_bytes(self) -> int:
        """Every rank's (padded) part is received, then concatenated into the result."""
        return tensor_bytes(self.output)

    def expected_shapes(self, shape: list[int]) -> list[list[int]]:
        return self._per_outer(shape, self._dim("dim", shape), self._multiply)


@irdl_op_definition
class ReduceScatterOp(_OuterOp, _ReducingOp):
    name = "dist.reduce_scatter"
    CALLEE: ClassVar[str] = "collectives.reduce_scatter"
    dim = prop_def(IntegerAttr)

    def sent_bytes(self) -> float:
        n = self.group_size
        return tensor_bytes(self.input) * (n - 1) / n

    def workspace_bytes(self) -> int:
        """gloo has none: the runtime all-reduces a whole copy of the input, then keeps its block."""
        return tensor_bytes(self.input)

    def expected_shapes(self, shape: list[int]) -> list[list[int]]:
        return self._per_outer(shape, self._dim("dim", shape), self._divide)


# --- bucket collectives (ZeRO) ---------------------------------------------------------------


Shape = list[int]


def segment_length(whole: Shape, n: int) -> int:
    """A member's elements in each rank's segment: ceil(rows / n) rows (a 0-dim member: one)."""
    if not whole:
        return 1
    inner = 1
    for d in whole[1:]:
        inner *= d
    return -(-whole[0] // n) * inner


class BucketOp(IRDLOperation, CostInterface, RuntimeCallInterface):
    """Whole parameters (or gradients) and their shards, several in one collective over `group`
    (a `dist.group` of the module). In the runtime each rank contributes one flat segment: every
    member padded to ceil(rows / size) rows (a 0-dim member: itself), so the ranks' segments have
    one length. `bucket` numbers the parameter group; its forward and backward gathers share it."""

    group = prop_def(SymbolRefAttr)
    bucket = prop_def(IntegerAttr)

    irdl_options = (ParsePropInAttrDict(),)

    @property
    def group_size(self) -> int:
        return group_size(self, self.group)

    def members(self) -> tuple[list[Shape], list[Shape], list[Attribute]]:
        """(whole shapes, shard shapes, element types) of the bucket's members."""
        raise NotImplementedError

    def segment_elements(self) -> int:
        return sum(segment_length(whole, self.group_size) for whole in self.members()[0])

    def segment_bytes(self) -> int:
        """One rank's padded segment."""
        wholes, _, elements = self.members()
        return self.segment_elements() * BYTES[torch_dtype(elements[0])] if wholes else 0

    def flops(self, flops_of) -> float:
        return 0.0

    def sent_bytes(self) -> float:
        """A ring over the padded segments: n - 1 of them each way."""
        return self.segment_bytes() * (self.group_size - 1)

    def verify_(self) -> None:
        n = self.group_size
        wholes, shards, elements = self.members()
        if len(wholes) != len(shards) or not wholes:
            raise VerifyException(f"{self.name}: one shard per whole tensor, at least one")
        if any(e != elements[0] for e in elements):
            raise VerifyException(f"{self.name}: a bucket holds one element type")
        for w, s in zip(wholes, shards):
            if not w:
                if s:
                    raise VerifyException(f"{self.name}: a 0-dim member is replicated: its shard is itself")
                continue
            if len(s) != len(w) or s[1:] != w[1:] or s[0] not in chunk_sizes(w[0], n):
                raise VerifyException(
                    f"{self.name}: {s} is not a dim-0 shard of {w} over {n} ranks (row counts {sorted(set(chunk_sizes(w[0], n)))})"
                )


def _shape(value: SSAValue) -> Shape:
    return list(value.type.get_shape())  # type: ignore[attr-defined]


@irdl_op_definition
class GatherStartOp(BucketOp):
    """Starts gathering a bucket: this rank's shards into its row of the result, a [size, segment]
    buffer that an asynchronous all-gather fills with every rank's row (in place); `rows` are
    the members' whole lengths along dim 0 (1 for a 0-dim member). `dist.gather_params_wait`
    takes the buffer and makes the whole parameters. The zero pass starts each bucket's gather
    one bucket ahead, so it overlaps the layer before it; the buffer is memory the plan sees
    from the start to the wait. `phase` says whether the forward or the backward reads them."""

    name = "dist.gather_params_start"
    shards = var_operand_def(TensorType)
    buffer = result_def(TensorType)
    rows = prop_def(DenseArrayBase)
    phase = prop_def(StringAttr)

    assembly_format = "$shards attr-dict `:` functional-type($shards, $buffer)"

    def members(self):
        shards = [_shape(v) for v in self.shards]
        wholes = [[r, *s[1:]] if s else [] for r, s in zip(self.rows.get_values(), shards)]
        return wholes, shards, [v.type.element_type for v in self.shards]  # type: ignore[attr-defined]

    def verify_(self) -> None:
        if len(self.rows.get_values()) != len(self.shards):
            raise VerifyException(f"{self.name}: one row count per shard")
        super().verify_()
        if self.phase.data not in ("forward", "backward"):
            raise VerifyException(f"{self.name}: phase must be forward or backward")
        expected = [self.group_size, self.segment_elements()]
        if _shape(self.buffer) != expected or self.buffer.type.element_type != self.shards[0].type.element_type:  # type: ignore[attr-defined]
            raise VerifyException(f"{self.name}: the buffer must be {expected} of the shards' element type")

    def workspace_bytes(self) -> int:
        return 0  # the buffer is its result; the all-gather fills it in place

    def runtime_call(self) -> RuntimeCall:
        return RuntimeCall("collectives.gather_params_start", list(self.shards), {
            "rows": list(self.rows.get_values()), "group": self.group,
        })


@irdl_op_definition
class GatherWaitOp(IRDLOperation, CostInterface, RuntimeCallInterface):
    """Waits for a `dist.gather_params_start` and copies each whole parameter out of its buffer."""

    name = "dist.gather_params_wait"
    buffer = operand_def(TensorType)
    params = var_result_def(TensorType)
    group = prop_def(SymbolRefAttr)
    bucket = prop_def(IntegerAttr)
    phase = prop_def(StringAttr)

    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$buffer attr-dict `:` functional-type($buffer, $params)"

    @property
    def start(self) -> GatherStartOp:
        owner = self.buffer.owner
        if not isinstance(owner, GatherStartOp):
            raise VerifyException(f"{self.name}: its buffer must come from a dist.gather_params_start")
        return owner

    def verify_(self) -> None:
        start = self.start
        if (start.bucket, start.phase, start.group) != (self.bucket, self.phase, self.group):
            raise VerifyException(f"{self.name}: bucket, phase and group must be its start's")
        wholes, _, elements = start.members()
        if [_shape(v) for v in self.params] != wholes or any(v.type.element_type != elements[0] for v in self.params):  # type: ignore[attr-defined]
            raise VerifyException(f"{self.name}: the whole parameters of its start are {wholes}")

    def flops(self, flops_of) -> float:
        return 0.0

    def workspace_bytes(self) -> int:
        return 0  # each parameter copied out of the buffer into its result

    def runtime_call(self) -> RuntimeCall:
        return RuntimeCall("collectives.gather_params_wait", [self.buffer], {
            "shapes": [_shape(v) for v in self.params], "group": self.group,
        })


@irdl_op_definition
class ReduceScatterGradsOp(BucketOp):
    """Each rank's shard of the gradients summed over the group, divided by `divide` (the number
    of data-parallel replicas: their mean, as DDP takes it); a 0-dim gradient comes back whole."""

    name = "dist.reduce_scatter_grads"
    grads = var_operand_def(TensorType)
    shards = var_result_def(TensorType)
    divide = prop_def(IntegerAttr)

    assembly_format = "$grads attr-dict `:` functional-type($grads, $shards)"

    def members(self):
        return [_shape(v) for v in self.grads], [_shape(v) for v in self.shards], [v.type.element_type for v in self.grads]  # type: ignore[attr-defined]

    def workspace_bytes(self) -> int:
        """The segments of every rank to reduce and the reduced one."""
        return (1 + self.group_size) * self.segment_bytes()

    def runtime_call(self) -> RuntimeCall:
        return RuntimeCall("collectives.reduce_scatter_grads", list(self.grads), {
            "divide": self.divide, "group": self.group,
        })


Dist = Dialect(
    "dist",
    [GroupDeclOp, AllToAllOp, AllReduceOp, AllGatherOp, ReduceScatterOp, GatherStartOp, GatherWaitOp, ReduceScatterGradsOp],
    [],
)
