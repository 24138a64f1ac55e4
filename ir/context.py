"""The lazy registry of AutoSP's dialects: an xDSL Context that also knows every generated
`aten.*` op class by name (made on first lookup, see `autosp.ir.aten`)."""

from __future__ import annotations

from xdsl.context import Context
from xdsl.dialects.builtin import Builtin
from xdsl.dialects.func import Func
from xdsl.ir import Dialect, Operation


def _aten() -> Dialect:
    from autosp.ir.aten import Aten

    return Aten


def _autosp() -> Dialect:
    from autosp.ir.autosp import AutoSP

    return AutoSP


def _dist() -> Dialect:
    from autosp.ir.dist import Dist

    return Dist


def _host() -> Dialect:
    from autosp.ir.host import Host

    return Host


DIALECTS = {"aten": _aten, "autosp": _autosp, "dist": _dist, "host": _host}


class AutoSPContext(Context):
    def _get_known_op(self, name: str) -> type[Operation] | None:
        known = super()._get_known_op(name)
        if known is None and name.startswith("aten."):
            from autosp.ir.aten import aten_op_class

            known = aten_op_class(name)
            if known is not None:
                self.load_op(known)
        return known


def register_dialects(ctx: Context) -> None:
    for name, factory in DIALECTS.items():
        if name not in ctx.registered_dialect_names:
            ctx.register_dialect(name, factory)


def autosp_context() -> AutoSPContext:
    ctx = AutoSPContext()
    ctx.load_dialect(Builtin)
    ctx.load_dialect(Func)
    register_dialects(ctx)
    return ctx
