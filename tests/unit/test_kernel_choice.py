"""Which kernel runs an attention op (ir/kernel_choice.py, the select-kernels pass), and that the
calls the runtime makes to torch's GPU kernels fit torch's op schemas: each call is built as the
runtime builds it and run on meta tensors (torch's own meta kernels check the arguments against
the schema and give the results' shapes), so a wrong argument fails here, not on the first GPU."""

import pytest
import torch

from autosp.common.errors import AutoSPError
from autosp.ir.kernel_choice import AttentionCase, Target, attention_scratch, choose_attention, choose_loss
from autosp.runtime import torch_attention

BF16, FP32 = torch.bfloat16, torch.float32


def case(dtype=BF16, d=64, hq=8, hkv=2, s=4096, sk=None, causal=True, window=0, documents=False, batch=1):
    return AttentionCase(batch, hq, hkv, s, s if sk is None else sk, d, d, dtype, causal, window, documents)


@pytest.mark.parametrize("target, problem, expected", [
    ("cuda:sm90", case(), "cudnn"),
    ("cuda:sm90", case(d=128), "cudnn"),
    ("cuda:sm90", case(causal=False), "cudnn"),
    ("cuda:sm90", case(d=256), "flash"),  # past cuDNN's 128
    ("cuda:sm90", case(window=512), "flash"),
    ("cuda:sm90", case(documents=True), "flash"),
    ("cuda:sm90", case(documents=True, batch=2), "triton"),
    ("cuda:sm90", case(d=100), "triton"),  # not a multiple of 8
    ("cuda:sm90", case(sk=2048), "triton"),  # causal with Sq != Sk: the diagonals differ
    ("cuda:sm90", case(sk=2048, causal=False), "cudnn"),
    ("cuda:sm90", case(dtype=FP32), "triton"),
    ("cuda:sm90", case(dtype=torch.float16), "cudnn"),
    ("cuda:sm90", case(dtype=torch.float64), "blockwise"),
    ("cuda:sm80", case(), "cudnn"),
    ("cuda:sm75", case(), "triton"),
    ("rocm", case(), "flash"),
    ("rocm", case(dtype=FP32), "triton"),
    ("cpu", case(), "cpu-flash"),
    ("cpu", case(dtype=torch.float64, documents=True), "cpu-flash"),
    ("cpu", case(s=64, sk=16, window=8), "blockwise"),  # rows past the keys see none
    ("interpreter", case(), "triton"),
    ("interpreter", case(dtype=torch.float64), "blockwise"),
])
def test_choice(target, problem, expected):
    assert choose_attention(problem, Target.parse(target)) == expected


def test_exclusions_and_lean():
    h100 = Target.parse("cuda:sm90", "cudnn")
    assert choose_attention(case(), h100) == "flash"
    assert choose_attention(case(), Target.parse("cuda:sm90", "cudnn,flash")) == "triton"
    # lean: the least backward scratch (Triton's delta: one fp32 per query row)
    assert choose_attention(case(), Target.parse("cuda:sm90"), lean=True) == "triton"
    assert attention_scratch("triton", case(), True) == 8 * 4096 * 4
    # cuDNN's backward: an fp32 dQ accumulator and fp32 row sums
    assert attention_scratch("cudnn", case(), True) == 8 * 4096 * 64 * 4 + 8 * 4096 * 4
    # FlashAttention's: fp32 dQ over rows rounded to 128 and dims to 32, row sums, and dK/dV at the
    # query head count (GQA), or the documents' Triton fallback when that is larger
    s = 4000
    flash = 8 * 4096 * 64 * 4 + 8 * 4096 * 4 + 2 * s * 8 * 64 * 2
    assert attention_scratch("flash", case(s=s), True) == flash
    assert choose_loss(BF16, Target.parse("cuda:sm90")) == "triton" and choose_loss(BF16, Target.parse("cpu")) == "reference"


def test_bad_targets():
    for bad in ("tpu", "cuda:90", "cpu:sm90"):
        with pytest.raises(AutoSPError, match="target"):
            Target.parse(bad)
    with pytest.raises(AutoSPError, match="not attention kernels"):
        Target.parse("cuda:sm90", "fast")


def meta(*shape, dtype=BF16):
    return torch.empty(*shape, device="meta", dtype=dtype)


@pytest.mark.parametrize("hkv", [8, 2])
def test_cudnn_calls_fit_the_schema(hkv):
    b, hq, s, d = 2, 8, 384, 128
    q, k, v = meta(b, hq, s, d), meta(b, hkv, s, d), meta(b, hkv, s, d)
    op, args, kwargs = torch_attention.cudnn_forward_call(q, k, v, True, 0.1)
    out, lse = op(*args, **kwargs)[:2]
    assert out.shape == q.shape and lse.shape == (b, hq, s, 1) and lse.dtype == FP32
    op, args, kwargs = torch_attention.cudnn_backward_call(meta(b, hq, s, d), q, k, v, out, lse.squeeze(-1), True, 0.1)
    dq, dk, dv = op(*args, **kwargs)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)


@pytest.mark.parametrize("window", [0, 100])
def test_flash_calls_fit_the_schema(window):
    """[B, H, S, D] values are passed as [B, S, H, D] views (no copy); the results come back in
    the inputs' layout, so out seen as [B, H, S, D] is contiguous."""
    b, hq, hkv, s, d = 2, 8, 2, 384, 64
    q, k, v = meta(b, hq, s, d), meta(b, hkv, s, d), meta(b, hkv, s, d)
    op, args, kwargs = torch_attention.flash_forward_call(q, k, v, True, window, 0.1)
    assert ("window_size_left" in kwargs) == bool(window)
    out, lse = op(*args, **kwargs)[:2]
    assert out.transpose(1, 2).shape == q.shape and out.transpose(1, 2).is_contiguous()
    assert lse.shape == (b, hq, s) and lse.dtype == FP32
    op, args, kwargs = torch_attention.flash_backward_call(meta(b, hq, s, d), q, k, v, out.transpose(1, 2), lse, True, window, 0.1)
    dq, dk, dv = (t.transpose(1, 2) for t in op(*args, **kwargs))
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)


def test_flash_varlen_calls_fit_the_schema():
    hq, hkv, s, d = 8, 2, 384, 64
    q, k, v = meta(1, hq, s, d), meta(1, hkv, s, d), meta(1, hkv, s, d)
    runs = (torch.tensor([0, 100, 250, 384], dtype=torch.int32, device="meta"), 150)
    op, args, kwargs = torch_attention.flash_forward_call(q, k, v, True, 0, 0.1, runs)
    out, lse = op(*args, **kwargs)[:2]
    assert out.shape == (s, hq, d) and lse.shape == (hq, s)
    op, args, kwargs = torch_attention.flash_backward_call(meta(1, hq, s, d), q, k, v, out.unsqueeze(0).transpose(1, 2),
                                                           lse.unsqueeze(0), True, 0, 0.1, runs)
    dq, dk, dv = op(*args, **kwargs)
    assert (dq.shape, dk.shape, dv.shape) == ((s, hq, d), (s, hkv, d), (s, hkv, d))


def test_document_runs():
    docs = torch.tensor([[4, 4, 7, 7, 7, 1]])
    cumulative, longest = torch_attention.document_runs(docs)
    assert cumulative.tolist() == [0, 2, 5, 6] and cumulative.dtype == torch.int32 and longest == 3
    assert torch_attention.document_runs(docs)[0] is cumulative  # found once per tensor
    docs[0, 5] = 4  # the same tensor changed: found again, and 4 is now in two runs
    assert torch_attention.document_runs(docs) is None


def test_probe_rules_out_a_kernel_that_raises_or_differs(monkeypatch):
    """The probe compile runs on a GPU before trusting one of torch's kernels: a kernel that
    raises, or whose results differ from the reference, is reported with the reason."""
    from autosp.runtime import attention, kernels

    cpu = torch.device("cpu")
    assert kernels.probe_attention("cpu-flash", BF16, 64, 4, True, 0, False, cpu) is None

    def wrong(q, k, v, *mask):
        out, lse = attention.cpu_flash_forward(q, k, v, *mask)
        return out * 1.5, lse

    def broken(*args):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setitem(kernels.ATTENTION_CALLS, "wrong", lambda: (wrong, attention.cpu_flash_backward))
    monkeypatch.setitem(kernels.ATTENTION_CALLS, "broken", lambda: (broken, broken))
    assert kernels.probe_attention("wrong", FP32, 64, 2, True, 0, False, cpu).startswith("out differs from the reference")
    assert kernels.probe_attention("broken", BF16, 128, 1, True, 16, True, cpu) == (
        "RuntimeError: no kernel image is available for execution on the device")


def test_compile_excludes_what_the_probe_rules_out(monkeypatch, tmp_path):
    """On a (here pretended) H100, compile probes the torch kernels its attention cases would
    run and passes the failures to select-kernels as `exclude`."""
    from autosp import driver
    from autosp.frontends.presets import build_preset, export_loss_module
    from autosp.runtime import kernels

    model, inputs = build_preset("tiny-llama", seq=64, dtype=BF16)
    ep = export_loss_module(model, inputs)
    asked = []

    def probe(kernel, *case):
        asked.append(kernel)
        return "differs" if kernel == "cudnn" else None

    monkeypatch.setattr(driver, "_state_device", lambda ep: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(kernels, "probe_attention", probe)
    monkeypatch.setattr(driver, "PROBE_FAILURES", {})
    assert driver.kernel_target(ep, tmp_path) == ("cuda:sm90", "cudnn")
    assert asked == ["cudnn", "flash"] and driver.PROBE_FAILURES == {"cudnn": "differs"}
