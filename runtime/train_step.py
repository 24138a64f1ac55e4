"""`TrainStep`: runs a generated per-rank program and hands gradients to the user's optimizer.

    loss = step(input_ids, labels)   # forward + backward; grads accumulate into param.grad

The parameters are the very tensors of the exported program's state_dict (the user's model
parameters), so `torch.optim` optimizers built on the model work unchanged.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from autosp.runtime.collectives import no_tracking as collectives_no_tracking
from autosp.runtime.errors import AutoSPError


@dataclass(frozen=True)
class InputSpec:
    """One argument of the generated `train_step`."""

    kind: str  # parameter / buffer / constant / input
    name: str  # state_dict key, or the user input's name
    shape: tuple[int, ...]
    dtype: torch.dtype


def load_program(path: Path):
    """Import a generated module from its file, so tracebacks show the generated lines."""
    spec = importlib.util.spec_from_file_location(f"autosp_generated_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class TrainStep:
    def __init__(
        self,
        program_path: Path,
        inputs: list[InputSpec],
        grad_of: list[str],
        state: dict[str, torch.Tensor],
        groups: dict[str, object] | None = None,
        report: str = "",
        dp_group=None,
        dp_size: int = 1,
        predicted_peak_bytes: int = 0,
        predicted_tracked_bytes: int = 0,
    ):
        self.program_path = Path(program_path)
        # This rank's predicted peak: with the kernels' scratch, and without it (what
        # measure_memory sees; torch.cuda.max_memory_allocated sees the former).
        self.predicted_peak_bytes = predicted_peak_bytes
        self.predicted_tracked_bytes = predicted_tracked_bytes
        self.inputs = inputs
        self.grad_of = grad_of
        self.report = report
        self.dp_group, self.dp_size = dp_group, dp_size
        missing = [s.name for s in inputs if s.kind != "input" and s.name not in state]
        if missing:
            raise AutoSPError(f"the program needs state the exported program lacks: {', '.join(missing)}")
        self._state = [state[s.name] if s.kind != "input" else None for s in inputs]
        self.user_inputs = [s for s in inputs if s.kind == "input"]
        by_name = {s.name: t for s, t in zip(inputs, self._state) if s.kind == "parameter"}
        self.parameters = [by_name[name] for name in grad_of]
        devices = {t.device for t in self._state if t is not None}
        if len(devices) > 1:
            raise AutoSPError(f"parameters and buffers are on several devices ({sorted(map(str, devices))}); move the model to one")
        self.device = devices.pop() if devices else torch.device("cpu")
        self.program = load_program(self.program_path)
        self.program.DEVICE = self.device
        self.program.GROUPS.update(groups or {})

    @property
    def source(self) -> str:
        """The generated per-rank Python program."""
        return self.program_path.read_text()

    def _check(self, args: tuple) -> None:
        if len(args) != len(self.user_inputs):
            raise AutoSPError(
                f"the step takes {len(self.user_inputs)} inputs "
                f"({', '.join(s.name for s in self.user_inputs)}), got {len(args)}"
            )
        for arg, spec in zip(args, self.user_inputs):
            if not isinstance(arg, torch.Tensor):
                raise AutoSPError(f"input '{spec.name}' must be a tensor, got {type(arg).__name__}")
            if tuple(arg.shape) != spec.shape or arg.dtype != spec.dtype:
                raise AutoSPError(
                    f"input '{spec.name}' is {str(arg.dtype).removeprefix('torch.')}{list(arg.shape)} but the step "
                    f"was compiled for {str(spec.dtype).removeprefix('torch.')}{list(spec.shape)}; "
                    "export and compile again for this shape"
                )

    def _arguments(self, args: tuple) -> list[torch.Tensor]:
        """The program's arguments: the state in order, the user's inputs in their places."""
        self._check(args)
        user = iter(a.to(self.device) for a in args)
        return [next(user) if t is None else t.detach() for t in self._state]

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        loss, *grads = self.program.train_step(*self._arguments(args))
        self._reduce_and_store(grads)
        return loss.detach()

    def measure_memory(self, *args: torch.Tensor) -> int:
        """Run one step while tracking the storages the program holds; returns the peak bytes
        (arguments included). Gradients are stored as by a normal call."""
        from autosp.runtime.memory import MemoryTracker

        call_args = self._arguments(args)
        tracker = MemoryTracker(call_args)
        self.program.TRACK = tracker.track
        try:
            loss, *grads = self.program.train_step(*call_args)
        finally:
            self.program.TRACK = collectives_no_tracking
        self._reduce_and_store(grads)
        del loss
        return tracker.peak_bytes

    def _reduce_and_store(self, grads: list[torch.Tensor]) -> None:
        if self.dp_size > 1:  # DDP semantics: the mean over replicas of each replica's gradient
            import torch.distributed as dist

            for grad in grads:
                dist.all_reduce(grad, group=self.dp_group)
                grad.div_(self.dp_size)
        with torch.no_grad():
            for param, grad in zip(self.parameters, grads):
                if param.grad is None:
                    grad = grad.detach()
                    # A view would keep its whole base alive; strides should match the param.
                    if grad._base is not None or grad.stride() != param.stride():
                        grad = torch.empty_like(param).copy_(grad)
                    param.grad = grad
                else:
                    param.grad += grad
