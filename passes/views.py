"""Views of a value rebuilt on another value: what a forward view of a whole parameter is in the
backward, where ZeRO-3 gathers the parameter again (the zero pass, and remat's clones there)."""

from __future__ import annotations

from collections.abc import Callable

from xdsl.ir import Operation, OpResult, SSAValue

from autosp.passes.memory_plan import is_view


def view_chain(value: SSAValue) -> tuple[SSAValue, list[Operation]]:
    """The value a chain of views starts from, and the view ops from it to `value`."""
    chain = []
    while isinstance(value, OpResult) and is_view(value.owner) and value.owner.operands:
        chain.append(value.owner)
        value = value.owner.operands[0]
    return value, chain[::-1]


def rebased(value: SSAValue, twins: dict[SSAValue, SSAValue], made: dict[SSAValue, SSAValue],
            insert: Callable[[Operation], None]) -> SSAValue | None:
    """`value`, a view chain over a key of `twins`, rebuilt on that key's twin (clones handed to
    `insert` and kept in `made`, so each view is rebuilt once); None if its root has no twin."""
    root, chain = view_chain(value)
    if root not in twins:
        return None
    current = twins[root]
    for op in chain:
        result = op.results[0]
        if result not in made:
            clone = op.clone(value_mapper={op.operands[0]: current})
            clone.results[0].name_hint = result.name_hint
            insert(clone)
            made[result] = clone.results[0]
        current = made[result]
    return current
