"""GPU measurements for autosp-bench: attention kernels against SDPA, and training steps of a
preset against the baselines users would pick instead. Without a GPU, each runs what it can
on CPU and says so in its JSON."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable

import torch

GiB = 2**30


def attention_flops(batch: int, heads: int, seq: int, dim: int, causal: bool) -> float:
    """Forward FLOPs of q kᵀ and p v (half of the scores under a causal mask)."""
    return 4.0 * batch * heads * seq * seq * dim * (0.5 if causal else 1.0)


def _time_ms(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100))


# AutoSP's attention kernels (runtime/kernels.ATTENTION_CALLS, as a program calls them) and torch's
# SDPA with one backend forced, the baselines.
KERNEL_BACKENDS = ("triton", "cudnn", "flash", "sdpa-cudnn", "sdpa-flash")


def kernel_point(seq: int, dim: int, backend: str, tokens: int = 16384, doc_len: int = 0) -> dict:
    """Forward and backward TFLOP/s of one attention implementation, causal bf16, q/k/v laid out
    as a program passes them ([B, H, S, D] views of [B, S, H, D]). With doc_len (AutoSP's kernels),
    one row packs documents of doc_len tokens: the FLOPs counted are those of causal attention
    inside each document, what the kernels must do."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from autosp.runtime import kernels

    heads = 2048 // dim
    batch = 1 if doc_len else max(1, tokens // seq)
    q, k, v, grad = (torch.randn(batch, seq, heads, dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(4))
    scale = 1 / math.sqrt(dim)
    point = {"seq": seq, "dim": dim, "batch": batch, "heads": heads, "backend": backend}
    try:
        if backend in kernels.ATTENTION_CALLS:
            forward_fn, backward_fn = kernels.ATTENTION_CALLS[backend]()
            docs = None
            if doc_len:
                docs = (torch.arange(seq, device="cuda") // doc_len)[None].contiguous()
                point["doc_len"] = doc_len
            out, lse = forward_fn(q, k, v, True, 0, scale, docs)
            forward = lambda: forward_fn(q, k, v, True, 0, scale, docs)  # noqa: E731
            backward = lambda: backward_fn(grad, q, k, v, out, lse, True, 0, scale, docs)  # noqa: E731
        else:
            choice = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
            qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

            def forward():
                with sdpa_kernel(choice):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

            with sdpa_kernel(choice):
                out = torch.nn.functional.scaled_dot_product_attention(qg, kg, vg, is_causal=True)
            backward = lambda: torch.autograd.grad(out, (qg, kg, vg), grad, retain_graph=True)  # noqa: E731
        fwd_ms, bwd_ms = _time_ms(forward), _time_ms(backward)
    except Exception as error:  # noqa: BLE001 (a backend this build or GPU does not have; the others go on)
        point["error"] = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        return point
    documents = seq // doc_len if doc_len else 1
    flops = attention_flops(batch * documents, heads, seq // documents, dim, True)
    point.update(fwd_ms=fwd_ms, bwd_ms=bwd_ms, fwd_tflops=flops / fwd_ms / 1e9, bwd_tflops=2.5 * flops / bwd_ms / 1e9)
    return point


def kernel_check_cpu() -> dict:
    """No GPU: the Triton attention kernels in Triton's interpreter at a tiny shape against the
    SDPA math reference (correctness only; no speed is measured)."""
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1")
    from autosp.runtime import triton_attention

    q, k, v = (torch.randn(1, 2, 48, 64) for _ in range(3))
    out, lse = triton_attention.attention_forward(q, k, v, True, 0, 0.125)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.125)
    return {"shape": [1, 2, 48, 64], "max_abs_error": float((out - expected).abs().max())}


# --- training steps --------------------------------------------------------------------------


def _free():
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def chunked_loss(model, input_ids, labels, chunk: int = 8192):
    """HF's model body, then the LM head + cross-entropy in checkpointed chunks of `chunk` tokens
    (the strongest hand-written baseline: the [S, V] logits exist one chunk at a time)."""
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    flat, targets = hidden.flatten(0, 1), shifted.flatten()
    head = model.lm_head

    def piece(h, y):
        return F.cross_entropy(head(h).float(), y, ignore_index=-100, reduction="sum")

    total = sum(checkpoint(piece, flat[i : i + chunk], targets[i : i + chunk], use_reentrant=False)
                for i in range(0, flat.shape[0], chunk))
    return total / (targets != -100).sum()


def make_step(method: str, preset: str, seq: int, layers: int | None):
    """(step() running forward + backward once, tokens per step, what to record of it) for one
    method at length seq."""
    from autosp.frontends.presets import build_preset

    with torch.device("cuda"):
        module, (ids, labels) = build_preset(preset, seq=seq, layers=layers, dtype=torch.bfloat16)
    ids, labels = ids.cuda(), labels.cuda()
    module.train()  # HF applies gradient checkpointing in training mode only
    model = module.model
    if method == "autosp":
        import autosp

        ep = torch.export.export(module, (ids, labels))
        step = autosp.compile(ep, remat=True)
        info = {"kernels": step.kernels, "predicted_peak_gib": step.predicted_peak_bytes / GiB}
        return (lambda: step(ids, labels)), ids.numel(), info
    if method in ("hf-ckpt", "hf-ckpt-chunked-loss"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "hf-ckpt-chunked-loss":
        return (lambda: chunked_loss(model, ids, labels).backward()), ids.numel(), {}
    forward = torch.compile(module) if method == "torch-compile" else module
    return (lambda: forward(ids, labels).backward()), ids.numel(), {}


def train_point(method: str, preset: str, seq: int, layers: int | None, steps: int = 3) -> dict:
    point = {"method": method, "seq": seq}
    _free()
    try:
        step, tokens, info = make_step(method, preset, seq, layers)
        point.update(info)
        step()  # warm-up (compiles, autotunes)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        elapsed = (time.perf_counter() - started) / steps
        point.update(fits=True, peak_gib=torch.cuda.max_memory_allocated() / GiB, step_s=elapsed,
                     tokens_per_s=tokens / elapsed)
    except torch.cuda.OutOfMemoryError:
        point.update(fits=False)
    except Exception as error:  # noqa: BLE001  (one failing method must not stop the others)
        point.update(fits=False, error=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    finally:
        step = None
        _free()
    return point


def max_context(method: str, preset: str, layers: int | None, start: int, limit: int, step_tokens: int) -> tuple[int | None, list[dict]]:
    """Double S from `start` until a step fails, then bisect down to `step_tokens`."""
    points, fits, fails = [], None, None
    seq = start
    while seq <= limit:
        point = train_point(method, preset, seq, layers, steps=1)
        points.append(point)
        if not point["fits"]:
            fails = seq
            break
        fits, seq = seq, seq * 2
    if fits is None or fails is None:
        return fits, points
    while fails - fits > step_tokens:
        mid = (fits + fails) // 2 // step_tokens * step_tokens
        if mid in (fits, fails):
            break
        point = train_point(method, preset, mid, layers, steps=1)
        points.append(point)
        fits, fails = (mid, fails) if point["fits"] else (fits, mid)
    return fits, points
