"""The shape of an AutoSP program: a module holding `func.func @train_step`."""

from __future__ import annotations

from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp

from autosp.common.errors import AutoSPError


def train_step_of(module: ModuleOp) -> func.FuncOp:
    for op in module.ops:
        if isinstance(op, func.FuncOp) and op.sym_name.data == "train_step":
            return op
    raise AutoSPError("the module has no func.func @train_step")
