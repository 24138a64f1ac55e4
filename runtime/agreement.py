"""Ranks agree before they communicate, so a multi-rank failure is the same AutoSPError on every
rank, raised within a bounded time: never a hang, a raw backend error, or a silent divergence.

- `rendezvous(what, error, timeout)`: through the process group's store (no collective, so a
  missing or failed rank cannot block it), each rank posts whether it got here cleanly; every
  rank then raises the failure of the lowest failing rank, or names the ranks that did not arrive
  within the timeout. Used around `autosp.compile`'s group creation and before a step's first
  collective.
- `decided_by_first(what, rank, ranks, contribution, decide, timeout)`: a decision every rank
  must share (compile's remat plan), made by rank 0 from every rank's contribution (their
  budgets) and posted, or its failure; bounded waits.
- `StepAgreement`: before each step's first collective, one small all-gather over the world
  carries each rank's verdict on its own inputs and fingerprints of its inputs (every step) and
  parameters (the first step, then every `check_every` steps). A bad input on one rank, ranks of
  an SP group given different batches, or replicas whose weights differ become one error on
  every rank, before any collective of the step can desynchronise.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import time

import torch
import torch.distributed as dist

from autosp.common.errors import AutoSPError
from autosp.runtime.collectives import check_nccl

DEFAULT_TIMEOUT_S = 300.0
_rendezvous_count = itertools.count()


def timeout_seconds(timeout=None) -> float:
    """`timeout` (seconds or a timedelta), else $AUTOSP_TIMEOUT, else 300 s."""
    if timeout is None:
        timeout = os.environ.get("AUTOSP_TIMEOUT", DEFAULT_TIMEOUT_S)
        source = "AUTOSP_TIMEOUT"
    else:
        source = "timeout"
    if hasattr(timeout, "total_seconds"):
        timeout = timeout.total_seconds()
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise AutoSPError(f"{source}={timeout!r} is not a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise AutoSPError(f"{source}={timeout!r}: give a positive, finite number of seconds")
    return seconds


def error_text(err: BaseException) -> str:
    """An error as the other ranks are told of it: AutoSP's own message, or the type and the
    first line of anything else."""
    if isinstance(err, AutoSPError):
        return str(err)
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _ranks(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"


def rendezvous(what: str, error: str | None, timeout: float) -> None:
    """Every rank calls this at the same point with its own outcome (None: fine). Returns when
    all arrived fine; otherwise raises the same AutoSPError on every rank that arrived."""
    store = dist.distributed_c10d._get_default_store()
    rank, world = dist.get_rank(), dist.get_world_size()
    prefix = f"autosp/rendezvous/{next(_rendezvous_count)}"
    if error is not None:
        store.set(f"{prefix}/error/{rank}", error)
    store.set(f"{prefix}/arrived/{rank}", "1")
    arrived = store.add(f"{prefix}/count", 1)
    deadline = time.monotonic() + timeout
    delay = 0.002
    while arrived < world and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
        arrived = store.add(f"{prefix}/count", 0)
    failed = [r for r in range(world) if store.check([f"{prefix}/error/{r}"])]
    missing = [] if arrived >= world else [r for r in range(world) if not store.check([f"{prefix}/arrived/{r}"])]
    if failed:
        first = store.get(f"{prefix}/error/{failed[0]}").decode()
        also = f" ({_ranks(failed[1:])} failed too)" if len(failed) > 1 else ""
        late = f"; {_ranks(missing)} did not arrive" if missing else ""
        raise AutoSPError(f"rank {failed[0]}: {first}{also}{late}")
    if missing:
        raise AutoSPError(
            f"{what}: {_ranks(missing)} of {world} did not arrive within {timeout:g} s (failed or stuck "
            "before it; every rank must make the same autosp calls); set the limit with timeout= or AUTOSP_TIMEOUT"
        )


_decision_count = itertools.count()


def decided_by_first(what: str, rank: int, ranks: int, contribution: str, decide, timeout: float) -> str:
    """A decision every rank must share (compile's remat plan). Each of `ranks` ranks posts its
    `contribution` through the store; rank 0 waits for all of them (at most `timeout` s), calls
    `decide(contributions)` (in rank order) and posts the result, or its failure; every rank
    returns the result or raises the same AutoSPError. Every rank calls this at the same point."""
    store = dist.distributed_c10d._get_default_store()
    prefix = f"autosp/decision/{next(_decision_count)}"
    deadline = time.monotonic() + timeout

    def wait_for(keys: list[str]) -> bool:
        delay = 0.002
        while not store.check(keys):
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        return True

    if rank != 0:
        store.set(f"{prefix}/from/{rank}", contribution)
        if not wait_for([f"{prefix}/decided"]):
            raise AutoSPError(
                f"{what}: rank 0 did not decide within {timeout:g} s (failed or stuck before it); set the limit with "
                "timeout= or AUTOSP_TIMEOUT"
            )
        posted = json.loads(store.get(f"{prefix}/decided"))
        if posted["error"] is not None:
            raise AutoSPError(f"rank 0: {posted['error']}")
        return posted["value"]
    value, error = None, None
    try:
        keys = [f"{prefix}/from/{r}" for r in range(1, ranks)]
        if not wait_for(keys):
            missing = [r for r in range(1, ranks) if not store.check([f"{prefix}/from/{r}"])]
            raise AutoSPError(f"{what}: {_ranks(missing)} of {ranks} did not arrive within {timeout:g} s")
        value = decide([contribution] + [store.get(k).decode() for k in keys])
    except Exception as err:
        error = error_text(err)
        raise
    finally:
        store.set(f"{prefix}/decided", json.dumps({"value": value, "error": error}))
    return value


# --- fingerprints -------------------------------------------------------------------------

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_CHUNK = 1 << 22


def _int64(constant: int) -> int:
    return constant - (1 << 64) if constant >= 1 << 63 else constant


_MIX = [_int64(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)]


def _mixed(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's mixing (with arithmetic shifts), in place: pseudo-random int64s from counters."""
    z.mul_(_MIX[0])
    z.bitwise_xor_(z >> 30).mul_(_MIX[1])
    z.bitwise_xor_(z >> 27).mul_(_MIX[2])
    return z.bitwise_xor_(z >> 31)


@functools.lru_cache(maxsize=4)
def _position_weights(device: torch.device, length: int) -> torch.Tensor:
    """One pseudo-random weight per position of a chunk, made once per device."""
    return _mixed(torch.arange(1, length + 1, dtype=torch.int64, device=device))


def fingerprint(tensor: torch.Tensor) -> torch.Tensor:
    """Two int64 numbers from the exact bits of `tensor` and their positions (a plain and a
    pseudo-randomly weighted sum, wrapping): equal tensors give equal numbers on any device, in
    any reduction order (integer sums are exact); a differing element or a permutation changes
    them."""
    flat = tensor.detach().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    bits = flat.view(_BITS[flat.element_size()])
    weights = _position_weights(flat.device, _CHUNK)
    chunks = range(0, bits.numel(), _CHUNK)
    # Each chunk's weighted sum is weighted again by its own pseudo-random number.
    chunk_weights = _mixed(torch.arange(1, len(chunks) + 1, dtype=torch.int64, device=flat.device)).tolist()
    total = torch.zeros(2, dtype=torch.int64, device=flat.device)
    for start, chunk_weight in zip(chunks, chunk_weights):
        chunk = bits[start : start + _CHUNK].to(torch.int64)  # may be `tensor` itself: read only
        total[0] += chunk.sum()
        total[1] += (chunk * weights[: chunk.numel()]).sum() * chunk_weight
    return total


def collective_device() -> torch.device:
    """Where the default group's collectives take tensors (NCCL: the current GPU)."""
    return torch.device("cuda", torch.cuda.current_device()) if str(dist.get_backend()) == "nccl" else torch.device("cpu")


class StepAgreement:
    """The per-step check of a multi-process step (see the module docstring). `check_every`:
    compare parameter fingerprints every that many steps (0: the first step only)."""

    def __init__(self, sp_groups: list[list[int]], input_names: list[str], parameter_names: list[str], timeout: float,
                 check_every: int = 0):
        self.sp_groups, self.timeout, self.check_every = sp_groups, timeout, check_every
        self.input_names, self.parameter_names = input_names, parameter_names
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.steps = 0  # steps agreed on; failed steps do not count, identically on every rank
        self.device = collective_device()

    def __call__(self, error: str | None, inputs: list[torch.Tensor], parameters: list[torch.Tensor]) -> None:
        first = self.steps == 0
        if first:  # nothing has been communicated yet: a missing rank must not block a collective
            rendezvous("the first step", None, self.timeout)
        with_parameters = first or (self.check_every > 0 and self.steps % self.check_every == 0)
        # The same width on every rank whatever it was given (gloo aborts the process otherwise).
        n_inputs, n_state = len(self.input_names), len(self.parameter_names)
        width = 1 + 2 * n_inputs + (2 * n_state if with_parameters else 0)
        row = torch.zeros(width, dtype=torch.int64, device=self.device)
        if error is None:
            prints = [fingerprint(t) for t in inputs] + ([fingerprint(p) for p in parameters] if with_parameters else [])
            if prints:
                row[1:] = torch.cat([p.to(self.device) for p in prints])
        else:
            row[0] = 1
        rows = [torch.empty_like(row) for _ in range(self.world)]
        check_nccl("all_gather", *rows, row, same_as=row)
        dist.all_gather(rows, row)
        table = torch.stack(rows).cpu()
        failed = [r for r in range(self.world) if table[r, 0]]
        if failed:
            messages: list[str | None] = [None] * self.world
            dist.all_gather_object(messages, error)
            also = f" ({_ranks(failed[1:])} failed too)" if len(failed) > 1 else ""
            raise AutoSPError(f"rank {failed[0]}: {messages[failed[0]]}{also}")
        self._compare_inputs(table[:, 1 : 1 + 2 * n_inputs])
        if with_parameters:
            self._compare_parameters(table[:, 1 + 2 * n_inputs :])
        self.steps += 1

    def _compare_inputs(self, prints: torch.Tensor) -> None:
        for group in self.sp_groups:
            first = group[0]
            for rank in group[1:]:
                differs = (prints[rank] != prints[first]).view(-1, 2).any(1).nonzero().flatten().tolist()
                if differs:
                    names = ", ".join(f"'{self.input_names[i]}'" for i in differs)
                    raise AutoSPError(
                        f"ranks {first} and {rank} of one SP group were given different {names}: every rank "
                        f"of an SP group (ranks {', '.join(map(str, group))}) must get the same full "
                        "batch and takes its own part of the sequence"
                    )

    def _compare_parameters(self, prints: torch.Tensor) -> None:
        compare_state(prints, self.parameter_names)


def compare_state(prints: torch.Tensor, names: list[str]) -> None:
    """Raises (on every rank alike) if a rank's fingerprints ([world, 2 * len(names)]) differ from rank 0's."""
    for rank in range(1, prints.shape[0]):
        differs = (prints[rank] != prints[0]).view(-1, 2).any(1).nonzero().flatten().tolist()
        if differs:
            more = f" (and {len(differs) - 1} more)" if len(differs) > 1 else ""
            raise AutoSPError(
                f"parameter '{names[differs[0]]}'{more} differs between rank 0 and rank {rank}: "
                "every rank must hold the same weights (same seed or checkpoint on every rank before the step)"
            )


def agree_on_state(names: list[str], tensors: list[torch.Tensor], device: torch.device) -> None:
    """Collective over the world: every rank holds the same `tensors` (fingerprints compared), or
    every rank raises the same error. Before the parameters are sharded, when no later check can
    see a rank's whole weights again."""
    row = torch.cat([fingerprint(t).to(device) for t in tensors]) if tensors else torch.zeros(0, dtype=torch.int64, device=device)
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    check_nccl("all_gather", *rows, row, same_as=row)
    dist.all_gather(rows, row)
    compare_state(torch.stack(rows).cpu(), names)
