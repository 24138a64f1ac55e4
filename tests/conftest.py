import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter (decided when a kernel is defined,
# so before anything imports them).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Collectives check NCCL's rules (contiguous buffers, NCCL's dtypes) on gloo too: what NCCL would
# refuse fails here (inherited by the spawned gloo ranks).
os.environ.setdefault("AUTOSP_NCCL_RULES", "1")
os.environ.setdefault("AUTOSP_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", "build", "autosp-cache"))

# AUTOSP_TEST_DEVICE=cuda runs the equivalence tests on a GPU (the same tests, the same tolerance).
DEVICE = torch.device(os.environ.get("AUTOSP_TEST_DEVICE", "cpu"))


def tiny_causal_lm(arch: str, **overrides):
    """A tiny HF causal LM with random weights, wrapped to return its loss."""
    import transformers

    from autosp.frontends.presets import CausalLMLoss

    common = dict(
        vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )
    common.update(overrides)
    config = getattr(transformers, f"{arch}Config")(**common)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = getattr(transformers, f"{arch}ForCausalLM")(config)
    return CausalLMLoss(model).to(DEVICE)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, the tolerance metric of the design card. NaN
    must be exactly where eager has NaN (inf otherwise); the rest is compared as usual."""
    nan = expected.isnan()
    if not torch.equal(actual.isnan(), nan):
        return float("inf")
    actual, expected = actual[~nan], expected[~nan]
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().item() or 1.0
    return (actual - expected).abs().max().item() / scale


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """A cache of its own: generated programs and imports (none kept in this process either)."""
    from collections import OrderedDict

    from autosp import driver

    monkeypatch.setenv("AUTOSP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(driver, "_BY_KEY", OrderedDict())
    return tmp_path / "cache"


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """Generated programs in a folder of the test's own; imports shared with the whole session
    (they are keyed by everything they depend on), since the joint export is most of the time."""
    shared = os.path.join(os.environ["AUTOSP_CACHE_DIR"], "imports")
    os.makedirs(shared, exist_ok=True)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "imports").symlink_to(shared, target_is_directory=True)
    monkeypatch.setenv("AUTOSP_CACHE_DIR", str(cache))
    return cache


class UnderAutocast(torch.nn.Module):
    """A loss module whose forward runs under torch.autocast (bf16 by default): mixed precision
    as a user exports it."""

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        with torch.autocast(DEVICE.type, dtype=self.dtype):
            return self.inner(*args)


class SmoothedLoss(torch.nn.Module):
    """forward(input_ids, labels) -> a label-smoothed next-token loss: a loss AutoSP does not
    fuse, so the step keeps the plain log-softmax / NLL ops and their logits."""

    def __init__(self, model: torch.nn.Module, smoothing: float = 0.1):
        super().__init__()
        self.model, self.smoothing = model, smoothing

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, use_cache=False).logits[:, :-1].float()
        return torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, label_smoothing=self.smoothing
        )
