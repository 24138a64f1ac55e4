"""AutoSP's dialects: `aten` (generated from torch's schemas), `autosp` and `dist`."""

from autosp.ir.context import DIALECTS, AutoSPContext, autosp_context

__all__ = ["DIALECTS", "AutoSPContext", "autosp_context"]
