"""`autosp.compile`: import -> passes -> codegen -> TrainStep, with a cache of generated code."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from xdsl.dialects.builtin import ModuleOp, StringAttr, TensorType

from autosp.codegen import generate, train_step_of
from autosp.frontends import import_program
from autosp.ir.dtypes import torch_dtype
from autosp.passes.memory_plan import plan_memory
from autosp.pipeline import pipeline_spec, run_pipeline
from autosp.runtime.errors import AutoSPError
from autosp.report import comm_report
from autosp.runtime.mesh import check_world, make_mesh
from autosp.runtime.train_step import InputSpec, TrainStep


def default_cache_dir() -> Path:
    root = os.environ.get("AUTOSP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "autosp"
    )
    return Path(root)


def write_program(source: str, cache_dir: Path, rank: int = 0) -> Path:
    """Keep the generated source in the cache, one folder per distinct program."""
    folder = cache_dir / hashlib.sha256(source.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank{rank}.py"
    if not path.exists() or path.read_text() != source:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(source)
        tmp.replace(path)
    return path


def signature(module: ModuleOp) -> tuple[list[InputSpec], list[str]]:
    fn = train_step_of(module)
    specs = []
    for arg, attrs in zip(fn.body.block.args, fn.arg_attrs.data if fn.arg_attrs else []):
        kind = attrs.data["autosp.kind"]
        name = attrs.data.get("autosp.name")
        assert isinstance(kind, StringAttr) and isinstance(arg.type, TensorType)
        specs.append(
            InputSpec(
                kind=kind.data,
                name=name.data if isinstance(name, StringAttr) else (arg.name_hint or f"input{len(specs)}"),
                shape=tuple(arg.type.get_shape()),
                dtype=torch_dtype(arg.type.element_type),
            )
        )
    grad_of = [
        attrs.data["autosp.grad_of"].data
        for attrs in (fn.res_attrs.data if fn.res_attrs else [])
        if "autosp.grad_of" in attrs.data
    ]
    return specs, grad_of


def remat_options(ep, memory_budget, cost_model) -> tuple[str, str]:
    """The budget in bytes ("auto": the memory of the device holding the parameters, less a
    margin) and the cost model (by default the preset for that device)."""
    from autosp.passes.cost_model import device_profile, profile_for
    from autosp.passes.remat import parse_budget

    tensors = [*ep.state_dict.values(), *ep.constants.values()]
    profile = profile_for(tensors[0].device if tensors else "cpu")
    if cost_model is not None:
        profile = device_profile(cost_model, memory_bytes=profile.memory_bytes)
    budget = parse_budget(memory_budget if memory_budget is not None else "auto", profile)
    return str(budget), profile.name


def compile_module(ep, spec: str, tile_mlp="auto") -> ModuleOp:
    """Import and run the pipeline; with tile_mlp="auto", import again with gated MLPs in row
    chunks when remat finds no plan that fits without."""
    from autosp.passes.remat import RematInfeasible

    try:
        return run_pipeline(import_program(ep, tile_mlp=tile_mlp is True), spec)
    except RematInfeasible:
        if tile_mlp != "auto":
            raise
    return run_pipeline(import_program(ep, tile_mlp=True), spec)


def compile_program(ep, *, sp=1, remat=False, memory_budget=None, cost_model=None, fuse=True, tile_mlp="auto", cache_dir=None) -> TrainStep:
    if not isinstance(ep, torch.export.ExportedProgram):
        raise AutoSPError(
            f"autosp.compile takes a torch.export.ExportedProgram, got {type(ep).__name__}; "
            "export first: torch.export.export(LossWrapper(model), (input_ids, labels))"
        )
    if (memory_budget is not None or cost_model is not None) and not remat:
        raise AutoSPError("memory_budget and cost_model only apply with remat=True")
    if tile_mlp not in (True, False, "auto"):
        raise AutoSPError(f"tile_mlp={tile_mlp!r}: use True, False or 'auto'")
    options = dict(sp=sp, remat=remat, fuse=fuse)
    if remat:
        budget, model = remat_options(ep, memory_budget, cost_model)
        options.update(memory_budget=budget, cost_model=model)
    pipeline_spec(**options)  # bad options fail before the (slow) import
    rank = 0
    if sp > 1:
        import torch.distributed as dist

        check_world(sp)
        rank = dist.get_rank() % sp  # SP groups are contiguous ranks
    module = compile_module(ep, pipeline_spec(**options, rank=rank), tile_mlp)
    source = generate(module)
    path = write_program(source, Path(cache_dir) if cache_dir else default_cache_dir())
    inputs, grad_of = signature(module)
    state = {**ep.constants, **ep.state_dict}
    report = comm_report(module)
    extra = dict(
        report=report.table(),
        predicted_peak_bytes=report.memory.peak_bytes,
        predicted_tracked_bytes=plan_memory(module, workspace=False).peak_bytes,
    )
    if sp == 1:
        return TrainStep(path, inputs, grad_of, state, **extra)
    mesh = make_mesh(sp)
    return TrainStep(
        path, inputs, grad_of, state,
        groups={"sp": mesh.sp_group}, dp_group=mesh.dp_group, dp_size=mesh.dp, **extra,
    )
