"""Fused LM head + cross-entropy kernels (PyTorch reference and Triton, the latter in Triton's
interpreter on CPU) against F.cross_entropy on the materialized logits, with ignore_index."""

import functools

import pytest
import torch
import torch.nn.functional as F

import autosp.runtime.ops  # noqa: F401
from autosp.runtime import loss, triton_loss
from autosp.common.errors import AutoSPError
from tests.conftest import relative_error

# On a GPU machine the same tests run the kernels compiled; on CPU, in Triton's interpreter.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

ROWS = {
    "reference": loss.rows_cross_entropy,
    # a 16-wide vocabulary tile: several sweeps per row and a masked tail
    "triton": functools.partial(triton_loss.rows_cross_entropy, block=16),
}


def _problem(n=37, width=16, vocab=50, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, width, generator=g).to(dtype)
    weight = (torch.randn(vocab, width, generator=g) * 0.5).to(dtype)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = -100
    return hidden.to(DEVICE), weight.to(DEVICE), labels.to(DEVICE)


def _eager(hidden, weight, labels, reduction="sum"):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    value = F.cross_entropy((h @ w.t()).float(), labels, ignore_index=-100, reduction=reduction)
    value.backward()
    return value.detach(), h.grad, w.grad


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("chunk", [5, 64])
def test_summed_loss_and_gradients_match_eager(backend, chunk):
    hidden, weight, labels = _problem()
    total, grad_hidden, grad_weight = loss.linear_cross_entropy(hidden, weight, labels, -100, chunk, ROWS[backend])
    expected = _eager(hidden, weight, labels)
    assert relative_error(total, expected[0]) < 1e-6
    assert relative_error(grad_hidden, expected[1]) < 1e-5
    assert relative_error(grad_weight, expected[2]) < 1e-5
    assert grad_weight.dtype == torch.float32
    assert torch.all(grad_hidden[labels == -100] == 0)  # ignored rows get no gradient


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bf16_within_bf16_tolerance(backend):
    hidden, weight, labels = _problem(dtype=torch.bfloat16)
    total, grad_hidden, grad_weight = loss.linear_cross_entropy(hidden, weight, labels, -100, 8, ROWS[backend])
    expected = _eager(hidden.float(), weight.float(), labels)
    assert grad_hidden.dtype == torch.bfloat16 and total.dtype == torch.float32
    assert relative_error(total, expected[0]) < 1e-2
    assert relative_error(grad_hidden.float(), expected[1]) < 2e-2
    assert relative_error(grad_weight, expected[2]) < 2e-2


def test_custom_op_backward_scales_to_the_mean_loss():
    """Through autograd: mean loss = summed loss / count, exactly eager's gradients."""
    hidden, weight, labels = _problem(seed=1)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    total, _, _ = torch.ops.autosp.linear_cross_entropy(h, w, labels, -100, 7)
    mean = total / (labels != -100).sum()
    mean.backward()
    expected = _eager(hidden, weight, labels, reduction="mean")
    assert relative_error(mean.detach(), expected[0]) < 1e-6
    assert relative_error(h.grad, expected[1]) < 1e-5
    assert relative_error(w.grad, expected[2]) < 1e-5


def test_all_labels_ignored_gives_zero_sum():
    hidden, weight, _ = _problem(n=6)
    labels = torch.full((6,), -100, device=DEVICE)
    total, grad_hidden, grad_weight = loss.linear_cross_entropy(hidden, weight, labels, -100, 4, ROWS["triton"])
    assert total.item() == 0 and not grad_hidden.any() and not grad_weight.any()


def test_label_outside_vocabulary_is_refused():
    hidden, weight, labels = _problem(n=6, vocab=10)
    labels[3] = 10
    with pytest.raises(AutoSPError, match=r"label 10 is outside the vocabulary \[0, 10\)"):
        loss.linear_cross_entropy(hidden, weight, labels, -100, 4)
