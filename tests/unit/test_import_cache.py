"""The joint export is most of compile time; its IR is kept on disk by a digest of everything
it depends on, so other processes (the ranks of a job, the next launch) reuse it. A reused
import must give the very program a fresh one gives, and anything that changes the import must
change the digest."""

import pytest
import torch

import autosp
from autosp import driver
from autosp.frontends import import_key
from tests.conftest import UnderAutocast, tiny_causal_lm


def as_another_process():
    """Forget this process's imports: the next compile sees only the disk entries."""
    driver._BY_KEY.clear()


def export(model, seq=16):
    ids = torch.randint(0, 96, (1, seq), generator=torch.Generator().manual_seed(0))
    return torch.export.export(model, (ids, ids.clone())), ids


def test_a_second_process_reuses_the_import_and_gets_the_same_program(isolated_cache, monkeypatch):
    model = tiny_causal_lm("Llama")
    first_ep, ids = export(model)
    first = autosp.compile(first_ep)
    assert len(list((isolated_cache / "imports").glob("*.mlir"))) == 1

    def no_import(*args, **kwargs):
        raise AssertionError("imported again")

    monkeypatch.setattr(driver, "import_program", no_import)
    as_another_process()
    second_ep, _ = export(model)
    second = autosp.compile(second_ep)
    assert second.source == first.source
    assert "# model.model.layers.1.self_attn (LlamaAttention)" in second.source  # locations kept
    assert torch.equal(second(ids, ids), first(ids, ids))


def test_this_process_keeps_its_imports(isolated_cache, monkeypatch):
    """Another export of the same model in this process neither imports nor parses again."""
    model = tiny_causal_lm("Llama")
    first = autosp.compile(export(model)[0]).source
    monkeypatch.setattr(driver, "import_program", lambda *a, **k: (_ for _ in ()).throw(AssertionError("imported again")))
    monkeypatch.setattr(driver, "_disk_import", lambda *a, **k: (_ for _ in ()).throw(AssertionError("parsed again")))
    assert autosp.compile(export(model)[0]).source == first


def test_a_damaged_entry_is_imported_again(isolated_cache):
    model = tiny_causal_lm("Llama")
    ep, ids = export(model)
    fresh = autosp.compile(ep).source
    (entry,) = (isolated_cache / "imports").glob("*.mlir")
    entry.write_text(entry.read_text()[:-200])  # a truncated file
    as_another_process()
    again_ep, _ = export(model)
    assert autosp.compile(again_ep).source == fresh
    assert entry.read_text().endswith("} loc(unknown)")  # rewritten whole


def test_what_the_import_depends_on_changes_the_key():
    model = tiny_causal_lm("Llama")
    base = import_key(export(model)[0])
    assert import_key(export(model)[0]) == base  # the same program, exported again
    assert import_key(export(model)[0], tile_mlp=True) != base
    assert import_key(export(model, seq=24)[0]) != base
    model.model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)  # a frozen weight
    assert import_key(export(model)[0]) != base
    model.model.model.layers[0].mlp.up_proj.weight.requires_grad_(True)
    other = tiny_causal_lm("Llama", rms_norm_eps=1e-5)  # a constant in the graph
    assert import_key(export(other)[0]) != base

    # The same change inside a region torch.export keeps as a submodule (autocast here).
    under = import_key(export(UnderAutocast(model))[0])
    assert import_key(export(UnderAutocast(other))[0]) != under


@pytest.mark.parametrize("buffer_value", [0.5, 2.0])
def test_buffer_values_are_part_of_the_key(buffer_value):
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)
            self.register_buffer("scale", torch.tensor(1.0))

        def forward(self, x):
            return (self.linear(x) * self.scale).sum()

    module = Scaled()
    x = torch.randn(2, 4)
    base = import_key(torch.export.export(module, (x,)))
    module.scale.fill_(buffer_value)
    assert import_key(torch.export.export(module, (x,))) != base


def test_processes_that_miss_together_import_once(isolated_cache, monkeypatch):
    """While one process holds an entry's lock (importing), another waits for it and then
    reads its result instead of importing the same program again."""
    import fcntl
    import threading

    model = tiny_causal_lm("Llama")
    ep, ids = export(model)
    expected = autosp.compile(ep).source
    (entry,) = (isolated_cache / "imports").glob("*.mlir")
    text = entry.read_text()
    entry.unlink()
    as_another_process()

    monkeypatch.setattr(driver, "import_program", lambda *a, **k: (_ for _ in ()).throw(AssertionError("imported again")))
    with open(entry.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" is importing
        result = {}
        waiter = threading.Thread(target=lambda: result.update(source=autosp.compile(export(model)[0]).source))
        waiter.start()
        waiter.join(timeout=2)
        assert waiter.is_alive()  # it waits for the lock
        entry.write_text(text)  # the other process's import lands
    waiter.join(timeout=60)
    assert result["source"] == expected
