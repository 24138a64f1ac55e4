"""The device mesh: world = sp x dp. SP groups are contiguous ranks ([0..sp), [sp..2sp), ...);
DP groups take one rank of each SP group. Every rank creates every group, in the same order."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from autosp.common.errors import AutoSPError


@dataclass
class Mesh:
    sp: int
    dp: int
    sp_group: object
    dp_group: object


def check_world(sp: int) -> None:
    """Raises unless torch.distributed is up with a world size that sp divides."""
    if not dist.is_available() or not dist.is_initialized():
        raise AutoSPError(
            f"sp={sp} needs torch.distributed initialized first (launch with torchrun and call "
            "torch.distributed.init_process_group())"
        )
    world = dist.get_world_size()
    if world % sp:
        raise AutoSPError(f"world size {world} is not a multiple of sp={sp}; use an sp that divides {world}")


def make_mesh(sp: int) -> Mesh:
    """Collective: every rank calls it (after a rendezvous that bounds the wait for them); the
    groups' collectives then wait as long as the default group's timeout allows."""
    check_world(sp)
    world, rank = dist.get_world_size(), dist.get_rank()
    dp = world // sp
    sp_group = dp_group = None
    for first in range(0, world, sp):
        group = dist.new_group(list(range(first, first + sp)))
        if first <= rank < first + sp:
            sp_group = group
    for offset in range(sp):
        group = dist.new_group(list(range(offset, world, sp)))
        if rank % sp == offset:
            dp_group = group
    return Mesh(sp, dp, sp_group, dp_group)
