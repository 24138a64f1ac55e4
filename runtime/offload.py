"""Values moved to the host's memory and back: what the generated program calls for the `host`
dialect (the values remat offloads).

`HostPool` is the host memory of one compiled step, allocated once (pinned, so the copies are
asynchronous DMA), as large as the compiler planned; each offloaded value has its own offset in
it. On a GPU the copies run on the pool's side stream and each carries an event: a `*_start`
returns at once, the matching `*_wait` makes the compute stream wait for the copy, so the copy
overlaps whatever the program runs in between. On the CPU the copies are plain copies into the
pool, which the memory tracker does not count as device memory.
"""

from __future__ import annotations

import torch

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


class HostPool:
    def __init__(self, nbytes: int, device: torch.device):
        self.device = device
        self.on_gpu = device.type == "cuda"
        self.buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.on_gpu)
        self.stream = torch.cuda.Stream(device) if self.on_gpu else None

    def view(self, offset: int, like: torch.Tensor) -> torch.Tensor:
        """The pool's bytes at `offset` seen as a tensor laid out as `like` (its shape, dtype and
        strides: a value comes back with the layout it left with, so the ops reading it compute
        the same bits). `like` is a whole dense storage (what remat offloads), maybe permuted."""
        nbytes = like.numel() * like.element_size()
        flat = self.buffer[offset : offset + nbytes].view(like.dtype)
        return flat.as_strided(like.shape, like.stride())

    def copy(self, target: torch.Tensor, source: torch.Tensor) -> None:
        """target <- source: on the side stream after what the compute stream has queued (GPU)."""
        if not self.on_gpu:
            target.copy_(source)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            target.copy_(source, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
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
    pool.copy(host, value)
    return host


def offload_wait(value: torch.Tensor, host: torch.Tensor) -> None:
    """`value`'s copy to the host is done (for the compute stream): its memory may be reused."""
    _wait(host, "out")


def prefetch_start(host: torch.Tensor, *, pool: HostPool) -> torch.Tensor:
    """A device tensor, and the copy of `host` into it started."""
    value = torch.empty_strided(host.shape, host.stride(), dtype=host.dtype, device=pool.device)
    pool.copy(value, host)
    return value


def prefetch_wait(value: torch.Tensor) -> torch.Tensor:
    """`value` once its copy from the host is done (for the compute stream)."""
    _wait(value, "in")
    return value
