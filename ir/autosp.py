"""The `autosp` dialect: what is specific to this compiler.

- `#autosp.layout<...>`: how a value lies on the sequence-parallel mesh axis.
- `autosp.attention` / `autosp.attention_grad`: scaled-dot-product attention kept as one op
  through the whole pipeline. GQA-native (K/V keep their own head count), the mask is a
  description (`causal`, sliding `window`, optional `documents` operand: per-token document
  numbers of packed sequences) the kernel evaluates blockwise, and the forward
  returns the log-sum-exp so the backward never recomputes the S x S scores.
- `autosp.linear_cross_entropy`: the LM head matmul and the summed cross-entropy in one op,
  computed in row chunks so the [N, V] logits never exist; it also returns the gradients of the
  summed loss w.r.t. the hidden states and the head weight (the backward only scales them).
- `autosp.gated_mlp` / `autosp.gated_mlp_grad`: a Llama-style gated MLP in chunks of rows, its
  gradient recomputing the gate and up projections chunk by chunk (used when memory needs it).
- `autosp.fused` / `autosp.yield`: a chain of elementwise ops (and last-dim row reductions) that
  the backend turns into one generated Triton kernel; the region holds the original ops.

Each op carries what the compiler knows about it (op interfaces, ir/interfaces.py): how it is
sharded on the SP axis, its FLOPs and kernel scratch, the runtime call it becomes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from xdsl.dialects.builtin import (
    BoolAttr,
    DenseArrayBase,
    Float32Type,
    Float64Type,
    FloatAttr,
    FloatData,
    IntAttr,
    IntegerAttr,
    IntegerType,
    StringAttr,
    TensorType,
)
from xdsl.ir import Attribute, Block, Data, Dialect, ParametrizedAttribute, Region, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    opt_prop_def,
    param_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.traits import HasParent, IsTerminator, Pure
from xdsl.utils.exceptions import VerifyException

from autosp.ir.dist import GroupOp
from autosp.ir.dtypes import BYTES, torch_dtype
from autosp.ir.kernel_choice import ATTENTION_KERNELS, LOSS_KERNELS, AttentionCase, attention_scratch
from autosp.ir.interfaces import CostInterface, IndexReaderInterface, IndexUse, MovesData, RuleContext, RuntimeCall, RuntimeCallInterface, ShardingInterface, Strategy
from autosp.ir.layout import Layout, LayoutKind
from autosp.common.errors import AutoSPError
from autosp.common.sizes import GRAD_WEIGHT_SLICE, split_sizes

# --- attributes ---------------------------------------------------------------------------

@irdl_attr_definition
class LayoutAttr(Data[Layout]):
    """`#autosp.layout<replicated>`, `<shard 1>`, `<shard 0 outer 2>`, `<heads 1 replicas 2>`,
    `<partial>`: a `Layout` in the IR."""

    name = "autosp.layout"

    @classmethod
    def parse_parameter(cls, parser: AttrParser) -> Layout:
        with parser.in_angle_brackets():
            word = parser.parse_identifier()
            if word not in LayoutKind.__members__.values():
                parser.raise_error(f"layout kind must be one of {', '.join(LayoutKind)}")
            kind = LayoutKind(word)
            dim = parser.parse_integer() if kind in (LayoutKind.SHARD, LayoutKind.HEADS) else None
            replicas = parser.parse_integer() if parser.parse_optional_keyword("replicas") else 1
            outer = parser.parse_integer() if parser.parse_optional_keyword("outer") else 1
        return Layout(kind, dim, replicas, outer)

    def print_parameter(self, printer: Printer) -> None:
        with printer.in_angle_brackets():
            printer.print_string(self.data.syntax())

    def verify(self) -> None:
        if (problem := self.data.problem()) is not None:
            raise VerifyException(problem)


_KEYWORD_VALUES = {
    "int": lambda p: IntAttr(p.parse_integer()), "float": lambda p: FloatData(p.parse_float()),
    "str": lambda p: StringAttr(p.parse_str_literal()), "ident": lambda p: StringAttr(p.parse_identifier()),
}


class KeywordAttr(ParametrizedAttribute):
    """A module attribute written `<value keyword value ...>`: SYNTAX says, per parameter in
    order, the keyword before it (None: none) and its kind (int, float, str literal, identifier)."""

    SYNTAX: ClassVar[tuple[tuple[str | None, str], ...]]

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        values = []
        with parser.in_angle_brackets():
            for keyword, kind in cls.SYNTAX:
                if keyword is not None:
                    parser.parse_keyword(keyword)
                values.append(_KEYWORD_VALUES[kind](parser))
        return values

    def print_parameters(self, printer: Printer) -> None:
        with printer.in_angle_brackets():
            for i, ((keyword, kind), value) in enumerate(zip(self.SYNTAX, self.parameters)):
                if i:
                    printer.print_string(" ")
                if keyword is not None:
                    printer.print_string(f"{keyword} ")
                if kind == "str":
                    printer.print_string_literal(value.data)
                else:
                    printer.print_string(repr(value.data) if kind == "float" else str(value.data))


@irdl_attr_definition
class PartitionAttr(KeywordAttr):
    """`#autosp.partition<sp 2 seq_len 4096>` on a module: sp-propagate laid it out for `sp`
    ranks of a sequence of `seq_len` tokens (sp-partition then makes one rank's program)."""

    name = "autosp.partition"
    SYNTAX = (("sp", "int"), ("seq_len", "int"))
    sp: IntAttr = param_def()
    seq_len: IntAttr = param_def()

    def verify(self) -> None:
        if self.sp.data < 1 or self.seq_len.data < self.sp.data:
            raise VerifyException(f"partition: sp={self.sp.data} must be >= 1 and at most seq_len={self.seq_len.data}")


@irdl_attr_definition
class RematAttr(KeywordAttr):
    """`#autosp.remat<"ilp" budget 24117248 without 25167876 cost_model "h100" seconds 0.0012>`
    on a module: the remat pass's plan (its name), the budget it met and the peak without it (bytes),
    the cost model that priced it and its estimated recompute time per step."""

    name = "autosp.remat"
    SYNTAX = ((None, "str"), ("budget", "int"), ("without", "int"), ("cost_model", "str"), ("seconds", "float"))
    plan: StringAttr = param_def()
    budget: IntAttr = param_def()
    peak_without_remat: IntAttr = param_def()
    cost_model: StringAttr = param_def()
    seconds: FloatData = param_def()


SHARD_LEVELS = ("none", "optimizer", "gradients", "parameters")  # ZeRO 0..3


@irdl_attr_definition
class ZeroAttr(KeywordAttr):
    """`#autosp.zero<parameters world 4 dp 2 optimizer "adamw" state 1048576 unsharded 8388608>` on
    a module: how the zero pass sharded the training state (`level`, one of SHARD_LEVELS) over
    `world` ranks, of which `dp` data-parallel replicas; the optimizer state this rank holds
    between steps (bytes, for the memory plan: the optimizer allocates it, not the program); and
    what parameters, gradients and optimizer state would take on one rank unsharded."""

    name = "autosp.zero"
    SYNTAX = ((None, "ident"), ("world", "int"), ("dp", "int"), ("optimizer", "str"), ("state", "int"), ("unsharded", "int"))
    level: StringAttr = param_def()
    world: IntAttr = param_def()
    dp: IntAttr = param_def()
    optimizer: StringAttr = param_def()
    state_bytes: IntAttr = param_def()
    unsharded_bytes: IntAttr = param_def()

    def verify(self) -> None:
        if self.level.data not in SHARD_LEVELS:
            raise VerifyException(f"zero: level must be one of {', '.join(SHARD_LEVELS)}")
        if self.world.data < 1 or self.dp.data < 1 or self.world.data % self.dp.data or self.state_bytes.data < 0:
            raise VerifyException(f"zero: world {self.world.data} must be a multiple of dp {self.dp.data} >= 1, state >= 0")


# --- ops ----------------------------------------------------------------------------------


def _shape(value: SSAValue) -> tuple[int, ...]:
    assert isinstance(value.type, TensorType)
    return tuple(value.type.get_shape())


def verify_attention_shapes(op: IRDLOperation, q: SSAValue, k: SSAValue, v: SSAValue) -> None:
    """q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv], Hq a multiple of Hkv."""
    qs, ks, vs = _shape(q), _shape(k), _shape(v)
    if not (len(qs) == len(ks) == len(vs) == 4):
        raise VerifyException(f"{op.name}: q, k, v must be 4-D [B, H, S, D], got {qs}, {ks}, {vs}")
    if ks[:3] != vs[:3] or qs[0] != ks[0] or qs[3] != ks[3]:
        raise VerifyException(f"{op.name}: incompatible q {qs}, k {ks}, v {vs}")
    if qs[1] % ks[1]:
        raise VerifyException(
            f"{op.name}: {qs[1]} query heads is not a multiple of {ks[1]} key/value heads"
        )
    element = q.type.element_type  # type: ignore[attr-defined]
    if k.type.element_type != element or v.type.element_type != element:  # type: ignore[attr-defined]
        raise VerifyException(f"{op.name}: q, k, v must have one element type")


R, P, S, H = Layout.replicated(), Layout.partial(), Layout.shard, Layout.heads


def kv_layout(hq: int, hkv: int, sp: int) -> Layout | None:
    """How K/V heads lie while each rank runs attention for its hq/sp query heads: split like
    the query heads when kv_heads % sp == 0, else (fewer kv heads than sp) each rank holds the
    one kv head its query heads use, shared by sp/kv_heads consecutive ranks. None: no exact
    split exists."""
    if hq % sp:
        return None
    if hkv % sp == 0:
        return H(1)
    group, local_q = hq // hkv, hq // sp
    if sp % hkv == 0 and group % local_q == 0:
        return H(1, sp // hkv)
    return None


class _AttentionBase(IRDLOperation, ShardingInterface, CostInterface, RuntimeCallInterface):
    """Ulysses: q/k/v all-to-all from sequence- to head-sharded, attention on full sequences
    for 1/sp of the heads, the output all-to-all back; lse stays head-sharded. With fewer kv
    heads than sp, K/V are all-gathered along the sequence (kv_heads only, never expanded to
    the query head count) and each rank keeps the kv head its query heads read. Document
    numbers (packed sequences) are read whole, for every token of the sequence."""

    ON_MATMUL_UNITS: ClassVar[bool] = True
    causal = prop_def(BoolAttr)
    window = prop_def(IntegerAttr)  # 0: unbounded; W: query i sees keys i-W+1 .. i
    scale = prop_def(FloatAttr)
    kernel = opt_prop_def(StringAttr)  # which kernel runs it (select-kernels); absent: chosen when it runs

    irdl_options = (ParsePropInAttrDict(),)
    traits = traits_def(Pure())

    def case(self) -> AttentionCase:
        """The problem its kernel solves (this rank's shapes)."""
        b, hq, sq, d = _shape(self.query)  # type: ignore[attr-defined]
        _, hkv, sk, dv = _shape(self.value)  # type: ignore[attr-defined]
        return AttentionCase(b, hq, hkv, sq, sk, d, dv, torch_dtype(self.query.type.element_type),  # type: ignore[attr-defined]
                             self.causal.value.data, self.window.value.data, self.documents is not None)  # type: ignore[attr-defined]

    def scratch(self, backward: bool) -> int:
        """The chosen kernel's scratch (ir/kernel_choice.py); unchosen: the Triton kernels'."""
        kernel = self.kernel.data if self.kernel is not None else "triton"
        return attention_scratch(kernel, self.case(), backward)

    def verify_mask(self) -> None:
        if self.kernel is not None and self.kernel.data not in ATTENTION_KERNELS:
            raise VerifyException(f"{self.name}: kernel {self.kernel.data!r} is not one of {', '.join(ATTENTION_KERNELS)}")
        documents = self.documents  # type: ignore[attr-defined]
        if documents is not None:
            b, _, sq, _ = _shape(self.query)  # type: ignore[attr-defined]
            sk = _shape(self.key)[2]  # type: ignore[attr-defined]
            if not isinstance(documents.type.element_type, IntegerType) or _shape(documents) != (b, sk) or sq != sk:
                raise VerifyException(
                    f"{self.name}: documents must be integers [B, S] = [{b}, {sk}] with Sq = Sk, "
                    f"got {documents.type} for Sq = {sq}"
                )
        if self.window.value.data < 0:
            raise VerifyException(f"{self.name}: window must be >= 0")
        if self.window.value.data and not self.causal.value.data:
            raise VerifyException(f"{self.name}: a sliding window needs causal = true")

    def kv_heads_layout(self, ctx: RuleContext) -> Layout:
        hq, hkv = _shape(self.query)[1], _shape(self.key)[1]  # type: ignore[attr-defined]
        layout = kv_layout(hq, hkv, ctx.sp)
        if layout is None:
            valid = [n for n in range(1, hq + 1) if kv_layout(hq, hkv, n) is not None]
            raise AutoSPError(
                f"{self.name}: {hq} query heads / {hkv} key-value heads do not split over sp={ctx.sp} "
                f"(q {list(_shape(self.query))}); valid sp degrees: {valid}"  # type: ignore[attr-defined]
            )
        return layout

    def documents_layouts(self) -> list[Layout]:
        return [] if self.documents is None else [R]  # type: ignore[attr-defined]

    def forward_flops(self) -> float:
        b, hq, sq, d = _shape(self.query)  # type: ignore[attr-defined]
        sk = _shape(self.key)[2]  # type: ignore[attr-defined]
        # Average number of keys a query sees under the mask.
        keys = float(sk)
        if self.causal.value.data:
            keys = (sk + 1) / 2 if sq == sk else sk - (sq - 1) / 2
        if self.window.value.data:
            keys = min(keys, float(self.window.value.data))
        return 4.0 * b * hq * sq * keys * d  # QK^T and PV

    def call(self, callee: str) -> RuntimeCall:
        tensors = [v for v in self.operands if v is not self.documents]  # type: ignore[attr-defined]
        documents = [] if self.documents is None else [self.documents]  # type: ignore[attr-defined]
        kernel = {} if self.kernel is None else {"kernel": self.kernel}
        return RuntimeCall(callee, [*tensors, self.causal, self.window, self.scale, *documents], kernel)


@irdl_op_definition
class AttentionOp(_AttentionBase):
    """out = softmax(q kᵀ · scale + mask) v, per query head h using kv head h // (Hq/Hkv);
    lse = log-sum-exp of each query row [B, Hq, Sq], f32 (f64 for f64 inputs)."""

    name = "autosp.attention"
    query = operand_def(TensorType)
    key = operand_def(TensorType)
    value = operand_def(TensorType)
    documents = opt_operand_def(TensorType)
    out = result_def(TensorType)
    lse = result_def(TensorType)

    assembly_format = (
        "$query `,` $key `,` $value (`documents` $documents^)? attr-dict `:` "
        "functional-type(operands, results)"
    )

    def __init__(
        self, q: SSAValue, k: SSAValue, v: SSAValue, documents: SSAValue | None = None, *,
        causal: bool, window: int, scale: float,
    ):
        b, hq, sq, _ = _shape(q)
        dv = _shape(v)[3]
        out_type = TensorType(q.type.element_type, [b, hq, sq, dv])  # type: ignore[attr-defined]
        lse_type = TensorType(lse_element_type(q.type.element_type), [b, hq, sq])  # type: ignore[attr-defined]
        super().__init__(
            operands=[q, k, v, documents],
            result_types=[out_type, lse_type],
            properties=mask_properties(causal, window, scale),
        )

    def verify_(self) -> None:
        verify_attention_shapes(self, self.query, self.key, self.value)
        self.verify_mask()
        b, hq, sq, _ = _shape(self.query)
        if _shape(self.out) != (b, hq, sq, _shape(self.value)[3]):
            raise VerifyException(f"{self.name}: out shape {_shape(self.out)} does not match q/v")
        lse_element = lse_element_type(self.query.type.element_type)  # type: ignore[attr-defined]
        if _shape(self.lse) != (b, hq, sq) or self.lse.type.element_type != lse_element:  # type: ignore[attr-defined]
            raise VerifyException(f"{self.name}: lse must be {lse_element} [{b}, {hq}, {sq}]")

    def sharding(self, layouts: list[Layout], ctx: RuleContext) -> Strategy:
        kv = self.kv_heads_layout(ctx)
        return Strategy([H(1), kv, kv] + self.documents_layouts(), [S(2), H(1)], computed=[H(1), H(1)])

    def flops(self, flops_of) -> float:
        return self.forward_flops()

    def workspace_bytes(self) -> int:
        return self.scratch(backward=False)

    def runtime_call(self) -> RuntimeCall:
        return self.call("kernels.attention_forward")


@irdl_op_definition
class AttentionGradOp(_AttentionBase):
    """The gradient of `autosp.attention`: (dq, dk, dv) from the output gradient, the
    inputs, the output and its lse. dk/dv have the kv head count (summed over the group)."""

    name = "autosp.attention_grad"
    grad_out = operand_def(TensorType)
    query = operand_def(TensorType)
    key = operand_def(TensorType)
    value = operand_def(TensorType)
    out = operand_def(TensorType)
    lse = operand_def(TensorType)
    documents = opt_operand_def(TensorType)
    grad_query = result_def(TensorType)
    grad_key = result_def(TensorType)
    grad_value = result_def(TensorType)

    assembly_format = (
        "$grad_out `,` $query `,` $key `,` $value `,` $out `,` $lse (`documents` $documents^)? attr-dict `:` "
        "functional-type(operands, results)"
    )

    def __init__(self, grad_out, q, k, v, out, lse, documents=None, *, causal: bool, window: int, scale: float):
        super().__init__(
            operands=[grad_out, q, k, v, out, lse, documents],
            result_types=[q.type, k.type, v.type],
            properties=mask_properties(causal, window, scale),
        )

    def verify_(self) -> None:
        verify_attention_shapes(self, self.query, self.key, self.value)
        self.verify_mask()
        for grad, of in (
            (self.grad_query, self.query),
            (self.grad_key, self.key),
            (self.grad_value, self.value),
            (self.grad_out, self.out),
        ):
            if grad.type != of.type:
                raise VerifyException(f"{self.name}: {grad.type} does not match {of.type}")

    def sharding(self, layouts: list[Layout], ctx: RuleContext) -> Strategy:
        kv = self.kv_heads_layout(ctx)
        return Strategy([H(1), H(1), kv, kv, H(1), H(1)] + self.documents_layouts(), [S(2)] * 3, computed=[H(1), kv, kv])

    def flops(self, flops_of) -> float:
        return 2.5 * self.forward_flops()  # 5 matmuls for the forward's 2

    def workspace_bytes(self) -> int:
        return self.scratch(backward=True)

    def runtime_call(self) -> RuntimeCall:
        return self.call("kernels.attention_backward")


class _LocalOp(GroupOp, MovesData, RuntimeCallInterface):
    """A rank-local layout change (no communication; rank-dependent, so not Pure)."""

    CALLEE: ClassVar[str]

    def runtime_call(self) -> RuntimeCall:
        properties = {name: attr for name, attr in self.properties.items() if name != "group"}
        return RuntimeCall(self.CALLEE, [self.input], {**properties, "group": self.group})


class _BlockOp(_LocalOp):
    """Blocks along `dim`: size / replicas of them (as torch.tensor_split cuts them: uneven
    lengths differ by one), block b held by ranks b*replicas ... b*replicas + replicas-1."""

    dim = prop_def(IntegerAttr)
    replicas = prop_def(IntegerAttr, default_value=IntegerAttr(1, IntegerType(64)))
    outer = prop_def(IntegerAttr, default_value=IntegerAttr(1, IntegerType(64)))

    def verify_blocks(self, whole: tuple[int, ...], block: tuple[int, ...]) -> None:
        dim, n, rep = self.dim.value.data, self.group_size, self.replicas.value.data
        outer = self.outer.value.data
        if outer > 1:  # dim is outer x part: each of the outer slices is split
            if whole[dim] % outer or block[dim] % outer:
                raise VerifyException(f"{self.name}: dim {dim} of {list(whole)} and {list(block)} must be multiples of outer {outer}")
            whole = whole[:dim] + (whole[dim] // outer,) + whole[dim + 1 :]
            block = block[:dim] + (block[dim] // outer,) + block[dim + 1 :]
        if rep < 1 or n % rep:
            raise VerifyException(f"{self.name}: replicas {rep} must divide the group size {n}")
        blocks = n // rep
        if not 0 <= dim < len(whole) or len(block) != len(whole):
            raise VerifyException(f"{self.name}: dim {dim} out of range for {list(whole)}")
        same_elsewhere = block[:dim] + block[dim + 1 :] == whole[:dim] + whole[dim + 1 :]
        if not same_elsewhere or block[dim] not in split_sizes(whole[dim], blocks):
            raise VerifyException(f"{self.name}: {list(block)} is not one of {blocks} blocks of {list(whole)}")


@irdl_op_definition
class LocalShardOp(_BlockOp):
    """This rank's block of a replicated value along `dim` (block rank // replicas). Free, since
    every rank holds the whole value (e.g. global RoPE positions, shifted labels)."""

    name = "autosp.local_shard"
    CALLEE: ClassVar[str] = "collectives.local_shard"

    def verify_(self) -> None:
        self.verify_blocks(_shape(self.input), _shape(self.output))


@irdl_op_definition
class PlaceShardOp(_BlockOp):
    """The inverse of local_shard as a partial sum: zeros of the whole shape with this rank's
    block in place. Summed over the group, blocks held by several ranks add up (the K/V
    gradient of a kv head shared by several ranks' query heads)."""

    name = "autosp.place_shard"
    CALLEE: ClassVar[str] = "collectives.place_shard"

    def verify_(self) -> None:
        self.verify_blocks(_shape(self.output), _shape(self.input))


@irdl_op_definition
class ToPartialOp(_LocalOp):
    """A replicated value as a partial sum: rank 0 keeps it, the others hold zeros."""

    name = "autosp.to_partial"
    CALLEE: ClassVar[str] = "collectives.to_partial"

    def verify_(self) -> None:
        super().verify_()
        if self.input.type != self.output.type:
            raise VerifyException(f"{self.name}: result type must equal the input type")


@irdl_op_definition
class LinearCrossEntropyOp(IRDLOperation, ShardingInterface, CostInterface, RuntimeCallInterface, IndexReaderInterface):
    """loss_sum = Σ_i [label_i != ignore_index] · (logsumexp(h_i Wᵀ) - (h_i Wᵀ)[label_i]), with
    grad_hidden = ∂loss_sum/∂h (hidden's type) and grad_weight = ∂loss_sum/∂W (f32, or f64 for
    f64: it accumulates over the chunks). hidden [N, H], weight [V, H], labels [N] integer; the
    kernel computes `chunk` rows of logits at a time."""

    name = "autosp.linear_cross_entropy"
    hidden = operand_def(TensorType)
    weight = operand_def(TensorType)
    labels = operand_def(TensorType)
    loss_sum = result_def(TensorType)
    grad_hidden = result_def(TensorType)
    grad_weight = result_def(TensorType)
    ignore_index = prop_def(IntegerAttr)
    chunk = prop_def(IntegerAttr)
    kernel = opt_prop_def(StringAttr)  # the per-row step: "triton" or "reference" (select-kernels)

    irdl_options = (ParsePropInAttrDict(),)
    traits = traits_def(Pure())

    assembly_format = "$hidden `,` $weight `,` $labels attr-dict `:` functional-type(operands, results)"

    def __init__(self, hidden: SSAValue, weight: SSAValue, labels: SSAValue, *, ignore_index: int, chunk: int):
        acc = lse_element_type(hidden.type.element_type)  # type: ignore[attr-defined]
        super().__init__(
            operands=[hidden, weight, labels],
            result_types=[TensorType(acc, []), hidden.type, TensorType(acc, _shape(weight))],
            properties={
                "ignore_index": IntegerAttr(ignore_index, IntegerType(64)),
                "chunk": IntegerAttr(chunk, IntegerType(64)),
            },
        )

    def verify_(self) -> None:
        hs, ws, ls = _shape(self.hidden), _shape(self.weight), _shape(self.labels)
        if len(hs) != 2 or len(ws) != 2 or ls != hs[:1] or hs[1] != ws[1]:
            raise VerifyException(f"{self.name}: needs hidden [N, H], weight [V, H], labels [N]; got {hs}, {ws}, {ls}")
        element = self.hidden.type.element_type  # type: ignore[attr-defined]
        if self.weight.type.element_type != element:  # type: ignore[attr-defined]
            raise VerifyException(f"{self.name}: hidden and weight must have one element type")
        if not isinstance(self.labels.type.element_type, IntegerType):  # type: ignore[attr-defined]
            raise VerifyException(f"{self.name}: labels must be integers")
        if self.chunk.value.data < 1:
            raise VerifyException(f"{self.name}: chunk must be >= 1")
        if self.kernel is not None and self.kernel.data not in LOSS_KERNELS:
            raise VerifyException(f"{self.name}: kernel {self.kernel.data!r} is not one of {', '.join(LOSS_KERNELS)}")
        acc = lse_element_type(element)
        expected = [TensorType(acc, []), self.hidden.type, TensorType(acc, ws)]
        if [r.type for r in self.results] != expected:
            raise VerifyException(f"{self.name}: results must be {', '.join(map(str, expected))}")

    ON_MATMUL_UNITS: ClassVar[bool] = True

    def sharding(self, layouts: list[Layout], ctx: RuleContext) -> Strategy | None:
        """Rows (tokens) sharded, the head weight replicated: each rank sums the loss of its own
        tokens and its tokens' share of the weight gradient (partials); hidden-state gradients
        stay with their rows. The labels follow the rows (local_shard of replicated labels)."""
        hidden, weight, labels = layouts
        rows = hidden if hidden.is_shard(0) else labels if labels.is_shard(0) else None
        if rows is None or weight != R:
            return None
        return Strategy([rows, R, rows], [P, rows, P])

    def flops(self, flops_of) -> float:
        """Three matmuls of N x H x V (logits, hidden gradient, weight gradient)."""
        rows, width = _shape(self.hidden)
        return 3 * 2.0 * rows * width * _shape(self.weight)[0]

    def workspace_bytes(self) -> int:
        """One chunk of logits in the model dtype (overwritten by its gradient), the chunk's per-row
        losses, and, when the weight gradient accumulates in a wider dtype, one vocabulary slice
        of its product in the model dtype before it is added. The PyTorch rows (`reference`)
        compute a 16-bit chunk in an fp32 copy (fp32 logits in place)."""
        rows, _ = _shape(self.hidden)
        vocab, width = _shape(self.weight)
        element = BYTES[torch_dtype(self.hidden.type.element_type)]  # type: ignore[attr-defined]
        acc = BYTES[torch_dtype(self.grad_weight.type.element_type)]  # type: ignore[attr-defined]
        chunk = min(rows, self.chunk.value.data)
        product = min(vocab, GRAD_WEIGHT_SLICE) * width * element if element != acc else 0
        upcast = chunk * vocab * acc if element != acc and self.kernel is not None and self.kernel.data == "reference" else 0
        return chunk * vocab * element + chunk * acc + max(product, upcast)

    def runtime_call(self) -> RuntimeCall:
        kernel = {} if self.kernel is None else {"kernel": self.kernel}
        return RuntimeCall("kernels.linear_cross_entropy", [*self.operands, self.ignore_index, self.chunk], kernel)

    def index_use(self) -> IndexUse:
        return IndexUse(self.labels, _shape(self.weight)[0], self.ignore_index.value.data, "the loss's vocabulary")


MLP_ACTIVATIONS = ("silu", "gelu", "gelu_tanh")


class _GatedMlpBase(IRDLOperation, ShardingInterface, CostInterface, RuntimeCallInterface):
    ON_MATMUL_UNITS: ClassVar[bool] = True
    CALLEE: ClassVar[str]
    activation = prop_def(StringAttr)
    chunk = prop_def(IntegerAttr)

    irdl_options = (ParsePropInAttrDict(),)
    traits = traits_def(Pure())

    def verify_weights(self, x: SSAValue, w_gate: SSAValue, w_up: SSAValue, w_down: SSAValue) -> None:
        """x [..., H], w_gate and w_up [I, H], w_down [O, I], one element type."""
        xs, gs, us, ds = _shape(x), _shape(w_gate), _shape(w_up), _shape(w_down)
        if not xs or len(gs) != 2 or gs != us or gs[1] != xs[-1] or len(ds) != 2 or ds[1] != gs[0]:
            raise VerifyException(f"{self.name}: needs x [..., H], w_gate/w_up [I, H], w_down [O, I]; got {xs}, {gs}, {us}, {ds}")
        if len({v.type.element_type for v in (x, w_gate, w_up, w_down)}) != 1:  # type: ignore[attr-defined]
            raise VerifyException(f"{self.name}: x and the weights must have one element type")
        if self.activation.data not in MLP_ACTIVATIONS:
            raise VerifyException(f"{self.name}: activation must be one of {', '.join(MLP_ACTIVATIONS)}")
        if self.chunk.value.data < 1:
            raise VerifyException(f"{self.name}: chunk must be >= 1")

    def sizes(self) -> tuple[float, int, int, int]:
        """rows, H, I, O."""
        x, w_gate, w_down = self.x, self.w_gate, self.w_down  # type: ignore[attr-defined]
        intermediate, width = _shape(w_gate)
        return math.prod(_shape(x)) / _shape(x)[-1], width, intermediate, _shape(w_down)[0]

    def chunk_values(self) -> tuple[int, int]:
        """Rows of a chunk, bytes of an element."""
        rows = int(self.sizes()[0])
        return min(rows, self.chunk.value.data), BYTES[torch_dtype(self.x.type.element_type)]  # type: ignore[attr-defined]

    def runtime_call(self) -> RuntimeCall:
        return RuntimeCall(self.CALLEE, [*self.operands, self.activation, self.chunk])


def _mlp_properties(activation: str, chunk: int) -> dict[str, Attribute]:
    return {"activation": StringAttr(activation), "chunk": IntegerAttr(chunk, IntegerType(64))}


@irdl_op_definition
class GatedMlpOp(_GatedMlpBase):
    """out = act(x w_gateᵀ) · (x w_upᵀ) w_downᵀ, computed `chunk` rows of x at a time: no
    [rows, I] value is ever whole. Its gradient recomputes the gate and up projections."""

    name = "autosp.gated_mlp"
    CALLEE: ClassVar[str] = "kernels.gated_mlp_forward"
    x = operand_def(TensorType)
    w_gate = operand_def(TensorType)
    w_up = operand_def(TensorType)
    w_down = operand_def(TensorType)
    out = result_def(TensorType)

    assembly_format = "$x `,` $w_gate `,` $w_up `,` $w_down attr-dict `:` functional-type(operands, results)"

    def __init__(self, x: SSAValue, w_gate: SSAValue, w_up: SSAValue, w_down: SSAValue, *, activation: str, chunk: int):
        out_type = TensorType(x.type.element_type, [*_shape(x)[:-1], _shape(w_down)[0]])  # type: ignore[attr-defined]
        super().__init__(operands=[x, w_gate, w_up, w_down], result_types=[out_type], properties=_mlp_properties(activation, chunk))

    def verify_(self) -> None:
        self.verify_weights(self.x, self.w_gate, self.w_up, self.w_down)
        expected = (*_shape(self.x)[:-1], _shape(self.w_down)[0])
        if _shape(self.out) != expected or self.out.type.element_type != self.x.type.element_type:  # type: ignore[attr-defined]
            raise VerifyException(f"{self.name}: out must be {list(expected)} of x's element type")

    def sharding(self, layouts: list[Layout], ctx: RuleContext) -> Strategy | None:
        """Rows are independent: sharded rows in, sharded rows out, the weights replicated."""
        x, *weights = layouts
        if not (x.sharded and x.dim < len(_shape(self.x)) - 1) or any(w != R for w in weights):
            return None
        return Strategy([x, R, R, R], [x])

    def flops(self, flops_of) -> float:
        """gate, up (N x H x I each) and down (N x I x O)."""
        rows, width, intermediate, out = self.sizes()
        return 2.0 * rows * intermediate * (2 * width + out)

    def workspace_bytes(self) -> int:
        """One chunk's [chunk, I] gate, up, activation and product."""
        chunk, element = self.chunk_values()
        return 4 * chunk * self.sizes()[2] * element


@irdl_op_definition
class GatedMlpGradOp(_GatedMlpBase):
    """The gradient of `autosp.gated_mlp`: (dx, dw_gate, dw_up, dw_down) from the output
    gradient and the op's inputs, `chunk` rows at a time."""

    name = "autosp.gated_mlp_grad"
    CALLEE: ClassVar[str] = "kernels.gated_mlp_backward"
    grad_out = operand_def(TensorType)
    x = operand_def(TensorType)
    w_gate = operand_def(TensorType)
    w_up = operand_def(TensorType)
    w_down = operand_def(TensorType)
    grad_x = result_def(TensorType)
    grad_gate = result_def(TensorType)
    grad_up = result_def(TensorType)
    grad_down = result_def(TensorType)

    assembly_format = "$grad_out `,` $x `,` $w_gate `,` $w_up `,` $w_down attr-dict `:` functional-type(operands, results)"

    def __init__(self, grad_out, x, w_gate, w_up, w_down, *, activation: str, chunk: int):
        super().__init__(
            operands=[grad_out, x, w_gate, w_up, w_down],
            result_types=[x.type, w_gate.type, w_up.type, w_down.type],
            properties=_mlp_properties(activation, chunk),
        )

    def verify_(self) -> None:
        self.verify_weights(self.x, self.w_gate, self.w_up, self.w_down)
        if _shape(self.grad_out) != (*_shape(self.x)[:-1], _shape(self.w_down)[0]):
            raise VerifyException(f"{self.name}: grad_out {list(_shape(self.grad_out))} does not match the output of x and w_down")
        if [r.type for r in self.results] != [v.type for v in (self.x, self.w_gate, self.w_up, self.w_down)]:
            raise VerifyException(f"{self.name}: gradients must have the types of x and the weights")

    def sharding(self, layouts: list[Layout], ctx: RuleContext) -> Strategy | None:
        """Each rank's rows give its share of the weight gradients (partial sums) and the gradient
        of its own rows."""
        grad, x, *weights = layouts
        sharded = grad if grad.sharded else x
        if not (sharded.sharded and sharded.dim < len(_shape(self.x)) - 1) or any(w != R for w in weights):
            return None
        return Strategy([sharded, sharded, R, R, R], [sharded, P, P, P])

    def flops(self, flops_of) -> float:
        """gate and up recomputed, then the gradients: two matmuls per weight (input and weight)."""
        rows, width, intermediate, out = self.sizes()
        return 2.0 * rows * intermediate * (6 * width + 2 * out)

    def workspace_bytes(self) -> int:
        """One chunk's [chunk, I] values (gate, up, activation, product and the hidden, up and
        gate gradients), its [chunk, H] input gradient before it is stored, and the weight
        gradients' accumulators when they are wider than the weights."""
        _, width, intermediate, out_width = self.sizes()
        chunk, element = self.chunk_values()
        acc = max(element, 4)
        accumulators = (2 * intermediate * width + out_width * intermediate) * acc if acc != element else 0
        return 7 * chunk * intermediate * element + chunk * width * element + accumulators


@irdl_op_definition
class FusedOp(IRDLOperation, CostInterface):
    """One generated kernel: the region's ops computed elementwise over `shape` (rows of its last
    dim when a row reduction is inside), reading `inputs` (the block arguments, broadcast to
    `shape`) and materializing only what `autosp.yield` returns."""

    name = "autosp.fused"
    inputs = var_operand_def(TensorType)
    outputs = var_result_def(TensorType)
    shape = prop_def(DenseArrayBase)
    body = region_def("single_block")

    irdl_options = (ParsePropInAttrDict(),)
    traits = traits_def(Pure())

    assembly_format = "`(` $inputs `)` attr-dict `:` functional-type($inputs, $outputs) $body"

    def __init__(self, inputs: Sequence[SSAValue], output_types: Sequence[Attribute], shape: Sequence[int], body: Region):
        super().__init__(
            operands=[inputs],
            result_types=[output_types],
            properties={"shape": DenseArrayBase.from_list(IntegerType(64), list(shape))},
            regions=[body],
        )

    @property
    def block(self) -> Block:
        return self.body.block

    def flops(self, flops_of) -> float:
        """One kernel for the region: its ops' FLOPs together."""
        return sum(flops_of(op) for op in self.block.ops if not isinstance(op, YieldOp))

    def workspace_bytes(self) -> int:
        return 0  # the region's values stay in registers

    def verify_(self) -> None:
        args = self.block.args
        if [a.type for a in args] != [v.type for v in self.inputs]:
            raise VerifyException(f"{self.name}: block arguments must match the inputs' types")
        terminator = self.block.last_op
        if not isinstance(terminator, YieldOp):
            raise VerifyException(f"{self.name}: the body must end with autosp.yield")
        if [v.type for v in terminator.operands] != [r.type for r in self.outputs]:
            raise VerifyException(f"{self.name}: yielded types must match the results")


@irdl_op_definition
class TiledOp(IRDLOperation, CostInterface):
    """The region run once per chunk of `chunk` rows (tokens; the last chunk may be shorter: the
    region's shape properties leave the rows as -1): input i is cut
    along dim `slices[i]` (-1: passed whole), output j is the chunks' results put together along
    dim `combines[j]`, or (-1) summed over the chunks (accumulated in f32, f64 for f64, and
    rounded once). The region's values exist one chunk at a time: a token-wise chain's
    intermediates, or, in the backward, that chain recomputed and its gradient (the tile-rows
    pass); `scratch` is what one chunk holds at its peak, with the sums' accumulators."""

    name = "autosp.tiled"
    inputs = var_operand_def(TensorType)
    outputs = var_result_def(TensorType)
    rows = prop_def(IntegerAttr)
    chunk = prop_def(IntegerAttr)
    slices = prop_def(DenseArrayBase)
    combines = prop_def(DenseArrayBase)
    scratch = prop_def(IntegerAttr)
    body = region_def("single_block")

    irdl_options = (ParsePropInAttrDict(),)
    traits = traits_def(Pure())

    assembly_format = "`(` $inputs `)` attr-dict `:` functional-type($inputs, $outputs) $body"

    @property
    def block(self) -> Block:
        return self.body.block

    @property
    def chunks(self) -> int:
        return -(-self.rows.value.data // self.chunk.value.data)

    def flops(self, flops_of) -> float:
        return self.chunks * sum(flops_of(op) for op in self.block.ops if not isinstance(op, YieldOp))

    def workspace_bytes(self) -> int:
        return self.scratch.value.data

    def verify_(self) -> None:
        rows, chunk = self.rows.value.data, self.chunk.value.data
        slices, combines = list(self.slices.get_values()), list(self.combines.get_values())
        if not 1 <= chunk <= rows:
            raise VerifyException(f"{self.name}: chunk {chunk} must be in 1..{rows} rows")
        if len(slices) != len(self.inputs) or len(combines) != len(self.outputs):
            raise VerifyException(f"{self.name}: one slice dim per input and one combine dim per output")

        def part(value_type, dim: int) -> list[int]:
            shape = list(value_type.get_shape())
            if dim >= 0:
                if not dim < len(shape) or shape[dim] != rows:
                    raise VerifyException(f"{self.name}: dim {dim} of {shape} is not the {rows} rows")
                shape[dim] = chunk
            return shape

        args = self.block.args
        if len(args) != len(self.inputs):
            raise VerifyException(f"{self.name}: one block argument per input")
        for arg, value, dim in zip(args, self.inputs, slices):
            if list(arg.type.get_shape()) != part(value.type, dim) or arg.type.element_type != value.type.element_type:
                raise VerifyException(f"{self.name}: block argument {arg.type} is not a chunk of {value.type}")
        terminator = self.block.last_op
        if not isinstance(terminator, YieldOp) or len(terminator.operands) != len(self.outputs):
            raise VerifyException(f"{self.name}: the body must end with autosp.yield of one value per output")
        for value, result, dim in zip(terminator.operands, self.outputs, combines):
            if list(value.type.get_shape()) != part(result.type, dim) or value.type.element_type != result.type.element_type:
                raise VerifyException(f"{self.name}: yielded {value.type} is not a chunk of {result.type}")


@irdl_op_definition
class YieldOp(IRDLOperation):
    name = "autosp.yield"
    values = var_operand_def(TensorType)

    traits = traits_def(IsTerminator(), HasParent(FusedOp, TiledOp), Pure())
    assembly_format = "$values attr-dict `:` type($values)"

    def __init__(self, *values: SSAValue):
        super().__init__(operands=[values])


def lse_element_type(element: Attribute) -> Attribute:
    """The log-sum-exp accumulates in f32, or f64 for f64 inputs."""
    return Float64Type() if element == Float64Type() else Float32Type()


def mask_properties(causal: bool, window: int, scale: float) -> dict[str, Attribute]:
    return {
        "causal": BoolAttr.from_bool(causal),
        "window": IntegerAttr(window, IntegerType(64)),
        "scale": FloatAttr(scale, Float64Type()),
    }


AutoSP = Dialect("autosp", [AttentionOp, AttentionGradOp, LinearCrossEntropyOp, GatedMlpOp, GatedMlpGradOp, FusedOp, TiledOp, YieldOp, LocalShardOp, PlaceShardOp, ToPartialOp], [LayoutAttr, PartitionAttr, RematAttr, ZeroAttr])
