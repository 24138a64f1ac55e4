"""AutoSP's operators as torch custom ops, so torch.export and AOT autograd keep attention as
one op forward (`autosp::attention`) and one op backward (`autosp::attention_backward`), and the
LM head + cross-entropy as one op (`autosp::linear_cross_entropy`) whose backward is two scalings."""

from __future__ import annotations

import torch

from autosp.runtime import kernels
from autosp.common.precision import accumulation_dtype


@torch.library.custom_op("autosp::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    window: int,
    scale: float,
    documents: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    return kernels.attention_forward(q, k, v, causal, window, scale, documents)


@attention.register_fake
def _attention_fake(q, k, v, causal, window, scale, documents=None):
    b, hq, sq, _ = q.shape
    out = q.new_empty(b, hq, sq, v.shape[3])
    return out, q.new_empty(b, hq, sq, dtype=accumulation_dtype(q.dtype))


@torch.library.custom_op("autosp::attention_backward", mutates_args=())
def attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    window: int,
    scale: float,
    documents: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernels.attention_backward(grad_out, q, k, v, out, lse, causal, window, scale, documents)


@attention_backward.register_fake
def _attention_backward_fake(grad_out, q, k, v, out, lse, causal, window, scale, documents=None):
    # Contiguous, exactly like the kernels' results: the joint graph's views depend on strides.
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, window, scale, documents = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, documents)
    ctx.mask = (causal, window, scale)


def _backward(ctx, grad_out, grad_lse):
    # lse is an auxiliary output for the backward; the model never differentiates through it.
    q, k, v, out, lse, documents = ctx.saved_tensors
    dq, dk, dv = attention_backward(grad_out.contiguous(), q, k, v, out, lse, *ctx.mask, documents)
    return dq, dk, dv, None, None, None, None


attention.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("autosp::linear_cross_entropy", mutates_args=())
def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernels.linear_cross_entropy(hidden, weight, labels, ignore_index, chunk)


@linear_cross_entropy.register_fake
def _linear_cross_entropy_fake(hidden, weight, labels, ignore_index, chunk):
    acc = accumulation_dtype(hidden.dtype)
    return hidden.new_empty((), dtype=acc), hidden.new_empty(hidden.shape), weight.new_empty(weight.shape, dtype=acc)


def _lce_setup_context(ctx, inputs, output):
    hidden, weight, *_ = inputs
    _, grad_hidden, grad_weight = output
    ctx.save_for_backward(grad_hidden, grad_weight)
    ctx.weight_dtype = weight.dtype


def _lce_backward(ctx, grad_loss, _grad_hidden, _grad_weight):
    # The op's gradients are those of the summed loss: scale them by the loss's gradient.
    grad_hidden, grad_weight = ctx.saved_tensors
    return grad_hidden * grad_loss, (grad_weight * grad_loss).to(ctx.weight_dtype), None, None, None


linear_cross_entropy.register_autograd(_lce_backward, setup_context=_lce_setup_context)


@torch.library.custom_op("autosp::gated_mlp", mutates_args=())
def gated_mlp(
    x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, activation: str, chunk: int
) -> torch.Tensor:
    return kernels.gated_mlp_forward(x, w_gate, w_up, w_down, activation, chunk)


@gated_mlp.register_fake
def _gated_mlp_fake(x, w_gate, w_up, w_down, activation, chunk):
    return x.new_empty(*x.shape[:-1], w_down.shape[0])


@torch.library.custom_op("autosp::gated_mlp_backward", mutates_args=())
def gated_mlp_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    activation: str,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernels.gated_mlp_backward(grad_out, x, w_gate, w_up, w_down, activation, chunk)


@gated_mlp_backward.register_fake
def _gated_mlp_backward_fake(grad_out, x, w_gate, w_up, w_down, activation, chunk):
    return x.new_empty(x.shape), w_gate.new_empty(w_gate.shape), w_up.new_empty(w_up.shape), w_down.new_empty(w_down.shape)


def _mlp_setup_context(ctx, inputs, output):
    x, w_gate, w_up, w_down, activation, chunk = inputs
    ctx.save_for_backward(x, w_gate, w_up, w_down)  # nothing of the intermediate size is kept
    ctx.options = (activation, chunk)


def _mlp_backward(ctx, grad_out):
    grads = gated_mlp_backward(grad_out.contiguous(), *ctx.saved_tensors, *ctx.options)
    return (*grads, None, None)


gated_mlp.register_autograd(_mlp_backward, setup_context=_mlp_setup_context)


# Under autocast, each op takes its floating inputs (but fp64) in autocast's dtype, as the ATen ops
# it replaces do (SDPA and linear are lower-precision ops on every device): a forward exported
# inside `with torch.autocast(...)` keeps eager autocast's numerics.
_AUTOCAST_LIBRARY = torch.library.Library("autosp", "FRAGMENT")


def _autocast_cast(value: object, dtype: torch.dtype) -> object:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.to(dtype)
    return value


def _register_autocast(name: str) -> None:
    op = getattr(torch.ops.autosp, name).default
    for device_type in ("cpu", "cuda"):
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(*args, device_type=device_type, excluded=excluded):
            dtype = torch.get_autocast_dtype(device_type)
            with torch._C._ExcludeDispatchKeyGuard(excluded):
                return op(*(_autocast_cast(a, dtype) for a in args))

        _AUTOCAST_LIBRARY.impl(name, kernel, key)


for _name in ("attention", "linear_cross_entropy", "gated_mlp"):
    _register_autocast(_name)
