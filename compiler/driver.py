"""`autosp.compile`: import -> passes -> codegen -> TrainStep, with a cache of generated code."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import weakref
from collections import OrderedDict
from pathlib import Path

import torch
from xdsl.dialects.builtin import ModuleOp, StringAttr, TensorType
from xdsl.ir import Operation
from xdsl.parser import Parser
from xdsl.printer import Printer

from autosp.codegen import generate_programs
from autosp.ir.program import train_step_of
from autosp.frontends import import_key, import_program, import_settings, mode_dependent_modules
from autosp.ir import autosp_context
from autosp.input_checks import index_checks
from autosp.ir.dtypes import torch_dtype
from autosp.passes.memory_plan import plan_memory
from autosp.pipeline import RematPlan, pipeline_spec, remat_plan, run_pipeline, structure_digest, until_remat
from autosp.common.errors import AutoSPError
from autosp.common.files import write_atomically
from autosp.report import comm_report
from autosp.runtime.agreement import (
    StepAgreement, agree_on_state, collective_device, decided_by_first, error_text, rendezvous, timeout_seconds,
)
from autosp.runtime.mesh import check_world, make_mesh
from autosp.runtime.train_step import InputSpec, TrainStep


def default_cache_dir() -> Path:
    root = os.environ.get("AUTOSP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "autosp"
    )
    return Path(root).absolute()  # a step reads its files later, perhaps from another working folder


def write_programs(sources: dict[str, str], cache_dir: Path) -> dict[str, Path]:
    """Keep generated sources (file stem -> source) in the cache, one folder per distinct set. A
    cached file that differs (corrupt, truncated) is written again; it is replaced atomically,
    so a reader never sees half a file."""
    folder = cache_dir / hashlib.sha256("\0".join(sources.values()).encode()).hexdigest()[:16]
    paths = {stem: folder / f"{stem}.py" for stem in sources}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for stem, path in paths.items():
            if not path.exists() or path.read_bytes() != sources[stem].encode():
                write_atomically(path, sources[stem])
    except OSError as err:
        raise AutoSPError(
            f"cannot write the generated program to {folder}: {err.strerror or err}; set AUTOSP_CACHE_DIR "
            "(or autosp.compile(cache_dir=...)) to a writable folder"
        ) from None
    return paths


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


def remat_options(ep, memory_budget, cost_model, host_memory_budget) -> tuple[str, str, str]:
    """The budget in bytes ("auto": the memory of the device holding the parameters, less a
    margin, less what is already allocated there besides the exported program's own state, which
    the plan counts itself), the cost model (by default the preset for that device) and the host
    budget in bytes (by default "auto" on a GPU; none on CPU, where the host is the device)."""
    from autosp.passes.cost_model import device_profile, profile_for
    from autosp.passes.memory_plan import human_bytes
    from autosp.passes.remat import parse_budget, parse_host_budget

    tensors = [*ep.state_dict.values(), *ep.constants.values()]
    device = _state_device(ep)
    profile = profile_for(device)
    if cost_model is not None:
        profile = device_profile(cost_model, memory_bytes=profile.memory_bytes)
    auto = memory_budget is None or isinstance(memory_budget, str) and memory_budget.strip().lower() == "auto"
    budget = parse_budget(memory_budget if memory_budget is not None else "auto", profile)
    if auto and device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.device == device}
        others = max(0, total - free - sum(storages.values()))
        if budget - others <= 0:
            raise AutoSPError(
                f"memory budget 'auto': {human_bytes(others, 2)} of {device} is held by other allocations (other processes, "
                "tensors besides the model's), leaving nothing to plan; free them or give memory_budget in bytes"
            )
        budget -= others
    if host_memory_budget is None:
        host_memory_budget = "auto" if device.type == "cuda" else 0
    return str(budget), profile.name, str(parse_host_budget(host_memory_budget))


# The joint export dominates compile time (seconds per layer-heavy model), and compiling one
# ExportedProgram under several options (budgets, sp, fuse) imports the same graph each time:
# keep each program's imported IR while the program lives, and hand out copies.
_IMPORTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def imported(ep, tile_mlp: bool, cache_dir: Path | None = None) -> tuple[ModuleOp, str]:
    """A fresh copy of `ep`'s imported module and its index checks."""
    cache_dir = cache_dir or default_cache_dir()
    by_settings = _IMPORTED.setdefault(ep, {})
    key = import_settings(tile_mlp)
    if key not in by_settings:
        module = cached_import(ep, tile_mlp, cache_dir)
        by_settings[key] = (module, index_checks(module))
    module, checks = by_settings[key]
    return module.clone(), checks


# Imports by digest in this process, most recent last: another export of the same model (a
# copy, the next compile of a job) skips parsing the disk entry too (xDSL parses ~2 ms an op).
_BY_KEY: OrderedDict[str, ModuleOp] = OrderedDict()
_KEPT_IMPORTS = 8


def cached_import(ep, tile_mlp: bool, cache_dir: Path) -> ModuleOp:
    """`ep`'s imported module (the caller copies it before changing it), from this process's
    imports or from `cache_dir/imports` when an earlier process imported the same program with
    the same AutoSP and torch (`import_key`): the other ranks of a job and the next launch skip
    the joint export. Processes that miss together take turns (a file lock): the first imports,
    the others read its result. The IR is kept with its locations; an entry that does not parse
    or verify is imported again and replaced (atomically, as programs are)."""
    key = import_key(ep, tile_mlp)
    if key in _BY_KEY:
        _BY_KEY.move_to_end(key)
        return _BY_KEY[key]
    module = _disk_import(ep, tile_mlp, cache_dir, key)
    _BY_KEY[key] = module
    while len(_BY_KEY) > _KEPT_IMPORTS:
        _BY_KEY.popitem(last=False)
    return module


def _disk_import(ep, tile_mlp: bool, cache_dir: Path, key: str) -> ModuleOp:
    path = cache_dir / "imports" / f"{key}.mlir"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 (held across the import)
    except OSError:
        return import_program(ep, tile_mlp=tile_mlp)  # an unwritable cache only costs the import
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if path.exists():
            try:
                module = Parser(autosp_context(), path.read_text(), str(path)).parse_module()
                module.verify()
                return module
            except Exception:  # noqa: BLE001 (a damaged entry is rebuilt, never trusted)
                pass
        module = import_program(ep, tile_mlp=tile_mlp)
        text = io.StringIO()
        Printer(text, print_debuginfo=True).print_op(module)
        try:
            write_atomically(path, text.getvalue())
        except OSError:
            pass
        return module


# What compile does, in this order, when no remat plan fits: gated MLPs in row chunks, every
# token-wise chain in row chunks, attention kernels with the least scratch (slower backward),
# then plans that rerun layers (two-level checkpointing).
LEVELS = ("tile_mlp", "tile_rows", "lean_kernels")


def compile_with_one_plan(ep, options: dict, rank: int, tiling: dict, cache_dir: Path, timeout: float) -> tuple[ModuleOp, str]:
    """Import, run the pipeline and rematerialize with ONE plan for every rank: each rank makes
    its program up to remat; world rank 0 plans on its own (the largest sequence part and
    parameter shards) at the least device and host budgets of all ranks and posts the plan;
    every rank applies it to its program, so a collective it recomputes runs on every rank, in
    the same place. When nothing fits, rank 0 tries again with more in row chunks, as far as
    `tiling` allows ("auto": when needed): the gated MLPs (`tile_mlp`), then every token-wise
    chain (`tile_rows`), then attention kernels with the least scratch (`lean_kernels`)."""
    from autosp.passes.remat import RematInfeasible

    world, world_rank = options["world"], options["world_rank"]

    def program(level: list[bool]) -> tuple[ModuleOp, str]:
        module, checks = imported(ep, level[0], cache_dir)
        head, _ = until_remat(pipeline_spec(**options, rank=rank, tile_rows=level[1], lean_kernels=level[2]))
        return run_pipeline(module, head), checks

    level = [tiling[key] is True for key in LEVELS]
    module, checks = program(level)

    def decide(contributions: list[str]) -> str:
        nonlocal module, checks
        budgets, host_budgets, settings = zip(*(json.loads(c) for c in contributions))
        for r, other in enumerate(settings):
            differ = [k for k in settings[0] if other.get(k) != settings[0][k]] if other != settings[0] else []
            if differ:
                theirs = ", ".join(f"{k}={other.get(k)!r}" for k in differ)
                ours = ", ".join(f"{k}={settings[0][k]!r}" for k in differ)
                raise AutoSPError(
                    f"rank {r} compiled with {theirs}, rank 0 with {ours}: every rank must call autosp.compile with the "
                    "same options (the memory budget may differ: the plan is made for the least)"
                )
        least = {**options, "memory_budget": str(min(budgets)), "host_budget": str(min(host_budgets))}
        while True:
            more = [i for i, key in enumerate(LEVELS) if tiling[key] == "auto" and not level[i]]
            try:  # layers run twice (two-level checkpointing) only when no more tiling is left to try
                plan = remat_plan(module, **least, two_level=not more)
                break
            except RematInfeasible:
                if not more:
                    raise
                level[more[0]] = True
                module, checks = program(level)
        return json.dumps([level, plan.name, plan.recompute, plan.offload, plan.rerun, plan.structure])

    budgets = [int(options["memory_budget"]), int(options["host_budget"])]
    if world == 1:
        decided = decide([json.dumps(budgets + [{}])])
    else:
        settings = {k: v for k, v in options.items() if k not in ("memory_budget", "host_budget", "world_rank")}
        settings.update(tiling)
        decided = decided_by_first("the remat plan", world_rank, world, json.dumps(budgets + [settings]), decide, timeout)
    planned_level, name, recompute, offload, rerun, structure = json.loads(decided)
    if planned_level != level:  # rank 0 needed more in row chunks
        level = planned_level
        module, checks = program(level)
    if structure_digest(module) != structure:
        raise AutoSPError(
            f"world rank {world_rank}'s program differs from rank 0's in its ops, not only in sizes, so rank 0's remat plan "
            "cannot be applied to it (a bug: please report it with the model)"
        )
    plan = RematPlan(name, tuple(recompute), tuple(offload), tuple(rerun), structure)
    _, tail = until_remat(pipeline_spec(**options, rank=rank, tile_rows=level[1], lean_kernels=level[2], remat_plan=plan))
    return run_pipeline(module, tail), checks


def kernel_target(ep, cache_dir: Path) -> tuple[str, str]:
    """The device the kernels are chosen for (select-kernels' `target`), from where the exported
    program's state lives, and the attention kernels that failed a probe on it (`exclude`): on a
    GPU each of torch's kernels that would run one of the program's attention cases first runs
    a small case of the same kind (dtype, head dim, GQA, mask, documents) against the reference;
    one that raises or differs is not used (its reason is in the report)."""
    from autosp.ir.autosp import AttentionOp
    from autosp.ir.kernel_choice import Target, runnable
    from autosp.runtime.kernels import backend, interpreting, probe_attention

    device = _state_device(ep)
    if device.type == "cpu":
        return ("interpreter" if backend() == "triton" and interpreting() else "cpu"), ""
    if torch.version.hip:
        target = "rocm"
    else:
        major, minor = torch.cuda.get_device_capability(device)
        target = f"cuda:sm{major}{minor}"
    module, _ = imported(ep, False, cache_dir)
    cases = {op.case() for op in module.walk() if isinstance(op, AttentionOp)}
    failed: dict[str, str] = {}
    device_target = Target.parse(target)
    for case in sorted(cases, key=str):
        for kernel in runnable(case, device_target):
            if kernel in ("triton", "blockwise") or kernel in failed:
                continue
            reason = probe_attention(kernel, case.dtype, case.head_dim, case.q_heads // case.kv_heads, case.causal,
                                     case.window, case.documents, device)
            if reason is not None:
                failed[kernel] = reason
    PROBE_FAILURES.update(failed)
    return target, ",".join(sorted(failed))


# Attention kernels a probe found not working in this process: kernel -> why.
PROBE_FAILURES: dict[str, str] = {}


def _state_device(ep) -> torch.device:
    tensors = [*ep.state_dict.values(), *ep.constants.values()]
    return tensors[0].device if tensors else torch.device("cpu")


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def check_options(ep, sp, remat, memory_budget, cost_model, fuse, tile_mlp, cache_dir, check_every, shard, mesh, prefetch,
                  host_memory_budget=None, tile_rows="auto") -> None:
    """compile's arguments, each refused by name (before any slow work)."""
    from autosp.ir.autosp import SHARD_LEVELS

    if not isinstance(ep, torch.export.ExportedProgram):
        raise AutoSPError(
            f"autosp.compile takes a torch.export.ExportedProgram, got {type(ep).__name__}; "
            "export first: torch.export.export(LossWrapper(model), (input_ids, labels))"
        )
    from torch._subclasses.fake_tensor import FakeTensor

    from autosp.runtime import sharded_model

    for name, tensor in ep.state_dict.items():
        if sharded_model.replaced(tensor) and shard == "none":
            raise AutoSPError(
                f"parameter '{name}' of this program was replaced in the model by its DTensor shard (an earlier "
                "autosp.compile(shard=...)): this program would train a stale whole copy; compile it with shard= too"
            )
    # Whole-shaped stand-ins of a sharded model's parameters (autosp.export) are fake by design.
    fake = [name for name, t in {**ep.state_dict, **ep.constants}.items()
            if isinstance(t, FakeTensor) and not sharded_model.replaced(t)]
    if fake:
        raise AutoSPError(
            f"the exported program's state is fake ('{fake[0]}' and {len(fake) - 1} more: exported under a FakeTensorMode, "
            "as autosp-export builds presets): a step needs real weights; export the model with real parameters "
            "(autosp-opt plans fake exports)"
        )
    if isinstance(sp, bool) or not isinstance(sp, int) or sp < 1:
        raise AutoSPError(f"sp={sp!r}: the sequence-parallel degree must be an integer >= 1")
    for flag, value in (("remat", remat), ("fuse", fuse), ("prefetch", prefetch)):
        if not isinstance(value, bool):
            raise AutoSPError(f"{flag}={value!r}: give True or False")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise AutoSPError(f"cache_dir={cache_dir!r}: give a folder path (or set AUTOSP_CACHE_DIR)")
    if (memory_budget is not None or cost_model is not None or host_memory_budget is not None) and not remat:
        raise AutoSPError("memory_budget, host_memory_budget and cost_model only apply with remat=True")
    if host_memory_budget is not None:
        from autosp.passes.remat import parse_host_budget

        parse_host_budget(host_memory_budget)
    for flag, value in (("tile_mlp", tile_mlp), ("tile_rows", tile_rows)):
        if value not in (True, False, "auto") or isinstance(value, int) and not isinstance(value, bool):
            raise AutoSPError(f"{flag}={value!r}: use True, False or 'auto'")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 0:
        raise AutoSPError(f"check_every={check_every!r}: give a number of steps >= 0 (0: the first step only)")
    if shard not in SHARD_LEVELS:
        raise AutoSPError(
            f"shard={shard!r}: choose one of {', '.join(map(repr, SHARD_LEVELS))} (ZeRO-1: optimizer state, "
            "ZeRO-2: and gradients, ZeRO-3: and parameters)"
        )
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    if (shard != "none" or mesh is not None) and not distributed:
        what = f"shard={shard!r}" if shard != "none" else "mesh="
        raise AutoSPError(
            f"{what} works over the ranks of torch.distributed: initialize it first (launch with torchrun and call "
            "torch.distributed.init_process_group())"
        )
    if mesh is not None:
        from autosp.runtime.mesh import check_mesh

        check_mesh(mesh, sp)


def compile_program(ep, *, sp=1, remat=False, memory_budget=None, cost_model=None, fuse=True, tile_mlp="auto",
                    cache_dir=None, timeout=None, check_every=0, shard="none", optimizer=None, mesh=None,
                    prefetch=True, host_memory_budget=None, tile_rows="auto") -> TrainStep:
    from autosp.passes.optimizers import optimizer_kind
    from autosp.runtime.mesh import place

    check_options(ep, sp, remat, memory_budget, cost_model, fuse, tile_mlp, cache_dir, check_every, shard, mesh, prefetch,
                  host_memory_budget, tile_rows)
    kind = optimizer_kind(optimizer)
    seconds = timeout_seconds(timeout)
    if sp > 1 and mesh is None:
        check_world(sp)
    options = dict(sp=sp, remat=remat, memory_budget=memory_budget, cost_model=cost_model, fuse=fuse,
                   tile_mlp=tile_mlp, cache_dir=cache_dir, shard=shard, optimizer=kind, prefetch=prefetch,
                   host_memory_budget=host_memory_budget, tile_rows=tile_rows)
    if _world_size() == 1 and mesh is None and shard == "none":
        return _compile(ep, **options, world=1, world_rank=0, rank=0, timeout=seconds)
    # Several processes: sp x dp. Every rank compiles its own program, then all agree (through
    # the store, so a rank that failed or never came cannot block the others) before the
    # collective group creation.
    world, world_rank, sp_rank = place(sp, mesh)
    step, error, cause = None, None, None
    try:
        step = _compile(ep, **options, world=world, world_rank=world_rank, rank=sp_rank, timeout=seconds)
    except Exception as err:  # noqa: BLE001 (posted to the other ranks, then raised here too)
        error, cause = error_text(err), err
    try:
        rendezvous("autosp.compile", error, seconds)
    except AutoSPError as agreed:
        raise agreed from cause
    layout = make_mesh(sp, step.device.type, mesh)
    if shard != "none":
        # The whole weights are seen for the last time here: every rank must hold the same ones.
        names, tensors = zip(*step.named_parameters()) if step.named_parameters() else ((), ())
        agree_on_state(list(names), list(tensors), collective_device())
        step.shard_parameters(layout.world_mesh, world_rank)
    step.distribute(
        groups={"sp": layout.sp_group, "world": layout.world_mesh.get_group()}, dp_group=layout.dp_group, dp_size=layout.dp,
        agreement=StepAgreement(layout.sp_groups, [s.name for s in step.user_inputs],
                                [s.name for s, _ in step.replicated_state], seconds, check_every),
    )
    return step


def _compile(ep, *, sp, remat, memory_budget, cost_model, fuse, tile_mlp, cache_dir, shard, optimizer, prefetch, world,
             world_rank, rank, timeout, host_memory_budget, tile_rows) -> TrainStep:
    options = dict(sp=sp, remat=remat, fuse=fuse, shard=shard, world=world, world_rank=world_rank, optimizer=optimizer,
                   prefetch=prefetch)
    if remat:
        budget, model, host = remat_options(ep, memory_budget, cost_model, host_memory_budget)
        options.update(memory_budget=budget, cost_model=model, host_budget=host)
    pipeline_spec(**options)  # bad options fail before the (slow) import
    cache = Path(cache_dir).absolute() if cache_dir else default_cache_dir()
    options["target"], options["exclude"] = kernel_target(ep, cache)
    from autosp.passes import tile_rows as tiling

    options["tile_bytes"] = tiling.CHUNK_BYTES
    if remat:
        levels = {"tile_mlp": tile_mlp, "tile_rows": tile_rows, "lean_kernels": "auto"}
        module, checks = compile_with_one_plan(ep, options, rank, levels, cache, timeout)
    else:  # nothing to fit: in row chunks only what is asked for
        module, checks = imported(ep, tile_mlp is True, cache)
        module = run_pipeline(module, pipeline_spec(**options, rank=rank, tile_rows=tile_rows is True))
    program, measured = generate_programs(module, checks)
    paths = write_programs({"program": program, "measured": measured}, cache)
    inputs, grad_of = signature(module)
    state = {**ep.constants, **ep.state_dict}
    report = comm_report(module)
    return TrainStep(
        paths["program"], inputs, grad_of, state, measured_path=paths["measured"],
        report=report.table(),
        predicted_peak_bytes=report.memory.peak_bytes,
        predicted_tracked_bytes=plan_memory(module, workspace=False, optimizer_state=False).peak_bytes,
        predicted_held=report.held,
        predicted_offload=report.timeline,
        kernels=report.kernels,
        gradient_order=gradient_order(module),
        modes=mode_dependent_modules(ep),
    )


def gradient_order(module: ModuleOp) -> list[int]:
    """The gradients the step returns (after the loss), by index, in the order the program makes
    them: the order eager's backward would reach the parameters (and run their hooks) in."""
    fn = train_step_of(module)
    position = {op: i for i, op in enumerate(fn.body.block.ops)}
    returned = list(fn.body.block.last_op.operands)[1:]
    made = [position.get(v.owner, -1) if isinstance(v.owner, Operation) else -1 for v in returned]
    return sorted(range(len(returned)), key=lambda i: made[i])
