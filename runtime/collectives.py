"""Collectives the generated program calls, over torch.distributed (gloo on CPU, NCCL on NVIDIA,
RCCL on AMD). Each returns a new tensor and leaves its input untouched."""

from __future__ import annotations

import torch
import torch.distributed as dist

from autosp.common.sizes import chunk_sizes, split_sizes

_REDUCE = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def _handed(x: torch.Tensor) -> torch.Tensor:
    """What a backend may keep after the call: a new tensor object on x's storage that refers to
    no other tensor (a view would keep its base). The backend's work can outlive the call on its
    own thread; holding x (or a view of x) keeps x's Python object, and so the memory tracker's
    count of its storage, alive for a time that depends on that thread."""
    return x.detach()


def all_reduce(x: torch.Tensor, reduce: str, group) -> torch.Tensor:
    out = x.clone()
    dist.all_reduce(_handed(out), op=_REDUCE[reduce], group=group)
    return out


def _resized(x: torch.Tensor | list[int], dim: int, size: int) -> list[int]:
    shape = list(x.shape if isinstance(x, torch.Tensor) else x)
    shape[dim] = size
    return shape


def _pad_to(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    if x.shape[dim] == size:
        return x
    return torch.cat([x, x.new_zeros(_resized(x, dim, size - x.shape[dim]))], dim=dim)


def all_gather(x: torch.Tensor, dim: int, total: int, outer: int, group) -> torch.Tensor:
    """Every rank's part of dim, in rank order; parts may differ by one (`total` in all). With
    outer > 1, dim is outer x part and each outer slice is gathered."""
    if outer > 1:
        gathered = all_gather(x.unflatten(dim, (outer, -1)), dim + 1, total, 1, group)
        return gathered.flatten(dim, dim + 1)
    sizes = split_sizes(total, dist.get_world_size(group))
    padded = _pad_to(x, dim, max(sizes))  # gloo gathers equal shapes: pad, then trim each part
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, _handed(padded.contiguous()), group=group)
    return torch.cat([p.narrow(dim, 0, size) for p, size in zip(parts, sizes)], dim=dim)


def reduce_scatter(x: torch.Tensor, reduce: str, dim: int, outer: int, group) -> torch.Tensor:
    summed = all_reduce(x, reduce, group)  # gloo has no reduce_scatter
    return local_shard(summed, dim, 1, outer, group)


_NO_ALLTOALL: set[str] = set()  # backends found without all_to_all (gloo before torch 2.13)


def _exchange(outputs: list[torch.Tensor], inputs: list[torch.Tensor], group) -> None:
    """all_to_all of equal-shaped chunks; point-to-point sends where the backend has none."""
    backend = str(dist.get_backend(group))
    if backend not in _NO_ALLTOALL:
        try:
            dist.all_to_all(outputs, [_handed(x) for x in inputs], group=group)
            return
        except RuntimeError as err:
            if "alltoall" not in str(err).lower():
                raise
            _NO_ALLTOALL.add(backend)
    rank = dist.get_rank(group)
    ops = []
    for peer in range(len(inputs)):
        if peer == rank:
            outputs[peer].copy_(inputs[peer])
            continue
        global_peer = dist.get_global_rank(group, peer) if group is not None else peer
        ops.append(dist.P2POp(dist.irecv, outputs[peer], global_peer, group))
        ops.append(dist.P2POp(dist.isend, _handed(inputs[peer]), global_peer, group))
    for work in dist.batch_isend_irecv(ops):
        work.wait()


def all_to_all(x: torch.Tensor, split_dim: int, concat_dim: int, total: int, group) -> torch.Tensor:
    """Part r of split_dim goes to rank r; the parts received are concatenated along
    concat_dim (`total` long in all) in rank order. Parts of a sequence may differ by one
    token: chunks are padded to one shape for the exchange (gloo needs that) and trimmed."""
    n, rank = dist.get_world_size(group), dist.get_rank(group)
    split_parts = split_sizes(x.shape[split_dim], n)
    concat_parts = split_sizes(total, n)
    x = _pad_to(x, concat_dim, max(concat_parts))
    inputs = [_pad_to(c, split_dim, max(split_parts)).contiguous() for c in x.tensor_split(n, dim=split_dim)]
    outputs = [torch.empty_like(inputs[0]) for _ in range(n)]
    _exchange(outputs, inputs, group)
    trimmed = [o.narrow(split_dim, 0, split_parts[rank]).narrow(concat_dim, 0, size) for o, size in zip(outputs, concat_parts)]
    return torch.cat(trimmed, dim=concat_dim)


def local_shard(x: torch.Tensor, dim: int, replicas: int, outer: int, group) -> torch.Tensor:
    """This rank's block of a replicated tensor along dim (no communication); each block is
    held by `replicas` consecutive ranks. With outer > 1, dim is outer x sequence x inner and
    each of the outer slices is split."""
    blocks = dist.get_world_size(group) // replicas
    index = dist.get_rank(group) // replicas
    if outer > 1:
        block = x.unflatten(dim, (outer, -1)).tensor_split(blocks, dim=dim + 1)[index].flatten(dim, dim + 1)
    else:
        block = x.tensor_split(blocks, dim=dim)[index]
    return block.clone(memory_format=torch.contiguous_format)  # its own storage, not a view of x


def place_shard(x: torch.Tensor, dim: int, replicas: int, outer: int, group) -> torch.Tensor:
    """Zeros of the whole shape with this rank's (equal-sized) block in place: a partial sum."""
    if outer > 1:
        return place_shard(x.unflatten(dim, (outer, -1)), dim + 1, replicas, 1, group).flatten(dim, dim + 1)
    blocks = dist.get_world_size(group) // replicas
    out = x.new_zeros(_resized(x, dim, x.shape[dim] * blocks))
    out.narrow(dim, (dist.get_rank(group) // replicas) * x.shape[dim], x.shape[dim]).copy_(x)
    return out


def to_partial(x: torch.Tensor, group) -> torch.Tensor:
    """A replicated tensor as a partial sum: rank 0 keeps it, the others contribute zeros."""
    return x.clone() if dist.get_rank(group) == 0 else torch.zeros_like(x)


# --- bucket collectives (ZeRO: ir/dist.py's gather_params_start/_wait, reduce_scatter_grads) ------
#
# Each rank's flat segment holds every member of the bucket in turn, padded to ceil(rows / n) rows
# (DTensor's Shard(0) chunk; a 0-dim member: one element). Under torch.chunk's cut, the first
# `full` ranks hold whole chunks, the next one the `rest` rows, the others none: so the padded
# segments, end to end, hold a member's rows in order.


def _cut(rows: int, n: int) -> tuple[int, int, int]:
    """(rows per chunk, ranks holding a whole chunk, rows of the next rank)."""
    size = -(-rows // n)
    full = rows // size if size else 0
    return size, full, rows - full * size


def _layout(shapes: list[torch.Size], n: int) -> tuple[list[int], list[int]]:
    """Each member's offset in a rank's flat segment, and its length there."""
    lengths = [_cut(s[0], n)[0] * s[1:].numel() if len(s) else 1 for s in shapes]
    offsets = [0]
    for length in lengths[:-1]:
        offsets.append(offsets[-1] + length)
    return offsets, lengths


def _copy_chunks(member: torch.Tensor, segments: torch.Tensor, to_segments: bool) -> None:
    """Copy a member's rows (`member`: [rows, ...], any strides) to or from its columns of every
    rank's segment (`segments`: [n, length]): one strided copy per run of whole chunks, no temporary."""
    n = segments.shape[0]
    rows, inner = member.shape[0], member.shape[1:]
    size, full, rest = _cut(rows, n)
    pieces = [(member[: full * size].unflatten(0, (full, size)), segments[:full].view(full, size, *inner))]
    if rest:
        pieces.append((member[full * size :], segments[full, : rest * inner.numel()].view(rest, *inner)))
    for mine, theirs in pieces:
        (theirs if to_segments else mine).copy_(mine if to_segments else theirs)


_NO_BASE_COLLECTIVES: set[str] = set()  # backends without all_gather_into_tensor / reduce_scatter_tensor


def _unsupported(err: RuntimeError, names: tuple[str, ...]) -> bool:
    return any(name in str(err) for name in names)


# Gathers in flight: buffer's data pointer -> the backend's work (the buffer is the program's
# value, so it lives until the wait, as the memory plan counts it).
_PENDING: dict[int, object] = {}


def gather_params_start(*shards: torch.Tensor, rows: list[int], group) -> torch.Tensor:
    """A [size, segment] buffer whose row r an asynchronous all-gather fills with rank r's shards
    (`rows`: the members' whole lengths along dim 0; this rank's row written here, in place)."""
    n, rank = dist.get_world_size(group), dist.get_rank(group)
    wholes = [torch.Size([r, *s.shape[1:]]) if s.dim() else s.shape for s, r in zip(shards, rows)]
    offsets, lengths = _layout(wholes, n)
    buffer = shards[0].new_zeros(n, sum(lengths))
    mine = buffer[rank]
    for shard, offset in zip(shards, offsets):
        mine[offset : offset + shard.numel()].copy_(shard.reshape(-1))
    backend = str(dist.get_backend(group))
    work = None
    if backend not in _NO_BASE_COLLECTIVES:
        try:
            work = dist.all_gather_into_tensor(_handed(buffer.view(-1)), _handed(mine), group=group, async_op=True)
        except RuntimeError as err:
            if not _unsupported(err, ("all_gather_into_tensor", "allgather_into_tensor", "_allgather_base")):
                raise
            _NO_BASE_COLLECTIVES.add(backend)
    if work is None:  # a list all-gather into the rows (the row of this rank is its own input)
        rows_out = [_handed(r) for r in buffer.unbind(0)]
        work = dist.all_gather(rows_out, _handed(mine.clone()), group=group, async_op=True)
    _PENDING[buffer.data_ptr()] = work
    return buffer


def gather_params_wait(buffer: torch.Tensor, shapes: list[list[int]], group):
    """The whole parameters (new contiguous tensors) once the gather of `buffer` is done; a 0-dim
    member comes back as rank 0 holds it. A tensor for one parameter, a tuple for several."""
    _PENDING.pop(buffer.data_ptr()).wait()
    n = buffer.shape[0]
    wholes = [torch.Size(s) for s in shapes]
    offsets, lengths = _layout(wholes, n)
    out = []
    for whole, offset, length in zip(wholes, offsets, lengths):
        if not len(whole):
            out.append(buffer[0, offset].clone())
            continue
        param = buffer.new_empty(whole)
        _copy_chunks(param, buffer[:, offset : offset + length], to_segments=False)
        out.append(param)
    return out[0] if len(out) == 1 else tuple(out)


def reduce_scatter_grads(*grads: torch.Tensor, divide: int, group):
    """This rank's Shard(0) rows of each gradient summed over the group, divided by `divide` (a
    0-dim gradient: the whole sum, on every rank). One reduce-scatter of the flat segments. A
    tensor for one gradient, a tuple for several."""
    n, rank = dist.get_world_size(group), dist.get_rank(group)
    offsets, lengths = _layout([g.shape for g in grads], n)
    flat = grads[0].new_zeros(n, sum(lengths))
    for grad, offset, length in zip(grads, offsets, lengths):
        if grad.dim() == 0:  # in every rank's segment: every rank receives the sum
            flat[:, offset] = grad
        else:
            _copy_chunks(grad, flat[:, offset : offset + length], to_segments=True)
    reduced = flat.new_empty(flat.shape[1])
    backend = str(dist.get_backend(group))
    if backend not in _NO_BASE_COLLECTIVES:
        try:
            dist.reduce_scatter_tensor(_handed(reduced), _handed(flat.view(-1)), group=group)
        except RuntimeError as err:
            if not _unsupported(err, ("reduce_scatter_tensor", "_reduce_scatter_base")):
                raise
            _NO_BASE_COLLECTIVES.add(backend)
    if backend in _NO_BASE_COLLECTIVES:
        dist.all_reduce(_handed(flat), group=group)
        reduced.copy_(flat[rank])
    shards = []
    for grad, offset in zip(grads, offsets):
        if grad.dim() == 0:
            shards.append(reduced[offset] / divide)
            continue
        local = chunk_sizes(grad.shape[0], n)[rank]
        shards.append(reduced[offset : offset + local * grad.shape[1:].numel()].view(local, *grad.shape[1:]) / divide)
    return shards[0] if len(shards) == 1 else tuple(shards)
