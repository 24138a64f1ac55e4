"""Compile every hand-written Triton kernel ahead of time for an H100 (sm_90), no GPU needed.
Run by tests/unit/test_kernel_compile.py in a process without TRITON_INTERPRET (under the
interpreter @triton.jit makes InterpretedFunctions, which cannot be compiled)."""

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
        elif name in ("labels_ptr",):
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


def main() -> None:
    # bf16 at both head dims (fp32's IEEE dots compile the same code paths, several times slower).
    for block_d in (64, 128):
        common = {"CAUSAL": True, "BLOCK_D": block_d, "PRECISION": "tf32", "BLOCK_M": 64, "BLOCK_N": 64}
        for kernel in (triton_attention._attention_forward, triton_attention._attention_dkdv, triton_attention._attention_dq):
            assert "ptx" in _compile(kernel, "bf16", common).asm
        assert "ptx" in _compile(triton_attention._row_dot, "bf16", {"BLOCK_S": 64, "BLOCK_D": block_d}).asm
    assert "ptx" in _compile(triton_loss._cross_entropy_rows, "bf16", {"BLOCK": 4096}).asm
    print("compiled for sm_90")


if __name__ == "__main__":
    main()
