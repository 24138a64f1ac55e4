"""The gated MLP `down(act(x W_gateᵀ) · (x W_upᵀ))` of Llama-style layers, in chunks of rows
(tokens), so its `[tokens, intermediate]` values exist one chunk at a time. The backward
recomputes each chunk's gate and up projections (two of the MLP's nine matmuls) instead of
keeping them: it is what lets one layer's backward at 512K tokens fit, and it is only used when
the step would not fit otherwise (`autosp.compile(..., tile_mlp="auto")`).

Matmuls run in the input dtype, as eager's do; weight gradients accumulate over chunks in fp32
(fp64 for fp64) and are rounded once at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

aten = torch.ops.aten

# name -> (activation, its backward(grad, pre-activation)), as eager computes them
ACTIVATIONS = {
    "silu": (F.silu, aten.silu_backward.default),
    "gelu": (lambda x: F.gelu(x), lambda g, x: aten.gelu_backward.default(g, x)),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda g, x: aten.gelu_backward.default(g, x, approximate="tanh")),
}


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def gated_mlp_forward(x, w_gate, w_up, w_down, activation: str, chunk: int) -> torch.Tensor:
    act = ACTIVATIONS[activation][0]
    rows = _rows(x)
    out = rows.new_empty(rows.shape[0], w_down.shape[0])
    for start in range(0, rows.shape[0], chunk):
        r = rows[start : start + chunk]
        out[start : start + chunk] = F.linear(act(F.linear(r, w_gate)) * F.linear(r, w_up), w_down)
    return out.view(*x.shape[:-1], w_down.shape[0])


def gated_mlp_backward(grad_out, x, w_gate, w_up, w_down, activation: str, chunk: int):
    act, act_backward = ACTIVATIONS[activation]
    rows, grads = _rows(x), _rows(grad_out)
    acc = torch.promote_types(x.dtype, torch.float32)
    dx = torch.empty_like(rows)
    dw_gate = torch.zeros(w_gate.shape, dtype=acc, device=x.device)
    dw_up = torch.zeros(w_up.shape, dtype=acc, device=x.device)
    dw_down = torch.zeros(w_down.shape, dtype=acc, device=x.device)
    for start in range(0, rows.shape[0], chunk):
        r, g_out = rows[start : start + chunk], grads[start : start + chunk]
        gate, up = F.linear(r, w_gate), F.linear(r, w_up)  # recomputed
        activated = act(gate)
        dw_down += (g_out.t() @ (activated * up)).to(acc)
        d_hidden = g_out @ w_down
        d_up = d_hidden * activated
        d_gate = act_backward(d_hidden * up, gate)
        dx[start : start + chunk] = d_gate @ w_gate + d_up @ w_up
        dw_gate += (d_gate.t() @ r).to(acc)
        dw_up += (d_up.t() @ r).to(acc)
    return dx.view(x.shape), dw_gate.to(w_gate.dtype), dw_up.to(w_up.dtype), dw_down.to(w_down.dtype)
