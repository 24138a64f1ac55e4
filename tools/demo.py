"""make demo: export a tiny Llama, compile it with AutoSP, train it on CPU with AdamW, and check
the first step's loss and every gradient against the eager model."""

from __future__ import annotations

import copy
import time

import torch
from rich.console import Console
from rich.table import Table

import autosp
from autosp.frontends.presets import build_preset, export_loss_module
from autosp.tools.errors import run_cli

STEPS = 20
SEQ = 128
BATCH = 2


def run() -> None:
    console = Console()
    model, (input_ids, labels) = build_preset("tiny-llama", seq=SEQ, batch=BATCH)
    reference = copy.deepcopy(model)
    labels[:, : SEQ // 8] = -100  # a prompt whose tokens are not trained on

    start = time.perf_counter()
    ep = export_loss_module(model, (input_ids, labels))
    step = autosp.compile(ep)
    console.print(f"[bold]compiled[/] tiny-llama, seq {SEQ}, batch {BATCH} in {time.perf_counter() - start:.1f}s")
    console.print(f"generated program: {step.program_path}")

    # Step 1: the compiled step against eager autograd on an identical copy of the model.
    loss = step(input_ids, labels)
    eager_loss = reference(input_ids, labels)
    eager_loss.backward()
    worst = max(
        ((p.grad - r.grad).abs().max().item(), name)
        for (name, p), r in zip(model.named_parameters(), reference.parameters())
    )
    console.print(
        f"step 1: loss {loss.item():.6f} (eager {eager_loss.item():.6f}); "
        f"max |grad - eager grad| = {worst[0]:.2e} ({worst[1]})"
    )

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    table = Table("step", "loss")
    table.add_row("1", f"{loss.item():.4f}")
    optimizer.step()
    optimizer.zero_grad()
    first = loss.item()
    for i in range(2, STEPS + 1):
        loss = step(input_ids, labels)
        optimizer.step()
        optimizer.zero_grad()
        if i % 4 == 0 or i == STEPS:
            table.add_row(str(i), f"{loss.item():.4f}")
    console.print(table)
    verdict = "went down" if loss.item() < first else "did NOT go down"
    console.print(f"loss {verdict}: {first:.4f} -> {loss.item():.4f}")
    if worst[0] > 1e-4 or loss.item() >= first:
        raise autosp.AutoSPError("demo check failed: gradients differ from eager or the loss did not decrease")


def main() -> None:
    run_cli("autosp-demo", run)


if __name__ == "__main__":
    main()
