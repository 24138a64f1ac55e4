"""NCCL's rules, checked on gloo (AUTOSP_NCCL_RULES=1, set by conftest for the whole suite): the
collectives hand torch.distributed only contiguous buffers of NCCL's dtypes, and the checker
refuses what NCCL would refuse."""

import pytest
import torch
import torch.distributed as dist

from autosp.common.errors import AutoSPError
from autosp.runtime import collectives


@pytest.fixture
def one_rank():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_checker_refuses_what_nccl_refuses():
    permuted = torch.randn(4, 6).t()
    with pytest.raises(AutoSPError, match="contiguous"):
        collectives.check_nccl("all_reduce", permuted)
    with pytest.raises(AutoSPError, match="complex64"):
        collectives.check_nccl("all_reduce", torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(AutoSPError, match="one dtype, size"):
        collectives.check_nccl("all_gather", torch.zeros(3), same_as=torch.zeros(4))
    collectives.check_nccl("all_reduce", torch.zeros(2, 3, dtype=torch.bfloat16))


def test_collectives_send_contiguous_buffers(one_rank):
    x = torch.randn(5, 3, 4).permute(2, 0, 1)  # what a transposed activation looks like
    out = collectives.all_reduce(x, "sum", one_rank)
    assert out.is_contiguous() and torch.equal(out, x)
    assert torch.equal(collectives.reduce_scatter(x, "sum", 1, 1, one_rank), x)
    assert torch.equal(collectives.all_gather(x, 2, 3, 1, one_rank), x)
    grads = collectives.average_in_place([x.clone(), torch.ones(3)], 1, one_rank)
    assert grads[0].is_contiguous() and torch.equal(grads[0], x)
