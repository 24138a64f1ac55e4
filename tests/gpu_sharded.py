"""GPU check of the sharded training state on one NCCL rank (the GPU machine has one GPU; the
multi-rank cases run on gloo in the suite): compile a tiny Llama with shard="parameters" and
AdamW, three steps against eager AdamW, and the predicted peak (with the optimizer's state)
against torch.cuda.max_memory_allocated. Writes JSON to argv[1]."""

import copy
import json
import os
import sys

import torch
import torch.distributed as dist

import autosp
from autosp.frontends.presets import build_preset, export_loss_module

os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29517")
torch.cuda.set_device(0)
dist.init_process_group("nccl", rank=0, world_size=1)
model, (ids, labels) = build_preset("tiny-llama", seq=4096, layers=4)
model.cuda()
reference = copy.deepcopy(model)
ids, labels = ids.cuda(), labels.cuda()
step = autosp.compile(export_loss_module(model, (ids, labels)), shard="parameters", optimizer="adamw")
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-5)
rows = []
for i in range(3):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    loss = step(ids, labels)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    ref_loss = reference(ids, labels)
    ref_loss.backward()
    grad_err = max(((p.grad.full_tensor() - r.grad).abs().max() / r.grad.abs().max().clamp_min(1e-30)).item()
                   for p, r in zip(model.parameters(), reference.parameters()))
    opt.step()
    opt.zero_grad()
    ref_opt.step()
    ref_opt.zero_grad()
    rows.append({
        "step": i, "loss": loss.item(), "eager_loss": ref_loss.item(), "max_grad_rel_err": grad_err,
        "predicted_peak": step.predicted_peak_bytes, "predicted_held": step.predicted_held,
        "cuda_max_allocated": peak, "ratio_predicted_over_cuda": step.predicted_peak_bytes / peak,
    })
    print(rows[-1], flush=True)
json.dump(rows, open(sys.argv[1], "w"), indent=1)
dist.destroy_process_group()
