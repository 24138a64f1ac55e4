"""Run a compiled step on N gloo ranks (processes on this machine) and compare each rank's loss
and gradients with single-process eager PyTorch on the same full batch.

`run_distributed` / `run_pooled` run a case on a pool of ranks kept for the whole session;
`run_ranks` starts fresh ranks that exit after the case (for misuse that leaves them out of step)."""

from __future__ import annotations

import atexit
import copy
import os
import queue
import re
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import autosp
from autosp.frontends.presets import packed_position_ids
from tests.conftest import SmoothedLoss, UnderAutocast, relative_error, tiny_causal_lm


def run_case(rank, world, **case):
    """_case, leaving the module settings it changes as it found them (pooled ranks run many)."""
    from autosp.frontends import mlp
    from autosp.runtime import collectives

    saved = set(collectives._NO_ALLTOALL), mlp.CHUNK_BYTES
    try:
        return _case(rank, world, **case)
    finally:
        collectives._NO_ALLTOALL.clear()
        collectives._NO_ALLTOALL.update(saved[0])
        mlp.CHUNK_BYTES = saved[1]


def _case(rank, world, *, arch, sp, seq, batch=1, config=None, labels_fn=None, steps=1, lr=0.1,
          point_to_point=False, documents=None, mlp_chunk_rows=None, optimizer="sgd", smoothed_loss=False,
          autocast=False):
    """documents: lengths of the documents packed into each row (position ids restart per document).
    mlp_chunk_rows: gated MLPs in chunks of that many rows (tile_mlp=True). labels_fn(labels, replica)
    edits one replica's labels in place. smoothed_loss: a label-smoothed loss (not fused). autocast:
    the forward exported under bf16 autocast."""
    if point_to_point:  # as on backends without all_to_all (gloo before torch 2.13)
        from autosp.runtime import collectives

        collectives._NO_ALLTOALL.add("gloo")
    dp = world // sp
    module = tiny_causal_lm(arch, **(config or {}))
    intermediate_size = module.model.config.intermediate_size
    if smoothed_loss:
        module = SmoothedLoss(module.model)
    if autocast:
        module = UnderAutocast(module)
    reference = copy.deepcopy(module)
    g = torch.Generator().manual_seed(1234)
    ids_all = torch.randint(0, 96, (dp, batch, seq), generator=g)
    labels_all = ids_all.clone()
    if labels_fn is not None:
        for r in range(dp):
            labels_fn(labels_all[r], r)
    replica = rank // sp  # every rank of an SP group gets its replica's full batch
    ids, labels = ids_all[replica], labels_all[replica]
    extra = () if documents is None else (packed_position_ids(documents, batch),)
    tile_mlp = False
    if mlp_chunk_rows is not None:
        from autosp.frontends import mlp

        mlp.CHUNK_BYTES = mlp_chunk_rows * intermediate_size * 4
        tile_mlp = True
    step = autosp.compile(torch.export.export(module, (ids, labels, *extra)), sp=sp, tile_mlp=tile_mlp)
    optimizer_class = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[optimizer]
    opt = optimizer_class(module.parameters(), lr=lr)
    ref_opt = optimizer_class(reference.parameters(), lr=lr)
    # "zeros": gradients eager leaves exactly zero that the step does not (all labels ignored).
    errors = {"loss": 0.0, "grad": 0.0, "param": 0.0, "zeros": 0}
    for _ in range(steps):
        loss = step(ids, labels, *extra)
        # Eager reference: DDP semantics = the mean over replicas of each replica's gradient.
        ref_losses = []
        for r in range(dp):
            ref_loss = reference(ids_all[r], labels_all[r], *extra)
            (ref_loss / dp).backward()
            ref_losses.append(ref_loss.detach())
        errors["loss"] = max(errors["loss"], relative_error(loss, ref_losses[replica]))
        for (name, p), ref in zip(module.named_parameters(), reference.parameters()):
            assert p.grad is not None, f"no gradient for {name}"
            errors["grad"] = max(errors["grad"], relative_error(p.grad, ref.grad))
            errors["zeros"] += int(not torch.equal(p.grad == 0, ref.grad == 0) and bool((ref.grad == 0).all()))
        opt.step()
        opt.zero_grad()
        ref_opt.step()
        ref_opt.zero_grad()
    for p, ref in zip(module.parameters(), reference.parameters()):
        errors["param"] = max(errors["param"], relative_error(p.detach(), ref.detach()))
    return errors


def run_remat_case(rank, world, *, config, seq, fractions):
    """The SP step under budgets (fractions of its peak without remat) against the same SP step
    without remat on this rank: fits, predicted as measured, bitwise the same loss and grads."""
    torch.use_deterministic_algorithms(True)  # the embedding gradient's accumulation order
    try:
        return _remat_stats(config, seq, fractions)
    finally:
        torch.use_deterministic_algorithms(False)


def _remat_stats(config, seq, fractions):
    module = tiny_causal_lm("Llama", **config)
    ids = torch.randint(0, config["vocab_size"], (1, seq), generator=torch.Generator().manual_seed(7))
    labels = ids.clone()
    labels[0, : seq // 2 : 3] = -100
    ep = torch.export.export(module, (ids, labels))

    def run(step):
        measured = step.measure_memory(ids, labels)
        module.zero_grad(set_to_none=True)
        loss = step(ids, labels)
        return measured, loss, [p.grad.clone() for p in module.parameters()]

    plain = autosp.compile(ep, sp=2)
    _, loss, grads = run(plain)
    largest = torch.tensor(plain.predicted_peak_bytes)  # one budget for every rank: the largest rank's
    torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
    stats = []
    for fraction in fractions:
        budget = int(fraction * largest.item())
        step = autosp.compile(ep, sp=2, remat=True, memory_budget=budget, cost_model="cpu")
        measured, remat_loss, remat_grads = run(step)
        calls = re.findall(r"^\s+(\w+) = (collectives\.\w+)\(", step.source, re.M)
        stats.append(dict(
            fraction=fraction, budget=budget, measured=measured, predicted=step.predicted_peak_bytes,
            tracked=step.predicted_tracked_bytes, recomputes="_re = " in step.source,
            bitwise=torch.equal(loss, remat_loss) and all(torch.equal(a, b) for a, b in zip(grads, remat_grads)),
            collectives=[callee for _, callee in calls],
            recomputed_collectives=sum(bool(re.search(r"_re(_\d+)?$", name)) for name, _ in calls),
        ))
    return stats


def run_ranks(world: int, fn, deadline: float = 240.0, env: dict[str, str] | None = None, **case) -> list:
    """fn(rank, world, **case) on `world` fresh gloo processes, each exiting right after it (for
    cases that leave ranks out of step or gone); their results in rank order. A rank that
    raises fails the test with its traceback; ranks still running after `deadline` seconds are
    killed and fail it too (a hang must not eat CI)."""
    pool = RankPool(world)
    try:
        return pool.run(fn, deadline, env or {}, case, then_exit=True)
    finally:
        pool.close()


class RankPool:
    """`world` gloo processes started once and reused for many cases (starting a rank costs
    seconds of imports; the suite runs dozens of cases). Only for cases that behave the same on
    every rank: after any failure the pool is discarded, since its ranks may be out of step."""

    def __init__(self, world: int):
        ctx = mp.get_context("spawn")
        self.world = world
        self.tmp = tempfile.TemporaryDirectory()
        self.inboxes = [ctx.Queue() for _ in range(world)]
        self.results = ctx.Queue()
        init_file = os.path.join(self.tmp.name, "init")
        self.procs = [
            ctx.Process(target=_serve, args=(r, world, init_file, self.inboxes[r], self.results), daemon=True)
            for r in range(world)
        ]
        for p in self.procs:
            p.start()

    def run(self, fn, deadline: float, env: dict[str, str], case: dict, then_exit: bool = False) -> list:
        for inbox in self.inboxes:
            inbox.put((fn, env, case))
            if then_exit:
                inbox.put(None)
        collected = []
        stop = time.monotonic() + deadline
        while len(collected) < self.world:
            try:
                collected.append(self.results.get(timeout=1))
            except queue.Empty:
                dead = [p.exitcode for p in self.procs if p.exitcode not in (None, 0)]
                if dead:
                    raise AssertionError(f"a rank died with exit code {dead[0]} before reporting") from None
                if time.monotonic() > stop:
                    waiting = sorted(set(range(self.world)) - {c[0] for c in collected})
                    raise AssertionError(f"ranks {waiting} still running after {deadline:g} s (hung?)") from None
        failures = [msg for _, _, msg in collected if msg]
        if failures:
            raise AssertionError(failures[0])
        return [result for _, result, _ in sorted(collected, key=lambda c: c[0])]

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        self.tmp.cleanup()


def _die_with_parent() -> None:
    """Linux: the kernel ends this rank when the process that started it ends, however it ends
    (a killed pytest leaves no rank blocked on its queue)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _serve(rank, world, init_file, inbox, results):
    _die_with_parent()
    os.environ.setdefault("AUTOSP_CACHE_DIR", os.path.join(tempfile.gettempdir(), "autosp-test-cache"))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    while (job := inbox.get()) is not None:  # None: exit
        fn, env, case = job
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            results.put((rank, fn(rank, world, **case), None))
        except Exception as err:  # noqa: BLE001 (reported to the test)
            results.put((rank, None, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    if dist.is_initialized():
        dist.destroy_process_group()


_POOLS: dict[int, RankPool] = {}


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def run_pooled(world: int, fn, deadline: float = 240.0, env: dict[str, str] | None = None, **case) -> list:
    """run_ranks on the pool of `world` ranks (started on first use)."""
    if world not in _POOLS:
        _POOLS[world] = RankPool(world)
    try:
        return _POOLS[world].run(fn, deadline, env or {}, case)
    except BaseException:
        _POOLS.pop(world).close()
        raise


def run_distributed(world: int, env: dict[str, str] | None = None, **case) -> list[dict]:
    return run_pooled(world, run_remat_case if case.pop("remat", False) else run_case, env=env, **case)
