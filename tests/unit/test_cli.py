"""Console tools: bad input gives one error line, a non-zero exit and no traceback."""

import json
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
    """The console script in a process of its own (imports, warnings, exit code as a user sees them)."""
    return subprocess.run([str(BIN / tool), *args], input=stdin, capture_output=True, text=True, timeout=300)


def run_main(tool: str, *args: str, stdin: str = "", cwd=None) -> tuple[int, str, str]:
    """The tool's main() in this process, as its console script calls it: (exit code, stdout,
    stderr). Most cases run here; a process per case would spend seconds importing torch."""
    import contextlib
    import importlib
    import io

    main = importlib.import_module(f"autosp.tools.{tool}").main
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.setattr(sys, "argv", [f"autosp-{tool}", *args])
        patch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        if cwd is not None:
            patch.chdir(cwd)
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code or 0
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("tool, args, stdin, message", [
    ("autosp-opt", ["--sp=0"], GOOD, "--sp=0: the sequence-parallel degree must be an integer >= 1"),
    ("autosp-export", ["--module", "no_such_pkg.mod:make"],
     "", "--module no_such_pkg.mod:make: cannot import no_such_pkg.mod (No module named 'no_such_pkg')"),
])
def test_console_scripts_fail_with_one_line(tool, args, stdin, message):
    """As installed: a non-zero exit and one error line, no traceback or warning around it."""
    result = run(tool, *args, stdin=stdin)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"{tool}: error: {message}"], result.stderr


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        ([], GOOD.replace("%a, %b :", "%a :"), "Expected ','"),
        (["-p", "no-such-pass"], GOOD, "no-such-pass"),
        (["--sp=4"], GOOD, "no func.func @train_step"),
        (["--remat"], GOOD, "@train_step"),
        (["--remat", "--memory-budget=lots"], GOOD, "memory budget 'lots' is not a size"),
        (["--remat", "--cost-model=tpu"], GOOD, "unknown cost model 'tpu'"),
        (["--memory-budget=1GiB"], GOOD, "--memory-budget"),
        (["/does/not/exist.mlir"], "", "No such file"),
        ([], GOOD.replace("tensor<4x2xf32>\n  func", "tensor<4x3xf32>\n  func"), ""),
    ],
    ids=["malformed", "unknown-pass", "sp-no-train-step", "remat-no-train-step", "remat-bad-budget", "remat-bad-cost-model", "budget-without-remat", "missing-file", "bad-types"],
)
def test_autosp_opt_errors(args, stdin, message):
    code, _, err = run_main("opt", *args, stdin=stdin)
    assert "Traceback" not in err
    assert message in one_error_line(code, err, "opt")


def test_autosp_opt_runs_the_pipeline():
    code, out, err = run_main("opt", "--sp=1", stdin=GOOD)
    assert code == 0, err
    assert "aten.mm.default %a, %b" in out


def test_autosp_export_writes_parseable_ir(tmp_path):
    out = tmp_path / "tiny.mlir"
    code, _, err = run_main("export", "--preset", "tiny-llama", "--seq", "32", "--layers", "1", "-o", str(out))
    assert code == 0, err
    assert "Traceback" not in err
    code, text, err = run_main("opt", str(out), "-p", "drop-aliases")
    assert code == 0, err
    assert "autosp.attention_grad" in text and "autosp.linear_cross_entropy" in text
    assert "aten.alias" not in text
    # The compile pipeline fuses elementwise chains; --no-fuse leaves them.
    code, text, err = run_main("opt", str(out), "--sp=1")
    assert code == 0 and "autosp.fused(" in text, err
    code, text, err = run_main("opt", str(out), "--sp=1", "--no-fuse")
    assert code == 0 and "autosp.fused(" not in text


def test_autosp_export_errors(tmp_path, monkeypatch):
    code, _, err = run_main("export", "--preset", "tiny-llama", "--seq", "32", "--documents", "0")
    assert one_error_line(code, err, "export") == "--documents=0: a document needs at least one token"
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main("export", "--preset", "tiny-llama", "--seq", "32", "-o", ".")
    assert one_error_line(code, err, "export").startswith("cannot write .: is a folder; give a file name")
    assert not list(tmp_path.iterdir())  # no temporary file left


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """A full disk: the write fails, the target keeps its contents, nothing else is left."""
    import builtins
    import errno

    from autosp.common.files import write_atomically

    target = tmp_path / "program.py"
    target.write_text("old")
    opened = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fdopen", lambda fd, mode: Full(opened(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["program.py"]


def test_autosp_bench_train_and_remat_without_a_gpu(tmp_path):
    """No GPU: `train` gives the predicted max context (no traceback); `remat --max-seq` below
    the default first length starts there."""
    out = tmp_path / "train.json"
    code, _, err = run_main("bench", "train", "--preset", "tiny-llama", "--start-seq", "2048", "--max-seq", "4096", "-o", str(out))
    assert code == 0, err
    assert json.loads(out.read_text())["max_context"] == {"1": 4096}
    out = tmp_path / "remat.json"
    code, _, err = run_main("bench", "remat", "--preset", "tiny-llama", "--sp", "1", "--max-seq", "1024", "-o", str(out))
    assert code == 0, err
    assert [p["seq"] for p in json.loads(out.read_text())["points"]] == [1024]


def test_autosp_export_packed_documents_under_sp(tmp_path):
    """Rows packed from 10-token documents: both attention ops of the layer take the [1, 32]
    document numbers, whole on each of the 2 ranks (Ulysses runs attention on the full sequence)."""
    out = tmp_path / "packed.mlir"
    code, _, err = run_main("export", "--preset", "tiny-llama", "--seq", "32", "--layers", "1", "--documents", "10", "-o", str(out))
    assert code == 0, err
    code, text, err = run_main("opt", str(out), "--sp=2", "--rank=1")
    assert code == 0, err
    attention = [line for line in text.splitlines() if "= autosp.attention" in line]
    assert len(attention) == 2 and all(" documents %" in line and "tensor<1x32xi64>" in line for line in attention)


def test_autosp_bench_kernels_without_a_gpu(tmp_path):
    """Without a GPU the kernel benchmark still checks the Triton kernels (interpreter) and says
    that it measured no speed."""
    import json

    out = tmp_path / "kernels.json"
    code, text, err = run_main("bench", "kernels", "-o", str(out))
    assert code == 0, err
    data = json.loads(out.read_text())
    if data["gpu"] is False:
        assert "no GPU" in text and data["interpreter_check"]["max_abs_error"] < 1e-4
    else:
        assert {p["backend"] for p in data["points"]} == {"autosp", "sdpa-flash", "sdpa-cudnn"}


# --- more bad input ------------------------------------------------------------------------


def one_error_line(code: int, err: str, tool: str) -> str:
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith(f"autosp-{tool}: error: "), err
    return lines[0].removeprefix(f"autosp-{tool}: error: ")


OTHER_DIALECT = """func.func @train_step(%a: i32) -> i32 {
  %0 = arith.addi %a, %a : i32
  func.return %0 : i32
}
"""


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ir") / "tiny.mlir"
    code, _, err = run_main("export", "--preset", "tiny-llama", "--seq", "16", "--layers", "1", "-o", str(path))
    assert code == 0, err
    return path


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["--sp=1"], OTHER_DIALECT, "value %a has type i32: AutoSP plans programs of tensors only"),
        (["--remat", "--memory-budget=" + "9" * 400], GOOD, "is more than 2^63 bytes"),
        (["--remat", "--memory-budget=9223372036854775808"], GOOD, "is more than 2^63 bytes"),
        (["--rank=1"], GOOD, "--rank and --dp place a rank on the sp x dp mesh: give --sp too"),
        (["--sp=2", "--rank=2"], GOOD, "--rank=2: give a rank in 0..1 for --sp=2"),
        (["--sp=two"], GOOD, "argument --sp: invalid int value: 'two' (see autosp-opt --help)"),  # not the whole usage
        (["--sp=2", "--dp=0"], GOOD, "--dp=0: give at least 1 replica"),
        (["--sp=2", "--dp=2", "--rank=4"], GOOD, "--rank=4: give a rank in 0..3 for --sp=2 --dp=2"),
        (["--shard=zero3"], GOOD, "argument --shard: invalid choice: 'zero3'"),
        (["--sp=1", "--optimizer=lion"], GOOD, "optimizer='lion': give one of"),
        (["--device=tpu"], GOOD, "target 'tpu': give one of cpu, cuda:smNN (e.g. cuda:sm90), rocm, interpreter"),
        (["-p", "dce,zero{level=3}"], GOOD, "zero{level=...}: got 3, expected a string (in quotes)"),
        (["-p", "zero{lvl=\"x\"}"], GOOD, "pass zero has no option 'lvl'; its options: level, optimizer, prefetch, rank, world"),
    ],
    ids=["other-dialect", "budget-400-digits", "budget-2-63", "rank-without-sp", "rank-out-of-range", "flag-type",
         "dp-zero", "rank-past-the-world", "shard-choice", "optimizer-kind", "device", "pass-option-type", "pass-option-name"],
)
def test_autosp_opt_more_errors(args, stdin, message):
    code, _, err = run_main("opt", *args, stdin=stdin)
    assert message in one_error_line(code, err, "opt")


def test_autosp_opt_refuses_binary_input_and_partitioned_ir(tiny_ir, tmp_path):
    binary = tmp_path / "weights.mlir"
    binary.write_bytes(b"\x00\x97\xff" * 50)
    code, _, err = run_main("opt", str(binary))
    assert one_error_line(code, err, "opt") == (
        f"{binary} is not a text file (byte 0x97 at offset 1 is not UTF-8); give the .mlir text autosp-export writes"
    )
    partitioned = tmp_path / "sp2.mlir"
    code, _, err = run_main("opt", str(tiny_ir), "--sp=2", "-o", str(partitioned))
    assert code == 0, err
    code, _, err = run_main("opt", str(partitioned), "--sp=4", "--report")
    assert one_error_line(code, err, "opt") == (
        "the input is already partitioned for sp=2; --sp=4 needs the unpartitioned IR (autosp-export's output)"
    )


def test_autosp_opt_output_is_replaced_only_by_a_complete_run(tiny_ir, tmp_path):
    """xdsl-opt opens -o before it runs: the file was emptied even when the run then failed, and
    -o naming the input destroyed the input."""
    work = tmp_path / "in.mlir"
    work.write_text(tiny_ir.read_text())
    code, _, err = run_main("opt", str(work), "-p", "drop-aliases", "-o", str(work))
    assert code == 0, err
    assert "autosp.attention" in work.read_text() and "aten.alias" not in work.read_text()
    old = tmp_path / "old.mlir"
    old.write_text("the previous output\n")
    code, _, err = run_main("opt", str(work), "--sp=3", "-o", str(old))
    assert "do not split over sp=3" in one_error_line(code, err, "opt")
    assert old.read_text() == "the previous output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mlir", "old.mlir"]  # no temporary left behind


FACTORIES = '''
import torch


class Loss(torch.nn.Module):
    def __init__(self, frozen=False):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)
        self.linear.requires_grad_(not frozen)

    def forward(self, x):
        return self.linear(x).sum()


def good(seq, batch):
    return Loss(), (torch.randn(batch, 8),)


def raises(seq, batch):
    raise RuntimeError("no data here")


def none(seq, batch):
    return None


def other_arguments(n):
    return good(1, 1)


def frozen(seq, batch):
    return Loss(frozen=True), (torch.randn(batch, 8),)
'''


@pytest.mark.parametrize(
    "factory, message",
    [
        ("raises", "--module factories:raises: the factory raised RuntimeError: no data here"),
        ("none", "--module factories:none: the factory returned NoneType; return (loss_module, (input tensors, ...))"),
        ("other_arguments", "--module factories:other_arguments: the factory must accept seq= and batch= keywords; its signature is (n)"),
        ("frozen", "no parameter of the exported model requires a gradient"),
    ],
)
def test_autosp_export_module_factory_errors(factory, message, tmp_path, monkeypatch):
    (tmp_path / "factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, _, err = run_main("export", "--module", f"factories:{factory}", "-o", str(tmp_path / "x.mlir"))
    assert one_error_line(code, err, "export").startswith(message), err
    assert not (tmp_path / "x.mlir").exists()


def test_autosp_export_module_in_the_current_directory_says_pythonpath(tmp_path):
    (tmp_path / "localfactories.py").write_text(FACTORIES)
    code, _, err = run_main("export", "--module", "localfactories:good", cwd=tmp_path)
    assert one_error_line(code, err, "export").endswith(
        "localfactories.py is in the current directory, which is not on the module path: run with PYTHONPATH=."
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-seq", "128", "--max-seq", "64"], "--min-seq 128 --max-seq 64: give 1 <= --min-seq <= --max-seq"),
        (["--memory", "1MiB"], "--memory 1MiB: leaves no budget"),
        (["--memory", "lots"], "--memory lots: memory budget 'lots' is not a size"),
        (["--sp", "0"], "--sp 0: sp degrees must be >= 1"),
        (["--sp", "1", "8"], "--sp 8: tiny-llama's 4 query / 2 key-value heads do not split over it; valid sp degrees: [1, 2, 4]"),
        (["--cost-model", "tpu"], "--cost-model tpu: unknown cost model 'tpu'"),
        (["-o", "/no/such/folder/r.json"], "-o /no/such/folder/r.json: cannot write into /no/such/folder"),
    ],
)
def test_autosp_bench_remat_flag_errors(args, message, tmp_path):
    if "--sp" not in args:
        args = ["--sp", "1", *args]
    code, _, err = run_main("bench", "remat", "--preset", "tiny-llama", "-o", str(tmp_path / "r.json"), *args)
    assert one_error_line(code, err, "bench").startswith(message), err
    assert not (tmp_path / "r.json").exists()
