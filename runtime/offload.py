"""Values moved to the host's memory and back: what the generated program calls for the `host`
dialect (the values remat offloads).

`HostPool` is the host memory of one compiled step, allocated once, as large as the compiler
planned (to the byte: ordinary pageable memory, its pages touched by every CPU thread, then
page-locked in place with cudaHostRegister, so the copies are asynchronous DMA; torch's pinned
allocator would round a 65 GiB plan up to 128 GiB), with each offloaded value at its own offset.
On a GPU the copies to the host run on one side stream and the copies back on another, each
copy carrying an event: a `*_start` returns at once, the matching `*_wait` makes the compute
stream wait for the copy, so the copy overlaps whatever the program runs in between, and a
prefetch never queues behind an offload. On the CPU the copies are plain copies into the pool,
which the memory tracker does not count as device memory.
"""

from __future__ import annotations

import weakref

import torch

from autosp.common.errors import AutoSPError

_EVENT = "_autosp_copy_done"  # the copy's CUDA/HIP event, on the tensor it fills


class StallTimer:
    """How long the compute stream waits for copies (GPU): timing events either side of each
    wait; the wait ends when the copy is done, the event before it when the compute queued
    before it is, so their distance is the copy time the compute did not hide. Install it as
    `offload.STALLS` to measure (tests/gpu_offload.py); seconds once the stream is synchronized."""

    def __init__(self):
        self.waits: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = {"out": [], "in": []}

    def seconds(self) -> dict[str, float]:
        torch.cuda.synchronize()
        return {way: sum(a.elapsed_time(b) for a, b in pairs) / 1e3 for way, pairs in self.waits.items()}


STALLS: StallTimer | None = None


def page_locked(nbytes: int, cudart=None) -> torch.Tensor:
    """`nbytes` of host memory, page-locked for DMA in place (cudaHostRegister; hipHostRegister
    under ROCm, through the same binding) and unlocked when the tensor is freed. Exact size: no
    rounding to a power of two. Its pages are touched first by all of torch's CPU threads
    (locking faults them in one thread otherwise: tens of seconds per 64 GiB)."""
    cudart = cudart or torch.cuda.cudart()
    buffer = torch.empty(nbytes, dtype=torch.uint8)
    buffer.zero_()
    pointer = buffer.data_ptr()
    status = cudart.cudaHostRegister(pointer, nbytes, 0)
    if int(status) != 0:
        raise AutoSPError(
            f"cannot page-lock {nbytes / 2**30:.2f} GiB of host memory for offloaded values (cudaHostRegister returned "
            f"{int(status)}); give a smaller host_memory_budget, or host_memory_budget=0 to keep everything on the device"
        )
    weakref.finalize(buffer, _unregister, cudart, pointer)
    return buffer


def _unregister(cudart, pointer: int) -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # no copy may still be reading or writing the pages
    cudart.cudaHostUnregister(pointer)


class HostPool:
    def __init__(self, nbytes: int, device: torch.device):
        self.device = device
        self.on_gpu = device.type == "cuda"
        self.buffer = page_locked(nbytes) if self.on_gpu else torch.empty(nbytes, dtype=torch.uint8)
        # Offloads and prefetches on streams of their own: a prefetch never waits behind an offload.
        self.streams = {way: torch.cuda.Stream(device) for way in ("out", "in")} if self.on_gpu else {}

    def view(self, offset: int, like: torch.Tensor) -> torch.Tensor:
        """The pool's bytes at `offset` seen as a tensor laid out as `like` (its shape, dtype and
        strides: a value comes back with the layout it left with, so the ops reading it compute
        the same bits). `like` is a whole dense storage (what remat offloads), maybe permuted."""
        nbytes = like.numel() * like.element_size()
        flat = self.buffer[offset : offset + nbytes].view(like.dtype)
        return flat.as_strided(like.shape, like.stride())

    def copy(self, target: torch.Tensor, source: torch.Tensor, way: str) -> None:
        """target <- source: on the `way` ("out" to the host, "in" back) stream, after what the
        compute stream has queued (GPU)."""
        if not self.on_gpu:
            target.copy_(source)
            return
        stream = self.streams[way]
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            target.copy_(source, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        setattr(target, _EVENT, done)


def _wait(tensor: torch.Tensor, way: str) -> None:
    done = getattr(tensor, _EVENT, None)
    if done is None:
        return
    stream = torch.cuda.current_stream(tensor.device)
    if STALLS is None:
        stream.wait_event(done)
        return
    before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    before.record(stream)
    stream.wait_event(done)
    after.record(stream)
    STALLS.waits[way].append((before, after))


def offload_start(value: torch.Tensor, *, offset: int, pool: HostPool) -> torch.Tensor:
    """Start copying `value` into the pool at `offset`; returns the host tensor it fills."""
    host = pool.view(offset, value)
    pool.copy(host, value, "out")
    return host


def offload_wait(value: torch.Tensor, host: torch.Tensor) -> None:
    """`value`'s copy to the host is done (for the compute stream): its memory may be reused."""
    _wait(host, "out")


def prefetch_start(host: torch.Tensor, *, pool: HostPool) -> torch.Tensor:
    """A device tensor, and the copy of `host` into it started."""
    value = torch.empty_strided(host.shape, host.stride(), dtype=host.dtype, device=pool.device)
    pool.copy(value, host, "in")
    return value


def prefetch_wait(value: torch.Tensor) -> torch.Tensor:
    """`value` once its copy from the host is done (for the compute stream)."""
    _wait(value, "in")
    return value
