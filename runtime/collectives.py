"""Collectives the generated program calls, over torch.distributed (gloo on CPU, NCCL on NVIDIA,
RCCL on AMD). Each returns a new tensor and leaves its input untouched."""

from __future__ import annotations

import torch
import torch.distributed as dist

_REDUCE = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce(x: torch.Tensor, reduce: str, group) -> torch.Tensor:
    out = x.clone()
    dist.all_reduce(out, op=_REDUCE[reduce], group=group)
    return out


def all_gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def reduce_scatter(x: torch.Tensor, reduce: str, dim: int, group) -> torch.Tensor:
    n = dist.get_world_size(group)
    summed = all_reduce(x, reduce, group)  # gloo has no reduce_scatter
    return summed.chunk(n, dim=dim)[dist.get_rank(group)].contiguous()


def all_to_all(x: torch.Tensor, split_dim: int, concat_dim: int, group) -> torch.Tensor:
    n = dist.get_world_size(group)
    inputs = [c.contiguous() for c in x.chunk(n, dim=split_dim)]
    outputs = [torch.empty_like(c) for c in inputs]
    dist.all_to_all(outputs, inputs, group=group)
    return torch.cat(outputs, dim=concat_dim)


def local_shard(x: torch.Tensor, dim: int, replicas: int, group) -> torch.Tensor:
    """This rank's block of a replicated tensor along dim (no communication); each block is
    held by `replicas` consecutive ranks."""
    blocks = dist.get_world_size(group) // replicas
    return x.chunk(blocks, dim=dim)[dist.get_rank(group) // replicas].contiguous()


def place_shard(x: torch.Tensor, dim: int, replicas: int, group) -> torch.Tensor:
    """Zeros of the whole shape with this rank's block in place: a partial sum."""
    blocks = dist.get_world_size(group) // replicas
    shape = list(x.shape)
    shape[dim] *= blocks
    out = x.new_zeros(shape)
    out.narrow(dim, (dist.get_rank(group) // replicas) * x.shape[dim], x.shape[dim]).copy_(x)
    return out


def to_partial(x: torch.Tensor, group) -> torch.Tensor:
    """A replicated tensor as a partial sum: rank 0 keeps it, the others contribute zeros."""
    return x.clone() if dist.get_rank(group) == 0 else torch.zeros_like(x)
