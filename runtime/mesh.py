"""The device mesh of a multi-process step: a torch DeviceMesh ("dp", "sp"), the user's or one
built with init_device_mesh (SP groups of contiguous ranks, DP groups taking one rank of each),
and its flattening "world" over which ZeRO shards the training state (DTensor's mesh)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

from autosp.common.errors import AutoSPError

MESH_DIMS = ("dp", "sp")


@dataclass
class Mesh:
    sp: int
    dp: int
    device_mesh: object  # DeviceMesh ("dp", "sp")
    sp_group: object
    dp_group: object
    world_mesh: object  # 1-D DeviceMesh over every rank, dp-major: the mesh of sharded parameters

    @property
    def sp_groups(self) -> list[list[int]]:
        """The global ranks of each SP group."""
        return self.device_mesh.mesh.tolist()


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


def check_mesh(mesh, sp: int) -> None:
    """A user's mesh must be a DeviceMesh with dims ("dp", "sp"), sp ranks along "sp", holding this rank."""
    from torch.distributed.device_mesh import DeviceMesh

    if not isinstance(mesh, DeviceMesh):
        raise AutoSPError(f"mesh={mesh!r}: give a torch DeviceMesh (init_device_mesh(..., mesh_dim_names=('dp', 'sp')))")
    if tuple(mesh.mesh_dim_names or ()) != MESH_DIMS:
        raise AutoSPError(f"mesh has dims {mesh.mesh_dim_names}: AutoSP takes a 2-D mesh with mesh_dim_names=('dp', 'sp')")
    if mesh.size(1) != sp:
        raise AutoSPError(f"mesh's 'sp' dim has {mesh.size(1)} ranks but sp={sp}; give sp={mesh.size(1)} or another mesh")
    if mesh.get_coordinate() is None:
        raise AutoSPError(f"rank {dist.get_rank()} is not in the mesh {mesh.mesh.tolist()}")


def place(sp: int, mesh=None) -> tuple[int, int, int]:
    """(ranks in all, this rank's index among them (dp-major), its rank in its SP group), without
    creating any group: what compile needs to make this rank's program."""
    if mesh is not None:
        dp_index, sp_index = mesh.get_coordinate()
        return mesh.size(), dp_index * sp + sp_index, sp_index
    world, rank = dist.get_world_size(), dist.get_rank()
    return world, rank, rank % sp


def make_mesh(sp: int, device_type: str, mesh=None) -> Mesh:
    """Collective: every rank calls it (after a rendezvous that bounds the wait for them); the
    groups' collectives then wait as long as the default group's timeout allows."""
    from torch.distributed.device_mesh import init_device_mesh

    if mesh is None:
        check_world(sp)
        mesh = init_device_mesh(device_type, (dist.get_world_size() // sp, sp), mesh_dim_names=MESH_DIMS)
    world_mesh = mesh._flatten("world")  # torch's way to flatten mesh dims (as FSDP2/HSDP users do)
    return Mesh(sp, mesh.size(0), mesh, mesh.get_group("sp"), mesh.get_group("dp"), world_mesh)
