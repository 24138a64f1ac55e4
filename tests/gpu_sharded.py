"""GPU check of the sharded training state on one NCCL rank (the GPU machine has one GPU; the
multi-rank cases run on gloo in the suite): compile a tiny Llama with shard="parameters" and
AdamW, three steps against eager AdamW on a copy, and the predicted peak (with the optimizer's
state) against the step's own peak: torch.cuda.max_memory_allocated less what was allocated at
the step's start (the eager copy, its gradients and its AdamW state included there), plus what
the plan counts as held from the start (this rank's parameter shards, the optimizer's state,
the inputs). Writes JSON to argv[1] after every step."""

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


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


for i in range(3):
    opt.zero_grad(set_to_none=True)
    held = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in
                [*(local(p) for p in model.parameters()), *model.buffers(), ids, labels,
                 *(local(s) for state in opt.state.values() for s in state.values() if torch.is_tensor(s))]}.values())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    loss = step(ids, labels)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - start + held
    ref_loss = reference(ids, labels)
    ref_loss.backward()
    grad_err = max(((p.grad.full_tensor() - r.grad).abs().max() / r.grad.abs().max().clamp_min(1e-30)).item()
                   for p, r in zip(model.parameters(), reference.parameters()))
    opt.step()
    ref_opt.step()
    ref_opt.zero_grad()
    rows.append({
        "step": i, "loss": loss.item(), "eager_loss": ref_loss.item(), "max_grad_rel_err": grad_err,
        "predicted_peak": step.predicted_peak_bytes, "predicted_held": step.predicted_held,
        "step_peak": peak, "step_peak_over_predicted": peak / step.predicted_peak_bytes, "kernels": step.kernels,
    })
    print(json.dumps(rows[-1]), flush=True)
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
dist.destroy_process_group()
