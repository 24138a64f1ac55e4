"""The shape of an AutoSP program: a module holding `func.func @train_step`."""

from __future__ import annotations

from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp

from autosp.common.errors import AutoSPError
from autosp.ir.autosp import PartitionAttr, RematAttr, ZeroAttr

PARTITION, REMAT, ZERO = "autosp.partition", "autosp.remat", "autosp.zero"  # the module attributes that carry them


def train_step_of(module: ModuleOp) -> func.FuncOp:
    for op in module.ops:
        if isinstance(op, func.FuncOp) and op.sym_name.data == "train_step":
            return op
    raise AutoSPError("the module has no func.func @train_step")


def partition_of(module: ModuleOp) -> PartitionAttr | None:
    """How sp-propagate laid the module out, if it did."""
    attr = module.attributes.get(PARTITION)
    return attr if isinstance(attr, PartitionAttr) else None


def remat_of(module: ModuleOp) -> RematAttr | None:
    """The remat pass's plan, if it ran."""
    attr = module.attributes.get(REMAT)
    return attr if isinstance(attr, RematAttr) else None


def zero_of(module: ModuleOp) -> ZeroAttr | None:
    """How the zero pass sharded the training state, if it ran."""
    attr = module.attributes.get(ZERO)
    return attr if isinstance(attr, ZeroAttr) else None
