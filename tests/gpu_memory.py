"""GPU check of the memory plan: predicted peak vs torch.cuda.max_memory_allocated and vs the
runtime tracker, for a tiny Llama at growing sequence lengths, then with remat at 60% and 40% of
the predicted peak (loss and gradients compared with the plain step). Writes JSON to argv[1]."""

import json
import sys

import torch

import autosp
from autosp.frontends import import_program
from autosp.frontends.presets import build_preset, export_loss_module
from autosp.passes.memory_plan import plan_memory
from autosp.pipeline import pipeline_spec, run_pipeline

rows = []
for seq in (1024, 4096, 8192):
    model, (ids, labels) = build_preset("tiny-llama", seq=seq)
    ep = export_loss_module(model, (ids, labels))
    module = run_pipeline(import_program(ep), pipeline_spec())
    model.cuda()
    ep_cuda = export_loss_module(model, (ids.cuda(), labels.cuda()))
    step = autosp.compile(ep_cuda)
    step(ids.cuda(), labels.cuda())  # warm up
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(ids.cuda(), labels.cuda())
    torch.cuda.synchronize()
    cuda_peak = torch.cuda.max_memory_allocated() - base
    model.zero_grad(set_to_none=True)
    tracked = step.measure_memory(ids.cuda(), labels.cuda())
    with_ws = plan_memory(module)
    without_ws = plan_memory(module, workspace=False)
    held = without_ws.held_bytes
    rows.append({
        "seq": seq,
        "predicted_peak_with_workspace": with_ws.peak_bytes,
        "predicted_peak_without_workspace": without_ws.peak_bytes,
        "tracked_peak": tracked,
        "cuda_max_allocated_above_args": cuda_peak,
        "cuda_peak_plus_args": cuda_peak + held,
        "ratio_predicted_over_cuda": with_ws.peak_bytes / (cuda_peak + held),
        "peak_op": with_ws.peak_op,
    })
    print(rows[-1], flush=True)


def cuda_peak_of(step, ids, labels) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = step(ids, labels)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, loss, [p.grad.clone() for p in model.parameters()]


model, (ids, labels) = build_preset("tiny-llama", seq=4096, layers=8)
model.cuda()
ids, labels = ids.cuda(), labels.cuda()
ep = export_loss_module(model, (ids, labels))
plain = autosp.compile(ep)
plain(ids, labels)  # warm up
_, loss, grads = cuda_peak_of(plain, ids, labels)
for fraction in (0.6, 0.4):
    budget = int(fraction * plain.predicted_peak_bytes)
    step = autosp.compile(ep, remat=True, memory_budget=budget, cost_model="h100")
    step(ids, labels)
    cuda_peak, remat_loss, remat_grads = cuda_peak_of(step, ids, labels)
    args = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers(), ids, labels])
    rows.append({
        "remat_fraction": fraction,
        "budget": budget,
        "predicted_peak_with_workspace": step.predicted_peak_bytes,
        "cuda_peak_plus_args": cuda_peak + args,
        "fits": cuda_peak + args <= budget,
        "ratio_predicted_over_cuda": step.predicted_peak_bytes / (cuda_peak + args),
        "loss_equal": bool(torch.equal(loss, remat_loss)),
        "max_grad_diff": max((a - b).abs().max().item() for a, b in zip(grads, remat_grads)),
    })
    print(rows[-1], flush=True)
json.dump(rows, open(sys.argv[1], "w"), indent=1)
