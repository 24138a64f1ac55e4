"""What an optimizer keeps per parameter element between steps, for the memory plan: the program
never holds it, but the device does (the user's optimizer allocates it at its first step).

A kind is a name from OPTIMIZER_STATE or a number of bytes per parameter element ("12"). State
is counted for the trainable parameters this rank holds (its shards when the state is sharded).
`optimizer_kind` maps a torch.optim optimizer (class or instance) to its kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autosp.common.errors import AutoSPError


@dataclass(frozen=True)
class StateSize:
    per_param_bytes: int = 0  # copies in the parameter's own dtype (torch keeps moments so)
    fixed_bytes: int = 0  # bytes per element whatever the parameter dtype (fp32 moments, master weights)
    about: str = ""

    def bytes_for(self, elements: int, element_bytes: int) -> int:
        return elements * (self.per_param_bytes * element_bytes + self.fixed_bytes)


OPTIMIZER_STATE: dict[str, StateSize] = {
    "none": StateSize(about="not planned (compile was not told the optimizer)"),
    "sgd": StateSize(about="plain SGD: no state"),
    "sgd-momentum": StateSize(1, about="SGD with momentum: one buffer"),
    "adamw": StateSize(2, about="torch Adam/AdamW: two moments in the parameter's dtype"),
    "adamw-amsgrad": StateSize(3, about="torch Adam/AdamW with amsgrad: three buffers"),
    "adamw-fp32": StateSize(0, 8, about="AdamW with fp32 moments"),
    "adamw-master": StateSize(0, 12, about="mixed-precision AdamW: fp32 master weights and moments"),
    "adagrad": StateSize(1, about="Adagrad: the sum of squares"),
    "rmsprop": StateSize(1, about="RMSprop: the square average"),
}
OPTIMIZER_STATE["adam"] = OPTIMIZER_STATE["adamw"]

# torch.optim classes -> their kind, from their hyperparameters (an instance's, or the defaults).
_CLASSES = {
    "SGD": lambda h: "sgd-momentum" if h.get("momentum", 0) else "sgd",
    "Adam": lambda h: "adamw-amsgrad" if h.get("amsgrad") else "adamw",
    "AdamW": lambda h: "adamw-amsgrad" if h.get("amsgrad") else "adamw",
    "Adamax": lambda h: "adamw",
    "NAdam": lambda h: "adamw",
    "RAdam": lambda h: "adamw",
    "Adadelta": lambda h: "adamw",  # square average and accumulated delta
    "Adagrad": lambda h: "adagrad",
    "RMSprop": lambda h: str(1 + bool(h.get("momentum", 0)) + bool(h.get("centered"))) + "x",
}


def state_size(kind: str) -> StateSize:
    """The state of a kind: a name, a number of bytes per element ("12"), or "<n>x" (n copies in
    the parameter's dtype)."""
    if kind in OPTIMIZER_STATE:
        return OPTIMIZER_STATE[kind]
    try:
        if kind.endswith("x"):
            copies = int(kind[:-1])
            if copies >= 0:
                return StateSize(copies, about=f"{copies} buffers in the parameter's dtype")
        else:
            size = float(kind)
            if size >= 0 and size == int(size):
                return StateSize(0, int(size), about=f"{int(size)} bytes per parameter element")
    except ValueError:
        pass
    raise AutoSPError(
        f"optimizer={kind!r}: give one of {', '.join(sorted(OPTIMIZER_STATE))}, a torch.optim optimizer, or the bytes "
        "of state per parameter element (e.g. 12 for fp32 master weights and AdamW moments)"
    )


def optimizer_kind(optimizer) -> str:
    """The kind for compile's `optimizer=`: a kind name, bytes per element, or a torch.optim
    optimizer class or instance."""
    if optimizer is None:
        return "none"
    if isinstance(optimizer, bool):
        raise AutoSPError(f"optimizer={optimizer!r}: give the optimizer (e.g. 'adamw' or torch.optim.AdamW)")
    if isinstance(optimizer, (int, float)):
        kind = repr(optimizer)
    elif isinstance(optimizer, str):
        kind = optimizer.strip().lower()
    else:
        cls = optimizer if isinstance(optimizer, type) else type(optimizer)
        if not issubclass(cls, torch.optim.Optimizer):
            raise AutoSPError(f"optimizer={optimizer!r}: give a kind name, bytes per element or a torch.optim optimizer")
        hyper = optimizer.defaults if not isinstance(optimizer, type) else {}
        mapped = next((f(hyper) for c in cls.__mro__ if (f := _CLASSES.get(c.__name__))), None)
        if mapped is None:
            raise AutoSPError(
                f"optimizer={cls.__name__}: AutoSP does not know how much state it keeps; give the bytes of state per "
                f"parameter element (e.g. optimizer=8) or one of {', '.join(sorted(OPTIMIZER_STATE))}"
            )
        kind = mapped
    state_size(kind)  # an unknown kind fails here, naming the choices
    return kind
