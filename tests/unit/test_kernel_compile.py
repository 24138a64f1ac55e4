"""Every Triton kernel the runtime launches (attention forward/backward at bf16 and fp32, head
dims 64 and 128, with and without packed documents, every config autotuning may try; the fused
loss rows; the kernels codegen writes for a bf16 Llama) compiles for a real GPU (sm_90) as the
runtime would compile it, checked without one (tests/kernel_compile.py): within an H100's
shared memory and without register spills. Triton's interpreter, which the numerical tests use,
accepts code the compiler rejects, and says nothing of registers or shared memory."""

import os
import subprocess
import sys
from pathlib import Path


def test_kernels_compile_for_h100_within_shared_memory_without_spills():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    script = Path(__file__).parents[1] / "kernel_compile.py"
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "every kernel fits shared memory, none spills" in result.stdout
    compiled = [line for line in result.stdout.splitlines() if " regs " in line]
    assert any("_attention_dkdv" in line and "float32" in line for line in compiled)
    assert any("documents" in line for line in compiled) and any("generated" in line for line in compiled)
    assert len(compiled) >= 30, result.stdout
