"""The pieces the ranks agree with: exact fingerprints that never touch their tensor, timeouts,
the store rendezvous (one process here; several in tests/e2e/test_rank_agreement.py)."""

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from autosp import AutoSPError
from autosp.runtime import agreement
from autosp.runtime.agreement import fingerprint, rendezvous, timeout_seconds


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.float32, torch.bfloat16, torch.bool, torch.complex64])
def test_fingerprints_are_exact_and_read_only(dtype, monkeypatch):
    monkeypatch.setattr(agreement, "_CHUNK", 7)  # several chunks even for a small tensor
    x = (torch.arange(40).reshape(5, 8) % 3).to(dtype)
    before = x.clone()
    assert torch.equal(fingerprint(x), fingerprint(x.clone()))
    assert torch.equal(x, before)  # int64 and float64 are read through views of themselves
    assert torch.equal(fingerprint(x.t().contiguous().t()), fingerprint(x))  # layout does not matter
    changed = x.clone()
    changed.view(-1)[23] = torch.ones((), dtype=dtype) if dtype != torch.bool else ~changed.view(-1)[23]
    if not torch.equal(changed, x):
        assert not torch.equal(fingerprint(changed), fingerprint(x))
    swapped = x.flip(0)  # the same values in another order
    if not torch.equal(swapped, x):
        assert not torch.equal(fingerprint(swapped), fingerprint(x))


def test_timeouts():
    assert timeout_seconds(12) == 12.0 and timeout_seconds(timedelta(minutes=2)) == 120.0
    assert timeout_seconds(None) == 300.0
    for bad in ("soon", -1, 0, float("inf"), float("nan")):
        with pytest.raises(AutoSPError, match="timeout="):
            timeout_seconds(bad)


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_rendezvous_passes_or_raises_the_posted_error(one_rank):
    rendezvous("here", None, 5)
    with pytest.raises(AutoSPError, match="^rank 0: out of paper$"):
        rendezvous("here", "out of paper", 5)
    rendezvous("here", None, 5)  # and the next one is independent
