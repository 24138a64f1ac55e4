"""What a real training loop does around the step, against eager PyTorch on the same model and
data (Llama and Qwen2): freezing and unfreezing parameters after compile, gradient and
post-accumulate hooks (an optimizer run from the backward), calls from several threads, mixed
precision exported inside torch.autocast, and module hooks the compiled program cannot run (refused in one line)."""

import copy
import sys
import threading

import pytest
import torch

import autosp
from autosp.common.errors import AutoSPError
from tests.conftest import UnderAutocast, relative_error, tiny_causal_lm
from tests.e2e.test_equivalence import batch

ARCHS = ["Llama", "Qwen2"]
TOLERANCE = 1e-5


def compiled(arch):
    """(model, its eager twin, the compiled step, inputs)."""
    model = tiny_causal_lm(arch)
    eager = copy.deepcopy(model)
    ids, labels = batch()
    return model, eager, autosp.compile(torch.export.export(model, (ids, labels))), (ids, labels)


def assert_grads_match(model, eager):
    reference = dict(eager.named_parameters())
    for name, param in model.named_parameters():
        expected = reference[name].grad
        if expected is None:
            assert param.grad is None, name
        else:
            assert param.grad is not None and relative_error(param.grad, expected) <= TOLERANCE, name


@pytest.mark.parametrize("arch", ARCHS)
def test_freezing_after_compile_is_eager(arch, tmp_cache):
    """A layer frozen after compile gets no gradient (the optimizer leaves it alone), the others
    eager's; a parameter frozen at compile and unfrozen later is refused, not left without one."""
    model, eager, step, inputs = compiled(arch)
    for m in (model, eager):
        for param in m.model.model.layers[0].parameters():
            param.requires_grad_(False)
    step(*inputs)
    eager(*inputs).backward()
    assert all(p.grad is None for p in model.model.model.layers[0].parameters())
    assert_grads_match(model, eager)

    frozen = tiny_causal_lm(arch)
    frozen.model.model.embed_tokens.weight.requires_grad_(False)
    ep = torch.export.export(frozen, inputs)
    step = autosp.compile(ep)
    frozen.model.model.embed_tokens.weight.requires_grad_(True)
    with pytest.raises(AutoSPError, match="'model.model.embed_tokens.weight' requires a gradient now but was frozen when "
                                          "the step was compiled.*compile again"):
        step(*inputs)
    assert frozen.model.model.embed_tokens.weight.grad is None


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_hooks_run_as_in_eager(arch, tmp_cache):
    """register_hook hooks change and log gradients; post-accumulate hooks run an SGD update per
    parameter and drop its gradient (optimizer in backward): the weights after the step are
    eager's, every hook ran once per parameter."""
    model, eager, step, inputs = compiled(arch)
    logs = {}
    for key, m in (("compiled", model), ("eager", eager)):
        log = logs[key] = []
        m.model.model.norm.weight.register_hook(lambda g: g * 3)
        m.model.lm_head.weight.register_hook(lambda g: None)
        for name, param in m.named_parameters():
            param.register_hook(lambda g, name=name, log=log: log.append(name))

            def sgd(p):
                p.data.add_(p.grad, alpha=-0.1)
                p.grad = None

            param.register_post_accumulate_grad_hook(sgd)
    step(*inputs)
    eager(*inputs).backward()
    assert sorted(logs["compiled"]) == sorted(logs["eager"]) == sorted(n for n, _ in model.named_parameters())
    reference = dict(eager.named_parameters())
    for name, param in model.named_parameters():
        assert param.grad is None and relative_error(param.detach(), reference[name].detach()) <= TOLERANCE, name

    model.model.model.norm.weight.register_hook(lambda g: g[:1])
    with pytest.raises(AutoSPError, match=r"a gradient hook of a parameter \[48\] returned torch.float32 \[1\]; it must "
                                          r"return None or a torch.float32 tensor of the gradient's shape \[48\]"):
        step(*inputs)


@pytest.mark.parametrize("arch", ARCHS)
def test_calls_from_threads_lose_no_gradient(arch, tmp_cache):
    """Rounds of two threads calling one step at the same moment (a barrier) on cleared
    gradients: every round's gradients are bitwise two sequential calls'. Threads switch as
    often as the interpreter lets them, so an unguarded read-then-write of .grad loses one."""
    model, _, step, inputs = compiled(arch)
    for _ in range(2):
        step(*inputs)
    expected = [p.grad.clone() for p in model.parameters()]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(50):
            model.zero_grad(set_to_none=True)
            barrier, errors = threading.Barrier(2), []

            def work():
                try:
                    barrier.wait()
                    step(*inputs)
                except Exception as err:  # noqa: BLE001 (reported by the test)
                    errors.append(err)

            threads = [threading.Thread(target=work) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            assert not errors
            for param, grad in zip(model.parameters(), expected):
                assert torch.equal(param.grad, grad)
    finally:
        sys.setswitchinterval(interval)


@pytest.mark.parametrize("arch", ARCHS)
def test_autocast_inside_the_export_is_eager_autocast(arch, tmp_cache):
    """A forward exported under torch.autocast(bf16): attention and the LM head + loss are still
    AutoSP's ops, run in bf16 as eager autocast runs SDPA and linear. The loss is eager
    autocast's; the gradients differ from it by bf16 rounding (the joint graph's backward
    formulas round per op, e.g. SiLU's), and are nearer to it than to eager fp32's."""
    inner = tiny_causal_lm(arch)
    model, fp32 = UnderAutocast(inner), copy.deepcopy(inner)
    eager = copy.deepcopy(model)
    ids, labels = batch()
    step = autosp.compile(torch.export.export(model, (ids, labels)))
    assert set(step.kernels) == {"attention", "attention backward", "LM head + loss"}
    loss = step(ids, labels)
    eager_loss = eager(ids, labels)
    eager_loss.backward()
    fp32(ids, labels).backward()
    assert relative_error(loss, eager_loss.detach()) <= 1e-3
    flat = {key: torch.cat([p.grad.flatten() for p in m.parameters()]) for key, m in (("compiled", model), ("eager", eager), ("fp32", fp32))}
    for (name, param), reference in zip(model.named_parameters(), eager.parameters()):
        assert relative_error(param.grad, reference.grad) <= 2e-2, name
    assert (flat["compiled"] - flat["eager"]).norm() < (flat["compiled"] - flat["fp32"]).norm()


@pytest.mark.parametrize("exported_in", ["train", "eval"])
def test_train_eval_switches_that_change_the_forward_are_refused(exported_in, tmp_cache):
    """GPT-NeoX with hidden dropout 0.1, exported in one mode and stepped in the other: eager
    would (not) drop; the step says so, and runs again once the mode is switched back. With
    dropout 0 the mode changes nothing and the step runs in either."""
    ids, labels = batch()
    other = "eval" if exported_in == "train" else "train"
    for p in (0.1, 0.0):
        model = getattr(tiny_causal_lm("GPTNeoX", hidden_dropout=p), exported_in)()
        step = autosp.compile(torch.export.export(model, (ids, labels)))
        getattr(model, other)()
        if p:
            with pytest.raises(AutoSPError, match=rf"'model.gpt_neox.emb_dropout' \(Dropout\) is in {other} mode but was in "
                                                  rf"{exported_in} mode when the model was exported.*model.{exported_in}\(\)"):
                step(ids, labels)
            getattr(model, exported_in)()
        step(ids, labels)


def test_module_hooks_the_program_cannot_run_are_refused(tmp_cache):
    model, _, step, inputs = compiled("Llama")
    layer = model.model.model.layers[1]
    handle = layer.register_full_backward_hook(lambda module, grad_in, grad_out: None)
    with pytest.raises(AutoSPError, match=r"module backward hooks \(LlamaDecoderLayer\) do not run in a compiled step"):
        step(*inputs)
    handle.remove()
    handle = layer.mlp.register_forward_hook(lambda module, args, out: out * 2)
    with pytest.raises(AutoSPError, match="forward hooks of LlamaMLP were added or removed after the step was compiled"):
        step(*inputs)
    handle.remove()
    assert all(p.grad is None for p in model.parameters())
    step(*inputs)
    assert all(p.grad is not None for p in model.parameters())


def lengths_and_eval_under_zero3(rank, world):
    """One model, several programs (sequence lengths), all compiled with shard="parameters" over
    the 2 ranks (each given the same batch, so the replicas' mean is eager's gradient): lengths
    exported before the first compile and one exported after it (autosp.export), alternating
    steps and AdamW updates, and eager evaluation forwards between them, against eager. What
    cannot be honoured is refused in one line on every rank."""
    import autosp
    from autosp import AutoSPError

    module = tiny_causal_lm("Llama", tie_word_embeddings=True, num_hidden_layers=1)
    reference = copy.deepcopy(module)
    g = torch.Generator().manual_seed(5)
    batches = {n: torch.randint(0, 96, (1, n), generator=g) for n in (33, 17, 24)}
    exported = {n: torch.export.export(module, (batches[n], batches[n].clone())) for n in (33, 17)}
    steps = {33: autosp.compile(exported[33], shard="parameters", optimizer="adamw")}
    refusals = []
    for attempt in (
        lambda: torch.export.export(module, (batches[24], batches[24].clone())),
        lambda: module(batches[24], batches[24].clone()),  # gradients enabled
        lambda: autosp.compile(exported[17]),  # its whole weights are no longer the model's
    ):
        try:
            attempt()
        except AutoSPError as err:
            refusals.append(str(err).split(":")[0])
    steps[17] = autosp.compile(exported[17], shard="parameters", optimizer="adamw")
    steps[24] = autosp.compile(autosp.export(module, (batches[24], batches[24].clone())), shard="parameters",
                               optimizer="adamw")
    del exported
    same = all(a is b is c for a, b, c in zip(steps[33].parameters, steps[17].parameters, steps[24].parameters))
    # lr 1e-5: AdamW's scale-free update turns fp32 rounding into ~lr-sized moves (see
    # test_sharded_state.py); the steps still move the weights ~100x the tolerance.
    opt = torch.optim.AdamW(module.parameters(), lr=1e-5)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-5)
    grad_error = eval_error = 0.0
    for n in (33, 17, 24, 33):
        ids = batches[n]
        steps[n](ids, ids.clone())
        reference(ids, ids.clone()).backward()
        for p, ref in zip(module.parameters(), reference.parameters()):
            grad_error = max(grad_error, relative_error(p.grad.full_tensor(), ref.grad))
        opt.step()
        opt.zero_grad()
        ref_opt.step()
        ref_opt.zero_grad()
        with torch.no_grad():
            module.eval()
            eval_error = max(eval_error, relative_error(module(ids, ids.clone()), reference(ids, ids.clone())))
            module.train()
    param_error = max(relative_error(p.detach().full_tensor(), ref.detach())
                      for p, ref in zip(module.parameters(), reference.parameters()))
    still_shards = {id(p) for p in module.parameters()} == {id(p) for p in steps[33].parameters}
    return refusals, same and still_shards, grad_error, param_error, eval_error


def test_lengths_exported_before_and_after_sharding_and_eval_train_one_model():
    from tests.e2e.sp_harness import run_pooled

    for refusals, same, *errors in run_pooled(2, lengths_and_eval_under_zero3):
        assert refusals == [
            "CausalLMLoss's parameters are DTensor shards (autosp.compile(shard=...))",
            "an eager forward of CausalLMLoss, whose parameters autosp.compile(shard=...) sharded, with gradients enabled",
            "parameter 'model.model.embed_tokens.weight' of this program was replaced in the model by its DTensor shard "
            "(an earlier autosp.compile(shard=...))",
        ], refusals
        assert same and max(errors) <= TOLERANCE, (same, errors)
