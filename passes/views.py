"""Views of a value rebuilt on another value: what a forward view of a whole parameter is in the
backward, where ZeRO-3 gathers the parameter again (the zero pass, and remat's clones there)."""

from __future__ import annotations

from collections.abc import Callable

from xdsl.ir import Operation, OpResult, SSAValue

from autosp.passes.memory_plan import is_view


def view_chain(value: SSAValue) -> tuple[SSAValue, list[OpResult]]:
    """The value a chain of views starts from, and the view results from it to `value` (a view
    op may have several results: split and chunk)."""
    chain = []
    while isinstance(value, OpResult) and is_view(value.owner) and value.owner.operands:
        chain.append(value)
        value = value.owner.operands[0]
    return value, chain[::-1]


def rebased(value: SSAValue, twins: dict[SSAValue, SSAValue], made: dict[SSAValue, SSAValue],
            insert: Callable[[Operation], None]) -> SSAValue | None:
    """`value`, a view chain over a key of `twins`, rebuilt on that key's twin (clones handed to
    `insert` and kept in `made`, so each view op is rebuilt once); None if its root has no twin."""
    root, chain = view_chain(value)
    if root not in twins:
        return None
    current = twins[root]
    for result in chain:
        op = result.owner
        if result not in made:
            clone = op.clone(value_mapper={op.operands[0]: current})
            for old, new in zip(op.results, clone.results):
                new.name_hint = old.name_hint
                made[old] = new
            insert(clone)
        current = made[result]
    return current
