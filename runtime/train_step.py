"""`TrainStep`: runs a generated per-rank program and hands gradients to the user's optimizer.

    loss = step(input_ids, labels)   # forward + backward; grads accumulate into param.grad

The parameters are the very tensors of the exported program's state_dict (the user's model
parameters), so `torch.optim` optimizers built on the model work unchanged. With a sharded
training state (ZeRO, `shard_parameters`), the step replaces them in the model by DTensors
(Shard(0) over the world mesh, as FSDP2's fully_shard does): the program takes their local
shards and gives back gradient shards, stored as DTensor `.grad`s.

Before the program runs, the step checks what it is given (inputs, the parameters' shapes,
dtypes, identity and trainability, the autograd/autocast mode, module hooks, index inputs
against their tables) and, on several processes, agrees on the verdict with every rank
(runtime/agreement.py): a step either runs on every rank or raises the same AutoSPError on
every rank, before any collective. The gradients are then stored all or nothing, as eager's
backward would leave them: a parameter frozen since compile gets none, each parameter's
gradient hooks (`register_hook`) see its gradient before it is stored (and before the average
over data-parallel replicas, as under DDP), its post-accumulate hooks run after, parameters in
the order the program makes their gradients. Calls from several threads run one at a time.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
import types
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from autosp.runtime.agreement import error_text
from autosp.runtime.collectives import average_in_place
from autosp.common.errors import AutoSPError
from autosp.runtime import sharded_model
from autosp.runtime.offload import HostPool


@dataclass(frozen=True)
class InputSpec:
    """One argument of the generated `train_step`."""

    kind: str  # parameter / buffer / constant / input
    name: str  # state_dict key, or the user input's name
    shape: tuple[int, ...]
    dtype: torch.dtype


def load_program(path: Path) -> types.ModuleType:
    """Execute a generated module from its source (never from cached bytecode, which a crash or
    a copy can leave stale or corrupt); tracebacks still show the generated lines."""
    name = f"autosp_generated_{path.parent.name}_{path.stem}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    sys.modules[name] = module
    exec(code, module.__dict__)  # noqa: S102 (our own generated code)
    return module


def _described(dtype: torch.dtype, shape) -> str:
    return f"{str(dtype).removeprefix('torch.')}{list(shape)}"


def _module_slots(tensors: list[torch.Tensor]) -> tuple[list[list[tuple[weakref.ref, str, str]]], list[weakref.ref]]:
    """For each tensor, the (module, '_parameters' | '_buffers', name) slots holding it now, so
    a step can tell when one was replaced by a new tensor (`model.lm_head.weight = ...`); and
    every module holding one of them or containing such a module (whose hooks the step checks)."""
    index = {id(t): i for i, t in enumerate(tensors)}
    slots: list[list[tuple[weakref.ref, str, str]]] = [[] for _ in tensors]
    parents: dict[int, list[torch.nn.Module]] = {}
    holders: dict[int, torch.nn.Module] = {}
    for obj in gc.get_objects():
        if not issubclass(type(obj), torch.nn.Module):  # type(): some objects warn on __class__
            continue
        for child in obj.__dict__.get("_modules", {}).values():
            if child is not None:
                parents.setdefault(id(child), []).append(obj)
        for kind in ("_parameters", "_buffers"):
            for name, value in obj.__dict__.get(kind, {}).items():
                i = index.get(id(value))
                if i is not None and value is tensors[i]:
                    slots[i].append((weakref.ref(obj), kind, name))
                    holders[id(obj)] = obj
    tree, todo = {}, list(holders.values())
    while todo:  # the holders and their ancestors
        module = todo.pop()
        if id(module) not in tree:
            tree[id(module)] = module
            todo.extend(parents.get(id(module), []))
    return slots, [weakref.ref(m) for m in tree.values()]


def _non_overlapping(t: torch.Tensor) -> bool:
    """No two elements share memory, so an in-place add into `t` is well defined."""
    dims = sorted((stride, size) for stride, size in zip(t.stride(), t.shape) if size > 1)
    reach = 0  # the furthest offset the smaller-stride dims can reach
    for stride, size in dims:
        if stride <= reach:
            return False
        reach += stride * (size - 1)
    return True


class TrainStep:
    def __init__(
        self,
        program_path: Path,
        inputs: list[InputSpec],
        grad_of: list[str],
        state: dict[str, torch.Tensor],
        report: str = "",
        predicted_peak_bytes: int = 0,
        predicted_tracked_bytes: int = 0,
        predicted_held: dict[str, int] | None = None,
        measured_path: Path | None = None,
        predicted_offload: dict | None = None,
        kernels: dict[str, dict[str, int]] | None = None,
        gradient_order: list[int] | None = None,
        modes: dict[str, tuple[str, bool]] | None = None,
    ):
        self.program_path = Path(program_path)
        # The same program handing each value it makes to TRACK, for measure_memory.
        self.measured_path = Path(measured_path) if measured_path else None
        self._measured = None
        # This rank's predicted peak: with the kernels' scratch, and without it (what
        # measure_memory sees; torch.cuda.max_memory_allocated sees the former).
        self.predicted_peak_bytes = predicted_peak_bytes
        self.predicted_tracked_bytes = predicted_tracked_bytes
        # The predicted peak by what it holds: parameters, gradients, optimizer state, gathered
        # parameters, activations, buffers and inputs, kernel workspace (bytes).
        self.predicted_held = dict(predicted_held or {})
        # The host copies' estimate (report.offload_timeline): bytes each way, seconds of
        # copy time the compute stream waits for ("exposed_out", "exposed_in"), the step's.
        self.predicted_offload = dict(predicted_offload or {})
        # The kernels the compiler chose (select-kernels): {"attention": {"cudnn": 16}, ...}.
        self.kernels = {op: dict(counts) for op, counts in (kernels or {}).items()}
        # The parameters (by index in grad_of) in the order the program makes their gradients:
        # the order eager's backward would run their hooks in.
        self.gradient_order = list(gradient_order) if gradient_order is not None else list(range(len(grad_of)))
        self._lock = threading.RLock()  # one call at a time: the program's globals (host pool, tracker)
        self.inputs = inputs
        self.grad_of = grad_of
        self.report = report
        self.dp_group, self.dp_size, self.agreement = None, 1, None
        self.sharded = False  # parameters are DTensors holding this rank's shard
        self._replaced: list[tuple[weakref.ref, int]] = []  # the whole parameters sharding replaced (and their bytes)
        self._failed_mid_step: str | None = None
        missing = [s.name for s in inputs if s.kind != "input" and s.name not in state]
        if missing:
            raise AutoSPError(f"the program needs state the exported program lacks: {', '.join(missing)}")
        self._state = [state[s.name] if s.kind != "input" else None for s in inputs]
        self.user_inputs = [s for s in inputs if s.kind == "input"]
        self._state_specs = [(s, t) for s, t in zip(inputs, self._state) if t is not None]
        self.state_names = [s.name for s, _ in self._state_specs]
        by_name = {s.name: t for s, t in self._state_specs if s.kind == "parameter"}
        self.parameters = [by_name[name] for name in grad_of]
        devices = {t.device for _, t in self._state_specs}
        if len(devices) > 1:
            raise AutoSPError(f"parameters and buffers are on several devices ({sorted(map(str, devices))}); move the model to one")
        self.device = devices.pop() if devices else torch.device("cpu")
        self._slots, self._tree = _module_slots([t for _, t in self._state_specs])
        # Frozen when compiled (no gradient made); a trainable one the loss does not reach has none either, as in eager.
        self._frozen_at_compile = {s.name for s, t in self._state_specs if s.kind == "parameter" and not t.requires_grad}
        self._forward_hooks = _forward_hooks(self._modules())  # exported with them; others would be skipped
        self._modes = _mode_dependent(self._modules(), modes or {})
        self.program = load_program(self.program_path)
        self.program.DEVICE = self.device
        pool_bytes = getattr(self.program, "HOST_POOL_BYTES", 0)
        self.program.HOST = HostPool(pool_bytes, self.device) if pool_bytes else None

    def distribute(self, groups: dict[str, object], dp_group, dp_size: int, agreement) -> None:
        """Run as one rank of sp x dp: the program's process groups, the data-parallel group
        whose replicas' gradients are averaged, and the per-step agreement of all ranks."""
        self.program.GROUPS.update(groups)  # the measured program shares this dict
        self.dp_group, self.dp_size, self.agreement = dp_group, dp_size, agreement

    def shard_parameters(self, world_mesh, world_rank: int) -> None:
        """Replace every parameter, in each module slot that holds it, by an nn.Parameter DTensor:
        Shard(0) over `world_mesh` (a 0-dim one Replicate()) with this rank's rows, cut as the
        program was compiled (DTensor's own cut, torch.chunk). No communication: every rank holds
        the same weights (checked before), so each takes its own rows."""
        from torch.distributed.tensor import DTensor, Replicate, Shard

        from autosp.common.sizes import chunk_sizes

        world = world_mesh.size()
        shards: dict[int, torch.nn.Parameter] = {}  # id(whole) -> its DTensor (tied weights: one)
        reused = False  # some parameter sharded by an earlier compile: its module slots are elsewhere
        state_index = [i for i, t in enumerate(self._state) if t is not None]
        for j, ((spec, tensor), slots) in enumerate(zip(self._state_specs, self._slots)):
            if spec.kind != "parameter":
                continue
            earlier = sharded_model.replacement(tensor)
            if earlier is not None:  # sharded by an earlier compile of this model: the model's own
                if earlier.device_mesh.size() != world or earlier.device_mesh.device_type != world_mesh.device_type:
                    raise AutoSPError(
                        f"parameter '{spec.name}' was sharded over {earlier.device_mesh.size()} ranks by an earlier compile "
                        f"of this model; this one shards over {world}: compile every program of a model over the same ranks"
                    )
                shards[id(tensor)] = earlier
                reused = True
            if id(tensor) not in shards:
                if tensor.dim():
                    sizes = chunk_sizes(tensor.shape[0], world)
                    local = tensor.detach().narrow(0, sum(sizes[:world_rank]), sizes[world_rank])
                    placements = [Shard(0)]
                else:
                    local, placements = tensor.detach(), [Replicate()]
                whole = DTensor.from_local(
                    local.clone(memory_format=torch.contiguous_format), world_mesh, placements, run_check=False,
                    shape=tensor.shape, stride=torch.empty(tensor.shape, device="meta").stride(),
                )
                shards[id(tensor)] = torch.nn.Parameter(whole, requires_grad=tensor.requires_grad)
            new = shards[id(tensor)]
            if not sharded_model.replaced(tensor):
                sharded_model.remember_replaced(tensor, new)
                self._replaced.append((weakref.ref(tensor), tensor.numel() * tensor.element_size()))
            for owner, kind, name in slots:
                module = owner()
                if module is not None:
                    getattr(module, kind)[name] = new
            self._state[state_index[j]] = new
        self._state_specs = [(s, t) for s, t in zip(self.inputs, self._state) if t is not None]
        by_name = {s.name: t for s, t in self._state_specs if s.kind == "parameter"}
        self.parameters = [by_name[name] for name in self.grad_of]
        if reused:  # where the model holds them now (the exported whole tensors are in no module)
            self._slots, self._tree = _module_slots([t for _, t in self._state_specs])
        sharded_model.gather_in_eager_forwards(self._modules())
        self.sharded = True

    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """(state_dict name, tensor) of every parameter the program takes."""
        return [(s.name, t) for s, t in self._state_specs if s.kind == "parameter"]

    @property
    def replicated_state(self) -> list[tuple[InputSpec, torch.Tensor]]:
        """The state every rank holds whole (what the ranks compare): all of it unless sharded."""
        return [(s, t) for s, t in self._state_specs if not (self.sharded and s.kind == "parameter")]

    @property
    def source(self) -> str:
        """The generated per-rank Python program."""
        return self.program_path.read_text()

    # --- before the step: local checks, then agreement ----------------------------------

    def _check_mode(self) -> None:
        if torch.is_inference_mode_enabled():
            raise AutoSPError("the step writes gradients; call it outside torch.inference_mode()")
        if not torch.is_grad_enabled():
            raise AutoSPError(
                "the step was called under torch.no_grad(), but it computes and stores gradients (eager's backward would "
                "fail there): call it with gradients enabled, and evaluate with the eager model under no_grad"
            )
        for device_type in {"cpu", self.device.type}:
            if torch.is_autocast_enabled(device_type):
                raise AutoSPError(
                    f"the step was called under torch.autocast({device_type!r}): it runs the dtypes of the exported "
                    "graph and would ignore autocast; put the autocast inside the forward you export (with "
                    "torch.autocast(...): return model(...)), compile that, and call the step outside autocast"
                )

    def _modules(self) -> list[torch.nn.Module]:
        """The modules holding the step's parameters and buffers, and those containing them: the
        user's model (torch.export's own graph modules, which hold the same tensors, are not)."""
        return [m for m in (ref() for ref in self._tree) if m is not None and not isinstance(m, torch.fx.GraphModule)]

    def _check_training(self) -> None:
        """What eager would do differently: a parameter unfrozen since compile (the program makes
        no gradient for it), a dropout or norm switched between train() and eval() since export,
        module hooks the program cannot run."""
        for spec, tensor in self._state_specs:
            if spec.name in self._frozen_at_compile and tensor.requires_grad:
                raise AutoSPError(
                    f"parameter '{spec.name}' requires a gradient now but was frozen when the step was compiled, so the "
                    "program makes none for it: export and compile again after changing requires_grad"
                )
        modules = self._modules()
        backward = [type(m).__name__ for m in modules if m._backward_hooks or m._backward_pre_hooks]
        from torch.nn.modules import module as nn_module

        if backward or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks:
            where = f" ({', '.join(sorted(set(backward)))})" if backward else " (global)"
            raise AutoSPError(
                f"module backward hooks{where} do not run in a compiled step (it has no autograd graph of modules); "
                "register hooks on the parameters instead (param.register_hook / register_post_accumulate_grad_hook run "
                "as in eager)"
            )
        for module, path, exported in self._modes:
            if (module := module()) is not None and module.training != exported:
                now, then = ("train", "eval") if module.training else ("eval", "train")
                raise AutoSPError(
                    f"'{path}' ({type(module).__name__}) is in {now} mode but was in {then} mode when the model was "
                    f"exported, and what it computes depends on it (dropout, batch norm): call model.{then}() before the "
                    f"step, or export and compile again in {now} mode"
                )
        now = _forward_hooks(modules)
        changed = sorted({key[1] for key in {*now, *self._forward_hooks} if now.get(key, set()) != self._forward_hooks.get(key, set())})
        if changed:
            raise AutoSPError(
                f"forward hooks of {', '.join(changed)} were added or removed after the step was compiled: the program runs "
                "the forward as it was exported (with the hooks it had then); export and compile again"
            )

    def _check_state(self) -> None:
        for (spec, tensor), slots in zip(self._state_specs, self._slots):
            for owner, kind, name in slots:
                module = owner()
                if module is not None and getattr(module, kind).get(name) is not tensor:
                    raise AutoSPError(
                        f"{spec.kind} '{spec.name}' was replaced after compile ({type(module).__name__}.{name} is a new "
                        "object): the step would keep using the old one; export and compile again after replacing it"
                    )
            if self.sharded and spec.kind == "parameter":
                tensor = _local(tensor)  # the program's argument: this rank's shard
            if tensor.device.type == "meta":
                raise AutoSPError(f"{spec.kind} '{spec.name}' is on the meta device (no data); load real weights before the step")
            if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype or tensor.device != self.device:
                raise AutoSPError(
                    f"{spec.kind} '{spec.name}' is {_described(tensor.dtype, tensor.shape)} on {tensor.device} but the step "
                    f"was compiled for {_described(spec.dtype, spec.shape)} on {self.device}; after model.to()/.double()/"
                    ".half(), export and compile again"
                )

    def _check_inputs(self, args: tuple) -> list[torch.Tensor]:
        if len(args) != len(self.user_inputs):
            raise AutoSPError(
                f"the step takes {len(self.user_inputs)} inputs "
                f"({', '.join(s.name for s in self.user_inputs)}), got {len(args)}"
            )
        moved = []
        for arg, spec in zip(args, self.user_inputs):
            if not isinstance(arg, torch.Tensor):
                raise AutoSPError(f"input '{spec.name}' must be a tensor, got {type(arg).__name__}")
            if tuple(arg.shape) != spec.shape:
                raise AutoSPError(
                    f"input '{spec.name}' is {_described(arg.dtype, arg.shape)} but the step was compiled for "
                    f"{_described(spec.dtype, spec.shape)}; export and compile again for this shape"
                )
            if arg.dtype != spec.dtype:
                raise AutoSPError(
                    f"input '{spec.name}' is {str(arg.dtype).removeprefix('torch.')} but the step was compiled for "
                    f"{str(spec.dtype).removeprefix('torch.')}; pass {str(spec.dtype).removeprefix('torch.')} "
                    f"(x.to({spec.dtype})), or export with {str(arg.dtype).removeprefix('torch.')} inputs"
                )
            if arg.device.type == "meta":
                raise AutoSPError(f"input '{spec.name}' is on the meta device (no data)")
            if arg.requires_grad:
                raise AutoSPError(
                    f"input '{spec.name}' requires a gradient, but the step makes gradients for the parameters only (eager "
                    "would give it a .grad): pass it detached, or make it a parameter of the model"
                )
            # The exported graph's views assume the layout it was traced with: contiguous inputs.
            moved.append(arg.detach().to(self.device).contiguous())
        return moved

    def _check_indices(self, user: list[torch.Tensor]) -> None:
        """Token ids and labels within their tables, on the whole batch (one host sync)."""
        uses = self.program.index_inputs(*user)
        if not uses:
            return
        bad = [(v != ignore) & ((v < 0) | (v >= size)) if ignore is not None else (v < 0) | (v >= size)
               for v, _, size, ignore, _ in uses]
        flags = torch.stack([b.any() for b in bad]).tolist()
        for flag, mask, (values, name, size, ignore, reader) in zip(flags, bad, uses):
            if flag:
                allowed = f"[0, {size})" + (f" or ignore_index={ignore}" if ignore is not None else "")
                raise AutoSPError(f"input {name} gives index {int(values[mask][0])}, outside {reader} {allowed}")

    def _bind(self, args: tuple, kwargs: dict) -> tuple:
        """Inputs by position or by name (the exported forward's argument names)."""
        if not kwargs:
            return args
        names = [s.name for s in self.user_inputs]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise AutoSPError(f"the step has no input {', '.join(map(repr, unknown))}; its inputs are {', '.join(names)}")
        given = dict(zip(names, args))
        twice = sorted(set(given) & set(kwargs))
        if twice:
            raise AutoSPError(f"input {', '.join(map(repr, twice))} given by position and by name")
        given.update(kwargs)
        missing = [n for n in names if n not in given]
        if missing:
            raise AutoSPError(f"the step takes inputs {', '.join(names)}; missing {', '.join(map(repr, missing))}")
        return tuple(given[n] for n in names)

    def _prepare(self, args: tuple) -> list[torch.Tensor]:
        """The program's arguments (the state in order, the user's inputs in their places),
        after every check; on several processes, only once every rank's checks passed."""
        if self._failed_mid_step is not None:
            raise AutoSPError(
                f"an earlier step failed on this rank after the ranks had started it ({self._failed_mid_step}); "
                "its collectives are out of step with the other ranks: restart the job"
            )
        error, user = None, []
        try:
            self._check_mode()
            self._check_state()
            self._check_training()
            user = self._check_inputs(args)
            self._check_indices(user)
        except Exception as err:  # noqa: BLE001 (on several processes, every rank must hear of it)
            if self.agreement is None:
                raise
            error = error_text(err)
        if self.agreement is not None:
            self.agreement(error, user, [t for _, t in self.replicated_state])
        supplied = iter(user)
        return [next(supplied) if t is None else _local(t.detach()) for t in self._state]

    # --- the step ---------------------------------------------------------------------------

    def _warn_if_whole_parameters_live(self) -> None:
        """Once, at the first step after sharding: the memory plan counts shards, so whole
        parameters still referenced elsewhere (the ExportedProgram, the caller) are memory the
        plan does not see."""
        alive = sum(size for ref, size in self._replaced if ref() is not None)
        self._replaced = []
        if alive:
            import warnings

            warnings.warn(
                f"{alive / 2**30:.2f} GiB of whole parameters that compile replaced by their shards are still referenced "
                "(by the ExportedProgram or your own variables): the memory plan does not count them; `del ep` to free them",
                stacklevel=3,
            )

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        with self._lock:
            if self._replaced:
                self._warn_if_whole_parameters_live()
            call_args = self._prepare(self._bind(args, kwargs))
            with self._in_step():
                loss, *grads = self.program.train_step(*call_args)
                self._reduce_and_store(grads)
            return loss.detach()

    def measure_memory(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> int:
        """Run one step while tracking the storages the program holds; returns the peak bytes
        (arguments included). Gradients are stored as by a normal call."""
        from autosp.runtime.memory import MemoryTracker

        if self.measured_path is None:
            raise AutoSPError("this step was built without its measured program; compile it with autosp.compile")
        if self._measured is None:
            self._measured = load_program(self.measured_path)
            self._measured.DEVICE, self._measured.GROUPS = self.device, self.program.GROUPS
            self._measured.HOST = self.program.HOST
        with self._lock:
            call_args = self._prepare(self._bind(args, kwargs))
            host = [self.program.HOST.buffer] if self.program.HOST is not None else []
            tracker = MemoryTracker(call_args, not_device=host)
            self._measured.TRACK = tracker.track
            try:
                with self._in_step():
                    loss, *grads = self._measured.train_step(*call_args)
                    self._reduce_and_store(grads)
            finally:
                self._measured.TRACK = None
            del loss
            return tracker.peak_bytes

    @contextlib.contextmanager
    def _in_step(self):
        """On several processes, a failure inside the program (after the ranks agreed) leaves
        this rank's collectives out of step with the others': later calls refuse at once."""
        try:
            yield
        except BaseException as err:
            if self.agreement is not None:
                self._failed_mid_step = error_text(err)
            raise

    def _reduce_and_store(self, grads: list[torch.Tensor]) -> None:
        """As eager's backward leaves them: each trainable parameter's gradient hooks, the
        average over the dp replicas (DDP averages what the hooks returned), then every .grad
        written or none (everything that can fail, validation and allocation, happens before the
        first parameter is touched), then the post-accumulate hooks; parameters frozen since
        compile get no gradient. Parameters in the order the program makes their gradients."""
        grads = list(grads)
        trainable = [param.requires_grad for param in self.parameters]
        for i in self.gradient_order:
            if trainable[i] and self.parameters[i]._backward_hooks:
                grads[i] = _run_gradient_hooks(self.parameters[i], grads[i], self.sharded)
        if self.dp_size > 1 and not self.sharded:  # DDP semantics: the mean over replicas of each
            # replica's gradient (sharded: the program's reduce-scatters); every rank averages every
            # gradient, so the collectives match whatever each rank froze
            grads = average_in_place(grads, self.dp_size, self.dp_group)
        with _STORE, torch.no_grad():
            new: dict[int, torch.Tensor | None] = {}  # a tensor to assign, or None: add in place
            for i, (param, grad) in enumerate(zip(self.parameters, grads)):
                if not trainable[i]:
                    continue
                if self.sharded:  # this rank's shard of the gradient, as a DTensor like its parameter
                    new[i] = _sharded_grad(param, grad)
                    continue
                old = param.grad
                if old is None:
                    grad = grad.detach()
                    # A view would keep its whole base alive; strides should match the param.
                    if grad._base is not None or grad.stride() != param.stride():
                        grad = torch.empty_like(param).copy_(grad)
                    new[i] = grad
                elif old.layout == torch.strided and _non_overlapping(old) and not old.requires_grad:
                    new[i] = None
                else:  # sparse, overlapping or requiring grad: a new dense sum, as autograd makes
                    new[i] = grad + old  # (dense + sparse is defined, sparse + dense is not)
            for i in self.gradient_order:
                if i not in new:
                    continue
                if new[i] is None:
                    _local(self.parameters[i].grad).add_(_local(grads[i]))
                else:
                    self.parameters[i].grad = new[i]
        for i in self.gradient_order:
            param = self.parameters[i]
            if trainable[i] and param._post_accumulate_grad_hooks:
                for hook in list(param._post_accumulate_grad_hooks.values()):
                    hook(param)


# One gradient store at a time, across steps too (two programs of one model, several threads):
# reading .grad and writing it back must not interleave.
_STORE = threading.RLock()


def _mode_dependent(modules: list[torch.nn.Module], modes: dict[str, tuple[str, bool]]) -> list:
    """(weakref to the module, path, its training flag at export) for each module of `modes`
    (paths from the exported root): found from the model's outermost module that has them all."""
    for root in modules:
        found = []
        for path, (kind, exported) in modes.items():
            try:
                module = root.get_submodule(path)
            except AttributeError:
                break
            if type(module).__name__ != kind:
                break
            found.append((weakref.ref(module), path, exported))
        else:
            return found
    return []


def _forward_hooks(modules: list[torch.nn.Module]) -> dict[tuple[int, str], set[int]]:
    """(module id, class name) -> ids of its forward (pre-)hooks."""
    hooks = {(id(m), type(m).__name__): {id(h) for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
                                         if not getattr(h, "autosp_own_hook", False)}
             for m in modules}
    return {key: ids for key, ids in hooks.items() if ids}


def _run_gradient_hooks(param, grad: torch.Tensor, sharded: bool) -> torch.Tensor:
    """`param`'s register_hook hooks on its gradient, in order, as autograd runs them on a leaf:
    each sees what the one before returned (None: unchanged). A sharded parameter's hooks see its
    gradient shard as a DTensor, as the parameter is one."""
    value = _sharded_grad(param, grad, fresh=True) if sharded else grad
    for hook in list(param._backward_hooks.values()):
        out = hook(value)
        if out is not None:
            if not isinstance(out, torch.Tensor) or out.shape != value.shape or out.dtype != value.dtype:
                raise AutoSPError(
                    f"a gradient hook of a parameter {list(param.shape)} returned "
                    f"{type(out).__name__ if not isinstance(out, torch.Tensor) else f'{out.dtype} {list(out.shape)}'}; "
                    f"it must return None or a {value.dtype} tensor of the gradient's shape {list(value.shape)}"
                )
            value = out
    return _local(value) if sharded else value


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local tensor (the same storage); any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _sharded_grad(param, grad: torch.Tensor, fresh: bool = False):
    """The gradient to assign to a DTensor parameter (None: add `grad` into its local .grad);
    `fresh`: `grad` as a DTensor like the parameter whatever .grad holds."""
    from torch.distributed.tensor import DTensor

    old = param.grad
    if old is not None and not fresh:
        if not isinstance(old, DTensor) or old.placements != param.placements or _local(old).shape != grad.shape:
            raise AutoSPError(
                "a sharded parameter's .grad is not a DTensor shard like its parameter (was it replaced?); "
                "set it to None (optimizer.zero_grad()) before the step"
            )
        return None
    return DTensor.from_local(grad.detach(), param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())
