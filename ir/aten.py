"""The `aten` dialect: one op per functional ATen overload, generated from torch's schemas.

`aten.add.Tensor` is the class for `torch.ops.aten.add.Tensor`. Tensor arguments are operands
(in schema order; `Tensor?` optional, `Tensor[]` variadic), every other argument is a property
named as in the schema. Device, layout and generator arguments are not represented: the runtime
decides where tensors live. Classes are made on first use (there are thousands of overloads and a
program uses about a hundred), by `aten_op_class(name)`, which `AutoSPContext` calls on lookup.

`aten.op` is the catch-all for an overload whose schema has a type the generated classes cannot
carry: it names its target and keeps every argument in `args` (operands as `N : index`).

Custom syntax, one operand group per schema tensor argument:
    %r = aten.add.Tensor %a, %b <{alpha = 1 : i64}> : (tensor<4xf32>, tensor<4xf32>) -> tensor<4xf32>
    %r = aten.cat [%a, %b] <{dim = -1 : i64}> : (...) -> ...
"""

from __future__ import annotations

import functools
import keyword
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    FloatAttr,
    IndexType,
    IntegerAttr,
    StringAttr,
    TensorType,
    UnitAttr,
)
from xdsl.ir import Attribute, Dialect, Operation, SSAValue
from xdsl.irdl import (
    AnyOf,
    BaseAttr,
    AttrSizedOperandSegments,
    AttrSizedResultSegments,
    IRDLOperation,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    opt_prop_def,
    prop_def,
    result_def,
    traits_def,
    var_operand_def,
    var_result_def,
)
from xdsl.parser import Parser, UnresolvedOperand
from xdsl.printer import Printer
from xdsl.traits import Pure
from xdsl.utils.exceptions import VerifyException

# --- how a schema argument type is carried --------------------------------------------------

TENSOR, OPT_TENSOR, TENSOR_LIST = "tensor", "opt_tensor", "tensor_list"
# Arguments the IR drops: the runtime picks device/layout; generators must be None.
DROPPED_TYPES = {"Device", "Layout", "Generator"}

# Non-tensor schema types -> the attribute constraint of the property that carries them.
PROPERTY_TYPES: dict[str, type[Attribute] | tuple[type[Attribute], ...]] = {
    "int": IntegerAttr,
    "SymInt": IntegerAttr,
    "float": FloatAttr,
    "bool": IntegerAttr,
    "number": (IntegerAttr, FloatAttr),
    "str": StringAttr,
    "List[int]": DenseArrayBase,
    "List[float]": DenseArrayBase,
    "List[bool]": DenseArrayBase,
    "ScalarType": Attribute,  # an element type such as f32 or bf16
    "MemoryFormat": StringAttr,
}


def _base_type(type_str: str) -> tuple[str, bool]:
    if type_str.startswith("Optional[") and type_str.endswith("]"):
        return type_str[len("Optional[") : -1], True
    return type_str, False


@dataclass(frozen=True)
class ArgSpec:
    """One schema argument and how the op carries it."""

    name: str  # the schema name, used in the IR
    field: str  # the Python attribute name on the op class
    kind: str  # TENSOR / OPT_TENSOR / TENSOR_LIST / a PROPERTY_TYPES key / "dropped"
    optional: bool
    kwarg_only: bool


class UnsupportedSchema(Exception):
    pass


def _field_name(name: str) -> str:
    if keyword.iskeyword(name) or hasattr(IRDLOperation, name) or name.startswith("_"):
        return name + "_"
    return name


def arg_specs(schema: torch._C.FunctionSchema) -> list[ArgSpec]:
    specs = []
    for arg in schema.arguments:
        base, optional = _base_type(str(arg.real_type))
        if arg.alias_info is not None and arg.alias_info.is_write:
            raise UnsupportedSchema(f"{schema.name} mutates {arg.name}")
        if base == "Tensor":
            kind = OPT_TENSOR if optional else TENSOR
        elif base == "List[Tensor]" and not optional:
            kind = TENSOR_LIST
        elif base in DROPPED_TYPES:
            kind = "dropped"
        elif base in PROPERTY_TYPES:
            kind = base
        else:
            raise UnsupportedSchema(f"{schema.name}: argument type {arg.real_type}")
        specs.append(ArgSpec(arg.name, _field_name(arg.name), kind, optional, arg.kwarg_only))
    return specs


def result_kinds(schema: torch._C.FunctionSchema) -> list[str]:
    kinds = []
    for ret in schema.returns:
        type_str = str(ret.real_type)
        if ret.alias_info is not None and ret.alias_info.is_write:
            raise UnsupportedSchema(f"{schema.name} returns a mutated input")
        if type_str == "Tensor":
            kinds.append(TENSOR)
        elif type_str == "List[Tensor]":
            kinds.append(TENSOR_LIST)
        else:
            raise UnsupportedSchema(f"{schema.name}: result type {type_str}")
    return kinds


SEGMENT_PROPERTIES = ("operandSegmentSizes", "resultSegmentSizes")


# --- the shared base: syntax and verification ---------------------------------------------


class AtenOp(IRDLOperation):
    """Base of every generated ATen op class."""

    OVERLOAD: ClassVar[torch._ops.OpOverload]
    ARGS: ClassVar[tuple[ArgSpec, ...]]
    RESULT_KINDS: ClassVar[tuple[str, ...]]

    def operand_groups(self) -> list[tuple[ArgSpec, Sequence[SSAValue]]]:
        groups = []
        for spec in self.ARGS:
            if spec.kind in (TENSOR, OPT_TENSOR, TENSOR_LIST):
                value = getattr(self, spec.field)
                if spec.kind == TENSOR:
                    value = [value]
                elif spec.kind == OPT_TENSOR:
                    value = [] if value is None else [value]
                groups.append((spec, list(value)))
        return groups

    def print(self, printer: Printer):
        for i, (spec, values) in enumerate(self.operand_groups()):
            printer.print_string("," if i else "")
            printer.print_string(" ")
            if spec.kind == TENSOR_LIST:
                with printer.in_square_brackets():
                    printer.print_list(values, printer.print_operand)
            elif values:
                printer.print_operand(values[0])
            else:
                printer.print_string("none")
        # Segment sizes follow from the operand groups and result types.
        properties = {k: v for k, v in self.properties.items() if k not in SEGMENT_PROPERTIES}
        if properties:
            printer.print_string(" <")
            printer.print_attr_dict(properties)
            printer.print_string(">")
        printer.print_op_attributes(self.attributes)
        printer.print_string(" : ")
        printer.print_function_type(self.operand_types, self.result_types)  # the printer adds the location

    @classmethod
    def parse(cls, parser: Parser) -> AtenOp:
        groups: list[list[UnresolvedOperand] | UnresolvedOperand | None] = []
        tensor_args = [s for s in cls.ARGS if s.kind in (TENSOR, OPT_TENSOR, TENSOR_LIST)]
        for i, spec in enumerate(tensor_args):
            if i:
                parser.parse_punctuation(",")
            if spec.kind == TENSOR_LIST:
                groups.append(
                    parser.parse_comma_separated_list(
                        parser.Delimiter.SQUARE, parser.parse_unresolved_operand
                    )
                )
            elif spec.kind == OPT_TENSOR and parser.parse_optional_keyword("none"):
                groups.append(None)
            else:
                groups.append(parser.parse_unresolved_operand())
        properties = parser.parse_optional_properties_dict()
        attributes = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        pos = parser.pos
        func_type = parser.parse_function_type()
        flat = [u for g in groups for u in (g if isinstance(g, list) else [g] if g else [])]
        if len(flat) != len(func_type.inputs.data):
            parser.raise_error(
                f"{cls.name} has {len(flat)} operands but its type lists "
                f"{len(func_type.inputs.data)}",
                pos,
                parser.pos,
            )
        types = iter(func_type.inputs.data)
        operands = []
        for group in groups:
            if isinstance(group, list):
                operands.append([parser.resolve_operand(u, next(types)) for u in group])
            else:
                operands.append(None if group is None else parser.resolve_operand(group, next(types)))
        result_types = _group_results(cls, list(func_type.outputs.data))
        op = cls.build(operands=operands, result_types=result_types, properties=properties)
        op.attributes |= attributes
        return op

    def verify_(self) -> None:
        for value in (*self.operands, *self.results):
            if not isinstance(value.type, TensorType):
                raise VerifyException(f"{self.name}: {value.type} is not a tensor type")


def _group_results(cls: type[AtenOp], types: list[Attribute]) -> list[Attribute | list[Attribute]]:
    kinds = cls.RESULT_KINDS
    if TENSOR_LIST not in kinds:
        return types
    n_fixed = len(kinds) - 1
    n_list = len(types) - n_fixed
    grouped, it = [], iter(types)
    for kind in kinds:
        grouped.append([next(it) for _ in range(n_list)] if kind == TENSOR_LIST else next(it))
    return grouped


# --- generating a class per overload -------------------------------------------------------


def _class_name(op_name: str) -> str:
    return "Aten_" + op_name.removeprefix("aten.").replace(".", "_")


def make_op_class(overload: torch._ops.OpOverload) -> type[AtenOp]:
    """The IRDL class for one ATen overload; raises UnsupportedSchema if it cannot be typed."""
    schema = overload._schema
    if schema.is_mutable:
        raise UnsupportedSchema(f"{schema.name} mutates its inputs")
    specs = arg_specs(schema)
    kinds = result_kinds(schema)
    name = op_name_of(overload)
    fields: dict[str, object] = {
        "name": name,
        "OVERLOAD": overload,
        "ARGS": tuple(specs),
        "RESULT_KINDS": tuple(kinds),
        "__annotations__": {k: ClassVar[object] for k in ("OVERLOAD", "ARGS", "RESULT_KINDS")},
    }
    if torch.Tag.nondeterministic_seeded not in overload.tags:
        fields["traits"] = traits_def(Pure())
    n_var_operands = 0
    for spec in specs:
        if spec.kind == TENSOR:
            fields[spec.field] = operand_def(TensorType)
        elif spec.kind == OPT_TENSOR:
            fields[spec.field] = opt_operand_def(TensorType)
            n_var_operands += 1
        elif spec.kind == TENSOR_LIST:
            fields[spec.field] = var_operand_def(TensorType)
            n_var_operands += 1
        elif spec.kind != "dropped":
            constraint = PROPERTY_TYPES[spec.kind]
            if isinstance(constraint, tuple):
                constraint = AnyOf(tuple(BaseAttr(c) for c in constraint))
            make = opt_prop_def if spec.optional else prop_def
            fields[spec.field] = make(constraint, prop_name=spec.name)
    for i, kind in enumerate(kinds):
        fields[f"result_{i}"] = var_result_def(TensorType) if kind == TENSOR_LIST else result_def(TensorType)
    options = []
    if n_var_operands > 1:
        options.append(AttrSizedOperandSegments(as_property=True))
    if TENSOR_LIST in kinds and len(kinds) > 1:
        options.append(AttrSizedResultSegments(as_property=True))
    if options:
        fields["irdl_options"] = tuple(options)
    cls = type(_class_name(name), (AtenOp,), fields)
    return irdl_op_definition(cls)


def op_name_of(overload: torch._ops.OpOverload) -> str:
    packet, _, overload_name = overload.name().removeprefix("aten::").partition(".")
    return f"aten.{packet}.{overload_name or 'default'}"


def _overload_named(op_name: str) -> torch._ops.OpOverload | None:
    """`aten.<packet>.<overload>` as the OpOverload (None: no such overload)."""
    if not op_name.startswith("aten."):
        return None
    packet, _, overload_name = op_name.removeprefix("aten.").partition(".")
    packet_obj = getattr(torch.ops.aten, packet, None)
    if packet_obj is None or not overload_name:
        return None
    return getattr(packet_obj, overload_name, None)


@functools.cache
def aten_op_class(op_name: str) -> type[AtenOp] | None:
    """The generated class for `aten.<packet>.<overload>`, or None if there is no such
    overload or its schema needs the catch-all `aten.op`."""
    overload = _overload_named(op_name)
    if overload is None:
        return None
    try:
        return make_op_class(overload)
    except UnsupportedSchema:
        return None


# --- the catch-all ------------------------------------------------------------------------


@irdl_op_definition
class AtenCallOp(IRDLOperation):
    """Any operator the generated classes cannot type: `target` is its qualified name
    (`aten::foo.bar`), `args` its positional arguments in schema order, where an operand is
    written `N : index` (the N-th operand), a list is an array, and None is `unit`."""

    name = "aten.op"
    target = prop_def(StringAttr)
    args = prop_def(ArrayAttr)
    inputs = var_operand_def(TensorType)
    outputs = var_result_def(TensorType)

    assembly_format = "$target `(` $inputs `)` attr-dict `<` $args `>` `:` functional-type($inputs, $outputs)"

    def verify_(self) -> None:
        refs = []

        def collect(arg: Attribute):
            if isinstance(arg, ArrayAttr):
                for a in arg.data:
                    collect(a)
            elif isinstance(arg, IntegerAttr) and isinstance(arg.type, IndexType):
                refs.append(arg.value.data)

        collect(self.args)
        if sorted(refs) != list(range(len(self.inputs))):
            raise VerifyException(
                f"aten.op {self.target.data}: args reference operands {sorted(refs)}, "
                f"but it has {len(self.inputs)}"
            )

    @property
    def overload(self) -> torch._ops.OpOverload:
        return _resolve(self.target.data)


@functools.cache
def _resolve(target: str) -> torch._ops.OpOverload:
    """`aten::foo.bar` (or `aten::foo` for the default overload) as the OpOverload."""
    namespace, _, rest = target.partition("::")
    packet, _, overload = rest.partition(".")
    return getattr(getattr(getattr(torch.ops, namespace), packet), overload or "default")


def overload_of(op: Operation) -> torch._ops.OpOverload | None:
    """The ATen overload an op runs, the key of the per-op tables (None: not an ATen op)."""
    if isinstance(op, AtenOp):
        return op.OVERLOAD
    if isinstance(op, AtenCallOp):
        return op.overload
    return None


def operand_ref(index: int) -> IntegerAttr:
    return IntegerAttr(index, IndexType())


NONE_ARG = UnitAttr()


# Generated op classes are found by name through `autosp.ir.context.AutoSPContext`;
# only the catch-all is listed in the dialect itself.
Aten = Dialect("aten", [AtenCallOp], [])
