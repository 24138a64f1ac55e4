"""Bad input: one clear AutoSPError naming what is wrong, never a wrong result."""

import copy
import re
from pathlib import Path

import pytest
import torch

import autosp
from autosp import AutoSPError
from tests.conftest import relative_error, tiny_causal_lm


class NotALoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.linear(x)


def test_forward_must_return_a_scalar(tmp_cache):
    ep = torch.export.export(NotALoss(), (torch.randn(2, 8),))
    with pytest.raises(AutoSPError, match="scalar loss"):
        autosp.compile(ep)


def test_input_of_another_shape_is_refused(tmp_cache):
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids = torch.randint(0, 96, (1, 16))
    step = autosp.compile(torch.export.export(module, (ids, ids.clone())))
    other = torch.randint(0, 96, (1, 20))
    with pytest.raises(AutoSPError, match=r"input 'input_ids' is int64\[1, 20\] but the step was compiled for int64\[1, 16\]"):
        step(other, other.clone())
    with pytest.raises(AutoSPError, match="takes 2 inputs"):
        step(ids)
    small = ids.to(torch.int32)
    with pytest.raises(AutoSPError, match=r"input 'input_ids' is int32 but the step was compiled for int64; pass int64 "
                                          r"\(x.to\(torch.int64\)\), or export with int32 inputs"):
        step(small, ids.clone())


def test_a_fake_export_is_refused_in_one_line(tmp_cache):
    from autosp.frontends.presets import export_preset

    with pytest.raises(AutoSPError, match=r"the exported program's state is fake \('model.model.embed_tokens.weight' and "
                                          r"\d+ more: exported under a FakeTensorMode.*a step needs real weights"):
        autosp.compile(export_preset("tiny-llama", seq=32, fake=True))


def test_a_relative_cache_folder_survives_a_change_of_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOSP_CACHE_DIR", "relative-cache")
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids = torch.randint(0, 96, (1, 16))
    step = autosp.compile(torch.export.export(module, (ids, ids.clone())))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert "def train_step(" in step.source and step.measure_memory(ids, ids.clone()) > 0


def test_bad_options_are_refused_not_ignored(tmp_cache):
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids = torch.randint(0, 96, (1, 16))
    ep = torch.export.export(module, (ids, ids.clone()))
    with pytest.raises(AutoSPError, match="sp=2 needs torch.distributed initialized"):
        autosp.compile(ep, sp=2)
    with pytest.raises(AutoSPError, match="only apply with remat=True"):
        autosp.compile(ep, memory_budget="1GiB")
    with pytest.raises(AutoSPError, match="memory budget '12 parsecs' is not a size"):
        autosp.compile(ep, remat=True, memory_budget="12 parsecs")
    with pytest.raises(AutoSPError, match=r"remat: the step needs .* per rank at S=16 \(sp=1\)"):
        autosp.compile(ep, remat=True, memory_budget=4096)
    with pytest.raises(AutoSPError, match="tile_mlp='yes': use True, False or 'auto'"):
        autosp.compile(ep, tile_mlp="yes")
    with pytest.raises(AutoSPError, match="ExportedProgram"):
        autosp.compile(module)


class MaskedAttention(torch.nn.Module):
    def __init__(self, mask_kind: str):
        super().__init__()
        self.proj = torch.nn.Linear(16, 48)
        self.mask_kind = mask_kind

    def forward(self, x, padding):
        q, k, v = self.proj(x).view(1, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
        if self.mask_kind == "input":  # a padding mask that comes from a graph input
            mask = padding[:, None, None, :].bool()
        else:  # anti-causal: keys after the query
            i = torch.arange(8)
            mask = i[None, :] >= i[:, None]
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.sum()


@pytest.mark.parametrize("kind, message", [("input", "depends on the graph input"), ("anti", "attention mask is not understood")])
def test_masks_that_are_not_index_functions_are_refused(kind, message, tmp_cache):
    ep = torch.export.export(MaskedAttention(kind), (torch.randn(1, 8, 16), torch.ones(1, 8)))
    with pytest.raises(AutoSPError, match=message):
        autosp.compile(ep)


@pytest.fixture
def llama_step(tmp_cache):
    """A compiled 1-layer tiny Llama, its module and a batch."""
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids = torch.randint(0, 96, (1, 16), generator=torch.Generator().manual_seed(0))
    return autosp.compile(torch.export.export(module, (ids, ids.clone()))), module, ids


def test_modes_the_step_cannot_honour_are_refused(llama_step):
    step, module, ids = llama_step
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(AutoSPError, match=r"under torch.autocast\('cpu'\)"):
        step(ids, ids.clone())
    with torch.inference_mode(), pytest.raises(AutoSPError, match="outside torch.inference_mode"):
        step(ids, ids.clone())
    with pytest.raises(AutoSPError, match="input 'labels' is on the meta device"):
        step(ids, ids.to("meta"))
    # An evaluation loop under no_grad would otherwise add its gradients to the next update.
    with torch.no_grad(), pytest.raises(AutoSPError, match=r"under torch.no_grad\(\), but it computes and stores gradients"):
        step(ids, ids.clone())
    assert all(p.grad is None for p in module.parameters())
    step(ids, ids.clone())
    assert all(p.grad is not None for p in module.parameters())


def test_out_of_range_token_ids_and_labels_are_refused_before_the_step(llama_step):
    step, module, ids = llama_step
    labels = ids.clone()
    labels[0, 5] = 96
    with pytest.raises(AutoSPError, match=r"^input 'labels' gives index 96, outside the loss's vocabulary \[0, 96\) or ignore_index=-100$"):
        step(ids, labels)
    with pytest.raises(AutoSPError, match=r"^input 'input_ids' gives index -2, outside the embedding table \[0, 96\)$"):
        step(ids.clone().fill_(-2), ids.clone())
    labels = ids.clone()
    labels[0, 0] = 500  # the first label is never a target (labels shift left): eager ignores it too
    step(ids, labels)


@pytest.mark.parametrize("change", ["replace", "untie", "double", "meta"])
def test_parameters_changed_after_compile_are_refused(change, tmp_cache):
    module = tiny_causal_lm("Llama", num_hidden_layers=1, tie_word_embeddings=change == "untie")
    ids = torch.randint(0, 96, (1, 16))
    step = autosp.compile(torch.export.export(module, (ids, ids.clone())))
    head = module.model.lm_head
    if change in ("replace", "untie"):
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        message = r"parameter '.*' was replaced after compile \(Linear.weight is a new object\)"
    elif change == "double":
        module.double()
        message = r"is float64\[.*\] on cpu but the step was compiled for float32"
    else:  # module.to("meta") makes new Parameter objects
        module.to("meta")
        message = r"parameter 'model.model.embed_tokens.weight' was replaced after compile"
    with pytest.raises(AutoSPError, match=message):
        step(ids, ids.clone())


def test_a_gradient_that_cannot_be_added_to_in_place_is_replaced_not_half_written(llama_step):
    """Eager's in-place accumulation fails on an expanded .grad (and leaves the parameters before
    it updated); the step accumulates every gradient or none, here out of place for that one."""
    step, module, ids = llama_step
    params = list(module.parameters())
    reference = copy.deepcopy(module)
    reference(ids, ids.clone()).backward()
    for p in params:
        p.grad = torch.ones_like(p)
    params[-1].grad = torch.ones(1).expand_as(params[-1])  # stride 0: += would fail
    params[0].grad = torch.ones_like(params[0]).to_sparse()  # sparse + dense is not defined
    step(ids, ids.clone())
    assert params[0].grad.layout == torch.strided
    for p, r in zip(params, reference.parameters()):
        assert relative_error(p.grad, r.grad + 1) <= 1e-5


class EmbeddingsWithoutGrad(torch.nn.Module):
    """Embeds under torch.no_grad(): torch.export keeps the region as a submodule."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, ids, labels):
        with torch.no_grad():
            embeds = self.inner.model.model.embed_tokens(ids)
        return self.inner.model(inputs_embeds=embeds, labels=labels, use_cache=False).loss


class FromEmbeddings(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, embeds, labels):
        return self.inner.model(inputs_embeds=embeds, labels=labels, use_cache=False).loss


def test_an_input_that_requires_a_gradient_is_refused(tmp_cache):
    """Eager would give a float input that requires grad its gradient; the step makes none."""
    model = FromEmbeddings(tiny_causal_lm("Llama", num_hidden_layers=1))
    embeds, labels = torch.randn(1, 16, 48), torch.randint(0, 96, (1, 16))
    step = autosp.compile(torch.export.export(model, (embeds, labels)))
    with pytest.raises(AutoSPError, match="input 'embeds' requires a gradient, but the step makes gradients for the "
                                          "parameters only"):
        step(embeds.clone().requires_grad_(True), labels)
    assert all(p.grad is None for p in model.parameters())
    step(embeds, labels)


def test_a_parameter_read_only_under_no_grad_gets_no_gradient_as_in_eager(tmp_cache):
    """Torch's joint export refuses a trainable parameter the loss does not differentiate; the
    step leaves its .grad None, as eager does, the others eager's (was: torch's AssertionError)."""
    model = EmbeddingsWithoutGrad(tiny_causal_lm("Llama", num_hidden_layers=1))
    ids = torch.randint(0, 96, (1, 16))
    eager = copy.deepcopy(model)
    step = autosp.compile(torch.export.export(model, (ids, ids.clone())))
    loss = step(ids, ids.clone())
    eager_loss = eager(ids, ids.clone())
    eager_loss.backward()
    assert relative_error(loss, eager_loss.detach()) <= 1e-5
    assert model.inner.model.model.embed_tokens.weight.grad is None
    for (name, param), reference in zip(model.named_parameters(), eager.parameters()):
        assert (param.grad is None) == (reference.grad is None), name
        assert param.grad is None or relative_error(param.grad, reference.grad) <= 1e-5, name


class CountScaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, ids, labels):
        count = (ids > 5).sum().item()  # a tensor's value as a Python number
        return torch.nn.functional.cross_entropy(self.head(self.emb(ids) * (count + 1)).flatten(0, 1), labels.flatten())


def test_a_value_read_as_a_python_number_is_refused_in_one_line(tmp_cache):
    ids = torch.randint(0, 16, (1, 8))
    ep = torch.export.export(CountScaled(), (ids, ids.clone()))
    with pytest.raises(AutoSPError, match=r"reads a tensor's value as a Python number \(.item\(\), int\(x\).*static shapes"):
        autosp.compile(ep)


def test_dynamic_shapes_are_refused_up_front(tmp_cache):
    ep = torch.export.export(NotALoss(), (torch.randn(4, 8),), dynamic_shapes=({0: torch.export.Dim("rows")},))
    with pytest.raises(AutoSPError, match=r"input x has a dynamic shape \[s\d+, 8\]: AutoSP compiles static shapes"):
        autosp.compile(ep)


def test_batchnorm_in_training_mode_names_its_buffers(tmp_cache):
    class Normed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.norm = torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)

        def forward(self, x):
            return self.norm(self.linear(x)).sum()

    ep = torch.export.export(Normed(), (torch.randn(4, 8),))
    with pytest.raises(AutoSPError, match="the forward updates buffers 'norm.running_mean', 'norm.running_var'"):
        autosp.compile(ep)


@pytest.mark.parametrize("budget, message", [
    (float("nan"), "memory budget nan is not a size"),
    ("9" * 400, "is more than 2\\^63 bytes"),
    (2**63, "is more than 2\\^63 bytes"),
    (True, "memory budget True is not a size"),
])
def test_bad_budgets_are_one_line(budget, message, llama_step):
    with pytest.raises(AutoSPError, match=message):
        autosp.compile(torch.export.export(llama_step[1], (llama_step[2], llama_step[2].clone())), remat=True,
                       memory_budget=budget)


def test_an_unwritable_cache_names_the_variable(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the cache folder should be: no folder can be made under it
    monkeypatch.setenv("AUTOSP_CACHE_DIR", str(blocked / "cache"))
    module = tiny_causal_lm("Llama", num_hidden_layers=1)
    ids = torch.randint(0, 96, (1, 16))
    with pytest.raises(AutoSPError, match="cannot write the generated program to .*; set AUTOSP_CACHE_DIR"):
        autosp.compile(torch.export.export(module, (ids, ids.clone())))


def test_a_corrupt_cache_entry_is_regenerated_and_bytecode_never_trusted(llama_step, tmp_cache):
    import importlib.util
    import py_compile

    step, module, ids = llama_step
    path = step.program_path
    ep = torch.export.export(module, (ids, ids.clone()))
    # A bytecode file whose header matches the source but whose body is garbage ("bad marshal data").
    cached = Path(importlib.util.cache_from_source(str(path)))
    py_compile.compile(str(path), cfile=str(cached))
    data = cached.read_bytes()
    cached.write_bytes(data[:16] + b"\x00garbage" * 8)
    again = autosp.compile(ep)
    assert again.program_path == path
    again(ids, ids.clone())
    path.write_text(path.read_text()[:100])  # a truncated program is written anew
    autosp.compile(ep)(ids, ids.clone())
    assert "def train_step" in path.read_text()


def test_inputs_by_name_and_in_any_layout(llama_step):
    step, module, ids = llama_step
    reference = copy.deepcopy(module)
    transposed = ids.t().contiguous().t()  # same values, other strides
    loss = step(labels=transposed.clone(), input_ids=transposed)
    assert relative_error(loss, reference(ids, ids.clone()).detach()) <= 1e-6
    with pytest.raises(AutoSPError, match="the step has no input 'tokens'; its inputs are input_ids, labels"):
        step(tokens=ids, labels=ids)
    with pytest.raises(AutoSPError, match="missing 'labels'"):
        step(input_ids=ids)
    with pytest.raises(AutoSPError, match="input 'input_ids' given by position and by name"):
        step(ids, input_ids=ids)


@pytest.mark.parametrize("option, message", [
    (dict(remat="yes"), "remat='yes': give True or False"),
    (dict(fuse="no"), "fuse='no': give True or False"),
    (dict(sp=2.0), "sp=2.0: the sequence-parallel degree must be an integer >= 1"),
    (dict(cache_dir=3), "cache_dir=3: give a folder path"),
    (dict(timeout=-1), "timeout=-1: give a positive, finite number of seconds"),
    (dict(check_every=-1), "check_every=-1: give a number of steps >= 0"),
    (dict(shard="zero3"), "shard='zero3': choose one of 'none', 'optimizer', 'gradients', 'parameters'"),
    (dict(shard="parameters"), "shard='parameters' works over the ranks of torch.distributed: initialize it first"),
    (dict(mesh=object()), "mesh= works over the ranks of torch.distributed: initialize it first"),
    (dict(optimizer="lion"), "optimizer='lion': give one of adagrad, adam, adamw,"),
    (dict(optimizer=torch.optim.LBFGS), "optimizer=LBFGS: AutoSP does not know how much state it keeps"),
    (dict(optimizer=-4), "optimizer='-4': give one of"),
])
def test_option_types_are_checked(option, message, llama_step):
    ep = torch.export.export(llama_step[1], (llama_step[2], llama_step[2].clone()))
    with pytest.raises(AutoSPError, match=re.escape(message)):
        autosp.compile(ep, **option)
