"""Collectives the generated program calls, over torch.distributed (gloo on CPU, NCCL on NVIDIA,
RCCL on AMD). Each returns a new tensor and leaves its input untouched.

Every tensor handed to torch.distributed is a contiguous buffer of a dtype NCCL takes: NCCL
refuses what gloo accepts (permuted strides, most obviously), so with `AUTOSP_NCCL_RULES=1` (the
test suite sets it) every call checks NCCL's rules first and fails where NCCL would, on gloo.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from autosp.common.errors import AutoSPError
from autosp.common.sizes import chunk_sizes, split_sizes

_REDUCE = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}

# What ProcessGroupNCCL maps to an ncclDataType_t (bool travels as uint8).
NCCL_DTYPES = frozenset({
    torch.int8, torch.uint8, torch.int32, torch.int64, torch.float16, torch.float32, torch.float64,
    torch.bfloat16, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2,
})


def nccl_rules() -> bool:
    return os.environ.get("AUTOSP_NCCL_RULES", "0") not in ("", "0")


def check_nccl(call: str, *tensors: torch.Tensor, same_as: torch.Tensor | None = None) -> None:
    """NCCL's rules for the tensors of one call (with AUTOSP_NCCL_RULES=1): dense, contiguous, a
    dtype NCCL has, one device; `same_as`: every tensor must also match its dtype and size
    (list collectives)."""
    if not nccl_rules():
        return
    for t in tensors:
        if t.layout != torch.strided or not t.is_contiguous():
            raise AutoSPError(
                f"NCCL rule: {call} needs contiguous dense tensors, got shape {list(t.shape)} strides {list(t.stride())} "
                f"({t.layout}); NCCL would refuse it (a bug in AutoSP's collectives: please report it)"
            )
        if t.dtype not in NCCL_DTYPES:
            raise AutoSPError(f"NCCL rule: {call} cannot send {t.dtype} (NCCL has no such type)")
        if same_as is not None and (t.dtype != same_as.dtype or t.numel() != same_as.numel() or t.device != same_as.device):
            raise AutoSPError(
                f"NCCL rule: {call} needs tensors of one dtype, size and device; got {t.dtype} x {t.numel()} on {t.device} "
                f"beside {same_as.dtype} x {same_as.numel()} on {same_as.device}"
            )


def check_nccl_sizes(call: str, whole: torch.Tensor, part: torch.Tensor, group) -> None:
    """all_gather_into_tensor / reduce_scatter_tensor: the whole is the group's size times the part."""
    check_nccl(call, whole, part)
    if nccl_rules() and (whole.numel() != part.numel() * dist.get_world_size(group) or whole.dtype != part.dtype):
        raise AutoSPError(
            f"NCCL rule: {call} needs the whole buffer to be {dist.get_world_size(group)} x its part of one dtype, "
            f"got {whole.numel()} ({whole.dtype}) and {part.numel()} ({part.dtype})"
        )


def _handed(x: torch.Tensor) -> torch.Tensor:
    """What a backend may keep after the call: a new tensor object on x's storage that refers to
    no other tensor (a view would keep its base). The backend's work can outlive the call on its
    own thread; holding x (or a view of x) keeps x's Python object, and so the memory tracker's
    count of its storage, alive for a time that depends on that thread."""
    return x.detach()


_NO_BASE_COLLECTIVES: set[str] = set()  # backends without all_gather_into_tensor / reduce_scatter_tensor
# One-buffer collectives under their current names (torch 2.13 renamed them `*_single`).
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _unsupported(err: RuntimeError, names: tuple[str, ...]) -> bool:
    return any(name in str(err) for name in names)


def _reduce_scatter_into(mine: torch.Tensor, stacked: torch.Tensor, reduce: str, group) -> bool:
    """One reduce_scatter_tensor of `stacked` ([n, ...], contiguous) into `mine` (its row shape),
    as flat buffers (NCCL counts elements, gloo compares shapes); False where the backend has
    none (remembered: the caller all-reduces instead)."""
    check_nccl_sizes("reduce_scatter_tensor", stacked, mine, group)
    backend = str(dist.get_backend(group))
    if backend in _NO_BASE_COLLECTIVES:
        return False
    try:
        _reduce_scatter_flat(_handed(mine.view(-1)), _handed(stacked.view(-1)), op=_REDUCE[reduce], group=group)
        return True
    except RuntimeError as err:
        if not _unsupported(err, ("reduce_scatter_tensor", "reduce_scatter_single", "_reduce_scatter_base")):
            raise
        _NO_BASE_COLLECTIVES.add(backend)
        return False


def all_reduce(x: torch.Tensor, reduce: str, group) -> torch.Tensor:
    out = x.clone(memory_format=torch.contiguous_format)  # NCCL takes contiguous buffers only
    check_nccl("all_reduce", out)
    dist.all_reduce(_handed(out), op=_REDUCE[reduce], group=group)
    return out


def average_in_place(grads: list[torch.Tensor], replicas: int, group) -> list[torch.Tensor]:
    """Each gradient summed over the group (the DP replicas) and divided by `replicas`: in place
    where the gradient is contiguous, else into a contiguous copy (returned in its place)."""
    out = []
    for grad in grads:
        buffer = grad if grad.is_contiguous() else grad.contiguous()
        check_nccl("all_reduce", buffer)
        dist.all_reduce(buffer, group=group)
        out.append(buffer.div_(replicas))
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
    padded = _pad_to(x, dim, max(sizes)).contiguous()  # equal shapes: pad, then trim each part
    parts = [torch.empty(padded.shape, dtype=padded.dtype, device=padded.device) for _ in sizes]
    check_nccl("all_gather", *parts, padded, same_as=padded)
    dist.all_gather(parts, _handed(padded), group=group)
    return torch.cat([p.narrow(dim, 0, size) for p, size in zip(parts, sizes)], dim=dim)


def reduce_scatter(x: torch.Tensor, reduce: str, dim: int, outer: int, group) -> torch.Tensor:
    """This rank's part of dim (cut as local_shard cuts it) of x reduced over the group: one
    reduce_scatter_tensor of the parts stacked (each padded to the longest) where the backend
    has it, else an all-reduce and this rank's part of it."""
    n, rank = dist.get_world_size(group), dist.get_rank(group)
    if str(dist.get_backend(group)) not in _NO_BASE_COLLECTIVES:
        blocks = x.unflatten(dim, (outer, -1)) if outer > 1 else x
        at = dim + 1 if outer > 1 else dim
        parts = blocks.tensor_split(n, dim=at)
        longest = parts[0].shape[at]
        stacked = torch.stack([_pad_to(p, at, longest) for p in parts])  # [n, ...]: a new contiguous buffer
        mine = stacked.new_empty(stacked.shape[1:])
        if _reduce_scatter_into(mine, stacked, reduce, group):
            mine = mine.narrow(at, 0, parts[rank].shape[at])
            return (mine.flatten(dim, dim + 1) if outer > 1 else mine).contiguous()
    return local_shard(all_reduce(x, reduce, group), dim, 1, outer, group)


_NO_ALLTOALL: set[str] = set()  # backends found without all_to_all (gloo before torch 2.13)


def _exchange(outputs: list[torch.Tensor], inputs: list[torch.Tensor], group) -> None:
    """all_to_all of equal-shaped chunks; point-to-point sends where the backend has none."""
    backend = str(dist.get_backend(group))
    if backend not in _NO_ALLTOALL:
        check_nccl("all_to_all", *outputs, *inputs, same_as=inputs[0])
        try:
            dist.all_to_all(outputs, [_handed(x) for x in inputs], group=group)
            return
        except RuntimeError as err:
            if "alltoall" not in str(err).lower():
                raise
            _NO_ALLTOALL.add(backend)
    check_nccl("batch_isend_irecv", *outputs, *inputs)
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
    check_nccl_sizes("all_gather_into_tensor", buffer, mine, group)
    if backend not in _NO_BASE_COLLECTIVES:
        try:
            work = _all_gather_flat(_handed(buffer.view(-1)), _handed(mine), group=group, async_op=True)
        except RuntimeError as err:
            if not _unsupported(err, ("all_gather_into_tensor", "all_gather_single", "allgather_into_tensor", "_allgather_base")):
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
    if not _reduce_scatter_into(reduced, flat, "sum", group):
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
