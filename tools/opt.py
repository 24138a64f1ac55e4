"""autosp-opt: xdsl-opt with AutoSP's dialects and passes, plus the pipeline options.

    autosp-opt model.mlir -p drop-aliases,dce     # any passes, every xdsl-opt flag
    autosp-opt model.mlir --sp=1                  # the pipeline autosp.compile runs
    autosp-opt model.mlir --sp=2 -t python        # ... and the per-rank Python program it generates
    autosp-opt model.mlir --sp=2 --dp=2 --shard=parameters --optimizer=adamw --report   # ZeRO-3 over 4 ranks
"""

from __future__ import annotations

import argparse
import io

from xdsl.xdsl_opt_main import xDSLOptMain

from autosp.ir import AutoSPContext
from autosp.ir.context import register_dialects
from autosp.passes import PASSES
from autosp.pipeline import pipeline_spec
from autosp.common.errors import AutoSPError
from autosp.tools.errors import one_line_errors, run_cli
from autosp.tools.files import write_atomically


def _emit_python(module, output) -> None:
    """`-t python`: the per-rank program autosp.compile would generate for this IR (without the
    index checks, which need the unpartitioned import)."""
    from autosp.codegen import generate

    output.write(generate(module))


class _Pending(io.StringIO):
    """The output of a run, kept when xdsl-opt closes it and written only if the run succeeds
    (xdsl-opt itself opens -o for writing first, emptying it even when the run then fails)."""

    text = ""

    def close(self) -> None:
        self.text = self.getvalue()
        super().close()


class AutoSPOptMain(xDSLOptMain):
    version_format = "autosp-opt built on xdsl {xdsl_version}"
    pending: _Pending | None = None
    pipeline_options: dict | None = None  # the options of pipeline_spec, when the pipeline options are given

    def prepare_output(self):
        if self.args.output_file is None:
            return super().prepare_output()
        self.pending = _Pending()
        return self.pending

    def run(self):
        try:
            super().run()
        except UnicodeDecodeError as err:
            raise AutoSPError(
                f"{self.get_input_name()} is not a text file (byte {err.object[err.start]:#04x} at offset {err.start} is not "
                "UTF-8); give the .mlir text autosp-export writes"
            ) from None
        if self.pending is not None:
            write_atomically(self.args.output_file, self.pending.text)

    def apply_passes(self, prog):
        from autosp.ir.program import partition_of

        done = partition_of(prog)
        if self.args.sp is not None and done is not None:
            raise AutoSPError(
                f"the input is already partitioned for sp={done.sp.data}; --sp={self.args.sp} needs the "
                "unpartitioned IR (autosp-export's output)"
            )
        if self.pipeline_options is not None and self.pipeline_options["remat"] and self.pipeline_options["world_rank"]:
            # As autosp.compile: every rank applies the plan made on rank 0's program.
            from autosp.pipeline import remat_plan, run_pipeline, until_remat

            rank0 = {**self.pipeline_options, "rank": 0, "world_rank": 0}
            head, _ = until_remat(pipeline_spec(**rank0))
            plan = remat_plan(run_pipeline(prog.clone(), head), **rank0)
            self.args.passes = pipeline_spec(**self.pipeline_options, remat_plan=plan)
            super().setup_pipeline()
        super().apply_passes(prog)

    def register_all_dialects(self):
        self.ctx = AutoSPContext()  # knows the generated aten.* op classes
        super().register_all_dialects()
        register_dialects(self.ctx)

    def register_all_targets(self):
        super().register_all_targets()
        self.available_targets["python"] = _emit_python

    def register_all_passes(self):
        super().register_all_passes()
        for name, factory in PASSES.items():
            self.register_pass(name, factory)

    def register_all_arguments(self, arg_parser: argparse.ArgumentParser):
        super().register_all_arguments(arg_parser)
        arg_parser.prog = "autosp-opt"
        one_line_errors(arg_parser)
        arg_parser.add_argument("--sp", type=int, default=None, help="sequence-parallel degree: run the compile pipeline for it")
        arg_parser.add_argument("--rank", type=int, default=None, help="with --sp: the rank (of sp x dp) whose program to print (default 0)")
        arg_parser.add_argument("--dp", type=int, default=None, help="data-parallel replicas: the world is sp x dp ranks (default 1)")
        arg_parser.add_argument(
            "--shard", default=None, choices=["none", "optimizer", "gradients", "parameters"],
            help="shard the training state over the world (ZeRO-1/2/3; default none)",
        )
        arg_parser.add_argument("--no-prefetch", action="store_true", help="with --shard: start each parameter gather where it is needed")
        arg_parser.add_argument(
            "--optimizer", default=None,
            help="the optimizer whose state the memory plan counts: adamw, sgd, adamw-master, ... or bytes per parameter element",
        )
        arg_parser.add_argument("--remat", action="store_true", help="choose recomputation by ILP to fit --memory-budget")
        arg_parser.add_argument(
            "--memory-budget", default=None,
            help="per-rank memory budget for --remat: bytes, 70GiB, 512MiB, or auto (the cost model's device memory less a margin; default)",
        )
        arg_parser.add_argument(
            "--cost-model", default=None, help="device whose roofline prices recomputation for --remat: h100 (default), h200, mi300x, cpu"
        )
        arg_parser.add_argument(
            "--device", default=None,
            help="the device the kernels are chosen for (select-kernels' target): cpu, cuda:smNN (e.g. cuda:sm90), rocm, "
                 "interpreter; default: the cost model's device (cuda:sm90 for h100)",
        )
        arg_parser.add_argument(
            "--host-memory-budget", default=None,
            help="with --remat: host memory per rank values may be offloaded to (bytes, 64GiB, or auto: 80%% of this host's memory over its ranks)",
        )
        arg_parser.add_argument(
            "--no-fuse", action="store_true", help="with --sp/--remat: leave elementwise chains unfused (no fuse-elementwise)"
        )
        arg_parser.add_argument(
            "--tile-rows", action="store_true", help="compute token-wise chains in chunks of rows (the tile-rows pass), as compile does when nothing else fits"
        )
        arg_parser.add_argument(
            "--report", action="store_true",
            help="print what the step will do (memory, recomputation, communication) instead of the IR; -o still writes the IR",
        )

    def output_resulting_program(self, prog) -> str:
        if not self.args.report:
            return super().output_resulting_program(prog)
        from autosp.report import comm_report

        print(comm_report(prog).table(), end="")
        return super().output_resulting_program(prog) if self.args.output_file else ""

    def setup_pipeline(self):
        if self.args.time_passes:  # and the remat pass's solver time
            import logging

            logging.basicConfig(level=logging.INFO, format="%(message)s")
        pipeline = (self.args.sp is not None or self.args.remat or self.args.shard is not None or self.args.optimizer is not None
                    or self.args.tile_rows or self.args.device is not None)
        if (self.args.rank is not None or self.args.dp is not None) and self.args.sp is None:
            raise ValueError("--rank and --dp place a rank on the sp x dp mesh: give --sp too")
        if self.args.dp is not None and self.args.dp < 1:
            raise ValueError(f"--dp={self.args.dp}: give at least 1 replica")
        if self.args.sp is not None and self.args.sp < 1:
            raise ValueError(f"--sp={self.args.sp}: the sequence-parallel degree must be an integer >= 1")
        sp, dp = self.args.sp or 1, self.args.dp or 1
        world = sp * dp
        if self.args.rank is not None and not 0 <= self.args.rank < world:
            raise ValueError(f"--rank={self.args.rank}: give a rank in 0..{world - 1} for --sp={sp} --dp={dp}")
        if pipeline:
            if self.args.passes:
                raise ValueError("give either -p PASSES or the pipeline options (--sp/--remat/--shard/--optimizer/--tile-rows/--device), not both")
            given = {"memory_budget": self.args.memory_budget, "cost_model": self.args.cost_model,
                     "host_budget": self.args.host_memory_budget}
            remat = {k: v for k, v in given.items() if v is not None and self.args.remat}  # else the defaults
            from autosp.passes.optimizers import optimizer_kind

            rank = self.args.rank or 0
            from autosp.passes.tile_rows import CHUNK_BYTES

            from autosp.passes.cost_model import device_profile

            target = self.args.device or device_profile(self.args.cost_model or "h100").target
            self.pipeline_options = dict(
                sp=sp, remat=self.args.remat, rank=rank % sp, fuse=not self.args.no_fuse, target=target,
                tile_rows=self.args.tile_rows, tile_bytes=CHUNK_BYTES,
                shard=self.args.shard or "none", world=world, world_rank=rank,
                optimizer=optimizer_kind(self.args.optimizer), prefetch=not self.args.no_prefetch, **remat,
            )
            self.args.passes = pipeline_spec(**self.pipeline_options)
        if not self.args.remat and (self.args.memory_budget is not None or self.args.cost_model is not None
                                    or self.args.host_memory_budget is not None):
            raise ValueError("--memory-budget, --host-memory-budget and --cost-model only apply with --remat")
        if self.args.passes:
            from autosp.pipeline import check_pass_options

            check_pass_options(self.args.passes)
        super().setup_pipeline()


def main() -> None:
    run_cli("autosp-opt", lambda: AutoSPOptMain().run())


if __name__ == "__main__":
    main()
