"""Rewrite Llama-style gated MLPs `down(act(gate(x)) * up(x))` of an exported forward graph into
`autosp::gated_mlp`, computed in chunks of rows whose backward recomputes the gate and up
projections chunk by chunk: no `[tokens, intermediate]` value is ever whole. Used only when the
step would not fit otherwise (it costs two extra matmuls of the MLP per step).

Only the exact pattern: three bias-free `linear`s, `act` one of silu, gelu, gelu(tanh), the
product's factors in either order, and intermediate values nothing else reads.
"""

from __future__ import annotations

import torch
from torch.fx import Graph, Node

import autosp.runtime.ops  # noqa: F401  (registers torch.ops.autosp.*)
from autosp.frontends.fx import call_with_value, fake_value, replacing

aten = torch.ops.aten
# Rows per chunk: about this many bytes of one [rows, intermediate] value at a time.
CHUNK_BYTES = 128 << 20


def _linear(node: object) -> tuple[Node, Node] | None:
    """(input, weight) of a bias-free `linear` read only once."""
    if not (isinstance(node, Node) and node.target == aten.linear.default and len(node.users) == 1):
        return None
    if len(node.args) > 2 and node.args[2] is not None:
        return None
    return node.args[0], node.args[1]  # type: ignore[return-value]


def _activation(node: object) -> tuple[str, Node] | None:
    if not (isinstance(node, Node) and len(node.users) == 1):
        return None
    if node.target == aten.silu.default:
        return "silu", node.args[0]  # type: ignore[return-value]
    if node.target == aten.gelu.default:
        approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return ("gelu_tanh" if approximate == "tanh" else "gelu"), node.args[0]  # type: ignore[return-value]
    return None


def rewrite_gated_mlp(graph: Graph) -> int:
    """Replace each gated MLP in `graph`; returns how many."""
    count = 0
    for node in list(graph.nodes):
        if node.target != aten.linear.default or (len(node.args) > 2 and node.args[2] is not None):
            continue
        product, w_down = node.args[0], node.args[1]  # (the MLP's output may have any readers)
        if not (isinstance(product, Node) and product.target == aten.mul.Tensor and len(product.users) == 1):
            continue
        for activated, up in (product.args, reversed(product.args)):
            act, up_in = _activation(activated), _linear(up)
            gate_in = _linear(act[1]) if act else None
            if act and up_in and gate_in and gate_in[0] is up_in[0]:
                break
        else:
            continue
        x, (w_gate, w_up) = gate_in[0], (gate_in[1], up_in[1])
        intermediate = fake_value(w_gate).shape[0]
        rows = fake_value(x).numel() // fake_value(x).shape[-1]
        chunk = min(rows, max(1, CHUNK_BYTES // (intermediate * fake_value(x).element_size())))
        with replacing(graph, node):
            fused = call_with_value(graph, torch.ops.autosp.gated_mlp.default, (x, w_gate, w_up, w_down, act[0], chunk))
        node.replace_all_uses_with(fused)
        graph.erase_node(node)
        count += 1
    graph.eliminate_dead_code()
    return count
