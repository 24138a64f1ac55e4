"""make demo: export a tiny Llama, compile it with AutoSP for sp=2, train it on two gloo
processes (each holding half of the sequence) with AdamW, and check the first step's loss and
every gradient, and every weight after the last step, against the single-process eager model
trained alongside with its own AdamW."""

from __future__ import annotations

import copy
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.console import Console
from rich.table import Table

import autosp
from autosp.frontends.presets import build_preset, export_loss_module
from autosp.tools.errors import run_cli

SP = 2
STEPS = 20
SEQ = 256
BATCH = 1


def train(rank: int, init_file: str, results) -> None:
    console = Console(soft_wrap=True)  # piped output keeps its lines (the report is rendered 100 wide)
    say = console.print if rank == 0 else (lambda *a, **k: None)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=SP)
    try:
        model, (input_ids, labels) = build_preset("tiny-llama", seq=SEQ, batch=BATCH)  # same seed on every rank
        reference = copy.deepcopy(model)
        labels[:, : SEQ // 8] = -100  # a prompt whose tokens are not trained on

        start = time.perf_counter()
        step = autosp.compile(export_loss_module(model, (input_ids, labels)), sp=SP)
        say(f"[bold]compiled[/] tiny-llama for sp={SP}, seq {SEQ} ({SEQ // SP} tokens per rank) in {time.perf_counter() - start:.1f}s")
        say(f"generated program: {step.program_path}")
        say(step.report, markup=False, highlight=False)

        loss = step(input_ids, labels)
        eager_loss = reference(input_ids, labels)  # single process, whole sequence
        eager_loss.backward()
        worst = max(
            ((p.grad - r.grad).abs().max().item(), name)
            for (name, p), r in zip(model.named_parameters(), reference.parameters())
        )
        say(
            f"step 1: loss {loss.item():.6f} (single-process eager {eager_loss.item():.6f}); "
            f"max |grad - eager grad| = {worst[0]:.2e} ({worst[1]})"
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        eager_optimizer = torch.optim.AdamW(reference.parameters(), lr=3e-3)
        table = Table("step", "loss")
        first = loss.item()
        table.add_row("1", f"{first:.4f}")
        for i in range(2, STEPS + 2):
            optimizer.step()
            optimizer.zero_grad()
            eager_optimizer.step()
            eager_optimizer.zero_grad()
            if i > STEPS:
                break
            loss = step(input_ids, labels)
            reference(input_ids, labels).backward()
            if i % 4 == 0 or i == STEPS:
                table.add_row(str(i), f"{loss.item():.4f}")
        say(table)
        drift = max(((p - r).abs().max() / r.abs().max()).item() for p, r in zip(model.parameters(), reference.parameters()))
        # AdamW's update is scale-free: fp32 rounding in near-zero gradient entries moves weights by up
        # to lr per step, so 20 steps agree to ~1e-4..1e-3 of the weights' scale, not to 1e-5.
        ok = worst[0] <= 1e-4 and loss.item() < first and drift <= 1e-3
        say(f"loss {'went down' if loss.item() < first else 'did NOT go down'}: {first:.4f} -> {loss.item():.4f}; "
            f"weights after {STEPS} AdamW steps within {drift:.1e} (relative) of eager's")
        results.put((rank, ok, None))
    except Exception as err:
        results.put((rank, False, f"{type(err).__name__}: {err}"))
    finally:
        dist.destroy_process_group()


def run() -> None:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=train, args=(r, init_file, results)) for r in range(SP)]
        for p in procs:
            p.start()
        outcome = [results.get(timeout=900) for _ in procs]
        for p in procs:
            p.join()
    errors = [msg for _, _, msg in outcome if msg]
    if errors:
        raise autosp.AutoSPError(errors[0])
    if not all(ok for _, ok, _ in outcome):
        raise autosp.AutoSPError("demo check failed: gradients or weights differ from eager, or the loss did not decrease")


def main() -> None:
    run_cli("autosp-demo", run)


if __name__ == "__main__":
    main()
