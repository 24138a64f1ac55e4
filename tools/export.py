"""autosp-export: a model's training step -> AutoSP IR text.

    autosp-export --preset llama-3.2-1b --seq 131072 -o llama.mlir      # shapes only, no weights
    autosp-export --module mypkg.models:make --seq 4096 -o mine.mlir    # make(seq=, batch=) -> (module, inputs)
"""

from __future__ import annotations

import argparse
import sys
import time

from autosp.tools.errors import OneLineParser, run_cli
from autosp.tools.files import write_atomically

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def parse_args(argv=None) -> argparse.Namespace:
    from autosp.frontends.presets import PRESETS

    parser = OneLineParser(prog="autosp-export", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(PRESETS), help="an HF causal LM built from its config (random weights)")
    source.add_argument("--module", metavar="PKG.MOD:FACTORY", help="factory(seq=, batch=) returning (loss module, example inputs)")
    parser.add_argument("--seq", type=int, default=4096, help="sequence length (default 4096)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="parameter dtype of a --preset (default fp32)")
    parser.add_argument("--documents", type=int, default=None, metavar="N",
                        help="a --preset with rows packed from documents of N tokens (position ids restart; attention stays in each)")
    parser.add_argument("--tile-mlp", action="store_true",
                        help="gated MLPs as autosp.gated_mlp in row chunks (what compile does when memory needs it)")
    parser.add_argument("-o", "--output", default="-", help="output .mlir file (default stdout)")
    return parser.parse_args(argv)


def run(argv=None) -> None:
    from autosp.frontends import import_program
    from autosp.frontends.presets import call_factory, export_loss_module, export_preset, load_factory

    import torch

    args = parse_args(argv)
    args.dtype = getattr(torch, DTYPES[args.dtype])
    start = time.perf_counter()
    if args.preset:
        ep = export_preset(args.preset, seq=args.seq, batch=args.batch, layers=args.layers, fake=True, dtype=args.dtype,
                           documents=args.documents)
    else:
        if args.layers is not None or args.dtype != torch.float32 or args.documents is not None:
            raise ValueError("--layers, --dtype and --documents apply to --preset only")
        module, inputs = call_factory(args.module, load_factory(args.module), args.seq, args.batch)
        ep = export_loss_module(module, tuple(inputs))
    text = str(import_program(ep, tile_mlp=args.tile_mlp)) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        write_atomically(args.output, text)
        print(f"autosp-export: wrote {args.output} ({text.count(chr(10))} lines) in {time.perf_counter() - start:.1f}s", file=sys.stderr)


def main() -> None:
    run_cli("autosp-export", run)


if __name__ == "__main__":
    main()
