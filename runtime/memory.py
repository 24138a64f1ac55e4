"""Measuring the memory a generated program actually holds, on any device (CPU included).

The program calls `track(...)` on each op's results. A storage is counted once, from the first
tensor seen on it until the last tensor on it is garbage-collected (the program deletes values
after their last use, so that is when the storage is freed). Storages of the step's arguments
are the caller's and are counted as held for the whole step.
"""

from __future__ import annotations

import weakref

import torch


class MemoryTracker:
    def __init__(self, held: list[torch.Tensor], not_device: list[torch.Tensor] = ()):
        """`held`: the step's arguments (counted for the whole step); `not_device`: memory that is
        not the device's (the host pool of offloaded values, which on a CPU shares its kind)."""
        self.baseline = {t.untyped_storage().data_ptr() for t in held}
        self.elsewhere = {t.untyped_storage().data_ptr() for t in not_device}
        self.held_bytes = sum(t.untyped_storage().nbytes() for t in held)
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, tensors alive]
        self.bytes = 0
        self.peak = 0

    def _release(self, pointer: int) -> None:
        entry = self.live[pointer]
        entry[1] -= 1
        if entry[1] == 0:
            self.bytes -= entry[0]
            del self.live[pointer]

    def track(self, *values) -> None:
        for value in values:
            if isinstance(value, (list, tuple)):
                self.track(*value)
                continue
            if not isinstance(value, torch.Tensor):
                continue
            storage = value.untyped_storage()
            pointer = storage.data_ptr()
            if pointer in self.baseline or pointer in self.elsewhere or storage.nbytes() == 0:
                continue
            entry = self.live.setdefault(pointer, [storage.nbytes(), 0])
            if entry[1] == 0:
                self.bytes += entry[0]
                self.peak = max(self.peak, self.bytes)
            entry[1] += 1
            weakref.finalize(value, self._release, pointer)

    @property
    def peak_bytes(self) -> int:
        """The most the step held at once, arguments included."""
        return self.held_bytes + self.peak

