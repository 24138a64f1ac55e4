"""Helpers for the rewrites of exported FX graphs: new nodes carry their fake value in
`meta["val"]`, as torch.export's later stages (the joint export) expect."""

from __future__ import annotations

import contextlib
import operator

import torch
from torch._guards import detect_fake_mode
from torch.fx import Graph, Node


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
