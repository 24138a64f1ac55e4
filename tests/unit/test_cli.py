"""Console tools: bad input gives one error line, a non-zero exit and no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

GOOD = """func.func @f(%a: tensor<4x8xf32>, %b: tensor<8x2xf32>) -> tensor<4x2xf32> {
  %0 = aten.mm.default %a, %b : (tensor<4x8xf32>, tensor<8x2xf32>) -> tensor<4x2xf32>
  func.return %0 : tensor<4x2xf32>
}
"""


def run(tool, *args, stdin=""):
    return subprocess.run([str(BIN / tool), *args], input=stdin, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        ([], GOOD.replace("%a, %b :", "%a :"), "Expected ','"),
        (["-p", "no-such-pass"], GOOD, "no-such-pass"),
        (["--sp=4"], GOOD, "no func.func @train_step"),
        (["--sp=0"], GOOD, "--sp=0"),
        (["--remat"], GOOD, "@train_step"),
        (["--remat", "--memory-budget=lots"], GOOD, "memory budget 'lots' is not a size"),
        (["--remat", "--cost-model=tpu"], GOOD, "unknown cost model 'tpu'"),
        (["--memory-budget=1GiB"], GOOD, "--memory-budget"),
        (["/does/not/exist.mlir"], "", "No such file"),
        ([], GOOD.replace("tensor<4x2xf32>\n  func", "tensor<4x3xf32>\n  func"), ""),
    ],
    ids=["malformed", "unknown-pass", "sp-no-train-step", "sp-zero", "remat-no-train-step", "remat-bad-budget", "remat-bad-cost-model", "budget-without-remat", "missing-file", "bad-types"],
)
def test_autosp_opt_errors(args, stdin, message):
    result = run("autosp-opt", *args, stdin=stdin)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autosp-opt: error:"), result.stderr
    assert message in lines[0]


def test_autosp_opt_runs_the_pipeline():
    result = run("autosp-opt", "--sp=1", stdin=GOOD)
    assert result.returncode == 0, result.stderr
    assert "aten.mm.default %a, %b" in result.stdout


def test_autosp_export_writes_parseable_ir(tmp_path):
    out = tmp_path / "tiny.mlir"
    result = run("autosp-export", "--preset", "tiny-llama", "--seq", "32", "--layers", "1", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    again = run("autosp-opt", str(out), "-p", "drop-aliases")
    assert again.returncode == 0, again.stderr
    assert "autosp.attention_grad" in again.stdout and "autosp.linear_cross_entropy" in again.stdout
    assert "aten.alias" not in again.stdout
    # The compile pipeline fuses elementwise chains; --no-fuse leaves them.
    fused = run("autosp-opt", str(out), "--sp=1")
    assert fused.returncode == 0 and "autosp.fused(" in fused.stdout, fused.stderr
    plain = run("autosp-opt", str(out), "--sp=1", "--no-fuse")
    assert plain.returncode == 0 and "autosp.fused(" not in plain.stdout


def test_autosp_export_errors():
    result = run("autosp-export", "--module", "no_such_pkg.mod:make")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "autosp-export: error: --module no_such_pkg.mod:make: cannot import no_such_pkg.mod (No module named 'no_such_pkg')"
    ]
    result = run("autosp-export", "--preset", "tiny-llama", "--seq", "32", "--documents", "0")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["autosp-export: error: --documents=0: a document needs at least one token"]


def test_autosp_export_packed_documents_under_sp(tmp_path):
    """Rows packed from 10-token documents: both attention ops of the layer take the [1, 32]
    document numbers, whole on each of the 2 ranks (Ulysses runs attention on the full sequence)."""
    out = tmp_path / "packed.mlir"
    result = run("autosp-export", "--preset", "tiny-llama", "--seq", "32", "--layers", "1", "--documents", "10", "-o", str(out))
    assert result.returncode == 0, result.stderr
    partitioned = run("autosp-opt", str(out), "--sp=2", "--rank=1")
    assert partitioned.returncode == 0, partitioned.stderr
    attention = [line for line in partitioned.stdout.splitlines() if "= autosp.attention" in line]
    assert len(attention) == 2 and all(" documents %" in line and "tensor<1x32xi64>" in line for line in attention)


def test_autosp_bench_kernels_without_a_gpu(tmp_path):
    """Without a GPU the kernel benchmark still checks the Triton kernels (interpreter) and says
    that it measured no speed."""
    import json

    out = tmp_path / "kernels.json"
    result = run("autosp-bench", "kernels", "-o", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    if data["gpu"] is False:
        assert "no GPU" in result.stdout and data["interpreter_check"]["max_abs_error"] < 1e-4
    else:
        assert {p["backend"] for p in data["points"]} == {"autosp", "sdpa-flash", "sdpa-cudnn"}
