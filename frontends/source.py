"""Where each node of the joint graph came from in the model, as an MLIR-style location.

The joint export keeps no `nn_module_stack` (torch re-traces the joint graph without node
metadata), so the forward is also decomposed on its own: its nodes keep the module stack and
the user's source line, and they are the joint's forward nodes, with the same names and targets
(nodes that do not match get no forward location). A backward node is attributed to the module
whose saved values or parameters it reads (the latest such in forward order); one that reads
only gradients inherits the module of its latest-computed operand. The locations are `loc("<module path>
(<class>)"("<file>":<line>:0))`, prefixed with "backward of " in the backward: the IR prints
them with --print-debuginfo, and the generated program writes them as comments.
"""

from __future__ import annotations

import re

from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind
from torch.fx import Node
from xdsl.dialects.builtin import FileLineColLoc, IntAttr, NameLoc, NoneAttr, StringAttr

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def forward_in_core_aten(ep: ExportedProgram) -> ExportedProgram:
    """`ep`'s forward decomposed with the joint export's table (its nodes keep their metadata)."""
    from torch._decomp import core_aten_decompositions

    return ep.run_decompositions(core_aten_decompositions())


class _Source:
    def __init__(self, module: str, order: int, frame: tuple[str, int] | None):
        self.module, self.order, self.frame = module, order, frame

    def location(self, backward: bool) -> NameLoc:
        child = NoneAttr() if self.frame is None else FileLineColLoc(StringAttr(self.frame[0]), IntAttr(self.frame[1]), IntAttr(0))
        return NameLoc(StringAttr(("backward of " if backward else "") + self.module), child)


def _innermost_module(node: Node) -> tuple[str, str] | None:
    """(path, class name) of the model module a node came from, or None."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path, kind = list(stack.values())[-1]
    return path, kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1]


def module_of(node: Node) -> str | None:
    """`path (Class)` of the model module a node came from, or None."""
    found = _innermost_module(node)
    if found is None:
        return None
    path, kind = found
    return f"{path} ({kind})" if path else kind


def _frame_of(node: Node) -> tuple[str, int] | None:
    frames = _FRAME.findall(node.meta.get("stack_trace") or "")
    return (frames[-1][0], int(frames[-1][1])) if frames else None


def joint_locations(forward: ExportedProgram, joint: ExportedProgram) -> dict[Node, NameLoc]:
    """A location for every call node of `joint` that can be traced back to a model module."""
    sources: dict[str, _Source] = {}
    for order, node in enumerate(forward.graph.nodes):
        module = module_of(node) if node.op == "call_function" else None
        if module is not None:
            sources[node.name] = _Source(module, order, _frame_of(node))
    targets = {node.name: node.target for node in forward.graph.nodes}
    # A parameter belongs to the module that owns it: the first forward node of that module.
    by_path = {s.module.split(" ")[0]: s for s in sorted(sources.values(), key=lambda s: -s.order)}
    param_of = {spec.arg.name: spec.target for spec in joint.graph_signature.input_specs if spec.kind == InputKind.PARAMETER}

    locations: dict[Node, NameLoc] = {}
    origin: dict[Node, tuple[_Source, bool]] = {}  # node -> (source, whether it is a forward value)
    position = {node: i for i, node in enumerate(joint.graph.nodes)}
    for node in joint.graph.nodes:
        if node.op == "placeholder" and node.name in param_of:
            owner = by_path.get(param_of[node.name].rsplit(".", 1)[0])
            if owner is not None:
                origin[node] = (owner, True)
            continue
        if node.op != "call_function":
            continue
        source = sources.get(node.name)
        if source is not None and targets.get(node.name) == node.target:
            origin[node] = (source, True)
            locations[node] = source.location(backward=False)
            continue
        inputs = [origin[a] for a in sorted(node.all_input_nodes, key=position.get) if a in origin]
        saved = [s for s, is_forward in inputs if is_forward]
        if saved:
            source = max(saved, key=lambda s: s.order)
        elif inputs:
            source = inputs[-1][0]
        else:
            continue
        origin[node] = (source, False)
        locations[node] = source.location(backward=True)
    return locations


def mode_dependent_modules(ep: ExportedProgram) -> dict[str, tuple[str, bool]]:
    """module path -> (class name, its `training` flag at export), for each module whose ops
    depend on train()/eval(): ops with a `train`/`training` argument (dropout, batch norm, ...),
    but a dropout of p=0. The step compares those flags with the model's (runtime/train_step)."""
    from autosp.frontends.fx import graphs_with_autocast

    modes: dict[str, tuple[str, bool]] = {}
    for module, _ in graphs_with_autocast(ep.graph_module):
        for node in module.graph.nodes:
            schema = getattr(node.target, "_schema", None)
            found = _innermost_module(node)
            if schema is None or found is None:
                continue
            values = {arg.name: value for arg, value in zip(schema.arguments, node.args)}
            values.update(node.kwargs)
            flag = next((values[name] for name in ("train", "training") if isinstance(values.get(name), bool)), None)
            if flag is None or values.get("p") == 0:
                continue
            path, kind = found
            modes[path] = (kind, flag)
    return modes
