"""select-kernels: choose the kernel that runs each attention op and the fused loss on the target.

`target` is the device the program is compiled for (`cpu`, `cuda:sm90`, `rocm`, `interpreter`);
`exclude` names attention kernels a probe of the live device found not working; `lean` prefers
the attention kernel with the least scratch to the fastest (compile's choice when nothing else
fits: the Triton backward holds one fp32 per query row, cuDNN's and FlashAttention's an fp32 dQ
of the whole sequence). Each op gets
`kernel = "..."`: for attention the first of cuDNN, FlashAttention, AutoSP's Triton kernels,
torch's CPU flash kernel and the blockwise reference that runs on the target's device and
runs the op's case (dtype, head dims, mask, documents, GQA: ir/kernel_choice.py), for the loss
Triton rows on GPUs, PyTorch rows elsewhere. A forward op and its gradient have one case, so
they get one kernel (a backward must read the log-sum-exp its own forward wrote). The memory
plan then prices the scratch of the kernel that runs, and codegen passes the choice to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.passes import ModulePass

from autosp.ir.autosp import AttentionGradOp, AttentionOp, LinearCrossEntropyOp
from autosp.ir.dtypes import torch_dtype
from autosp.ir.kernel_choice import Target, choose_attention, choose_loss


@dataclass(frozen=True)
class SelectKernels(ModulePass):
    name = "select-kernels"

    target: str = "cuda:sm90"
    exclude: str = ""
    lean: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        target = Target.parse(self.target, self.exclude)
        for inner in op.walk():
            if isinstance(inner, (AttentionOp, AttentionGradOp)):
                inner.properties["kernel"] = StringAttr(choose_attention(inner.case(), target, self.lean))
            elif isinstance(inner, LinearCrossEntropyOp):
                dtype = torch_dtype(inner.hidden.type.element_type)  # type: ignore[attr-defined]
                inner.properties["kernel"] = StringAttr(choose_loss(dtype, target))
