"""Compiled step vs eager PyTorch on real HF architectures: loss and every gradient."""

import copy
import re

import pytest
import torch

import autosp
from tests.conftest import DEVICE, relative_error, tiny_causal_lm

ARCHS = {
    "Llama": {},  # GQA 4:2
    "Qwen2": {},  # q/k/v projections with bias
    "Mistral": {"num_key_value_heads": 1, "sliding_window": None},  # MQA
    "Gemma": {"head_dim": 16},  # embedding scaling, GeGLU, (1 + w) RMSNorm
    "Qwen3": {"head_dim": 12},  # RMSNorm on each head's q and k
    "Phi3": {"pad_token_id": 0},  # fused qkv and gate_up projections, split by slicing
    "GPTNeoX": {},  # parallel attention + MLP, LayerNorm, partial rotary, GELU MLP
    "Olmo2": {},  # norms after attention and MLP, q/k norms over all heads
}
TOLERANCE = 1e-5


def batch(seq=24, vocab=96, ignore=True, batch_size=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, seq), generator=g)
    labels = ids.clone()
    if ignore:  # -100 spread unevenly: a prompt prefix, scattered tokens, a whole-row tail
        labels[0, :5] = -100
        labels[1, 3::4] = -100
        labels[1, -6:] = -100
    return ids.to(DEVICE), labels.to(DEVICE)


def compare_step(module, ids, labels, *extra):
    reference = copy.deepcopy(module)
    step = autosp.compile(torch.export.export(module, (ids, labels, *extra)))
    loss = step(ids, labels, *extra)
    eager = reference(ids, labels, *extra)
    eager.backward()
    assert relative_error(loss, eager.detach()) <= TOLERANCE
    named_ref = dict(reference.named_parameters())
    checked = 0
    for name, param in module.named_parameters():
        ref_grad = named_ref[name].grad
        if ref_grad is None:
            assert param.grad is None, name
            continue
        assert param.grad is not None, f"no gradient for {name}"
        err = relative_error(param.grad, ref_grad)
        assert err <= TOLERANCE, f"{name}: relative error {err:.2e}"
        checked += 1
    assert checked == len(list(module.parameters()))
    return step, reference


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_loss_and_every_gradient_match_eager(arch, tmp_cache):
    module = tiny_causal_lm(arch, **ARCHS[arch])
    compare_step(module, *batch())


def test_sgd_steps_keep_parameters_identical(tmp_cache):
    module = tiny_causal_lm("Llama")
    reference = copy.deepcopy(module)
    ids, labels = batch()
    step = autosp.compile(torch.export.export(module, (ids, labels)))
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    for _ in range(3):
        step(ids, labels)
        opt.step()
        opt.zero_grad()
        reference(ids, labels).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    for (name, p), r in zip(module.named_parameters(), reference.parameters()):
        assert relative_error(p.detach(), r.detach()) <= TOLERANCE, name


def test_gradients_accumulate_like_autograd(tmp_cache):
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    reference = copy.deepcopy(module)
    ids, labels = batch()
    step = autosp.compile(torch.export.export(module, (ids, labels)))
    for _ in range(2):
        step(ids, labels)
        reference(ids, labels).backward()
    for (name, p), r in zip(module.named_parameters(), reference.parameters()):
        assert relative_error(p.grad, r.grad) <= TOLERANCE, name


def test_tied_embeddings_get_one_gradient(tmp_cache):
    module = tiny_causal_lm("Llama", tie_word_embeddings=True)
    assert module.model.lm_head.weight is module.model.model.embed_tokens.weight
    compare_step(module, *batch())


def test_parameters_are_the_models_own_tensors(tmp_cache):
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids, labels = batch()
    ep = torch.export.export(module, (ids, labels))
    step = autosp.compile(ep)
    own = {id(p) for p in module.parameters()}
    assert {id(p) for p in step.parameters} <= own
    assert "def train_step(" in step.source


@pytest.mark.parametrize("arch", ["Llama", "Gemma"])
def test_triton_kernels_match_eager(arch, tmp_cache, monkeypatch):
    """The same step with every kernel in Triton (the interpreter on CPU): attention forward and
    backward and the fused LM head + loss; the reference kernels are made to fail if called."""
    from autosp.runtime import attention, loss

    monkeypatch.setenv("AUTOSP_KERNELS", "triton")
    if DEVICE.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")

    def not_called(*args, **kwargs):
        raise AssertionError("a reference kernel ran on the Triton path")

    for name in ("attention_forward", "attention_backward"):
        monkeypatch.setattr(attention, name, not_called)
    monkeypatch.setattr(loss, "rows_cross_entropy", not_called)
    module = tiny_causal_lm(arch, **ARCHS[arch])
    compare_step(module, *batch())


@pytest.mark.parametrize("kernels, arch", [("reference", "Llama"), ("reference", "Qwen2"), ("triton", "Llama")])
def test_packed_documents_match_eager(arch, kernels, tmp_cache, monkeypatch):
    """Documents packed into each row (position ids restart: lengths 9/7/8, and 3/21 in the
    second row): HF masks attention to each document; the compiled step passes the document
    numbers to the attention kernels, and the loss and every gradient match eager."""
    from autosp.frontends.presets import packed_position_ids

    monkeypatch.setenv("AUTOSP_KERNELS", kernels)
    if kernels == "triton" and DEVICE.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    positions = torch.cat([packed_position_ids([9, 7, 8]), packed_position_ids([3, 21])]).to(DEVICE)
    step, _ = compare_step(tiny_causal_lm(arch, **ARCHS[arch]), *batch(), positions)
    # Both layers' attention, forward and backward, take the document numbers after the mask.
    calls = re.findall(r"kernels\.attention_(?:forward|backward)\(.*, (?:True|False), \d+, [-+.\de]+, (\w+)(?:, kernel='[\w-]+')?\)",
                       step.source)
    assert len(calls) == 4 and len(set(calls)) == 1, calls


@pytest.mark.parametrize("arch", ["Llama", "Gemma"])
def test_gated_mlps_in_row_chunks_match_eager(arch, tmp_cache, monkeypatch):
    """tile_mlp=True: each gated MLP (SiLU for Llama, tanh-GELU for Gemma) in chunks of 5 of the
    48 rows, its backward recomputing gate and up chunk by chunk."""
    from autosp.frontends import mlp

    monkeypatch.setattr(mlp, "CHUNK_BYTES", 5 * 80 * 4)  # intermediate 80, fp32: 5 rows
    module = tiny_causal_lm(arch, **ARCHS[arch])
    reference = copy.deepcopy(module)
    ids, labels = batch()
    step = autosp.compile(torch.export.export(module, (ids, labels)), tile_mlp=True)
    assert re.findall(r"kernels\.gated_mlp_backward\(.*'(\w+)', (\d+)\)", step.source) == [
        ("gelu_tanh" if arch == "Gemma" else "silu", "5")
    ] * 2
    loss = step(ids, labels)
    eager = reference(ids, labels)
    eager.backward()
    assert relative_error(loss, eager.detach()) <= TOLERANCE
    for (name, p), r in zip(module.named_parameters(), reference.parameters()):
        assert relative_error(p.grad, r.grad) <= TOLERANCE, name


def kernel_body(source: str, name: str) -> str:
    start = source.index(f"def {name}_kernel(")
    return source[start : source.index("\ndef ", start + 1)]


def kernel_calls(source: str) -> dict[str, int]:
    """Generated kernel -> how many times train_step calls it."""
    names = re.findall(r"^def (\w+)_kernel\(", source, re.M)
    body = source[source.index("def train_step(") :]
    return {name: len(re.findall(rf"= {name}\(", body)) for name in names}


def test_generated_kernels_bf16_within_bf16_tolerance(tmp_cache, monkeypatch):
    """bf16 Llama with every elementwise chain in a generated Triton kernel (RMSNorm with its row
    reduction, RoPE products, SiLU·mul, residual adds, casts) vs eager bf16, and vs the same
    program on the reference kernels: each kernel rounds per op as eager does."""
    module = tiny_causal_lm("Llama").to(torch.bfloat16)
    reference = copy.deepcopy(module)
    ids, labels = batch()
    step = autosp.compile(torch.export.export(module, (ids, labels)))
    calls = kernel_calls(step.source)
    row_calls = sum(n for name, n in calls.items() if "tl.sum(" in kernel_body(step.source, name))
    assert sum(calls.values()) >= 20 and row_calls >= 5  # 2 layers x 2 RMSNorms + final norm, forward and backward

    reference_loss = step(ids, labels)
    reference_grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    monkeypatch.setenv("AUTOSP_KERNELS", "triton")
    if DEVICE.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    loss = step(ids, labels)
    eager = reference(ids, labels)
    eager.backward()
    assert relative_error(loss.float(), eager.detach().float()) < 2e-2
    assert relative_error(loss.float(), reference_loss.float()) < 1e-2
    for (name, p), r, on_reference in zip(module.named_parameters(), reference.parameters(), reference_grads):
        assert relative_error(p.grad.float(), r.grad.float()) < 5e-2, name
        assert relative_error(p.grad.float(), on_reference.float()) < 5e-2, name
