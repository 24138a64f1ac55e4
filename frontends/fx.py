"""Helpers for the rewrites of exported FX graphs: new nodes carry their fake value in
`meta["val"]`, as torch.export's later stages (the joint export) expect."""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator

import torch
from torch._guards import detect_fake_mode
from torch.fx import Graph, GraphModule, Node


@contextlib.contextmanager
def replacing(graph: Graph, node: Node):
    """Insert before `node`, which the new nodes replace: they carry its place in the model
    (module stack, stack trace) for the generated code's comments (frontends/source.py)."""
    last_before = node.prev
    with graph.inserting_before(node):
        yield
    new = last_before.next
    while new is not node:
        for key in ("nn_module_stack", "stack_trace"):
            if key in node.meta:
                new.meta.setdefault(key, node.meta[key])
        new = new.next


def fake_value(node) -> torch.Tensor | None:
    return node.meta.get("val") if isinstance(node, Node) else None


def call_with_value(graph: Graph, target, args: tuple, kwargs: dict | None = None) -> Node:
    """graph.call_function(target, args, kwargs), its value computed on the arguments' fake values."""
    node = graph.call_function(target, args, kwargs)
    values = [fake_value(a) if isinstance(a, Node) else a for a in args]
    with detect_fake_mode([v for v in values if isinstance(v, torch.Tensor)]) or contextlib.nullcontext():
        node.meta["val"] = target(*values, **(kwargs or {}))
    return node


def getitem_with_value(graph: Graph, node: Node, index: int) -> Node:
    item = graph.call_function(operator.getitem, (node, index))
    item.meta["val"] = node.meta["val"][index]
    return item


def graphs_with_autocast(module: GraphModule, regions: tuple = ()) -> Iterator[tuple[GraphModule, tuple]]:
    """Each graph module of an exported forward with the autocast regions it runs in, outermost
    first, as (device_type, dtype, enabled): torch.export keeps a `with torch.autocast(...)` (or
    `torch.no_grad()`) of the forward as a higher-order op calling a submodule of its ops."""
    yield module, regions
    for node in module.graph.nodes:
        if node.op != "call_function":
            continue
        inner = regions
        if node.target is torch.ops.higher_order.wrap_with_autocast:
            inner = (*regions, tuple(node.args[:3]))
        for arg in node.args:
            if isinstance(arg, Node) and arg.op == "get_attr" and isinstance(getattr(module, arg.target), GraphModule):
                yield from graphs_with_autocast(getattr(module, arg.target), inner)


@contextlib.contextmanager
def under_autocast(regions: tuple):
    """Enter the regions, so new nodes' fake values get the dtypes eager autocast gives them."""
    with contextlib.ExitStack() as stack:
        for device_type, dtype, enabled in regions:
            stack.enter_context(torch.autocast(device_type, dtype, enabled))
        yield
