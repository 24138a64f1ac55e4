"""GPU check of offload: Llama-3.2-1B with 2 layers at 64K tokens, bf16, under a device
budget halfway between the least peak recomputation alone reaches and the least with offload
(so the plan must offload). Measures the copy time the compute stream waits for (timing events
either side of each wait, runtime/offload.StallTimer) against the plan's estimate, the step times
with and without offload, the CUDA peak against the budget, and the loss and gradients against
the step that offloads nothing. Writes JSON to argv[1]; argv[2:] = preset seq layers (for a
CPU smoke run: tiny-llama 512 2, where the copies are synchronous and nothing is timed)."""

import json
import sys
import time

import torch

import autosp
from autosp.driver import imported
from autosp.frontends.presets import build_preset, export_loss_module
from autosp.passes.cost_model import profile_for
from autosp.passes.remat import least_memory, parse_host_budget
from autosp.pipeline import pipeline_spec, run_pipeline, until_remat
from autosp.runtime import offload

preset, seq, layers = (sys.argv[2], int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else ("llama-3.2-1b", 65536, 2)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
model, (ids, labels) = build_preset(preset, seq=seq, layers=layers, dtype=dtype)
model.to(device)
ids, labels = ids.to(device), labels.to(device)
ep = export_loss_module(model, (ids, labels))
profile = profile_for(device)
host = parse_host_budget("auto") if device.type == "cuda" else parse_host_budget("1GiB")
head, _ = until_remat(pipeline_spec(remat=True, fuse=True))
program = run_pipeline(imported(ep, False)[0], head)
alone = least_memory(program, profile, fused=True)
offloading = least_memory(program, profile, fused=True, host_budget=host)
budget = (alone + offloading) // 2
row = {"preset": preset, "seq": seq, "layers": layers, "device": str(device), "least_recompute_only": alone,
       "least_with_offload": offloading, "budget": budget, "host_budget": host}
print(row, flush=True)


def timed(step, steps: int = 2, stalls: bool = False) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    """The fastest of `steps` steps after a warm-up (kernels compiled, host pool allocated); with
    `stalls`, the copy waits of the last one timed (offload.STALLS) and the CUDA peak reset for it."""
    model.zero_grad(set_to_none=True)
    step(ids, labels)
    seconds = []
    for i in range(steps):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            if stalls and i == steps - 1:
                torch.cuda.reset_peak_memory_stats()
                offload.STALLS = offload.StallTimer()
        started = time.perf_counter()
        loss = step(ids, labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return min(seconds), loss.detach(), [p.grad.clone() for p in model.parameters()]


reference = autosp.compile(ep, remat=True, host_memory_budget=0)  # budget "auto": nothing offloaded
reference_s, loss, grads = timed(reference)
step = autosp.compile(ep, remat=True, memory_budget=budget, host_memory_budget=host)
step_s, offload_loss, offload_grads = timed(step, stalls=True)
measured = offload.STALLS.seconds() if offload.STALLS is not None else {}
offload.STALLS = None
predicted = step.predicted_offload
row.update(
    offloaded_values=predicted.get("values", 0),
    copied_out_bytes=predicted.get("out", 0),
    copied_in_bytes=predicted.get("in", 0),
    predicted_exposed_out_s=predicted.get("exposed_out", 0.0),
    predicted_exposed_in_s=predicted.get("exposed_in", 0.0),
    predicted_step_s=predicted.get("step", 0.0),
    measured_exposed_out_s=measured.get("out"),
    measured_exposed_in_s=measured.get("in"),
    step_s=step_s,
    reference_step_s=reference_s,
    plan=next((line for line in step.report.splitlines() if "remat plan" in line), ""),
    predicted_peak=step.predicted_peak_bytes,
    cuda_max_allocated=torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    loss_equal=bool(torch.equal(loss, offload_loss)),
    max_grad_diff=max((a.float() - b.float()).abs().max().item() for a, b in zip(grads, offload_grads)),
)
print(row, flush=True)
json.dump(row, open(sys.argv[1], "w"), indent=1)
