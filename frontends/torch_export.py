"""torch.export -> AutoSP IR: the joint forward + backward graph as `func.func @train_step`.

    module = import_program(ep)   # ep: ExportedProgram whose forward returns the scalar loss

Arguments are parameters, buffers, lifted constants and user inputs, in that order, each
tagged with `autosp.kind` and (but for user inputs) `autosp.name`, its state_dict key. Results
are the loss, then one gradient per trainable parameter tagged with `autosp.grad_of`.
"""

from __future__ import annotations

import functools
import hashlib
import operator
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind, TensorArgument
from torch.fx import Node
from xdsl.builder import Builder
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    DenseArrayBase,
    DictionaryAttr,
    Float64Type,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
)
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.rewriter import InsertPoint

from autosp.frontends.attention import rewrite_attention
from autosp.frontends.fx import graphs_with_autocast, under_autocast
from autosp.frontends.loss import rewrite_linear_cross_entropy
from autosp.frontends.mlp import rewrite_gated_mlp
from autosp.frontends.mask import bound_arguments
from autosp.frontends.source import forward_in_core_aten, joint_locations, module_of
from autosp.ir.aten import (
    NONE_ARG,
    OPT_TENSOR,
    TENSOR,
    TENSOR_LIST,
    AtenCallOp,
    aten_op_class,
    op_name_of,
    operand_ref,
)
from autosp.ir.autosp import AttentionGradOp, AttentionOp, GatedMlpGradOp, GatedMlpOp, LinearCrossEntropyOp
from autosp.ir.dtypes import UnsupportedDtype, element_type, tensor_type
from autosp.common.errors import AutoSPError
from autosp.common.rules import registrar

# Ops that only check metadata at trace time and produce nothing.
SKIPPED_TARGETS = {
    torch.ops.aten._assert_tensor_metadata.default,
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
}

LOCATION = "autosp_location"  # node.meta key: the node's source location (frontends/source.py)

KIND_NAMES = {
    InputKind.PARAMETER: "parameter",
    InputKind.BUFFER: "buffer",
    InputKind.CONSTANT_TENSOR: "constant",
    InputKind.USER_INPUT: "input",
}


def _value_type(node: Node) -> Attribute:
    val = node.meta.get("val")
    if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        module = module_of(node)
        where = f" in {module}" if module else ""
        raise AutoSPError(
            f"node {node.name} ({node.target}){where} reads a tensor's value as a Python number (.item(), int(x), a "
            "data-dependent size such as per-expert token counts): AutoSP compiles programs of static shapes; "
            "compute it with tensor ops of fixed shape"
        )
    if not isinstance(val, torch.Tensor):
        raise AutoSPError(f"node {node.name} ({node.target}) produces {type(val).__name__}, not a tensor")
    try:
        return tensor_type(val.shape, val.dtype)
    except UnsupportedDtype as err:
        raise AutoSPError(f"node {node.name} ({node.target}): {err}") from None
    except TypeError:
        raise AutoSPError(
            f"node {node.name} has a symbolic shape {list(val.shape)}; export with static shapes"
        ) from None


# --- constant arguments -> properties ------------------------------------------------------


def scalar_attr(value: object, where: str) -> Attribute:
    if isinstance(value, bool):
        return IntegerAttr(int(value), IntegerType(1))
    if isinstance(value, int):
        return IntegerAttr(value, IntegerType(64))
    if isinstance(value, float):
        return FloatAttr(value, Float64Type())
    if isinstance(value, torch.dtype):
        return element_type(value)
    if isinstance(value, torch.memory_format):
        return StringAttr(str(value).removeprefix("torch."))
    if isinstance(value, str):
        return StringAttr(value)
    raise AutoSPError(f"{where}: argument {value!r} of type {type(value).__name__} cannot be represented")


def list_attr(values: Sequence[object], kind: str) -> Attribute:
    element = {"List[int]": IntegerType(64), "List[float]": Float64Type(), "List[bool]": IntegerType(1)}[kind]
    if kind == "List[float]":
        return DenseArrayBase.from_list(element, [float(v) for v in values])
    return DenseArrayBase.from_list(element, [int(v) for v in values])


# AutoSP's custom ops (frontends/attention.py, loss.py, mlp.py rewrite the graph into them), by
# OpOverload: the IR op each becomes, from its bound arguments (`value` maps a node to its SSA value).
CustomImporter = Callable[[Callable[[Node], SSAValue], dict], Operation]
CUSTOM_OPS: dict[torch._ops.OpOverload, CustomImporter] = {}
custom_op = registrar(CUSTOM_OPS)


@custom_op(torch.ops.autosp.attention.default)
def _attention(value, args) -> Operation:
    documents = None if args["documents"] is None else value(args["documents"])
    mask = dict(causal=args["causal"], window=args["window"], scale=args["scale"])
    return AttentionOp(value(args["q"]), value(args["k"]), value(args["v"]), documents, **mask)


@custom_op(torch.ops.autosp.attention_backward.default)
def _attention_backward(value, args) -> Operation:
    documents = None if args["documents"] is None else value(args["documents"])
    mask = dict(causal=args["causal"], window=args["window"], scale=args["scale"])
    tensors = (value(args[n]) for n in ("grad_out", "q", "k", "v", "out", "lse"))
    return AttentionGradOp(*tensors, documents, **mask)


@custom_op(torch.ops.autosp.gated_mlp.default)
def _gated_mlp(value, args) -> Operation:
    tensors = (value(args[n]) for n in ("x", "w_gate", "w_up", "w_down"))
    return GatedMlpOp(*tensors, activation=args["activation"], chunk=args["chunk"])


@custom_op(torch.ops.autosp.gated_mlp_backward.default)
def _gated_mlp_backward(value, args) -> Operation:
    tensors = (value(args[n]) for n in ("grad_out", "x", "w_gate", "w_up", "w_down"))
    return GatedMlpGradOp(*tensors, activation=args["activation"], chunk=args["chunk"])


@custom_op(torch.ops.autosp.linear_cross_entropy.default)
def _linear_cross_entropy(value, args) -> Operation:
    tensors = (value(args[n]) for n in ("hidden", "weight", "labels"))
    return LinearCrossEntropyOp(*tensors, ignore_index=args["ignore_index"], chunk=args["chunk"])


class _Importer:
    def __init__(self, graph_module: torch.fx.GraphModule):
        self.graph_module = graph_module
        self.values: dict[Node, SSAValue | list[SSAValue]] = {}
        self.names: set[str] = set()

    def unique_name(self, name: str) -> str:
        """SSA name hints must be unique, or the printer renames them."""
        while name in self.names:
            name += "_"
        self.names.add(name)
        return name

    def value(self, node: Node, index: int | None = None) -> SSAValue:
        got = self.values.get(node)
        if got is None:
            raise AutoSPError(f"node {node.name} is used but produces no tensor")
        if isinstance(got, list):
            if index is None:
                raise AutoSPError(f"node {node.name} has several results; use one of them")
            return got[index]
        return got

    def import_node(self, node: Node, builder: Builder) -> None:
        self.builder = builder
        target = node.target
        if target in SKIPPED_TARGETS:
            return
        if target is operator.getitem:
            source, index = node.args
            self.values[node] = self.value(source, index)  # type: ignore[arg-type]
            return
        if target in CUSTOM_OPS:
            op = CUSTOM_OPS[target](self.value, bound_arguments(node))
        elif isinstance(target, torch._ops.OpOverload) and target.namespace == "aten":
            op = self.aten_op(node, target)
        elif isinstance(target, torch._ops.OpOverload):
            op = self.catch_all(node, target)
        else:
            raise AutoSPError(f"node {node.name}: cannot import {target} (not an ATen or AutoSP operator)")
        builder.insert(op)
        if LOCATION in node.meta:
            op.location = node.meta[LOCATION]
        for i, result in enumerate(op.results):
            result.name_hint = self.unique_name(node.name if len(op.results) == 1 else f"{node.name}_r{i}")
        self.values[node] = list(op.results) if isinstance(node.meta.get("val"), (tuple, list)) else op.results[0]

    def result_types(self, node: Node) -> list[Attribute]:
        val = node.meta.get("val")
        if isinstance(val, (tuple, list)):
            # An output the op does not compute (convolution_backward's bias gradient when there is
            # no bias) is None: an empty tensor that nothing reads.
            dtype = next((v.dtype for v in val if v is not None), torch.float32)
            return [tensor_type((0,), dtype) if v is None else tensor_type(v.shape, v.dtype) for v in val]
        return [_value_type(node)]

    def aten_op(self, node: Node, target: torch._ops.OpOverload):
        target = _with_scalar_overload(node, target)
        cls = aten_op_class(op_name_of(target))
        if cls is None:
            return self.catch_all(node, target)
        schema = target._schema
        where = f"{op_name_of(target)} ({node.name})"
        bound = bound_arguments(node, schema)
        operands, properties = [], {}
        for spec in cls.ARGS:
            arg = bound.get(spec.name)
            if spec.kind == TENSOR:
                operands.append(self.scalar_tensor(arg, node) if _is_number(arg) else self.value(arg))
            elif spec.kind == OPT_TENSOR:
                operands.append(None if arg is None else self.value(arg))
            elif spec.kind == TENSOR_LIST:
                operands.append([self.value(a) for a in arg])
            elif spec.kind == "dropped" or arg is None:
                continue
            elif spec.kind.startswith("List["):
                properties[spec.name] = list_attr(arg, spec.kind)
            else:
                properties[spec.name] = scalar_attr(arg, where)
        result_types = self.result_types(node)
        if TENSOR_LIST in cls.RESULT_KINDS:
            result_types = [result_types]  # a single list result (split, unbind, ...)
        return cls.build(operands=operands, result_types=result_types, properties=properties)

    def scalar_tensor(self, number: int | float | bool, node: Node) -> SSAValue:
        """A 0-dim tensor for a number passed where the schema wants a Tensor (`rsub`-like
        `sub(1, x)`), in the dtype that keeps promotion as eager's: the tensor operand's, unless
        the number is of a higher kind (a float with an integer or bool tensor: the default float
        dtype, as `add(0.33, mask)`; an int with a bool tensor: int64)."""
        tensors = [a for a in node.args if isinstance(a, Node) and isinstance(a.meta.get("val"), torch.Tensor)]
        dtype = tensors[0].meta["val"].dtype if tensors else torch.tensor(number).dtype
        if isinstance(number, float) and not (dtype.is_floating_point or dtype.is_complex):
            dtype = torch.get_default_dtype()
        elif isinstance(number, int) and not isinstance(number, bool) and dtype == torch.bool:
            dtype = torch.int64
        cls = aten_op_class("aten.scalar_tensor.default")
        op = cls.build(
            operands=[],
            result_types=[tensor_type((), dtype)],
            properties={"s": scalar_attr(number, node.name), "dtype": element_type(dtype)},
        )
        self.builder.insert(op)
        op.results[0].name_hint = self.unique_name(f"{node.name}_scalar")
        return op.results[0]

    def catch_all(self, node: Node, target: torch._ops.OpOverload) -> AtenCallOp:
        where = f"{target.name()} ({node.name})"
        inputs: list[SSAValue] = []

        def encode(arg: object) -> Attribute:
            if isinstance(arg, Node):
                inputs.append(self.value(arg))
                return operand_ref(len(inputs) - 1)
            if arg is None:
                return NONE_ARG
            if isinstance(arg, (list, tuple)):
                return ArrayAttr([encode(a) for a in arg])
            if isinstance(arg, torch.device):
                return NONE_ARG  # the runtime decides where tensors live
            return scalar_attr(arg, where)

        bound = bound_arguments(node, target._schema)
        args = ArrayAttr([encode(bound[a.name]) for a in target._schema.arguments])
        return AtenCallOp.build(
            operands=[inputs],
            result_types=[self.result_types(node)],
            properties={"target": StringAttr(target.name()), "args": args},
        )


def _with_scalar_overload(node: Node, target: torch._ops.OpOverload) -> torch._ops.OpOverload:
    """Graphs pass Python numbers where a schema says Tensor (`add.Tensor(x, 1)`: a wrapped
    number). Use the sibling overload that takes a Scalar there (`add.Scalar`), which computes
    the same thing, so every operand in the IR is a real tensor."""
    bound = bound_arguments(node, target._schema)
    numbers = {
        a.name
        for a in target._schema.arguments
        if str(a.real_type) == "Tensor" and _is_number(bound[a.name])
    }
    if not numbers:
        return target
    packet = getattr(torch.ops.aten, target._schema.name.removeprefix("aten::"))
    for overload_name in packet.overloads():
        candidate = getattr(packet, overload_name)
        args = candidate._schema.arguments
        if [a.name for a in args] != [a.name for a in target._schema.arguments]:
            continue
        wanted = [
            "number" if a.name in numbers else str(a.real_type) for a in target._schema.arguments
        ]
        if [str(a.real_type) for a in args] == wanted and not candidate._schema.is_mutable:
            return candidate
    return target  # the numbers become 0-dim tensors (see _Importer.scalar_tensor)


def _is_number(arg: object) -> bool:
    return isinstance(arg, (int, float, bool))


# --- the program ---------------------------------------------------------------------------


def _check_static_shapes(ep: ExportedProgram) -> None:
    for node in ep.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and isinstance(val, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in val.shape):
            raise AutoSPError(
                f"input {node.name} has a dynamic shape {list(val.shape)}: AutoSP compiles static shapes; export "
                "without dynamic_shapes (and compile again for each sequence length)"
            )


def _check_loss_output(ep: ExportedProgram) -> None:
    user_outputs = [s for s in ep.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT]
    output_node = next(n for n in ep.graph.nodes if n.op == "output")
    values = output_node.args[0]
    described = [
        list(v.meta["val"].shape) if isinstance(v, Node) and isinstance(v.meta.get("val"), torch.Tensor) else repr(v)
        for v in values[-len(user_outputs):]
    ] if user_outputs else []
    if len(user_outputs) != 1 or described != [[]]:
        raise AutoSPError(
            f"the exported forward returns {len(user_outputs)} output(s) with shapes {described}; "
            "AutoSP needs a forward that returns only the scalar loss (wrap the model: "
            "forward(input_ids, labels) -> model(...).loss)"
        )
    mutations = [s for s in ep.graph_signature.output_specs if s.kind not in (OutputKind.USER_OUTPUT,)]
    if mutations:
        names = ", ".join(f"{s.kind.name.lower()} {s.target}" for s in mutations)
        raise AutoSPError(f"the exported forward mutates state ({names}); training steps with state updates are not supported")


def joint_graph(ep: ExportedProgram, tile_mlp: bool = False) -> ExportedProgram:
    """The joint forward+backward ExportedProgram, attention kept as one op each way and the
    LM head + cross-entropy as one fused op (and with tile_mlp, each gated MLP as one op each
    way, in chunks of rows); each node that comes from a model module has its location in
    `meta[LOCATION]`."""
    from torch.export.experimental import _export_forward_backward

    _check_static_shapes(ep)
    _check_loss_output(ep)
    ep = _copy(ep)
    for module, regions in list(graphs_with_autocast(ep.graph_module)):
        graph = module.graph
        # Trace-time metadata checks would keep otherwise-dead values (the S x S mask) alive.
        for node in list(graph.nodes):
            if node.target in SKIPPED_TARGETS:
                graph.erase_node(node)
        with under_autocast(regions):
            rewrite_attention(graph)
            rewrite_linear_cross_entropy(graph)
            if tile_mlp:
                rewrite_gated_mlp(graph)
        module.recompile()
    _drop_unused_parameters(ep)
    _rename_outputs(ep)
    ep.graph_module.recompile()
    if not any(p.requires_grad for p in ep.state_dict.values()):
        raise AutoSPError(
            "no parameter of the exported model requires a gradient (all frozen with requires_grad=False?): "
            "AutoSP compiles training steps; unfreeze what should train"
        )
    forward = forward_in_core_aten(_copy(ep))
    try:
        joint = _export_forward_backward(ep, joint_loss_index=0)
    except RuntimeError as err:
        if "does not require gradients" not in str(err):
            raise
        raise AutoSPError(
            "the loss does not depend on any trainable parameter (a detached loss, or every parameter it reads "
            "is frozen): AutoSP compiles training steps; return the loss with its graph"
        ) from None
    except AssertionError as err:
        if "did not receive a gradient" not in str(err):
            raise
        # Parameters the loss does not differentiate (read under torch.no_grad(), or only through
        # top-k indices): eager leaves their .grad None; the joint export takes them as frozen.
        unreached = _parameters_without_gradient(ep)
        if not unreached:
            raise AutoSPError(
                "torch's joint export found a trainable parameter that gets no gradient, and AutoSP could not tell "
                "which: freeze (requires_grad_(False)) the parameters the loss does not differentiate, then export"
            ) from None
        _freeze(ep, unreached)
        joint = _export_forward_backward(ep, joint_loss_index=0)
    for node, location in joint_locations(forward, joint).items():
        node.meta[LOCATION] = location
    return joint


def _freeze(ep: ExportedProgram, names: list[str]) -> None:
    """The joint export takes which parameters need a gradient from the graph's fake inputs."""
    from torch._guards import detect_fake_mode

    targets = {spec.arg.name: spec.target for spec in ep.graph_signature.input_specs if spec.kind == InputKind.PARAMETER}
    for node in ep.graph.nodes:
        if node.op == "placeholder" and targets.get(node.name) in names:
            with detect_fake_mode([node.meta["val"]]):
                node.meta["val"] = node.meta["val"].detach()


def _parameters_without_gradient(ep: ExportedProgram) -> list[str]:
    """Trainable parameters that get no gradient from the loss, found by one forward and backward
    of the program on fake tensors (no memory, no compute); [] if that run fails."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    names = [spec.target for spec in ep.graph_signature.input_specs
             if spec.kind == InputKind.PARAMETER and ep.state_dict[spec.target].requires_grad]
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    inputs = [n.meta["val"] for n, spec in zip(placeholders, ep.graph_signature.input_specs) if spec.kind == InputKind.USER_INPUT]
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            state = {name: mode.from_tensor(t.detach(), static_shapes=True) for name, t in {**ep.state_dict, **ep.constants}.items()}
            for name in names:
                state[name].requires_grad_(True)
            args = [torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device) for v in inputs]
            loss = torch.func.functional_call(ep.module(), state, tuple(args))
            grads = torch.autograd.grad(loss, [state[name] for name in names], allow_unused=True)
    except Exception:  # noqa: BLE001 (a data-dependent forward: the caller says what it can)
        return []
    return [name for name, grad in zip(names, grads) if grad is None]


def _drop_unused_parameters(ep: ExportedProgram) -> None:
    """A parameter the graph never reads (the second name of a tied weight, or a module the
    loss does not use) gets no gradient, as in eager; joint export rejects such inputs, so
    they are dropped from the program (the step leaves their .grad alone)."""
    graph = ep.graph_module.graph
    placeholders = {n.name: n for n in graph.nodes if n.op == "placeholder"}
    specs = ep.graph_signature.input_specs
    for spec in list(specs):
        node = placeholders[spec.arg.name]
        if spec.kind == InputKind.PARAMETER and not node.users:
            graph.erase_node(node)
            specs.remove(spec)
            del ep.state_dict[spec.target]


def _rename_outputs(ep: ExportedProgram) -> None:
    """The signature names the graph's outputs as they are after the rewrites (the loss is a
    new node now), so that the program is valid again."""
    outputs = ep.graph_module.graph.output_node().args[0]
    for spec, node in zip(ep.graph_signature.output_specs, outputs):
        if isinstance(spec.arg, TensorArgument) and isinstance(node, Node):
            spec.arg = TensorArgument(name=node.name)


def _copy(ep: ExportedProgram) -> ExportedProgram:
    """A shallow copy whose graph can be rewritten without touching the user's program."""
    import copy

    gm = copy.deepcopy(ep.graph_module)
    return ep._update(gm, copy.deepcopy(ep.graph_signature), state_dict=dict(ep.state_dict))


def import_settings(tile_mlp: bool) -> tuple:
    """Everything besides the program that the imported IR depends on (a cache key)."""
    from autosp.frontends import loss, mlp

    return (tile_mlp, loss.CHUNK_BYTES, mlp.CHUNK_BYTES if tile_mlp else None)


@functools.cache
def _autosp_source_digest() -> str:
    """AutoSP's own code that an import runs (a changed rewrite must not reuse a cached import)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for folder in ("common", "ir", "frontends", "runtime"):
        for path in sorted((root / folder).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _value_key(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)}/{tuple(value.stride())}/{value.dtype}/{value.requires_grad}"
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_value_key(v) for v in value) + ")"
    return repr(value)


def _bytes_of(tensor: torch.Tensor) -> bytes:
    if tensor.is_meta:
        return b""  # a program exported on the meta device: no values
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def import_key(ep: ExportedProgram, tile_mlp: bool = False) -> str:
    """A digest of everything `import_program(ep, tile_mlp)` depends on, to reuse an import
    across processes (every rank of a job, the next launch): AutoSP's source, torch's version,
    the import settings, the graph (its code, each node's value metadata and place in the
    model, and so of every submodule the graph calls), the signature, the state's shapes, dtypes
    and trainability, and the values of constants and buffers."""
    digest = hashlib.sha256()

    def add(*parts: object) -> None:
        for part in parts:
            digest.update(str(part).encode() + b"\0")

    add(_autosp_source_digest(), torch.__version__, import_settings(tile_mlp), ep.graph_signature)
    # Every graph: a region under autocast or no_grad is a submodule the top graph only calls.
    for path, module in ep.graph_module.named_modules():
        if isinstance(module, torch.fx.GraphModule):
            add(path, module.code)
            for node in module.graph.nodes:
                add(node.name, _value_key(node.meta.get("val")), node.meta.get("nn_module_stack"), node.meta.get("stack_trace"))
    buffers = set(ep.graph_signature.buffers)
    for name, tensor in sorted(ep.state_dict.items()):
        add(name, _value_key(tensor), isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad)
        if name in buffers:
            digest.update(_bytes_of(tensor))
    for name, tensor in sorted(ep.constants.items()):
        add(name, _value_key(tensor) if isinstance(tensor, torch.Tensor) else type(tensor).__name__)
        if isinstance(tensor, torch.Tensor):
            digest.update(_bytes_of(tensor))
    return digest.hexdigest()[:32]


def import_program(ep: ExportedProgram, tile_mlp: bool = False) -> ModuleOp:
    """The joint training step of `ep` as an AutoSP IR module (tile_mlp: gated MLPs as
    `autosp.gated_mlp`, computed in chunks of rows)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # torch's own pytree deprecation
        joint = joint_graph(ep, tile_mlp)
    signature = joint.graph_signature
    graph = joint.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(signature.input_specs):
        raise AutoSPError("the joint graph's inputs do not match its signature")

    arg_types, arg_attrs = [], []
    for node, spec in zip(placeholders, signature.input_specs):
        if spec.kind not in KIND_NAMES:
            raise AutoSPError(f"input {node.name}: input kind {spec.kind.name} is not supported")
        arg_types.append(_value_type(node))
        attrs: dict[str, Attribute] = {"autosp.kind": StringAttr(KIND_NAMES[spec.kind])}
        if spec.kind != InputKind.USER_INPUT:
            attrs["autosp.name"] = StringAttr(spec.target)
        arg_attrs.append(DictionaryAttr(attrs))

    block = Block(arg_types=arg_types)
    importer = _Importer(joint.graph_module)
    for node, arg in zip(placeholders, block.args):
        arg.name_hint = importer.unique_name(node.name)
        importer.values[node] = arg

    builder = Builder(InsertPoint.at_end(block))
    output_node = None
    for node in graph.nodes:
        if node.op == "call_function":
            importer.import_node(node, builder)
        elif node.op == "output":
            output_node = node
        elif node.op != "placeholder":
            raise AutoSPError(f"node {node.name}: unsupported graph node kind '{node.op}'")
    assert output_node is not None

    mutated = [spec.target for spec in signature.output_specs if spec.kind == OutputKind.BUFFER_MUTATION]
    if mutated:
        raise AutoSPError(
            f"the forward updates buffer{'s' if len(mutated) > 1 else ''} {', '.join(repr(m) for m in mutated)} (running statistics of a norm in "
            "training mode?): a compiled step cannot mutate state; put such modules in eval() mode or use "
            "a norm without running statistics"
        )
    results, res_attrs = [], []
    for value, spec in zip(output_node.args[0], signature.output_specs):
        if spec.kind == OutputKind.LOSS_OUTPUT:
            results.insert(0, importer.value(value))
            res_attrs.insert(0, DictionaryAttr({"autosp.kind": StringAttr("loss")}))
        elif spec.kind == OutputKind.GRADIENT_TO_PARAMETER:
            if value is None:
                continue  # a parameter the loss does not depend on
            results.append(importer.value(value))
            res_attrs.append(
                DictionaryAttr({"autosp.kind": StringAttr("grad"), "autosp.grad_of": StringAttr(spec.target)})
            )
        else:
            raise AutoSPError(f"output {spec.kind.name} of the joint graph is not supported")
    builder.insert(func.ReturnOp(*results))

    train_step = func.FuncOp(
        "train_step",
        (arg_types, [r.type for r in results]),
        Region(block),
        arg_attrs=ArrayAttr(arg_attrs),
        res_attrs=ArrayAttr(res_attrs),
    )
    module = ModuleOp([train_step])
    module.verify()
    return module
