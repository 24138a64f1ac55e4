"""autosp-bench zoo: every causal LM of the installed transformers, built from its own config
class at tiny size with random weights, trained one step by AutoSP at each sp degree against eager
PyTorch on the same model and data (the loss and every parameter gradient), each model in a
process of its own (a crash or a hang costs that model only).

A model ends as one of:
- exact: the loss and every gradient within TOLERANCE relative (a gradient eager makes near zero,
  e.g. a key bias under softmax, within an absolute floor of ABS_FLOOR times the largest gradient);
- inexact: it ran, but some error is larger (the worst named);
- refused: an AutoSPError, its one line;
- failed: any other exception (type, message, where), or a timeout;
- not exportable / cannot train: torch.export, or eager itself from input_ids and labels, fails
  (not AutoSP's to fix; the reason is kept);
- not tiny: no recipe builds it under MAX_PARAMETERS (the zoo's limit).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout
TOLERANCE = 1e-5
ABS_FLOOR = 1e-3
SEQ = 33  # odd: the ranks of sp=2 hold 17 and 16 tokens
VOCAB = 128

# Config attributes shrunk to tiny values, by name (only those the config has and sets to a
# larger number); head counts keep their kind (MQA stays MQA, MHA stays MHA).
TINY = {
    "vocab_size": VOCAB, "hidden_size": 64, "n_embd": 64, "d_model": 64, "dim": 64, "embed_dim": 64,
    "embedding_size": 64, "attention_hidden_size": 64,
    "intermediate_size": 128, "ffn_dim": 128, "n_inner": 128, "d_ff": 128, "ffn_hidden_size": 128, "dim_ff": 128,
    "decoder_ffn_dim": 128, "encoder_ffn_dim": 128, "shared_intermediate_size": 64,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "shared_experts_intermediate_size": 32,
    "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "n_layers": 2, "decoder_layers": 2,
    "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "n_heads": 4, "decoder_attention_heads": 4,
    "head_dim": 16, "attention_head_dim": 16, "kv_channels": 16, "dim_head": 16,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "top_k": 2, "n_group": 1, "topk_group": 1,
    "q_lora_rank": 32, "kv_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16,
    "qk_head_dim": 24, "index_head_dim": 16, "index_topk": 8, "index_n_heads": 2,
    "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "mamba_n_heads": 4, "mamba_d_state": 16, "mamba_head_dim": 16, "mamba_chunk_size": 16, "chunk_size": 16,
    "state_size": 16, "conv_kernel": 4, "time_step_rank": 8, "mamba_dt_rank": 8,
    "max_position_embeddings": 256, "n_positions": 256, "n_ctx": 256, "max_seq_len": 256, "seq_length": 256,
    "model_max_length": 256, "original_max_position_embeddings": 256,
    "sliding_window": 16, "sliding_window_size": 16, "attention_window_size": 16, "local_attention_window_len": 16,
    "attention_chunk_size": 16, "rotary_dim": 8,
}
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "multi_query_group_num", "n_head_kv", "num_key_value_groups")
TOKEN_IDS = re.compile(r".*_token_(id|index)$")
DROPOUT = re.compile(r"drop", re.I)


def entries() -> list[tuple[str, str]]:
    """(model type, class name) of every causal LM transformers maps, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items())


# Per-head dims: what a model's code may tie to other dimensions in ways a generic recipe misses.
HEAD_DIMS = {
    "head_dim", "attention_head_dim", "kv_channels", "dim_head", "q_lora_rank", "kv_lora_rank",
    "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "qk_head_dim", "index_head_dim",
    "linear_key_head_dim", "linear_value_head_dim", "mamba_head_dim", "mamba_d_state", "state_size",
    "time_step_rank", "mamba_dt_rank",
}
# Tried in order until eager trains: everything tiny; tiny but the per-head dims; the default
# widths with 2 layers, a small vocabulary and few experts (if that is still small).
RECIPES = {
    "tiny": set(TINY),
    "tiny-but-head-dims": set(TINY) - HEAD_DIMS,
    "two-layers": {"vocab_size", "num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers",
                   "num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
                   "moe_topk", "top_k", "n_group", "topk_group", "moe_intermediate_size", "intermediate_size"},
}
MAX_PARAMETERS = 50_000_000  # on 2 CPU cores, each of 2 ranks holds the model 4 times


class TooLarge(ValueError):
    """No recipe makes the model small: the zoo's limit, not the model's or AutoSP's."""


def _overrides(config, names: set[str]) -> dict:
    """The shrunk settings of a default config, to build it again with them (so that what its
    __init__ derives from them follows)."""
    heads = getattr(config, "num_attention_heads", None)
    changed: dict = {}
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > TINY[name]:
            changed[name] = TINY[name]
    if "num_attention_heads" in names:
        for name in KV_HEADS:
            value = getattr(config, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                changed[name] = 4 if heads is not None and value >= heads else 2
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and layer_types:  # hybrids: one layer of each kind, in order
        kinds = list(dict.fromkeys(layer_types))
        kinds += kinds[-1:] * (2 - len(kinds))
        changed["layer_types"] = kinds
        for name in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(getattr(config, name, None), int):
                changed[name] = len(kinds)
    for name, value in config.to_dict().items():
        if DROPOUT.search(name) and isinstance(value, float) and value > 0:
            changed[name] = 0.0  # random masks cannot be compared with eager's
        elif TOKEN_IDS.match(name) and isinstance(value, int) and value >= VOCAB:
            changed[name] = VOCAB - 1 - len(name) % 8  # distinct small ids
        elif TOKEN_IDS.match(name) and isinstance(value, list):
            changed[name] = [v if not isinstance(v, int) or v < VOCAB else VOCAB - 1 for v in value]
    if getattr(config, "is_decoder", None) is False:
        changed["is_decoder"] = True  # encoder families' causal-LM heads need it (Reformer)
    # Leave out what the config class derives itself (a property without a setter).
    def settable(name: str) -> bool:
        attribute = getattr(type(config), getattr(config, "attribute_map", {}).get(name, name), None)
        return not isinstance(attribute, property) or attribute.fset is not None

    return {name: value for name, value in changed.items() if settable(name)}


def tiny_model(model_type: str, recipe: str):
    """The model type's causal LM from its default config shrunk by `recipe`, SDPA attention
    where the class has it, seeded random weights, fp32, on CPU."""
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    default = AutoConfig.for_model(model_type)
    config = AutoConfig.for_model(model_type, **_overrides(default, RECIPES[recipe]))
    for name in ("text_config", "decoder"):
        inner = getattr(config, name, None)
        if inner is not None and hasattr(inner, "to_dict") and inner is not config:
            for key, value in _overrides(inner, RECIPES[recipe]).items():  # settable ones only
                setattr(inner, key, value)
    cls = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])
    with torch.device("meta"):
        size = sum(p.numel() for p in cls._from_config(config).parameters())
    if size > MAX_PARAMETERS:
        raise TooLarge(f"{size / 1e6:.0f}M parameters with the {recipe} recipe (more than {MAX_PARAMETERS / 1e6:.0f}M)")
    torch.manual_seed(0)
    try:
        model = cls._from_config(config, attn_implementation="sdpa")
    except (ValueError, ImportError):
        model = cls._from_config(config, attn_implementation="eager")
    return model.float().train()


def trained_eagerly(model_type: str, ids, labels):
    """(recipe, loss module, its eager twin after one forward + backward, the eager loss) for the
    first recipe whose model trains; raises the first recipe's error if none does."""
    import copy

    errors = []
    for recipe in RECIPES:
        try:
            model = loss_module(tiny_model(model_type, recipe))
            reference = copy.deepcopy(model)
            eager_loss = reference(ids, labels)
            eager_loss.backward()
            return recipe, model, reference, eager_loss
        except Exception as err:  # noqa: BLE001 (the next recipe may do)
            errors.append(err)
    raise next((e for e in errors if not isinstance(e, TooLarge)), errors[0])


def loss_module(model):
    """forward(input_ids, labels) -> model(input_ids=..., labels=..., [use_cache=False]).loss."""
    import torch

    accepts = inspect.signature(model.forward).parameters
    extra = {"use_cache": False} if "use_cache" in accepts or any(
        p.kind == p.VAR_KEYWORD for p in accepts.values()) else {}

    class Loss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, labels):
            return self.model(input_ids=input_ids, labels=labels, **extra).loss

    return Loss()


def batch(seed: int = 1234):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB - 8, (1, SEQ), generator=g)
    labels = ids.clone()
    labels[0, : SEQ // 3] = -100  # a prompt not trained on
    labels[0, SEQ // 2 :: 5] = -100
    return ids, labels


def errors(loss, grads, eager_loss, eager_grads) -> dict:
    """Relative errors of the loss and the worst gradient (near-zero ones against the floor)."""
    import torch

    def relative(a, b, scale):
        if not torch.equal(a.isnan(), b.isnan()):
            return float("inf")
        a, b = a[~b.isnan()], b[~b.isnan()]
        return 0.0 if b.numel() == 0 else (a - b).abs().max().item() / max(b.abs().max().item(), scale, 1e-30)

    largest = max((g.abs().max().item() for g in eager_grads.values() if g is not None and g.numel()), default=0.0)
    worst, where = 0.0, None
    for name, expected in eager_grads.items():
        got = grads.get(name)
        if (got is None) != (expected is None):
            return {"loss": relative(loss, eager_loss, 0.0), "grad": float("inf"), "worst": f"{name}: gradient "
                    f"{'missing' if got is None else 'where eager has none'}"}
        if expected is not None:
            err = relative(got.to(expected.dtype), expected, ABS_FLOOR * largest)
            if err > worst:
                worst, where = err, name
    return {"loss": relative(loss.detach(), eager_loss.detach(), 0.0), "grad": worst, "worst": where}


def _reason(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    # Where in AutoSP's own code (this checkout, not an installed package) it was raised.
    ours = [f for f in frames if f.filename.startswith(ROOT) and "site-packages" not in f.filename]
    at = ours[-1] if ours else (frames[-1] if frames else None)
    where = f" ({os.path.basename(at.filename)}:{at.lineno})" if at else ""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300] + where


def _grads(module) -> dict:
    return {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in module.named_parameters()
            if p.requires_grad}


def check_model(model_type: str, sp: int, rank: int = 0, init_file: str | None = None) -> dict:
    """One model at one sp degree on this process (one rank of `sp` when init_file is given)."""
    import torch

    import autosp
    from autosp.common.errors import AutoSPError

    ids, labels = batch()
    try:
        recipe, model, reference, eager_loss = trained_eagerly(model_type, ids, labels)
    except TooLarge as err:
        return {"status": "not tiny", "reason": str(err)}
    except Exception as err:  # noqa: BLE001 (the model itself cannot train from input_ids)
        return {"status": "cannot train", "reason": _reason(err)}
    try:
        ep = torch.export.export(model, (ids, labels))
    except Exception as err:  # noqa: BLE001
        return {"status": "not exportable", "recipe": recipe, "reason": _reason(err)}
    if init_file is not None:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=sp)
    try:
        step = autosp.compile(ep, sp=sp)
        loss = step(ids, labels)
    except AutoSPError as err:
        line = str(err).splitlines()[0]
        # The ranks' agreement carries any rank's exception as an AutoSPError: a crash is no refusal.
        crashed = re.match(r"rank \d+: (?!AutoSPError)\w+(Error|Exception)\b", line)
        return {"status": "failed" if crashed else "refused", "recipe": recipe, "reason": line}
    except Exception as err:  # noqa: BLE001
        return {"status": "failed", "recipe": recipe, "reason": _reason(err)}
    result = errors(loss, _grads(model), eager_loss, _grads(reference))
    exact = result["loss"] <= TOLERANCE and result["grad"] <= TOLERANCE
    return {"status": "exact" if exact else "inexact", "recipe": recipe, **result}


def _rank(rank: int, model_type: str, sp: int, init_file: str, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    result = check_model(model_type, sp, rank, init_file)
    with open(f"{out}.{rank}", "w") as f:
        json.dump(result, f)


def check_in_process(model_type: str, sp: int) -> dict:
    """Entry point of one model's own process: sp=1 here, sp>1 on gloo ranks it spawns."""
    import torch

    torch.set_num_threads(1)
    if sp == 1:
        return check_model(model_type, 1)
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result")
        mp.spawn(_rank, args=(model_type, sp, os.path.join(folder, "init"), out), nprocs=sp)
        results = [json.load(open(f"{out}.{r}")) for r in range(sp)]
    worst = max(results, key=lambda r: (r["status"] != "exact", r.get("grad", 0.0)))
    return worst


def run_one(model_type: str, sp: int, timeout: float) -> dict:
    started = time.perf_counter()
    code = ("import json, sys; from autosp.tools.zoo import check_in_process; "
            f"print('ZOO' + json.dumps(check_in_process({model_type!r}, {sp})))")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        lines = [line for line in done.stdout.splitlines() if line.startswith("ZOO")]
        if lines:
            result = json.loads(lines[-1][3:])
        else:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            result = {"status": "failed", "reason": f"the process died (exit {done.returncode}): {tail[:300]}"}
    except subprocess.TimeoutExpired:
        result = {"status": "failed", "reason": f"timed out after {timeout:.0f}s"}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def markdown(results: dict) -> str:
    """The supported-models table (generated; never edited by hand)."""
    sps = sorted({int(sp) for r in results["models"].values() for sp in r["sp"]})
    run, total = len(results["models"]), results.get("entries", len(results["models"]))
    lines = [
        "# Models: every causal LM of transformers " + results["transformers"],
        "",
        "Generated by `autosp-bench zoo` (do not edit): each model built from its own config class at tiny",
        f"size, fp32, {SEQ} tokens, one step against eager (loss and every gradient within {TOLERANCE:g} relative;",
        f"near-zero gradients within {ABS_FLOOR:g} of the largest).",
        "",
        f"{run} of the {total} causal LMs transformers maps were run"
        + ("." if run >= total else "; `autosp-bench zoo --resume -o benchmarks/zoo.json --table docs/models.md` runs the rest."),
        "",
        "| " + " | ".join(["status"] + [f"sp={sp}" for sp in sps]) + " |",
        "|---" * (1 + len(sps)) + "|",
    ]
    for status in ("exact", "inexact", "refused", "failed", "not exportable", "cannot train", "not tiny"):
        counts = [sum(r["sp"].get(str(sp), {}).get("status") == status for r in results["models"].values()) for sp in sps]
        lines.append(f"| {status} | " + " | ".join(map(str, counts)) + " |")
    lines += ["", "| model type | class | " + " | ".join(f"sp={sp}" for sp in sps) + " |", "|---|---|" + "---|" * len(sps)]
    for model_type, r in sorted(results["models"].items()):
        cells = []
        for sp in sps:
            one = r["sp"].get(str(sp))
            if one is None:
                cells.append("")
            elif one["status"] in ("exact", "inexact"):
                cells.append(f"{one['status']} ({max(one['loss'], one['grad']):.1e})")
            else:
                cells.append(f"{one['status']}: {one['reason']}".replace("|", "\\|"))
        lines.append(f"| {model_type} | {r['class']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_zoo(args) -> None:
    import transformers
    from rich.console import Console

    from autosp.common.files import write_atomically

    console = Console(soft_wrap=True)
    chosen = [(t, c) for t, c in entries() if re.search(args.only, t)] if args.only else entries()
    results: dict = {"transformers": transformers.__version__, "tolerance": TOLERANCE, "abs_floor": ABS_FLOOR,
                     "seq": SEQ, "models": {}}
    if args.resume and os.path.exists(args.output):
        results = json.load(open(args.output))
    results["entries"] = len(entries())
    for i, (model_type, class_name) in enumerate(chosen, 1):
        entry = results["models"].setdefault(model_type, {"class": class_name, "sp": {}})
        for sp in args.sp:
            if str(sp) in entry["sp"] and entry["sp"][str(sp)]["status"] not in args.redo:
                continue
            if sp > 1 and entry["sp"].get("1", {}).get("status") in ("not exportable", "cannot train", "not tiny"):
                entry["sp"][str(sp)] = entry["sp"]["1"]  # nothing of AutoSP's ran
                continue
            entry["sp"][str(sp)] = one = run_one(model_type, sp, args.timeout)
            console.print(f"[{i}/{len(chosen)}] {model_type} sp={sp}: {one['status']} "
                          f"{one.get('reason') or max(one.get('loss', 0), one.get('grad', 0))} ({one['seconds']}s)",
                          markup=False, highlight=False)
            write_atomically(args.output, json.dumps(results, indent=1, sort_keys=True))
    if args.table:
        write_atomically(args.table, markdown(results))
        console.print(f"wrote {args.output} and {args.table}")
    else:
        console.print(f"wrote {args.output}")
