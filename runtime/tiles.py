"""Running a tiled region (`autosp.tiled`, the tile-rows pass): its body once per chunk of rows
(the last chunk holds what is left).

Input i is cut along dim `slices[i]` (a view of the chunk's rows; -1: passed whole). Output j is
either the chunks' results written into its rows along dim `combines[j]`, or (-1) their sum,
accumulated in f32 (f64 for f64) and rounded to the output's dtype (`dtypes[j]`) once at the end.
"""

from __future__ import annotations

import torch


def run(body, *inputs: torch.Tensor, slices: list[int], combines: list[int], dtypes: list[torch.dtype], rows: int,
        chunk: int):
    outputs: list[torch.Tensor | None] = [None] * len(combines)
    for start in range(0, rows, chunk):
        length = min(chunk, rows - start)
        parts = body(*(x if dim < 0 else x.narrow(dim, start, length) for x, dim in zip(inputs, slices)))
        for j, (part, dim) in enumerate(zip(parts, combines)):
            if dim >= 0:
                if outputs[j] is None:
                    shape = list(part.shape)
                    shape[dim] = rows
                    outputs[j] = part.new_empty(shape)
                outputs[j].narrow(dim, start, length).copy_(part)
            elif outputs[j] is None:
                outputs[j] = part.to(torch.promote_types(part.dtype, torch.float32), copy=True)
            else:
                outputs[j] += part
        del parts
    results = tuple(out if out.dtype == dtype else out.to(dtype) for out, dtype in zip(outputs, dtypes))
    return results[0] if len(results) == 1 else results
