"""Every op of every tested architecture's training step has a sharding rule: a missing one
silently replicates (an all-gather of the whole sequence, which only memory shows), so it must
be a decision, not an accident. And under sp=2 no architecture all-gathers for want of a rule."""

import pytest
import torch

from autosp.frontends import import_program
from autosp.ir.aten import AtenCallOp
from autosp.passes.sharding_rules import rule_of
from autosp.pipeline import pipeline_spec, run_pipeline
from autosp.report import comm_report
from tests.conftest import tiny_causal_lm
from tests.e2e.test_equivalence import ARCHS


STRUCTURE = ("func.", "autosp.yield", "dist.group")  # the function, its return, declarations


@pytest.fixture(scope="module", params=sorted(ARCHS))
def imported(request):
    module = tiny_causal_lm(request.param, num_hidden_layers=1, **ARCHS[request.param])
    ids = torch.randint(0, 96, (1, 16))
    return request.param, import_program(torch.export.export(module, (ids, ids.clone())))


def test_every_op_has_a_sharding_rule(imported):
    arch, module = imported
    missing = sorted({
        op.target.data if isinstance(op, AtenCallOp) else op.name
        for op in module.walk()
        if not op.name.startswith(STRUCTURE) and op is not module and rule_of(op) is None
    })
    assert not missing, f"{arch}: no sharding rule for {missing}"


def test_sp2_gathers_nothing_the_rules_did_not_ask_for(imported):
    arch, module = imported
    report = comm_report(run_pipeline(module.clone(), pipeline_spec(sp=2, fuse=False)))
    assert not report.unplanned, f"{arch}: {dict(report.unplanned)}"


def test_every_op_has_a_flop_and_a_workspace_rule(imported):
    """Also after partitioning (collectives, layout changes) and fusion (fused kernels)."""
    from autosp.passes.cost_model import flop_rule_of
    from autosp.passes.memory_plan import workspace_rule_of

    arch, module = imported
    compiled = run_pipeline(module.clone(), pipeline_spec(sp=2))
    ops = [op for op in (*module.walk(), *compiled.walk()) if not op.name.startswith(STRUCTURE) and op.parent is not None]
    name = lambda op: op.target.data if isinstance(op, AtenCallOp) else op.name  # noqa: E731
    assert not sorted({name(op) for op in ops if flop_rule_of(op) is None}), arch
    assert not sorted({name(op) for op in ops if workspace_rule_of(op) is None}), arch
