"""Compile every hand-written Triton kernel ahead of time for an H100 (sm_90), no GPU needed.
Run by tests/unit/test_kernel_compile.py in a process without TRITON_INTERPRET (under the
interpreter @triton.jit makes InterpretedFunctions, which cannot be compiled)."""

import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from autosp.runtime import triton_attention, triton_loss

H100 = GPUTarget("cuda", 90, 32)
POINTERS = {"Q", "K", "V", "O", "DO", "DK", "DV", "DQ", "A", "B", "logits_ptr"}
POINTERS_FP32 = {"LSE", "DELTA", "OUT", "loss_ptr"}


def _signature(fn, element: str, constexprs: dict) -> dict:
    kernel = fn.fn if isinstance(fn, triton.runtime.Autotuner) else fn  # autotune wraps the JITFunction
    signature = {}
    for param in kernel.params:
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
        elif name in ("labels_ptr", "DOCS"):
            signature[name] = "*i64"
        elif name in POINTERS_FP32:
            signature[name] = "*fp32"
        elif name in POINTERS:
            signature[name] = f"*{element}"
        elif name in ("qk_scale", "sm_scale"):
            signature[name] = "fp32"
        else:
            signature[name] = "i64" if name.startswith(("stride", "b", "h")) else "i32"
    return kernel, signature


def _compile(fn, element: str, constexprs: dict):
    kernel, signature = _signature(fn, element, constexprs)
    return triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=H100)


SIGNATURE_TYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64",
                   "int64": "i64", "int32": "i32", "bool": "i1"}


def compile_generated_kernels() -> int:
    """The kernels codegen writes for a tiny bf16 Llama (RMSNorm rows, RoPE, SiLU·mul, casts...)."""
    import tempfile
    from pathlib import Path

    import torch

    from autosp.codegen import generate
    from autosp.ir.program import train_step_of
    from autosp.frontends import import_program
    from autosp.frontends.presets import build_preset, export_loss_module
    from autosp.ir.autosp import FusedOp
    from autosp.ir.dtypes import torch_dtype
    from autosp.pipeline import pipeline_spec, run_pipeline
    from autosp.runtime.train_step import load_program
    from autosp.triton_codegen import kernel_source

    model, inputs = build_preset("tiny-llama", seq=64, dtype=torch.bfloat16)
    module = run_pipeline(import_program(export_loss_module(model, inputs)), pipeline_spec())
    path = Path(tempfile.mkdtemp()) / "program.py"
    source = generate(module)
    path.write_text(source)
    program = load_program(path)
    fused = [op for op in train_step_of(module).body.block.ops if isinstance(op, FusedOp)]
    # The i-th call of a generated kernel in train_step is the i-th fused op; each distinct
    # kernel is compiled once.
    kernel_names = set(re.findall(r"^def (\w+)_kernel\(", source, re.M))
    calls = [name for name in re.findall(r"= (\w+)\(", source[source.index("def train_step("):]) if name in kernel_names]
    assert len(calls) == len(fused)
    representatives = {name: op for name, op in zip(calls, fused)}
    for name, op in representatives.items():
        kernel = getattr(program, f"{name}_kernel")
        types = [SIGNATURE_TYPES[str(torch_dtype(v.type.element_type)).removeprefix("torch.")] for v in (*op.inputs, *op.outputs)]
        signature = {}
        for param in kernel.params:
            if param.is_constexpr:
                signature[param.name] = "constexpr"
            elif param.name.startswith(("in", "out")) and "_s" not in param.name:
                signature[param.name] = "*" + types[len(signature)]
            else:
                signature[param.name] = "i64"
        launch = kernel_source(op, "check")[1]
        constexprs = {"ROWS": launch["rows"], "BLOCK": launch["block"]}
        assert "ptx" in triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=H100).asm
    return len(representatives)


def main() -> None:
    # bf16 (fp32's IEEE dots compile the same code paths, several times slower), head dim 128
    # (Llama-3's); packed-sequence documents (their tile skips are runtime branches) at 64.
    for block_d, has_docs in ((128, False), (64, True)):
        common = {"CAUSAL": True, "HAS_DOCS": has_docs, "BLOCK_D": block_d, "PRECISION": "tf32", "BLOCK_M": 64, "BLOCK_N": 64}
        for kernel in (triton_attention._attention_forward, triton_attention._attention_dkdv, triton_attention._attention_dq):
            assert "ptx" in _compile(kernel, "bf16", common).asm
        if not has_docs:
            assert "ptx" in _compile(triton_attention._row_dot, "bf16", {"BLOCK_S": 64, "BLOCK_D": block_d}).asm
    assert "ptx" in _compile(triton_loss._cross_entropy_rows, "bf16", {"BLOCK": 4096}).asm
    print(f"compiled for sm_90 (and {compile_generated_kernels()} generated kernels)")


if __name__ == "__main__":
    main()
