"""A model whose parameters `autosp.compile(shard=...)` replaced by DTensor shards, outside its
compiled steps.

- Whole tensors replaced: an optimizer built on them before compile is refused at its step
  (it would train tensors no step writes to); a later compile of a program that still holds
  them (exported before sharding) takes the model's DTensors instead.
- An eager forward (evaluation, under `torch.no_grad()`) gathers the whole parameters of the
  module it calls for its duration and puts the shards back after, as FSDP2's hooks do;
  collective, so every rank runs it. With gradients enabled it is refused: its gradients
  would not be averaged over the ranks.
- `stand_ins(model)` swaps each shard for a whole-shaped fake tensor (no memory, no gather),
  registered as replaced by that shard, for `autosp.export`: torch.export traces the model as
  before sharding, and compile(shard=...) trains the model's DTensors.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import torch

from autosp.common.errors import AutoSPError

# id(whole tensor) -> (weakref to it, weakref to the DTensor parameter that replaced it).
_REPLACED: dict[int, tuple[weakref.ref, weakref.ref]] = {}
_SHARDS: dict[int, weakref.ref] = {}  # id -> the DTensor parameters shard_parameters made
_GATHERING = threading.local()  # .depth: hooked forwards running inside the one that gathered
_OPTIMIZER_HOOKED = False
_MODULES_HOOKED: weakref.WeakSet = weakref.WeakSet()


def replaced(tensor: torch.Tensor) -> bool:
    entry = _REPLACED.get(id(tensor))
    return entry is not None and entry[0]() is tensor


def replacement(tensor: torch.Tensor):
    """The DTensor parameter that was put in `tensor`'s place (alive), or None."""
    return _REPLACED[id(tensor)][1]() if replaced(tensor) else None


def _refuse_stale_optimizer(optimizer, args, kwargs) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            if replaced(param):
                raise AutoSPError(
                    f"{type(optimizer).__name__} holds a parameter that autosp.compile(shard=...) replaced by its DTensor "
                    "shard: it would update the old whole tensor, which no step trains; create the optimizer after compile "
                    "(torch.optim.AdamW(model.parameters()))"
                )


def remember_replaced(tensor: torch.Tensor, by: torch.Tensor) -> None:
    global _OPTIMIZER_HOOKED
    key = id(tensor)
    _REPLACED[key] = (weakref.ref(tensor, lambda _, key=key: _REPLACED.pop(key, None)), weakref.ref(by))
    _SHARDS[id(by)] = weakref.ref(by, lambda _, key=id(by): _SHARDS.pop(key, None))
    if not _OPTIMIZER_HOOKED:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        register_optimizer_step_pre_hook(_refuse_stale_optimizer)
        _OPTIMIZER_HOOKED = True


def _is_shard(tensor: torch.Tensor) -> bool:
    entry = _SHARDS.get(id(tensor))
    return entry is not None and entry() is tensor


def _shard_slots(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    return [(m, name, p) for m in module.modules() for name, p in m._parameters.items() if p is not None and _is_shard(p)]


def _gather(module: torch.nn.Module, args) -> None:
    depth = getattr(_GATHERING, "depth", 0)
    if depth:
        _GATHERING.depth = depth + 1
        return
    if torch.compiler.is_exporting():
        from torch.distributed.tensor import DTensor

        if any(isinstance(p, DTensor) for p in module.parameters()):
            raise AutoSPError(
                f"{type(module).__name__}'s parameters are DTensor shards (autosp.compile(shard=...)): torch.export cannot "
                "trace them; export it with autosp.export(model, args) (torch.export.export's arguments)"
            )
        return
    slots = _shard_slots(module)
    if slots and torch.is_grad_enabled() and any(p.requires_grad for _, _, p in slots):
        raise AutoSPError(
            f"an eager forward of {type(module).__name__}, whose parameters autosp.compile(shard=...) sharded, with "
            "gradients enabled: its gradients would not be averaged over the ranks; evaluate under torch.no_grad() "
            "(it gathers the whole parameters) and train with the compiled step"
        )
    whole: dict[int, torch.Tensor] = {}  # tied parameters: one gather
    for owner, name, shard in slots:
        if id(shard) not in whole:
            whole[id(shard)] = shard.full_tensor()
        owner._parameters[name] = whole[id(shard)]
    _GATHERING.depth = 1
    _GATHERING.slots = slots


def _put_shards_back(module: torch.nn.Module, args, output) -> None:
    depth = getattr(_GATHERING, "depth", 0)
    if depth > 1:
        _GATHERING.depth = depth - 1
        return
    if depth == 1:
        for owner, name, shard in _GATHERING.slots:
            owner._parameters[name] = shard
        _GATHERING.depth, _GATHERING.slots = 0, []


_gather.autosp_own_hook = True
_put_shards_back.autosp_own_hook = True


def gather_in_eager_forwards(modules: list[torch.nn.Module]) -> None:
    """Hooks on `modules` (the ones holding or containing sharded parameters): the outermost
    forward called gathers its parameters, nested ones find them gathered."""
    for module in modules:
        if module not in _MODULES_HOOKED:
            module.register_forward_pre_hook(_gather, prepend=True)
            module.register_forward_hook(_put_shards_back, always_call=True)
            _MODULES_HOOKED.add(module)


@contextlib.contextmanager
def stand_ins(model: torch.nn.Module) -> Iterator[None]:
    """Each sharded parameter of `model` replaced, for the block, by a whole-shaped fake tensor
    on its device (no memory) that remembers its shard."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    made: dict[int, torch.nn.Parameter] = {}  # tied parameters: one stand-in
    slots = _shard_slots(model)
    try:
        for owner, name, shard in slots:
            if id(shard) not in made:
                with mode:
                    fake = torch.empty(shard.shape, dtype=shard.dtype, device=shard.device)
                made[id(shard)] = torch.nn.Parameter(fake, requires_grad=shard.requires_grad)
                remember_replaced(made[id(shard)], shard)
            owner._parameters[name] = made[id(shard)]
        yield
    finally:
        for owner, name, shard in slots:
            owner._parameters[name] = shard
