"""CPU measurements for `autosp-bench step`: the compiled training step beside eager PyTorch on
the same model and data (time), and the process's resident memory during a step against the
plan's `predicted_peak_bytes` (memory), with and without remat.

Each memory point runs in its own process with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_):
every allocation of 64 KiB or more is then its own mapping, returned to the system when freed,
so the resident set follows the live tensors (with the default, growing threshold, freed
activations stay in the heap and the resident set says little about the plan). The peak is
VmHWM after resetting it (/proc/self/clear_refs) right before the step; what the process held
before the step that is not the step's (the interpreter, libraries, code) is subtracted: the
resident set before the step less the bytes of the parameters, buffers and inputs the plan
counts as held.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time

import torch

MMAP_THRESHOLD = 65536


def llama(seq: int, hidden: int, layers: int, vocab: int):
    """(loss module, input_ids, labels): a Llama with `hidden` (heads of 64, a quarter of them kv
    heads), random weights, fp32."""
    import transformers

    from autosp.frontends.presets import CausalLMLoss

    heads = max(1, hidden // 64)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), max_position_embeddings=seq,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    module = CausalLMLoss(transformers.LlamaForCausalLM(config))
    ids = torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(1))
    return module, ids, ids.clone()


def time_point(seq: int, hidden: int, layers: int, vocab: int, repeats: int) -> dict:
    """Seconds per step, eager and compiled, alternating (the fastest of `repeats` each, after a
    warm-up), in one process."""
    import autosp

    module, ids, labels = llama(seq, hidden, layers, vocab)
    started = time.perf_counter()
    step = autosp.compile(torch.export.export(module, (ids, labels)))
    compile_s = time.perf_counter() - started

    def eager():
        module(ids, labels).backward()

    def compiled():
        step(ids, labels)

    seconds = {"eager": [], "compiled": []}
    for name, fn in (("eager", eager), ("compiled", compiled)) * (repeats + 1):
        module.zero_grad(set_to_none=True)
        started = time.perf_counter()
        fn()
        seconds[name].append(time.perf_counter() - started)
    eager_s, compiled_s = min(seconds["eager"][1:]), min(seconds["compiled"][1:])
    return {"seq": seq, "eager_s": eager_s, "compiled_s": compiled_s, "compiled_over_eager": compiled_s / eager_s,
            "compile_s": compile_s, "threads": torch.get_num_threads()}


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_point(seq: int, hidden: int, layers: int, vocab: int, remat: float) -> dict:
    """One step's resident memory against the plan (run in a process of its own: `measure`)."""
    import autosp

    module, ids, labels = llama(seq, hidden, layers, vocab)
    ep = torch.export.export(module, (ids, labels))
    step = autosp.compile(ep)
    if remat:
        budget = int(remat * step.predicted_peak_bytes)
        step = autosp.compile(ep, remat=True, memory_budget=budget)
    del ep
    step(ids, labels)  # warm-up: code paths, thread pools, the kernels' first allocations
    module.zero_grad(set_to_none=True)
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in [*module.parameters(), *module.buffers(), ids, labels]}
    gc.collect()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS
    before = _status("VmRSS")
    step(ids, labels)
    peak = _status("VmHWM")
    measured = peak - before + sum(held.values())
    return {"seq": seq, "remat_fraction": remat, "predicted_peak_bytes": step.predicted_peak_bytes,
            "measured_peak_bytes": measured, "measured_over_predicted": measured / step.predicted_peak_bytes,
            "resident_before_step": before, "held_bytes": sum(held.values())}


def measured_in_process(seq: int, hidden: int, layers: int, vocab: int, remat: float) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    args = [sys.executable, "-m", "autosp.tools.bench_cpu", json.dumps([seq, hidden, layers, vocab, remat])]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        return {"seq": seq, "remat_fraction": remat, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(memory_point(*json.loads(sys.argv[1]))))
