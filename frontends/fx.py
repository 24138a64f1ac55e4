"""Helpers for the rewrites of exported FX graphs: new nodes carry their fake value in
`meta["val"]`, as torch.export's later stages (the joint export) expect."""

from __future__ import annotations

import contextlib
import operator

import torch
from torch._guards import detect_fake_mode
from torch.fx import Graph, Node


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


def call_with_value(graph: Graph, target, args: tuple) -> Node:
    """graph.call_function(target, args), its value computed on the arguments' fake values."""
    node = graph.call_function(target, args)
    values = [fake_value(a) if isinstance(a, Node) else a for a in args]
    with detect_fake_mode([v for v in values if isinstance(v, torch.Tensor)]) or contextlib.nullcontext():
        node.meta["val"] = target(*values)
    return node


def getitem_with_value(graph: Graph, node: Node, index: int) -> Node:
    item = graph.call_function(operator.getitem, (node, index))
    item.meta["val"] = node.meta["val"][index]
    return item
