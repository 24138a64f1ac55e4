"""Every label ignored (a prompt-only or truncated batch): eager's mean cross-entropy is 0/0 =
NaN but every gradient is exactly zero, so an optimizer step only applies weight decay. The
compiled step must give the same: NaN loss, zero gradients, parameters equal to eager's after
AdamW steps; for the fused and the plain loss, at sp=1, under SP and with data parallelism."""

import copy

import pytest
import torch

import autosp
from tests.conftest import SmoothedLoss, relative_error, tiny_causal_lm
from tests.e2e.sp_harness import run_distributed
from tests.e2e.test_sequence_parallel import check

TOLERANCE = 1e-5


def ignore_all(labels, replica=0):
    labels.fill_(-100)


def ignore_rank0_shard(labels, replica=0):
    """Rank 0's half of the sequence (sp=2) has no valid label; rank 1's has some."""
    labels[..., : labels.shape[-1] // 2 + 1] = -100


def ignore_replica0(labels, replica):
    """Data parallel: replica 0's whole batch is ignored, replica 1's is not."""
    if replica == 0:
        labels.fill_(-100)


@pytest.mark.parametrize("arch", ["Llama", "Qwen2"])
@pytest.mark.parametrize("loss", ["fused", "smoothed"])
def test_all_ignored_at_sp1(arch, loss, tmp_cache):
    module = tiny_causal_lm(arch, num_hidden_layers=1)
    if loss == "smoothed":
        module = SmoothedLoss(module.model)
    reference = copy.deepcopy(module)
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(3))
    ignored = torch.full_like(ids, -100)
    step = autosp.compile(torch.export.export(module, (ids, ignored)))
    assert ("linear_cross_entropy" in step.source) == (loss == "fused")
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-3)

    def compare(labels):
        loss_value = step(ids, labels)
        eager = reference(ids, labels)
        eager.backward()
        assert relative_error(loss_value, eager.detach()) <= TOLERANCE
        for (name, p), ref in zip(module.named_parameters(), reference.parameters()):
            if bool((ref.grad == 0).all()):
                assert bool((p.grad == 0).all()), f"{name}: eager's gradient is zero, the step's is not"
            assert relative_error(p.grad, ref.grad) <= TOLERANCE, name

    for _ in range(3):  # AdamW on zero gradients: only the weight decay moves the parameters
        compare(ignored)
        opt.step()
        opt.zero_grad()
        ref_opt.step()
        ref_opt.zero_grad()
    for (name, p), ref in zip(module.named_parameters(), reference.parameters()):
        assert torch.equal(p.detach(), ref.detach()), name
    compare(ids)  # a real batch after them, then an ignored one again
    module.zero_grad()
    reference.zero_grad()
    compare(ignored)


@pytest.mark.parametrize(
    "arch, labels_fn, smoothed, documents, optimizer",
    [
        ("Llama", ignore_all, False, None, "adamw"),  # every rank, every label
        ("Qwen2", ignore_all, False, None, "adamw"),
        ("Qwen2", ignore_all, True, None, "adamw"),
        ("Llama", ignore_rank0_shard, True, None, "adamw"),  # one rank's shard only
        # SGD: Adam turns the float noise of Qwen2's k-bias gradient (zero in exact arithmetic) into
        # full-size steps of either sign, in eager as here
        ("Qwen2", ignore_rank0_shard, False, None, "sgd"),
        ("Llama", ignore_all, False, [9, 8], "adamw"),  # packed documents
    ],
    ids=["llama-all-fused", "qwen2-all-fused", "qwen2-all-smoothed", "llama-rank0-smoothed", "qwen2-rank0-fused",
         "llama-all-packed"],
)
def test_ignored_under_sp2(arch, labels_fn, smoothed, documents, optimizer):
    check(run_distributed(2, arch=arch, sp=2, seq=17, labels_fn=labels_fn, steps=3, optimizer=optimizer,
                          lr=1e-3 if optimizer == "adamw" else 0.1, smoothed_loss=smoothed, documents=documents))


def test_one_data_parallel_replica_all_ignored():
    """sp=1 on two processes is data parallel: the replica without a valid label contributes zero
    gradients to the mean, the other its own (eager DDP semantics)."""
    check(run_distributed(2, arch="Qwen2", sp=1, seq=16, labels_fn=ignore_replica0, steps=2))
