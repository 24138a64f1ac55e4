"""drop-aliases: remove ops that are the identity under value semantics.

The IR has value semantics, so `aten.alias(x)` and `aten.detach(x)` are just `x`; the joint
graph carries dozens of them (autograd's saved-tensor aliases). Dropping them makes the IR
shorter and lets liveness see the real last use of each tensor. The ops handled are listed in
`IDENTITY_OPS`. `aten.clone` is NOT among them: the generated code relies on its contiguity.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

from autosp.ir.aten import AtenOp

IDENTITY_OPS = {
    "aten.alias.default",
    "aten.detach.default",
    "aten.lift_fresh_copy.default",
}


class DropIdentity(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: AtenOp, rewriter: PatternRewriter) -> None:
        if op.name not in IDENTITY_OPS:
            return
        source = op.operands[0]
        if source.type != op.results[0].type:
            return  # not the identity after all (a dtype or shape change): keep it
        rewriter.replace(op, [], [source])


@dataclass(frozen=True)
class DropAliases(ModulePass):
    name = "drop-aliases"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(DropIdentity(), apply_recursively=False).rewrite_module(op)
