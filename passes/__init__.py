"""AutoSP's passes, one per file; a lazy registry of pass name -> class for `-p` and the pipeline."""

from collections.abc import Callable

from xdsl.passes import ModulePass


def _drop_aliases() -> type[ModulePass]:
    from autosp.passes.drop_aliases import DropAliases

    return DropAliases


def _sp_propagate() -> type[ModulePass]:
    from autosp.passes.sp_propagate import SPPropagate

    return SPPropagate


def _sp_partition() -> type[ModulePass]:
    from autosp.passes.sp_partition import SPPartition

    return SPPartition


def _zero() -> type[ModulePass]:
    from autosp.passes.zero import Zero

    return Zero


def _select_kernels() -> type[ModulePass]:
    from autosp.passes.select_kernels import SelectKernels

    return SelectKernels


def _tile_rows() -> type[ModulePass]:
    from autosp.passes.tile_rows import TileRows

    return TileRows


def _memory_plan() -> type[ModulePass]:
    from autosp.passes.memory_plan import MemoryPlanPass

    return MemoryPlanPass


def _remat() -> type[ModulePass]:
    from autosp.passes.remat import Remat

    return Remat


def _fuse_elementwise() -> type[ModulePass]:
    from autosp.passes.fuse_elementwise import FuseElementwise

    return FuseElementwise


PASSES: dict[str, Callable[[], type[ModulePass]]] = {
    "drop-aliases": _drop_aliases,
    "sp-propagate": _sp_propagate,
    "sp-partition": _sp_partition,
    "zero": _zero,
    "select-kernels": _select_kernels,
    "tile-rows": _tile_rows,
    "remat": _remat,
    "memory-plan": _memory_plan,
    "fuse-elementwise": _fuse_elementwise,
}


def all_passes() -> dict[str, Callable[[], type[ModulePass]]]:
    """AutoSP's passes plus xDSL's generic ones (dce, cse, canonicalize...)."""
    from xdsl.universe import Universe

    passes = dict(Universe.get_multiverse().all_passes)
    passes.update(PASSES)
    return passes
