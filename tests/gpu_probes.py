"""GPU check of torch's attention kernels as AutoSP would use them: the probe compile runs before
choosing cuDNN or FlashAttention (runtime/kernels.probe_attention: a small case of each kind,
forward and backward against the reference), for the kinds of case models have (bf16 and fp16,
head dims 64 and 128, MHA and GQA, causal, no mask, a sliding window, packed documents), and
the kernels select-kernels would pick for them on this GPU. Writes JSON to argv[1]."""

import itertools
import json
import sys

import torch

from autosp.ir.kernel_choice import AttentionCase, Target, runnable
from autosp.runtime.kernels import probe_attention

major, minor = torch.cuda.get_device_capability()
target = Target.parse(f"cuda:sm{major}{minor}")
rows = []
for dtype, dim, group, (causal, window, documents) in itertools.product(
    (torch.bfloat16, torch.float16), (64, 128), (1, 4), ((True, 0, False), (False, 0, False), (True, 256, False), (True, 0, True)),
):
    case = AttentionCase(1, 8 * group, 8, 4096, 4096, dim, dim, dtype, causal, window, documents)
    kernels = runnable(case, target)
    probes = {k: probe_attention(k, dtype, dim, group, causal, window, documents, torch.device("cuda"))
              for k in kernels if k in ("cudnn", "flash")}
    chosen = next(k for k in kernels if probes.get(k) is None)
    rows.append({"dtype": str(dtype).removeprefix("torch."), "head_dim": dim, "group": group, "causal": causal,
                 "window": window, "documents": documents, "runnable": kernels, "probe_failures": {k: v for k, v in probes.items() if v},
                 "chosen": chosen})
    print(json.dumps(rows[-1]), flush=True)
json.dump({"target": str(target), "cases": rows}, open(sys.argv[1], "w"), indent=1)
