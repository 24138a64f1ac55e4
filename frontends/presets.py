"""HF causal-LM presets (configs only: random weights, nothing downloaded) and the loss wrapper.

    ep = export_preset("llama-3.2-1b", seq=131072, fake=True)

With fake=True the model is built and exported under a FakeTensorMode: no weight or activation
memory is allocated, so the shapes of an 8B model at 1M tokens can be exported and compiled to IR
on a laptop; only the IR (never the weights) goes into the program.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

import torch

from autosp.common.errors import AutoSPError


class CausalLMLoss(torch.nn.Module):
    """forward(input_ids, labels[, position_ids]) -> the model's mean next-token loss (labels -100
    ignored). Position ids that restart (0, 1, 2, 0, 1, ...) pack several documents into one row:
    HF then keeps attention inside each document."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, labels=labels, position_ids=position_ids, use_cache=False).loss


def packed_position_ids(lengths: list[int], batch: int = 1) -> torch.Tensor:
    """[batch, sum(lengths)] position ids of documents of these lengths packed into each row."""
    return torch.cat([torch.arange(n) for n in lengths]).repeat(batch, 1)


def _llama3_rope(factor: float) -> dict:
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    }


# name -> (transformers config class, config kwargs)
PRESETS: dict[str, tuple[str, dict]] = {
    "tiny-llama": ("LlamaConfig", dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
    )),
    "tiny-qwen2": ("Qwen2Config", dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
    )),
    "tiny-mistral": ("MistralConfig", dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=8192,
        sliding_window=None,
    )),
    "llama-3.2-1b": ("LlamaConfig", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
        max_position_embeddings=131072, tie_word_embeddings=True, rope_parameters=_llama3_rope(32.0),
    )),
    "llama-3.1-8b": ("LlamaConfig", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        max_position_embeddings=131072, tie_word_embeddings=False, rope_parameters=_llama3_rope(8.0),
    )),
    "qwen2-0.5b": ("Qwen2Config", dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, rms_norm_eps=1e-6,
        max_position_embeddings=32768, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )),
}


def preset_config(name: str, layers: int | None = None):
    import transformers

    if name not in PRESETS:
        raise AutoSPError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    config_class, kwargs = PRESETS[name]
    kwargs = dict(kwargs)
    if layers is not None:
        if layers < 1:
            raise AutoSPError(f"--layers={layers}: need at least one layer")
        kwargs["num_hidden_layers"] = layers
    config = getattr(transformers, config_class)(**kwargs)
    config._attn_implementation = "sdpa"
    return config


def build_preset(
    name: str, *, seq: int, batch: int = 1, layers: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32,
    documents: int | None = None,
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """(loss module, (input_ids, labels)) for a preset, random weights (in `dtype`) and random
    tokens; with `documents`, each row packs documents of that many tokens (the last one shorter)
    and the inputs end with their position ids."""
    import transformers

    if seq < 2 or batch < 1:
        raise AutoSPError(f"--seq={seq} --batch={batch}: need seq >= 2 and batch >= 1")
    config = preset_config(name, layers)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    input_ids = torch.randint(0, config.vocab_size, (batch, seq))
    if documents is None:
        return CausalLMLoss(model), (input_ids, input_ids.clone())
    if documents < 1:
        raise AutoSPError(f"--documents={documents}: a document needs at least one token")
    lengths = [documents] * (seq // documents) + ([seq % documents] if seq % documents else [])
    return CausalLMLoss(model), (input_ids, input_ids.clone(), packed_position_ids(lengths, batch))


def export_preset(
    name: str, *, seq: int, batch: int = 1, layers: int | None = None, fake: bool = False, dtype: torch.dtype = torch.float32,
    documents: int | None = None,
):
    """torch.export of a preset's loss module; fake=True allocates nothing (IR only)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    with mode:
        module, inputs = build_preset(name, seq=seq, batch=batch, layers=layers, dtype=dtype, documents=documents)
        return export_loss_module(module, inputs)


def load_factory(spec: str) -> Callable[..., tuple[torch.nn.Module, tuple]]:
    """`pkg.mod:factory` -> the factory; it is called as factory(seq=..., batch=...)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise AutoSPError(f"--module {spec}: expected 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        hint = ""
        local = Path(*module_name.split(".")).with_suffix(".py")
        if local.exists() and getattr(err, "name", None) in (module_name, module_name.split(".")[0]):
            hint = f"; {local} is in the current directory, which is not on the module path: run with PYTHONPATH=."
        raise AutoSPError(f"--module {spec}: cannot import {module_name} ({err}){hint}") from None
    except Exception as err:  # noqa: BLE001 (the user's module failed while importing)
        raise AutoSPError(f"--module {spec}: importing {module_name} raised {type(err).__name__}: {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise AutoSPError(f"--module {spec}: {module_name} has no callable '{attr}'")
    return factory


def call_factory(spec: str, factory: Callable, seq: int, batch: int) -> tuple[torch.nn.Module, tuple]:
    """factory(seq=, batch=) -> (loss module, example inputs), every way it can go wrong named."""
    try:
        inspect.signature(factory).bind(seq=seq, batch=batch)
    except TypeError:
        raise AutoSPError(
            f"--module {spec}: the factory must accept seq= and batch= keywords; its signature is "
            f"{inspect.signature(factory)}"
        ) from None
    except ValueError:  # no signature (a builtin): let the call tell
        pass
    try:
        made = factory(seq=seq, batch=batch)
    except Exception as err:  # noqa: BLE001 (the user's code)
        raise AutoSPError(f"--module {spec}: the factory raised {type(err).__name__}: {err}") from err
    if (
        not isinstance(made, (tuple, list)) or len(made) != 2 or not isinstance(made[0], torch.nn.Module)
        or not isinstance(made[1], (tuple, list)) or not all(isinstance(x, torch.Tensor) for x in made[1])
    ):
        got = type(made).__name__ if not isinstance(made, (tuple, list)) else f"({', '.join(type(m).__name__ for m in made)})"
        raise AutoSPError(f"--module {spec}: the factory returned {got}; return (loss_module, (input tensors, ...))")
    return made[0], tuple(made[1])


def export_loss_module(module: torch.nn.Module, inputs: tuple) -> torch.export.ExportedProgram:
    try:
        return torch.export.export(module, inputs)
    except Exception as err:  # torch.export's errors are long; keep the first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AutoSPError(f"torch.export failed: {first}") from err
