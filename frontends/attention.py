"""Rewrite every `aten.scaled_dot_product_attention` of an exported forward graph into
`autosp::attention`, before the joint forward/backward export.

- The mask becomes a description (`causal`, `window`, and for packed sequences the `[B, S]`
  document numbers it compares) from `frontends.mask`; any other mask is refused, naming the node.
- K/V expanded to the query head count (`repeat_kv`: unsqueeze -> expand -> reshape, or
  `repeat_interleave`) are traced back to the unexpanded tensors: the op is GQA-native.
"""

from __future__ import annotations

import math

import torch
from torch.fx import Graph, Node

import autosp.runtime.ops  # noqa: F401  (registers torch.ops.autosp.*)
from autosp.common.errors import AutoSPError
from autosp.frontends.fx import call_with_value, fake_value, getitem_with_value, replacing
from autosp.frontends.mask import MaskNotUnderstood, bound_arguments, classify

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default


def _shape(node: Node) -> tuple[int, ...]:
    return tuple(int(s) for s in node.meta["val"].shape)


def unexpanded_kv(node: Node) -> Node:
    """The [B, Hkv, S, D] tensor a [B, Hq, S, D] key/value was expanded from, or node itself."""
    b, h, s, d = _shape(node)
    if node.target == aten.repeat_interleave.self_int and node.args[2:3] in ([1], [-3]):
        return node.args[0]  # type: ignore[return-value]
    if node.target not in (aten.reshape.default, aten.view.default, aten._unsafe_view.default):
        return node
    inner = node.args[0]
    while isinstance(inner, Node) and inner.target in (aten.clone.default, aten.contiguous.default):
        inner = inner.args[0]
    if not (isinstance(inner, Node) and inner.target == aten.expand.default):
        return node
    unsqueezed = inner.args[0]
    if not (isinstance(unsqueezed, Node) and unsqueezed.target == aten.unsqueeze.default and unsqueezed.args[1] == 2):
        return node
    source = unsqueezed.args[0]
    sb, hkv, ss, sd = _shape(source)  # type: ignore[arg-type]
    if (sb, ss, sd) == (b, s, d) and _shape(inner) == (b, hkv, h // hkv, s, d) and h % hkv == 0:
        return source  # type: ignore[return-value]
    return node


def _per_batch(graph: Graph, documents: Node, row: int | None, batch: int) -> Node:
    """Document numbers as the kernels take them, one row per batch entry: [B, S]."""
    if row is not None:  # one row serves every batch entry
        documents = call_with_value(graph, aten.select.int, (documents, 0, row))
    if len(_shape(documents)) == 1:
        documents = call_with_value(graph, aten.unsqueeze.default, (documents, 0))
    if _shape(documents)[0] != batch:
        documents = call_with_value(graph, aten.expand.default, (documents, [batch, _shape(documents)[1]]))
    return documents


def _in_layout_of(graph: Graph, out: Node, sdpa: torch.Tensor) -> Node:
    """`out` (contiguous [B, H, S, D]) copied into the memory layout SDPA's result has (its
    kernels write [B, S, H, D]): the model's code after it may `view` what only that layout
    allows (`.transpose(1, 2).contiguous()` exports as a no-op). Where the model reshapes
    instead, that reshape no longer copies: the copy moves, none is added."""
    if sdpa.is_contiguous():
        return out
    order = sorted(range(sdpa.dim()), key=lambda d: -sdpa.stride(d))  # outermost dim first
    inverse = sorted(range(sdpa.dim()), key=lambda d: order[d])
    permuted = call_with_value(graph, aten.permute.default, (out, order))
    copied = call_with_value(graph, aten.clone.default, (permuted,), {"memory_format": torch.contiguous_format})
    return call_with_value(graph, aten.permute.default, (copied, inverse))


def rewrite_attention(graph: Graph) -> int:
    """Replace each SDPA in `graph`; returns how many were replaced."""
    count = 0
    for node in list(graph.nodes):
        if node.target != SDPA:
            continue
        args = bound_arguments(node)
        q, k, v, mask = args["query"], args["key"], args["value"], args["attn_mask"]
        where = f"attention {node.name} (q {list(_shape(q))}, k {list(_shape(k))})"
        if args["dropout_p"]:
            raise AutoSPError(f"{where}: dropout_p={args['dropout_p']} is not supported; set attention dropout to 0")
        causal, window, documents = bool(args["is_causal"]), 0, None
        if mask is not None:
            if causal:
                raise AutoSPError(f"{where}: both attn_mask and is_causal are set")
            try:
                description = classify(mask)
            except MaskNotUnderstood as err:
                raise AutoSPError(
                    f"{where}: the attention mask is not understood ({err}); supported masks are "
                    "causal and sliding-window functions of the query/key index, optionally within "
                    "documents (doc[b, i] == doc[b, j], or HF's packed position_ids) — pass no "
                    "attention_mask (mark padding with ignore_index labels instead)"
                ) from None
            causal, window = description.causal, description.window
            if description.documents is not None:
                with replacing(graph, node):
                    documents = _per_batch(graph, description.documents, description.documents_row, _shape(q)[0])
        k, v = unexpanded_kv(k), unexpanded_kv(v)
        if _shape(q)[1] % _shape(k)[1]:
            raise AutoSPError(f"{where}: {_shape(q)[1]} query heads is not a multiple of {_shape(k)[1]} kv heads")
        scale = args["scale"] if args["scale"] is not None else 1.0 / math.sqrt(_shape(q)[-1])
        with replacing(graph, node):
            fused = call_with_value(
                graph, torch.ops.autosp.attention.default, (q, k, v, causal, window, float(scale), documents)
            )
            out = _in_layout_of(graph, getitem_with_value(graph, fused, 0), fake_value(node))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        count += 1
    graph.eliminate_dead_code()
    return count

