"""Compile every Triton kernel the runtime launches ahead of time for an H100 (sm_90), as the
runtime would compile it, no GPU needed: each kernel wrapper runs with CPU tensors shaped and
laid out as the runtime's (q/k/v as [B, H, S, D] views of [B, S, H, D] projections), its launches
are captured instead of run, and each launch is compiled with Triton's own binder on those
arguments (so the specialisation hints, 16-byte-aligned pointers and ints divisible by 16, are
the real ones), once per config autotuning may try for them. Each compiled kernel must fit an
H100's shared memory (227 KiB per block) and ptxas must report no spills. Run by
tests/unit/test_kernel_compile.py in a process without TRITON_INTERPRET (under the interpreter
@triton.jit makes InterpretedFunctions, which cannot be compiled).

    python tests/kernel_compile.py [--quick]     # one line per compiled kernel, then a summary
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

from autosp.runtime import triton_attention, triton_loss

H100 = GPUTarget("cuda", 90, 32)
SHARED_MEMORY_LIMIT = 227 * 1024  # bytes of shared memory one block may use on an H100


@contextlib.contextmanager
def captured_launches():
    """Launches of Triton kernels inside the block, recorded (kernel, args, kwargs) and not run."""
    launches = []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    saved = JITFunction.run, Autotuner.run
    JITFunction.run = record
    Autotuner.run = lambda self, *args, **kwargs: record(self, *args, **kwargs)
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run = saved


def configs_of(kernel, args, kwargs) -> list[dict]:
    """The launch options of every config the runtime may run for this launch."""
    if not isinstance(kernel, Autotuner):
        return [{}]
    kernel.nargs = dict(zip(kernel.arg_names, args))
    return [{**config.all_kwargs()} for config in kernel.prune_configs(kwargs)]


def compile_launch(kernel, args, kwargs):
    """`kernel` compiled for sm_90 as this launch would compile it."""
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    backend = make_backend(H100)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=H100, options=options.__dict__)


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers per thread, bytes of spill stores + loads) as ptxas reports them."""
    with tempfile.TemporaryDirectory() as folder:
        source = f"{folder}/kernel.ptx"
        with open(source, "w") as f:
            f.write(ptx)
        arch = re.search(r"\.target\s+(sm_\w+)", ptx).group(1)
        report = subprocess.run([get_ptxas(90).path, "-v", f"--gpu-name={arch}", source, "-o", f"{folder}/kernel.cubin"],
                                capture_output=True, text=True, check=True).stderr
    registers = max(int(r) for r in re.findall(r"Used (\d+) registers", report))
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report))
    return registers, spills


def _captured(launch) -> list:
    with captured_launches() as launches:
        launch()
    return launches


def runtime_cases(quick: bool):
    """(name, function launching the runtime's kernels) for the cases the runtime runs: bf16 and
    fp32, head dims 64 and 128, causal, packed documents."""
    cases = []
    dims = (128,) if quick else (64, 128)
    dtypes = (torch.bfloat16,) if quick else (torch.bfloat16, torch.float32)
    for dtype in dtypes:
        for d in dims:
            for documents in (False, True):
                b, h, hkv, s = 1, 4, 2, 4096
                # projections are [B, S, H, D]; attention reads them as [B, H, S, D] views
                q = torch.randn(b, s, h, d, dtype=dtype).transpose(1, 2)
                k = torch.randn(b, s, hkv, d, dtype=dtype).transpose(1, 2)
                v = torch.randn(b, s, hkv, d, dtype=dtype).transpose(1, 2)
                docs = (torch.arange(s) // 1024)[None] if documents else None
                out, lse = torch.empty(b, h, s, d, dtype=dtype), torch.empty(b, h, s)
                name = f"{str(dtype).removeprefix('torch.')} D={d}{' documents' if documents else ''}"
                cases.append((f"attention forward {name}",
                              lambda q=q, k=k, v=v, docs=docs: triton_attention.attention_forward(q, k, v, True, 0, 0.1, docs)))
                cases.append((f"attention backward {name}",
                              lambda q=q, k=k, v=v, out=out, lse=lse, docs=docs:
                              triton_attention.attention_backward(out, q, k, v, out, lse, True, 0, 0.1, docs)))
    logits = torch.empty(64, 128256, dtype=torch.bfloat16)
    cases.append(("loss rows bf16", lambda: triton_loss.rows_cross_entropy(logits, torch.zeros(64, dtype=torch.int64), -100)))
    return cases


_LAUNCHES: list = []  # (case, kernel, args, kwargs with the config): what the forked workers compile


def _usage(index: int) -> tuple[str, int, int, int]:
    """(kernel name, registers, spill bytes, shared memory bytes) of launch `index`, compiled."""
    _, kernel, args, kwargs = _LAUNCHES[index]
    compiled = compile_launch(kernel, args, kwargs)
    registers, spills = ptxas_usage(compiled.asm["ptx"])
    return compiled.metadata.name, registers, spills, compiled.metadata.shared


def check(quick: bool = False) -> list[str]:
    """Compile every launch of every case, once per config it may run, on every core; the problems
    found (none: all fit, none spills)."""
    cases = [(case, _captured(launch)) for case, launch in runtime_cases(quick)]
    cases.append(("generated kernels (bf16 Llama)", generated_launches()))
    _LAUNCHES.clear()
    seen = set()
    for case, launches in cases:
        for kernel, args, kwargs in launches:
            for config in configs_of(kernel, args, kwargs):
                key = (getattr(kernel, "fn", kernel), str(sorted(config.items())), _signature_key(args, kwargs))
                if key not in seen:  # the same specialisation, launched again (every layer)
                    seen.add(key)
                    _LAUNCHES.append((case, kernel, args, {**kwargs, **config}))
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        usages = pool.map(_usage, range(len(_LAUNCHES)), chunksize=1)
    problems = []
    for (case, _, _, kwargs), (name, registers, spills, shared) in zip(_LAUNCHES, usages):
        config = {k: kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages") if k in kwargs}
        line = f"{case:42} {name:36} {str(config):72} regs {registers:3} spills {spills:5} B  smem {shared / 1024:6.1f} KiB"
        print(line)
        if spills:
            problems.append(f"spills: {line}")
        if shared > SHARED_MEMORY_LIMIT:
            problems.append(f"shared memory over 227 KiB: {line}")
    return problems


def _signature_key(args, kwargs) -> str:
    """What Triton specialises on: tensors' dtypes and alignment, ints' value class, constexprs."""
    def kind(x):
        if isinstance(x, torch.Tensor):
            return f"{x.dtype}/{x.data_ptr() % 16 == 0}"
        if isinstance(x, int) and not isinstance(x, bool):
            return "1" if x == 1 else "16" if x % 16 == 0 else "i"
        return repr(x)
    return ",".join(map(kind, args)) + repr(sorted((k, kind(v)) for k, v in kwargs.items()))


def generated_launches() -> list:
    """The launches of the kernels codegen writes for a tiny bf16 Llama (RMSNorm rows, RoPE,
    SiLU·mul, casts...), captured from a step of its compiled program with Triton on."""
    import autosp
    from autosp.frontends.presets import build_preset, export_loss_module
    from autosp.runtime import kernels

    model, inputs = build_preset("tiny-llama", seq=256, dtype=torch.bfloat16)
    step = autosp.compile(export_loss_module(model, inputs))
    saved = kernels.use_triton
    kernels.use_triton = lambda tensor: tensor.dtype != torch.float64
    try:
        with captured_launches() as launches:
            try:
                step(*inputs)
            except Exception:  # noqa: BLE001 (the captured kernels never wrote their outputs)
                pass
    finally:
        kernels.use_triton = saved
    return launches


def main() -> None:
    problems = check(quick="--quick" in sys.argv)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        sys.exit(1)
    print("compiled for sm_90: every kernel fits shared memory, none spills")


if __name__ == "__main__":
    main()
