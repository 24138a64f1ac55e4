"""Rewrite `cross_entropy(linear(h, W) [-> float] [-> view(-1, V)], labels)` of an exported forward
graph into `autosp::linear_cross_entropy`, before the joint forward/backward export, so the
[N, V] logits (the largest long-context tensor: N·V·4 bytes) are never materialized.

Only the exact pattern is fused: no bias, no class weights, no label smoothing, reduction `sum`
or `mean`, and logits that nothing else reads. Anything else keeps the plain ops (correct, just
not fused). `mean` becomes the summed loss over the count of non-ignored labels, as eager's
(NaN loss and zero gradients when every label is ignored).
"""

from __future__ import annotations

import torch
from torch.fx import Graph, Node

import autosp.runtime.ops  # noqa: F401  (registers torch.ops.autosp.*)
from autosp.frontends.fx import call_with_value, fake_value, getitem_with_value, replacing
from autosp.frontends.mask import bound_arguments
from autosp.common.precision import accumulation_dtype

aten = torch.ops.aten
CROSS_ENTROPY = aten.cross_entropy_loss.default
# Between the LM head and the loss: reshapes, no-op aliases and the fp32 upcast.
PASS_THROUGH = {
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.alias.default,
    aten.clone.default, aten.contiguous.default, aten.to.dtype, aten._to_copy.default,
}
REDUCTIONS = {1: "mean", 2: "sum"}  # torch's Reduction enum
# Rows of logits per chunk: about this many bytes of fp32 logits at a time.
CHUNK_BYTES = 1 << 30


def chunk_rows(rows: int, vocab: int) -> int:
    """A power of two (or all rows) so one chunk's fp32 logits take about CHUNK_BYTES."""
    fits = max(1, CHUNK_BYTES // (vocab * 4))
    return min(rows, 1 << (fits.bit_length() - 1))


def _lm_head(logits: Node) -> Node | None:
    """The bias-free `linear` the logits come from through single-use pass-through ops."""
    node = logits
    while node.target in PASS_THROUGH and len(node.users) == 1:
        if node.target in (aten.to.dtype, aten._to_copy.default):
            src, dst = fake_value(node.args[0]), fake_value(node)
            if not dst.dtype.is_floating_point or dst.dtype.itemsize < src.dtype.itemsize:
                return None  # a downcast of the logits changes the loss: keep it as written
        node = node.args[0]
    if node.target != aten.linear.default or len(node.users) != 1:
        return None
    if len(node.args) > 2 and node.args[2] is not None:
        return None
    return node


def _mean_over_kept(graph: Graph, summed: Node, labels: Node, ignore_index: int) -> Node:
    """summed / count of kept labels, with eager's semantics when every label is ignored: the
    loss is NaN (0/0) but every gradient is zero. A plain division would send 1/0 = inf into
    the backward, where inf * 0 turns every gradient into NaN; the kept branch divides by
    max(count, 1) instead and `where` stops the gradient when the count is 0."""
    count = call_with_value(graph, aten.sum.default, (call_with_value(graph, aten.ne.Scalar, (labels, ignore_index)),))
    mean = call_with_value(graph, aten.div.Tensor, (summed, call_with_value(graph, aten.clamp_min.default, (count, 1))))
    nan = call_with_value(graph, aten.full_like.default, (mean, float("nan")))
    return call_with_value(graph, aten.where.self, (call_with_value(graph, aten.gt.Scalar, (count, 0)), mean, nan))


def rewrite_linear_cross_entropy(graph: Graph) -> int:
    """Replace each fusable LM head + cross-entropy in `graph`; returns how many."""
    count = 0
    for node in list(graph.nodes):
        if node.target != CROSS_ENTROPY:
            continue
        args = bound_arguments(node)
        logits, labels = args["self"], args["target"]
        if (
            args["weight"] is not None or args["label_smoothing"]
            or args["reduction"] not in REDUCTIONS
            or fake_value(logits).dim() != 2 or fake_value(labels).dim() != 1
            or fake_value(labels).dtype != torch.int64
        ):
            continue
        head = _lm_head(logits)
        if head is None:
            continue
        hidden, weight = head.args[0], head.args[1]
        width = fake_value(weight).shape[1]
        rows = fake_value(hidden).numel() // width
        chunk = chunk_rows(rows, fake_value(weight).shape[0])
        ignore_index = int(args["ignore_index"])
        with replacing(graph, node):
            flat = call_with_value(graph, aten.reshape.default, (hidden, [rows, width]))
            fused = call_with_value(graph, torch.ops.autosp.linear_cross_entropy.default, (flat, weight, labels, ignore_index, chunk))
            loss = getitem_with_value(graph, fused, 0)
            if REDUCTIONS[args["reduction"]] == "mean":
                loss = _mean_over_kept(graph, loss, labels, ignore_index)
            if fake_value(node).dtype != accumulation_dtype(fake_value(hidden).dtype):
                loss = call_with_value(graph, aten.to.dtype, (loss, fake_value(node).dtype))
        node.replace_all_uses_with(loss)
        graph.erase_node(node)
        count += 1
    graph.eliminate_dead_code()
    return count
