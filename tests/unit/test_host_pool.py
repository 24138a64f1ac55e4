"""The host memory of offloaded values on a GPU: page-locked in place to the byte the plan asks
(cudaHostRegister on ordinary memory; torch's pinned allocator rounds up to a power of two),
unlocked when freed, and a failure to lock refused with one line. Checked with a stand-in for
the CUDA runtime (no GPU here)."""

import gc

import pytest
import torch

from autosp.common.errors import AutoSPError
from autosp.runtime.offload import page_locked


class FakeCudart:
    def __init__(self, status=0):
        self.status, self.registered, self.unregistered = status, [], []

    def cudaHostRegister(self, pointer, nbytes, flags):  # noqa: N802 (the CUDA runtime's name)
        self.registered.append((pointer, nbytes, flags))
        return self.status

    def cudaHostUnregister(self, pointer):  # noqa: N802
        self.unregistered.append(pointer)
        return 0


def test_exact_size_locked_in_place_and_unlocked_when_freed():
    cudart = FakeCudart()
    nbytes = 9 * 2**20 + 12345  # a plan's size: no power of two
    buffer = page_locked(nbytes, cudart)
    assert buffer.numel() == nbytes and buffer.dtype == torch.uint8 and not buffer.is_pinned()
    assert cudart.registered == [(buffer.data_ptr(), nbytes, 0)] and bool((buffer == 0).all())
    pointer = buffer.data_ptr()
    del buffer
    gc.collect()
    assert cudart.unregistered == [pointer]


def test_refused_when_the_pages_cannot_be_locked():
    with pytest.raises(AutoSPError, match=r"cannot page-lock 0\.00 GiB .* returned 2.*host_memory_budget=0"):
        page_locked(4096, FakeCudart(status=2))
