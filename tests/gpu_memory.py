"""GPU check of the memory plan at long context: Llama-3.2-1B with 2 and 4 layers at 64K tokens
(bf16), compiled as is and with remat at 70% of its predicted peak. Each step is measured from
its own start: torch.cuda.max_memory_allocated and max_memory_reserved (expandable segments,
so reserved memory is not rounded to the allocator's big blocks) less what was allocated before
the step, plus the bytes the plan counts as held from the start (parameters, buffers, inputs),
against `predicted_peak_bytes`; the kernels the compiler chose, and the loss and gradients of
the remat step against the plain one. Writes JSON to argv[1] after every point; argv[2:] =
preset seq layers... (default llama-3.2-1b 65536 2 4)."""

import json
import os
import sys

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before CUDA starts

import torch  # noqa: E402

import autosp  # noqa: E402
from autosp.frontends.presets import build_preset, export_loss_module  # noqa: E402

preset = sys.argv[2] if len(sys.argv) > 2 else "llama-3.2-1b"
seq = int(sys.argv[3]) if len(sys.argv) > 3 else 65536
layer_counts = [int(n) for n in sys.argv[4:]] or [2, 4]
rows = []


def measured(step, model, ids, labels) -> dict:
    """One step's peak, allocated and reserved, from the step's own start (the plan's held bytes
    added back: they were allocated before it)."""
    step(ids, labels)  # warm-up: kernels compiled and autotuned, cuDNN plans built
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    held = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in [*model.parameters(), *model.buffers(), ids, labels]}.values())
    torch.cuda.reset_peak_memory_stats()
    allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    loss = step(ids, labels)
    torch.cuda.synchronize()
    peak_allocated = torch.cuda.max_memory_allocated() - allocated + held
    peak_reserved = torch.cuda.max_memory_reserved() - reserved + held
    return {"predicted_peak": step.predicted_peak_bytes, "allocated_peak": peak_allocated, "reserved_peak": peak_reserved,
            "allocated_over_predicted": peak_allocated / step.predicted_peak_bytes,
            "reserved_over_predicted": peak_reserved / step.predicted_peak_bytes,
            "held": held, "kernels": step.kernels, "loss": loss.item()}


for layers in layer_counts:
    model, (ids, labels) = build_preset(preset, seq=seq, layers=layers, dtype=torch.bfloat16)
    model.cuda()
    ids, labels = ids.cuda(), labels.cuda()
    ep = export_loss_module(model, (ids, labels))
    plain = autosp.compile(ep)
    row = {"preset": preset, "seq": seq, "layers": layers, "plain": measured(plain, model, ids, labels)}
    grads = [p.grad.clone() for p in model.parameters()]
    budget = int(0.7 * plain.predicted_peak_bytes)
    del plain
    try:
        remat = autosp.compile(ep, remat=True, memory_budget=budget, host_memory_budget=0)
        row["remat_70"] = {"budget": budget, "plan": next((line.strip() for line in remat.report.splitlines() if "remat plan" in line), ""),
                           **measured(remat, model, ids, labels)}
        row["remat_70"]["max_grad_diff"] = max((a.float() - p.grad.float()).abs().max().item()
                                               for a, p in zip(grads, model.parameters()))
    except Exception as error:  # noqa: BLE001 (recorded; the next point still runs)
        row["remat_70"] = {"budget": budget, "error": f"{type(error).__name__}: {error}"}
    rows.append(row)
    print(json.dumps(row), flush=True)
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
    del ep, model, grads
    torch.cuda.empty_cache()
